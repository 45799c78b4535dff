"""Synthetic video-reasoning benchmark: coloured shapes on a dark background, 8 frames of 112x112.

    python data/synthetic/prepare.py [--out data/synthetic] [--seed 0] [--n_train 2000] [--n_val 1000]
                                     [--teacher_guesses_from 0.667] [--teacher_slip 0.6] [--workers N]

writes <out>/train.jsonl, <out>/val.jsonl, <out>/sft.jsonl and <out>/videos/{train,val}_NNNNNN.mp4.

Four question families, each answerable only from the video (the text names the object, never
the answer), four options in a fixed order per family, so the letter is a function of the answer
text (a tiny model needs no lookup in the prompt to name it); the correct letter is uniform over A-D:
  motion  "Which way does the red square move?"            left / right / up / down
  colour  "What colour does the cyan square turn into?"    red / green / blue / yellow
                                                            (starting colour cyan, magenta or white)
  count   "How many red shapes are there?"                  1 / 2 / 3 / 4
  first   "Which colour appears first?"                     red / green / blue / yellow; two to
                                                            four of them appear one after another
Token geometry of the tiny Qwen2.5-VL: patch 14, temporal patch 2, merge 2, so one video token
sees a 28x28 region of 2 consecutive frames (4 time steps x 4x4 tokens). At difficulty d = 0
objects are 28 px (one token cell), motion crosses three cells, changes happen mid-clip, and
there is no noise and nothing else on screen. As d -> 1, on a per-question d drawn uniformly:
  size      28 -> 10 px                   (an object covers a fraction of one token)
  motion    84 -> 14 px over the clip     (less than one token cell)
  timing    colour change at frame 4 -> 7; first appearance gap 4 -> 1 frames (same token step)
  objects   0 -> 3 distractors (moving ones for motion; more objects to order for first)
  noise     Gaussian on 4x4 pixel blocks, std 0 up to d = 0.3, then rising to 32 at d = 1
Every question carries a short reasoning trace of three steps: the first two narrow the four options
to two and then to one without naming any answer, the last names the answer text (never the letter):
  motion  "It moves sideways. Its x grows. So it moves right."          (image axes: y grows downward)
  colour  "It turns warm. It is the darker of the two. So it turns red."
  count   "There are more than two. Their number is odd. So there are 3."
  first   "The first colour is cool. It is the brighter of the two. So green appears first."
(warm: red, yellow; cool: green, blue; brighter: yellow, green; darker: red, blue). The hints of
difficulty.py give a trace's first steps, so a one-step hint guides without giving the answer away.
Ground truth is in meta (family, difficulty, answer_text and the family's parameters).

train.jsonl and val.jsonl hold ground truth: answers for the RL rewards and the evaluation. sft.jsonl
holds the SFT warm start's demonstrations for the same train questions, written by a simulated teacher
with two flaws of a distilled model. It cannot read the hardest third of the clips (difficulty >=
`teacher_guesses_from`, 0.667: small objects, pixel noise, distractors) and there guesses option A with
the trace that reasons to A, the position bias of a model that does not know: wrong on three in four
of them. On the clips it reads, when a colour or first question's answer is yellow or blue, it reasons
right and then, with probability `teacher_slip` (0.6), writes green's or red's letter, contradicting its
own reasoning. SFT copies both. RL's reward knows the truth: the slips show inside groups whose answers
differ, which any RL arm learns from; the guesses make groups flat from both sides (all right where the
answer is A, all wrong elsewhere), the zero-advantage groups the paper's augmentation targets, on clips
the tiny model reads poorly itself. `--teacher_guesses_from 2 --teacher_slip 0` makes a perfect teacher
(sft.jsonl equals train.jsonl).
"""

import argparse
import contextlib
import functools
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
from machinery.dataset import option_letters, write_records, write_video  # noqa: E402

T, H, W, FPS = 8, 112, 112, 4
BACKGROUND = (123, 117, 104)  # ~ the processor's normalisation mean: empty cells embed to ~0
COLOURS = {"red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255),
           "yellow": (255, 255, 0), "cyan": (0, 255, 255), "magenta": (255, 0, 255),
           "white": (255, 255, 255)}
SHAPES = ("square", "circle", "triangle")
TARGETS = ("red", "green", "blue", "yellow")  # the options of the colour and first families
SOURCES = ("cyan", "magenta", "white")         # starting colours of the colour family
DIRECTIONS = ("left", "right", "up", "down")
COUNTS = ("1", "2", "3", "4")
FAMILIES = ("motion", "colour", "count", "first")
WARM, BRIGHT = ("red", "yellow"), ("yellow", "green")  # the two halvings the colour reasoning uses
TEACHER_GUESSES_FROM = 0.667  # difficulty from which the SFT teacher guesses A (the hardest third)
TEACHER_SLIP = 0.6            # below it: how often it writes green's / red's letter after reasoning yellow / blue
CELL = 37  # 3x3 grid for static layouts with more than 4 objects (size <= 28 - 18 * 0.75)


def knobs(d):
    """Rendering parameters as a function of difficulty d in [0, 1]."""
    return {"size": int(round(28 - 18 * d)),
            "travel": int(round(84 - 70 * d)),
            "noise": round(32 * float(np.clip((d - 0.3) / 0.7, 0, 1)), 2),
            "n_distractors": min(3, int(d * 4))}


def shape_mask(shape, s):
    """(s, s) bool mask of a square, a circle or an upward triangle."""
    yy, xx = np.mgrid[0:s, 0:s] + 0.5
    if shape == "square":
        return np.ones((s, s), bool)
    if shape == "circle":
        return (yy - s / 2) ** 2 + (xx - s / 2) ** 2 <= (s / 2) ** 2
    if shape == "triangle":
        return np.abs(xx - s / 2) <= yy / 2
    raise ValueError(f"unknown shape {shape!r}, expected one of {SHAPES}")


def draw(frame, shape, s, y, x, colour):
    frame[y:y + s, x:x + s][shape_mask(shape, s)] = COLOURS[colour]


def grid_positions(rng, n, s):
    """n top-left corners in distinct cells of a grid, jittered inside the cell: a 2x2 grid of
    56 px cells (>= 8 px between objects, one object per 2x2 block of tokens) for up to 4
    objects, else a 3x3 grid of 37 px cells (>= 3 px between objects)."""
    g, margin = (2, 4) if n <= 4 else (3, 0)
    cell = H // g if g == 2 else CELL
    jit = cell - s - 3 - 2 * margin
    cells = rng.choice(g * g, size=n, replace=False)
    return [(int(c // g * cell + margin + rng.integers(0, jit + 1)),
             int(c % g * cell + margin + rng.integers(0, jit + 1))) for c in cells]


def add_noise(rng, video, std):
    """Gaussian noise on 4x4 pixel blocks (survives yuv420's 2x2 chroma and stays cheap to encode)."""
    if std > 0:
        noise = rng.normal(0, std, (T, H // 4, W // 4, 3)).repeat(4, 1).repeat(4, 2)
        video = video + noise
    return np.clip(video, 0, 255).round().astype(np.uint8)  # (T, H, W, 3)


def mc(answer, options):
    """The family's fixed option list and the answer's letter: (options, letter). The letter is a
    function of the answer text, so a small model needs no lookup in the prompt to name it."""
    return list(options), option_letters(4)[options.index(answer)]


def blank():
    return np.full((T, H, W, 3), BACKGROUND, np.float32)


def other_colours(rng, exclude, n):
    pool = [c for c in COLOURS if c not in exclude]
    return [pool[i] for i in rng.permutation(len(pool))[:n]]


# -----------------------------------------------------------------------------
# the four families: each returns (video float (T, H, W, 3), question, options, letter, reasoning, meta)

def colour_steps(c):
    """Two steps that single out one of red/green/blue/yellow without naming it: warm or cool, then
    the brighter or the darker of that pair, e.g. 'warm. It is the darker of the two.' for red."""
    return (f"{'warm' if c in WARM else 'cool'}. "
            f"It is the {'brighter' if c in BRIGHT else 'darker'} of the two.")


def trace(family, answer):
    """The three-step reasoning that ends in `answer` (an option text): step 1 halves the options,
    step 2 picks one of the remaining two, step 3 names it. A function of the answer alone."""
    if family == "motion":
        axis = answer in ("left", "right")
        grows = "grows" if answer in ("right", "down") else "shrinks"
        return (f"It moves {'sideways' if axis else 'vertically'}. Its {'x' if axis else 'y'} {grows}. "
                f"So it moves {answer}.")
    if family == "colour":
        return f"It turns {colour_steps(answer)} So it turns {answer}."
    if family == "count":
        n = int(answer)
        return (f"There are {'fewer than three' if n <= 2 else 'more than two'}. "
                f"Their number is {'odd' if n % 2 else 'even'}. So there {'is' if n == 1 else 'are'} {n}.")
    if family == "first":
        return f"The first colour is {colour_steps(answer)} So {answer} appears first."
    raise ValueError(f"unknown family {family!r}, expected one of {FAMILIES}")




def motion(rng, k):
    s, travel = k["size"], min(k["travel"], H - k["size"])
    colour, shape = other_colours(rng, (), 1)[0], SHAPES[rng.integers(3)]
    video = blank()
    for dc in other_colours(rng, (colour,), k["n_distractors"]):  # distractors move too, under the target
        dist = int(rng.integers(0, travel + 1))
        _move(video, rng, SHAPES[rng.integers(3)], s, DIRECTIONS[rng.integers(4)], dist, dc)
    direction = DIRECTIONS[rng.integers(4)]
    start, end = _move(video, rng, shape, s, direction, travel, colour)
    options, letter = mc(direction, DIRECTIONS)
    reasoning = trace("motion", direction)
    meta = {"colour": colour, "shape": shape, "direction": direction,
            "start": list(start), "end": list(end)}
    return video, f"Which way does the {colour} {shape} move?", options, letter, reasoning, meta


def _move(video, rng, shape, s, direction, dist, colour):
    """Draw a shape moving dist px in direction, linearly over the T frames; return (start, end)."""
    lo = int(rng.integers(0, H - s - dist + 1))  # along the motion axis
    across = int(rng.integers(0, H - s + 1))
    a0, a1 = (lo, lo + dist) if direction in ("right", "down") else (lo + dist, lo)
    for t in range(T):
        a = int(round(a0 + (a1 - a0) * t / (T - 1)))
        y, x = (across, a) if direction in ("left", "right") else (a, across)
        draw(video[t], shape, s, y, x, colour)
    return ((across, a0), (across, a1)) if direction in ("left", "right") else ((a0, across), (a1, across))


def colour_change(rng, k, d):
    s = k["size"]
    c0, c1 = SOURCES[rng.integers(len(SOURCES))], TARGETS[rng.integers(len(TARGETS))]
    shape = SHAPES[rng.integers(3)]
    change = int(round(4 + 3 * d))  # first frame with the new colour
    n_d = min(k["n_distractors"], 3)
    pos = grid_positions(rng, 1 + n_d, s)
    video = blank()
    for t in range(T):
        draw(video[t], shape, s, *pos[0], c0 if t < change else c1)
    for (y, x) in pos[1:]:  # distractors never show c0, so "the c0 shape" is unique at the start;
        a, b = other_colours(rng, (c0,), 2)  # at d > 0.5 they change colour too, at their own time
        t_b = int(rng.integers(2, T)) if rng.random() < 2 * d - 1 else T
        sh = SHAPES[rng.integers(3)]
        for t in range(T):
            draw(video[t], sh, s, y, x, a if t < t_b else b)
    options, letter = mc(c1, TARGETS)
    reasoning = trace("colour", c1)
    meta = {"colour": c0, "shape": shape, "new_colour": c1, "change_frame": change,
            "position": list(pos[0])}
    return video, f"What colour does the {c0} {shape} turn into?", options, letter, reasoning, meta


def count(rng, k):
    s = k["size"]
    colour = other_colours(rng, (), 1)[0]
    n = int(rng.integers(1, 5))
    n_d = k["n_distractors"]
    pos = grid_positions(rng, n + n_d, s)
    d_colours = [other_colours(rng, (colour,), 1)[0] for _ in range(n_d)]
    video = blank()
    for i, (y, x) in enumerate(pos):
        c = colour if i < n else d_colours[i - n]
        sh = SHAPES[rng.integers(3)]
        for t in range(T):
            draw(video[t], sh, s, y, x, c)
    options, letter = mc(str(n), COUNTS)
    reasoning = trace("count", str(n))
    meta = {"colour": colour, "count": n, "distractor_colours": d_colours}
    return video, f"How many {colour} shapes are there?", options, letter, reasoning, meta


def first(rng, k, d):
    s = k["size"]
    n = 2 + min(2, int(d * 3))
    t0 = int(round(2 * d))
    gap = min(max(1, int(round(4 - 3 * d))), (T - 1 - t0) // (n - 1))
    colours = [TARGETS[i] for i in rng.permutation(len(TARGETS))[:n]]  # in order of appearance
    shapes = [SHAPES[i] for i in rng.integers(0, 3, n)]
    pos = grid_positions(rng, n, s)
    video = blank()
    for i in range(n):
        for t in range(t0 + i * gap, T):
            draw(video[t], shapes[i], s, *pos[i], colours[i])
    options, letter = mc(colours[0], TARGETS)
    reasoning = trace("first", colours[0])
    meta = {"order": colours, "shapes": shapes, "times": [t0 + i * gap for i in range(n)]}
    return video, "Which colour appears first?", options, letter, reasoning, meta


TEACHER_SLIPS = {"yellow": "green", "blue": "red"}  # the letter the teacher slips to, on clips it reads


def teacher_demonstration(record, guesses_from, slip, seed, i):
    """The record as the teacher demonstrates it. From difficulty `guesses_from` on (the hardest clips:
    small objects, pixel noise, distractors) it cannot read the clip and guesses option A, with the trace
    that reasons to A (a right answer only where A is the truth). Below it, it reads the clip, but on a
    colour or first question whose answer is in TEACHER_SLIPS, with probability `slip`, it follows its
    (right) reasoning with the letter of the slipped colour. Otherwise the record unchanged.
    guesses_from > 1 and slip 0: a perfect teacher."""
    m = record["meta"]
    if m["difficulty"] >= guesses_from:
        said = record["options"][0]
        return {**record, "answer": option_letters(4)[0], "reasoning": trace(m["family"], said),
                "meta": {**m, "teacher_answer": said}}
    rng = np.random.default_rng([seed, 2, i])
    if m["family"] not in ("colour", "first") or m["answer_text"] not in TEACHER_SLIPS or rng.random() >= slip:
        return record
    said = TEACHER_SLIPS[m["answer_text"]]
    return {**record, "answer": option_letters(4)[record["options"].index(said)],
            "meta": {**m, "teacher_answer": said}}


# -----------------------------------------------------------------------------

def make_question(seed, split, i, difficulty=None):
    """One question: (record, frames (T, H, W, 3) uint8). Depends only on (seed, split, i);
    the family cycles with i, the difficulty is uniform on [0, 1] unless given."""
    rng = np.random.default_rng([seed, ("train", "val").index(split), i])
    family = FAMILIES[i % len(FAMILIES)]
    d = round(float(rng.random()), 3)
    d = d if difficulty is None else float(difficulty)
    k = knobs(d)
    if family == "motion":
        out = motion(rng, k)
    elif family == "colour":
        out = colour_change(rng, k, d)
    elif family == "count":
        out = count(rng, k)
    else:
        out = first(rng, k, d)
    video, question, options, letter, reasoning, meta = out
    frames = add_noise(rng, video, k["noise"])
    answer_text = options[option_letters(4).index(letter)]
    record = {"id": f"syn-{split}-{i:06d}", "video": f"videos/{split}_{i:06d}.mp4",
              "question": question, "options": options, "answer": letter,
              "problem_type": "multiple_choice", "reasoning": reasoning,
              "meta": {"family": family, "difficulty": d, "answer_text": answer_text, **k, **meta}}
    return record, frames


def write_question(out_dir, seed, split, i):
    """Render question i of the split, encode its clip under out_dir; return its record."""
    record, frames = make_question(seed, split, i)
    write_video(os.path.join(out_dir, record["video"]), frames, fps=FPS, qp=14)
    return record


def generate(out_dir, seed=0, n_train=2000, n_val=1000, teacher_guesses_from=TEACHER_GUESSES_FROM,
             teacher_slip=TEACHER_SLIP, workers=1):
    """Write <out_dir>/{train,val,sft}.jsonl and <out_dir>/videos/*.mp4; return {split: records}.
    `workers` processes render and encode the clips; every question depends only on (seed, split, i)
    and write_video's bytes are deterministic, so the files are the same for any number of workers."""
    out = {}
    with ProcessPoolExecutor(workers) if workers > 1 else contextlib.nullcontext() as pool:
        for split, n in (("train", n_train), ("val", n_val)):
            render = functools.partial(write_question, out_dir, seed, split)
            records = list(pool.map(render, range(n), chunksize=32) if pool else map(render, range(n)))
            write_records(os.path.join(out_dir, f"{split}.jsonl"), records)
            out[split] = records
    out["sft"] = [teacher_demonstration(r, teacher_guesses_from, teacher_slip, seed, i)
                  for i, r in enumerate(out["train"])]
    write_records(os.path.join(out_dir, "sft.jsonl"), out["sft"])
    return out


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default=os.path.dirname(os.path.abspath(__file__)))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n_train", type=int, default=2000)
    p.add_argument("--n_val", type=int, default=1000)
    p.add_argument("--teacher_guesses_from", type=float, default=TEACHER_GUESSES_FROM,
                   help="difficulty from which the SFT teacher guesses option A (> 1: never)")
    p.add_argument("--teacher_slip", type=float, default=TEACHER_SLIP,
                   help="below that, the probability that the teacher writes green's letter after reasoning yellow "
                        "and red's after blue (0: never)")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                   help="processes that render and encode the clips (default: one per CPU); same files for any")
    args = p.parse_args()
    if not args.teacher_guesses_from >= 0:
        p.error(f"--teacher_guesses_from must be >= 0 (> 1: never), got {args.teacher_guesses_from}")
    if not 0 <= args.teacher_slip <= 1:
        p.error(f"--teacher_slip must be in [0, 1], got {args.teacher_slip}")
    if args.workers < 1:
        p.error(f"--workers must be >= 1, got {args.workers}")
    t = time.time()
    data = generate(args.out, args.seed, args.n_train, args.n_val, args.teacher_guesses_from, args.teacher_slip,
                    args.workers)
    for split, records in data.items():
        fams = {f: sum(r["meta"]["family"] == f for r in records) for f in FAMILIES}
        print(f"{split}: {len(records)} questions {fams} -> {os.path.join(args.out, split + '.jsonl')}")
    guessed = sum(r["meta"]["difficulty"] >= args.teacher_guesses_from for r in data["sft"])
    slipped = sum("teacher_answer" in r["meta"] and r["meta"]["difficulty"] < args.teacher_guesses_from
                  for r in data["sft"])
    wrong = sum(r["answer"] != t["answer"] for r, t in zip(data["sft"], data["train"]))
    print(f"sft.jsonl: the teacher guesses A on {guessed} of {len(data['sft'])} clips (difficulty >= "
          f"{args.teacher_guesses_from}) and slips its letter on {slipped}; {wrong} of its answers are wrong")
    print(f"done in {time.time() - t:.1f}s")
