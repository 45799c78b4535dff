"""The synthetic benchmark: determinism, and every answer checked against the decoded pixels by a
checker that only reads the question text and the frames (not the generator's meta)."""

import json
import re
import subprocess
import sys
from collections import Counter, deque

import numpy as np
import pytest

from data.synthetic.prepare import (BACKGROUND, FAMILIES, TEACHER_SLIPS, generate, make_question, teacher_demonstration,
                                   trace)
from machinery.dataset import load_records, read_video, write_video

CODES = {(1, 0, 0): "red", (0, 1, 0): "green", (0, 0, 1): "blue", (1, 1, 0): "yellow",
         (0, 1, 1): "cyan", (1, 0, 1): "magenta", (1, 1, 1): "white"}
# colour of a pixel = the nearest of the palette's colours and the grey background (RGB distance)
NAMES = ["bg", *CODES.values()]
PALETTE = np.array([BACKGROUND] + [[255 * b for b in bits] for bits in CODES], float)  # (8, 3)
MIN_AREA = 20  # smallest object (10 px triangle) keeps > 30 px after cleaning; a noise block <= 12


def labels(pixels):
    """Index into NAMES of the nearest palette entry, for (..., 3) uint8 pixels."""
    d = ((pixels[..., None, :].astype(float) - PALETTE) ** 2).sum(-1)
    return d.argmin(-1)


def pixel_colour(px):
    return NAMES[int(labels(px))]


def colour_mask(frame, colour):
    """Pixels of one palette colour, cleaned by a 3x3 majority vote. frame (H, W, 3) uint8."""
    m = labels(frame) == NAMES.index(colour)
    p = np.pad(m, 1).astype(int)
    votes = sum(p[1 + dy:p.shape[0] - 1 + dy, 1 + dx:p.shape[1] - 1 + dx]
                for dy in (-1, 0, 1) for dx in (-1, 0, 1))
    return m & (votes >= 5)


def components(mask):
    """4-connected components of a bool mask, as lists of (y, x), by breadth-first search."""
    seen = np.zeros_like(mask)
    out = []
    for y0, x0 in zip(*np.nonzero(mask)):
        if seen[y0, x0]:
            continue
        seen[y0, x0] = True
        comp, queue = [], deque([(y0, x0)])
        while queue:
            y, x = queue.popleft()
            comp.append((y, x))
            for ny, nx in ((y + 1, x), (y - 1, x), (y, x + 1), (y, x - 1)):
                if 0 <= ny < mask.shape[0] and 0 <= nx < mask.shape[1] and mask[ny, nx] \
                        and not seen[ny, nx]:
                    seen[ny, nx] = True
                    queue.append((ny, nx))
        out.append(comp)
    return [c for c in out if len(c) >= MIN_AREA]


def largest(frame, colour):
    comps = components(colour_mask(frame, colour))
    return max(comps, key=len) if comps else None


def solve(question, options, frames):
    """Answer a question from its decoded frames (T, H, W, 3); returns the option text."""
    words = question.rstrip("?").split()
    if question.startswith("Which way"):  # Which way does the <colour> <shape> move?
        a, b = largest(frames[0], words[4]), largest(frames[-1], words[4])
        dy, dx = np.mean(b, 0) - np.mean(a, 0)
        assert max(abs(dy), abs(dx)) >= 10, (dy, dx)
        return ("right" if dx > 0 else "left") if abs(dx) > abs(dy) else ("down" if dy > 0 else "up")
    if question.startswith("What colour"):  # What colour does the <colour> <shape> turn into?
        assert len(components(colour_mask(frames[0], words[4]))) == 1
        ys, xs = np.array(largest(frames[0], words[4])).T
        seen = Counter(pixel_colour(px) for px in frames[-1][ys, xs])
        seen.pop("bg", None)
        return seen.most_common(1)[0][0]
    if question.startswith("How many"):  # How many <colour> shapes are there? (static scene)
        median = np.median(frames, axis=0).astype(np.uint8)
        return str(len(components(colour_mask(median, words[2]))))
    if question == "Which colour appears first?":
        onset = {}
        for c in options:
            onset[c] = next((t for t, f in enumerate(frames) if largest(f, c)), None)
        present = {c: t for c, t in onset.items() if t is not None}
        best = min(present.values())
        firsts = [c for c, t in present.items() if t == best]
        assert len(firsts) == 1, onset
        return firsts[0]
    raise AssertionError(f"no checker for {question!r}")


def roundtrip(tmp_path, name, frames):
    path = tmp_path / f"{name}.mp4"
    write_video(path, frames, qp=14)
    return read_video(path, num_frames=8)[0]


def test_deterministic_per_seed(tmp_path):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    generate(a, seed=3, n_train=12, n_val=6)
    generate(b, seed=3, n_train=12, n_val=6, workers=2)    # the same files from two processes
    generate(c, seed=4, n_train=12, n_val=6)
    for split in ("train", "val", "sft"):
        assert (a / f"{split}.jsonl").read_bytes() == (b / f"{split}.jsonl").read_bytes()
    videos = sorted(p.name for p in (a / "videos").iterdir())
    assert len(videos) == 18 and videos == sorted(p.name for p in (b / "videos").iterdir())
    assert all((a / "videos" / v).read_bytes() == (b / "videos" / v).read_bytes() for v in videos)
    for split in ("train", "val"):
        assert (a / f"{split}.jsonl").read_bytes() != (c / f"{split}.jsonl").read_bytes()
    ra, rb = load_records(a / "train.jsonl"), load_records(b / "train.jsonl")
    for x, y in zip(ra + load_records(a / "val.jsonl"), rb + load_records(b / "val.jsonl")):
        assert np.array_equal(read_video(x["video"])[0], read_video(y["video"])[0])
    assert len(ra) == 12 and ra[0]["video"].startswith(str(a))
    # train and val draw from different streams
    assert ra[0]["question"] != load_records(a / "val.jsonl")[0]["question"] or \
        ra[0]["meta"]["difficulty"] != load_records(a / "val.jsonl")[0]["meta"]["difficulty"]


def test_generated_videos_answer_their_questions(tmp_path):
    """Decode every generated video and re-derive the answer from pixels."""
    generate(tmp_path, seed=0, n_train=32, n_val=8)
    records = load_records(tmp_path / "train.jsonl") + load_records(tmp_path / "val.jsonl")
    for r in records:
        frames, _ = read_video(r["video"], num_frames=8)
        assert frames.shape == (8, 112, 112, 3)
        truth = r["options"]["ABCD".index(r["answer"])]
        assert solve(r["question"], r["options"], frames) == truth, (r["id"], r["meta"])


@pytest.mark.parametrize("family", FAMILIES)
def test_answerable_at_every_difficulty(tmp_path, family):
    i0 = FAMILIES.index(family)
    for d in (0.0, 0.5, 0.8, 1.0):
        for rep in range(4):
            i = i0 + 4 * rep
            r, frames = make_question(7, "train", i, difficulty=d)
            assert r["meta"]["family"] == family and r["meta"]["difficulty"] == d
            video = roundtrip(tmp_path, f"{family}_{d}_{rep}", frames)
            truth = r["options"]["ABCD".index(r["answer"])]
            assert solve(r["question"], r["options"], video) == truth, (d, r["meta"])


def test_difficulty_changes_the_pixels():
    """Objects shrink, motion shortens, noise grows and distractors appear as d rises."""
    def stats(d, i):
        r, f = make_question(1, "train", i, difficulty=d)
        bg = f[0][np.all(np.abs(f[0].astype(float) - BACKGROUND) < 60, axis=-1)].astype(float)
        n_colours = len({pixel_colour(px) for px in f.reshape(-1, 3)} - {"bg"})
        return r, bg.std(axis=0).max(), n_colours
    easy = [stats(0.05, i) for i in range(0, 16, 4)]  # motion questions
    hard = [stats(0.95, i) for i in range(0, 16, 4)]
    for (re_, se, ne), (rh, sh, nh) in zip(easy, hard):
        travel = lambda r: np.abs(np.subtract(r["meta"]["end"], r["meta"]["start"])).max()
        assert travel(re_) >= 70 and travel(rh) <= 20
        assert re_["meta"]["size"] >= 26 and rh["meta"]["size"] <= 12
        assert se < 1 and sh > 10      # background noise std, measured on pixels
        assert ne == 1 and nh >= 3     # colours on screen: target only vs target + distractors


# what each reasoning step leaves possible, written out by hand (colours: warm red/yellow, bright yellow/green)
STEP_OPTIONS = {"It moves sideways.": {"left", "right"}, "It moves vertically.": {"up", "down"},
                "Its x grows.": {"right"}, "Its x shrinks.": {"left"}, "Its y grows.": {"down"}, "Its y shrinks.": {"up"},
                "It turns warm.": {"red", "yellow"}, "It turns cool.": {"green", "blue"},
                "The first colour is warm.": {"red", "yellow"}, "The first colour is cool.": {"green", "blue"},
                "It is the brighter of the two.": {"yellow", "green"}, "It is the darker of the two.": {"red", "blue"},
                "There are fewer than three.": {"1", "2"}, "There are more than two.": {"3", "4"},
                "Their number is odd.": {"1", "3"}, "Their number is even.": {"2", "4"}}


def test_records_are_balanced_and_regular():
    recs = [make_question(0, "train", i)[0] for i in range(400)]
    letters = Counter(r["answer"] for r in recs)
    assert set(letters) == set("ABCD") and min(letters.values()) >= 70, letters
    assert Counter(r["meta"]["family"] for r in recs) == {f: 100 for f in FAMILIES}
    ds = np.array([r["meta"]["difficulty"] for r in recs])
    assert ds.min() < 0.05 and ds.max() > 0.95 and 0.4 < ds.mean() < 0.6
    for r in recs:
        truth = r["options"]["ABCD".index(r["answer"])]
        assert r["meta"]["answer_text"] == truth
        assert len(r["options"]) == 4 == len(set(r["options"]))
        assert not re.search(r"\b[A-D]\b", r["reasoning"]), r["reasoning"]  # no letter leak
        first, second, last = re.split(r"(?<=\.) ", r["reasoning"])
        allowed = STEP_OPTIONS[first]
        assert truth in allowed and len(allowed) == 2, r["reasoning"]      # step 1: four options -> two
        assert allowed & STEP_OPTIONS[second] == {truth}, r["reasoning"]   # step 2: two -> the answer
        assert truth not in re.findall(r"\w+", first + " " + second)       # named only by the last step
        assert last.endswith(f" {truth}.") or last.endswith(f" {truth} appears first.")
        assert truth not in r["question"].rstrip("?").split()  # the text alone does not tell


def test_cli_writes_files(tmp_path):
    out = subprocess.run([sys.executable, "data/synthetic/prepare.py", "--out", str(tmp_path),
                          "--n_train", "4", "--n_val", "2", "--seed", "5"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    lines = (tmp_path / "train.jsonl").read_text().splitlines()
    assert len(lines) == 4 and len((tmp_path / "val.jsonl").read_text().splitlines()) == 2
    assert (tmp_path / json.loads(lines[0])["video"]).stat().st_size > 0
    for line, taught in zip(lines, (tmp_path / "sft.jsonl").read_text().splitlines()):  # the default teacher
        if json.loads(line)["meta"]["difficulty"] >= 0.667:
            assert json.loads(taught)["answer"] == "A" and "teacher_answer" in taught
    bad = subprocess.run([sys.executable, "data/synthetic/prepare.py", "--out", str(tmp_path),
                          "--teacher_guesses_from", "-1"], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "--teacher_guesses_from must be >= 0 (> 1: never), got -1.0" in bad.stderr
    bad = subprocess.run([sys.executable, "data/synthetic/prepare.py", "--out", str(tmp_path), "--teacher_slip", "1.5"],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "--teacher_slip must be in [0, 1], got 1.5" in bad.stderr


def test_teacher_guesses_a_on_the_hardest_clips_only(tmp_path):
    """Below the threshold a demonstration is the ground truth; from it on, the teacher answers A with the
    trace that reasons to A's option (right only where A is the truth). A threshold above 1 is a perfect
    teacher; train.jsonl never changes."""
    generate(tmp_path / "perfect", seed=2, n_train=64, n_val=2, teacher_guesses_from=1.5, teacher_slip=0.0)
    data = generate(tmp_path / "t", seed=2, n_train=64, n_val=2, teacher_guesses_from=0.5, teacher_slip=0.0)
    assert (tmp_path / "perfect" / "sft.jsonl").read_text() == (tmp_path / "perfect" / "train.jsonl").read_text()
    assert (tmp_path / "t" / "train.jsonl").read_text() == (tmp_path / "perfect" / "train.jsonl").read_text()
    sft = load_records(tmp_path / "t" / "sft.jsonl")
    n_wrong = 0
    for truth, taught in zip(data["train"], sft):
        m = truth["meta"]
        if m["difficulty"] < 0.5:
            assert taught["answer"] == truth["answer"] and taught["reasoning"] == truth["reasoning"]
            assert "teacher_answer" not in taught["meta"]
            continue
        said = taught["options"][0]
        assert taught["answer"] == "A" and taught["meta"]["teacher_answer"] == said
        first, second, last = steps(taught["reasoning"])
        assert STEP_OPTIONS[first] & STEP_OPTIONS[second] == {said} and said in last   # a trace that reasons to A
        assert (taught["reasoning"] == truth["reasoning"]) == (truth["answer"] == "A")
        n_wrong += truth["answer"] != "A"
    assert n_wrong >= 15  # 64 questions, difficulty uniform on [0, 1], answers uniform over A-D


def steps(reasoning):
    return re.split(r"(?<=\.) ", reasoning)


def test_trace_is_the_records_reasoning_and_reasons_to_any_option():
    """trace(family, answer) is what make_question writes, and for every option it narrows to that option."""
    for i in range(8):
        r, _ = make_question(3, "train", i)
        assert trace(r["meta"]["family"], r["meta"]["answer_text"]) == r["reasoning"]
        for option in r["options"]:
            first, second, last = steps(trace(r["meta"]["family"], option))
            assert STEP_OPTIONS[first] & STEP_OPTIONS[second] == {option} and option in last
    record = {"answer": "D", "options": ["red", "green", "blue", "yellow"], "reasoning": trace("colour", "yellow"),
              "meta": {"family": "colour", "answer_text": "yellow", "difficulty": 0.7}}
    assert teacher_demonstration(record, 0.7, 0.0, 0, 0)["reasoning"] == trace("colour", "red")
    assert teacher_demonstration(record, 0.71, 0.0, 0, 0) is record


def test_teacher_slips_only_where_told(tmp_path):
    """teacher_slip=1 (no guessing): every colour/first question answered yellow or blue gets the slipped
    letter after the right reasoning; every other record, and train.jsonl, is the ground truth."""
    generate(tmp_path / "t0", seed=2, n_train=64, n_val=2, teacher_guesses_from=1.5, teacher_slip=0.0)
    data = generate(tmp_path / "t1", seed=2, n_train=64, n_val=2, teacher_guesses_from=1.5, teacher_slip=1.0)
    assert (tmp_path / "t0" / "sft.jsonl").read_text() == (tmp_path / "t0" / "train.jsonl").read_text()
    assert (tmp_path / "t1" / "train.jsonl").read_text() == (tmp_path / "t0" / "train.jsonl").read_text()
    sft = load_records(tmp_path / "t1" / "sft.jsonl")
    n_slipped = 0
    for truth, taught in zip(data["train"], sft):
        m = truth["meta"]
        if not (m["family"] in ("colour", "first") and m["answer_text"] in TEACHER_SLIPS):
            assert taught["answer"] == truth["answer"] and taught["reasoning"] == truth["reasoning"]
            continue
        n_slipped += 1
        said = TEACHER_SLIPS[m["answer_text"]]
        assert taught["options"][ord(taught["answer"]) - ord("A")] == said != m["answer_text"]
        assert taught["reasoning"] == truth["reasoning"] and m["answer_text"] in taught["reasoning"]
        assert taught["meta"]["teacher_answer"] == said
    assert n_slipped >= 8  # 32 colour/first questions, about half answered yellow or blue


def test_teacher_slip_rate_and_the_guess_takes_precedence():
    """The slip happens with the probability asked for, independently per question, on clips below the
    guessing threshold; from the threshold on the teacher guesses A whatever the slip."""
    record = {"reasoning": trace("colour", "yellow"), "answer": "D", "options": ["red", "green", "blue", "yellow"],
              "meta": {"family": "colour", "answer_text": "yellow", "difficulty": 0.5}}
    slipped = [teacher_demonstration(record, 0.667, 0.6, seed=0, i=i)["answer"] == "B" for i in range(4000)]
    assert abs(np.mean(slipped) - 0.6) < 0.03                  # 3.9 standard errors
    assert abs(np.mean(slipped[::2]) - np.mean(slipped[1::2])) < 0.05
    hard = {**record, "meta": {**record["meta"], "difficulty": 0.8}}
    assert all(teacher_demonstration(hard, 0.667, 0.6, 0, i)["answer"] == "A" for i in range(50))
