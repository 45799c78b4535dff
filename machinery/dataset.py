"""The internal data record, and adapters from Video-R1 and SEED-Bench-R1.

The internal record is one JSON object per line of a .jsonl file:

    {"id": "syn-train-000123",
     "video": "videos/train_000123.mp4",      # relative paths resolve against the JSONL's folder
     "question": "Which way does the red square move?",
     "options": ["left", "right", "up", "down"],  # option texts without "A. "; [] if not MC
     "answer": "B",                           # MC: the letter; numerical: "3.5"; else the text
     "problem_type": "multiple_choice",       # one of PROBLEM_TYPES
     "reasoning": "...",                      # optional, "" if none
     "meta": {...}}                           # optional dict

Bad videos raise VideoError("<path>: <reason>"); load_samples reports and skips them by rule.
"""

import json
import math
import os
import random
import re
import sys
from collections import Counter

from machinery.video import VideoError, read_video, write_video  # noqa: F401 (write_video: re-exported)

PROBLEM_TYPES = ("multiple_choice", "numerical", "free_form", "ocr", "regression")
REQUIRED_KEYS = ("id", "video", "question", "options", "answer", "problem_type")


# -----------------------------------------------------------------------------
# internal records

def option_letters(n):
    """["A", "B", ...] for n options (1 <= n <= 26)."""
    if not 1 <= n <= 26:
        raise ValueError(f"need 1..26 options, got {n}")
    return [chr(ord("A") + i) for i in range(n)]


def format_question(record):
    """The question, then one "A. text" line per option for multiple choice."""
    if record["problem_type"] != "multiple_choice":
        return record["question"]
    lines = [f"{l}. {o}" for l, o in zip(option_letters(len(record["options"])), record["options"])]
    return record["question"] + "\n" + "\n".join(lines)


def check_record(r):
    """Return the reason a record is invalid, or None."""
    if not isinstance(r, dict):
        return f"expected a JSON object, got {type(r).__name__}"
    missing = [k for k in REQUIRED_KEYS if k not in r]
    if missing:
        return f"missing keys {missing} (present: {sorted(r)})"
    for k in ("id", "video", "question", "answer", "problem_type"):
        if not isinstance(r[k], str):
            return f"key {k!r} must be a string, got {type(r[k]).__name__}"
    if r["problem_type"] not in PROBLEM_TYPES:
        return f"problem_type {r['problem_type']!r} is not one of {list(PROBLEM_TYPES)}"
    opts = r["options"]
    if not isinstance(opts, list) or not all(isinstance(o, str) for o in opts):
        return "options must be a list of strings"
    if r["problem_type"] == "multiple_choice":
        if not 2 <= len(opts) <= 26:
            return f"multiple_choice needs 2..26 options, got {len(opts)}"
        repeat = repeated_text(opts, [f"option {letter}" for letter in option_letters(len(opts))])
        if repeat:
            return repeat
        if r["answer"] not in option_letters(len(opts)):
            return (f"answer {r['answer']!r} is not an option letter "
                    f"{option_letters(len(opts))[0]}..{option_letters(len(opts))[-1]}")
    elif not r["answer"].strip():
        return f"{r['problem_type']} answer is empty"
    if r["problem_type"] in ("numerical", "regression") and not is_number(r["answer"]):
        return f"{r['problem_type']} answer {r['answer']!r} is not a number"
    if not isinstance(r.get("reasoning", ""), str):
        return "reasoning must be a string"
    if not isinstance(r.get("meta", {}), dict):
        return "meta must be an object"
    if not isinstance(r.get("meta", {}).get("image", ""), str):
        return "meta.image must be a path (string)"
    return None


def repeated_text(texts, labels):
    """The reason two of `texts` are the same answer (equal once stripped and case-folded) or one is
    empty (an option nobody can pick), or None. labels: what to call each text in the message."""
    seen = {}
    for label, t in zip(labels, texts):
        key = t.strip().casefold()
        if not key:
            return f"{label} is empty"
        if key in seen:
            return f"{label} {t!r} repeats {seen[key]} (the choices must be distinct)"
        seen[key] = f"{label} {t!r}"
    return None


def is_number(text):
    """'3', '-2.5', '1,000' are numbers (what the numerical and regression rewards compare)."""
    try:
        return math.isfinite(float(text.replace(",", "")))
    except ValueError:
        return False


def jsonl_rows(jsonl_path):
    """(line number, JSON object) for each non-blank line; a bad line raises "file:LINE: reason"."""
    with open(jsonl_path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise ValueError(f"{jsonl_path}:{lineno}: not UTF-8 text (byte {raw[e.start]:#04x} at "
                                 f"column {e.start + 1})") from None
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{jsonl_path}:{lineno}: invalid JSON ({e.msg} at column "
                                 f"{e.colno})") from None
            if not isinstance(row, dict):
                raise ValueError(f"{jsonl_path}:{lineno}: expected a JSON object, got {type(row).__name__}")
            yield lineno, row


def load_records(jsonl_path):
    """Validated records from a .jsonl file; video (and meta.image) paths made absolute (relative
    ones resolve against the file's folder); r["where"] = "file.jsonl:LINE" for messages (not
    written back). A bad line raises ValueError("file.jsonl:LINE: reason")."""
    jsonl_path = str(jsonl_path)
    root = os.path.dirname(os.path.abspath(jsonl_path))
    records, seen = [], {}
    for lineno, r in jsonl_rows(jsonl_path):
        reason = check_record(r)
        if reason:
            raise ValueError(f"{jsonl_path}:{lineno}: {reason}")
        if r["id"] in seen:
            raise ValueError(f"{jsonl_path}:{lineno}: duplicate id {r['id']!r} "
                             f"(first on line {seen[r['id']]})")
        seen[r["id"]] = lineno
        r = dict(r, video=os.path.normpath(os.path.join(root, r["video"])), where=f"{jsonl_path}:{lineno}")
        r.setdefault("reasoning", "")
        r["meta"] = dict(r.get("meta", {}))
        if r["meta"].get("image"):
            r["meta"]["image"] = os.path.normpath(os.path.join(root, r["meta"]["image"]))
        records.append(r)
    return records


def read_records_or_exit(path):
    """Records of a JSONL file, or a one-line error naming the file (and line) and the problem."""
    try:
        records = load_records(path)
    except (OSError, ValueError) as e:
        raise SystemExit(f"cannot read data: {e}")
    if not records:
        raise SystemExit(f"cannot read data: {path}: no records (an empty split)")
    return records


def write_records(path, records):
    """Write records as JSONL (validated first; keys in a fixed order)."""
    lines = []
    for i, r in enumerate(records):
        reason = check_record(r)
        if reason:
            raise ValueError(f"{path}: record {i} ({r.get('id') if isinstance(r, dict) else r!r}): "
                             f"{reason}")
        out = {k: r[k] for k in REQUIRED_KEYS}
        out["reasoning"] = r.get("reasoning", "")
        out["meta"] = r.get("meta", {})
        lines.append(json.dumps(out, ensure_ascii=False) + "\n")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(lines)


def load_samples(records, num_frames=8, max_pixels=112 * 112, log=print, fps=None,
                 size_multiple=28, skipped=None):
    """Each record plus "frames" ((T, H, W, 3) uint8), their "times" ((T,) seconds, from
    video.read_video) and, when meta["image"] names one, "image"
    ((H, W, 3) uint8, resized by the frames' pixel budget). A record whose video or image fails to
    read is logged one line each ("skip file:LINE (id): path: reason") and skipped; its reason is
    counted into `skipped` (a dict) when given; a summary line "skipped K of N records (...)" always
    ends the call. When every record is skipped the split is unusable: SystemExit naming the file.
    Only VideoError is caught: anything else is a bug and propagates."""
    samples, reasons = [], Counter()
    for r in records:
        try:
            sample = read_sample(r, num_frames, max_pixels, fps, size_multiple)
        except VideoError as e:
            reasons[e.kind] += 1
            log(f"skip {r['where'] + ' (' + r['id'] + ')' if 'where' in r else r['id']}: {e}")
            continue
        samples.append(sample)
    detail = ", ".join(f"{k}: {v}" for k, v in sorted(reasons.items())) or "none bad"
    log(f"skipped {len(records) - len(samples)} of {len(records)} records ({detail})")
    if skipped is not None:
        for k, v in reasons.items():
            skipped[k] = skipped.get(k, 0) + v
    if records and not samples:
        source = records[0].get("where", records[0]["id"]).rsplit(":", 1)[0]
        raise SystemExit(f"{source}: no usable records: all {len(records)} skipped ({detail})")
    return samples


def read_sample(record, num_frames=8, max_pixels=112 * 112, fps=None, size_multiple=28):
    """The record plus its decoded "frames" and their "times", and, when meta["image"] names one, its "image"
    (SEED-Bench-R1's current observation; not for rows whose video is that image already).
    Raises VideoError for a video or image that cannot be read."""
    frames, times = read_video(record["video"], num_frames=num_frames, fps=fps, max_pixels=max_pixels,
                               size_multiple=size_multiple)
    sample = dict(record, frames=frames, times=times)
    meta = record.get("meta", {})
    if meta.get("image") and not meta.get("no_video"):
        sample["image"] = read_image(meta["image"], max_pixels, size_multiple)
    return sample


def read_image(path, max_pixels=112 * 112, size_multiple=28):
    """(H, W, 3) uint8: an image read like one video frame (PyAV decodes images as one-frame videos),
    resized by the same rule, H * W <= max_pixels, multiples of size_multiple."""
    frames, _ = read_video(path, num_frames=1, max_pixels=max_pixels, size_multiple=size_multiple)
    return frames[0]


# -----------------------------------------------------------------------------
# adapters

VIDEO_R1_TYPES = {"multiple choice": "multiple_choice", "numerical": "numerical",
                  "OCR": "ocr", "free-form": "free_form", "regression": "regression"}


def _missing_keys(row, required):
    """The reason a row lacks required keys, or None."""
    missing = [k for k in required if k not in row]
    return f"missing keys {missing}; present keys {sorted(row)}" if missing else None


def _not_text(row, keys):
    """The reason one of `keys` is not a non-empty string, or None."""
    for k in keys:
        if not isinstance(row[k], str) or not row[k].strip():
            return f"{k} must be a non-empty string, got {row[k]!r}"
    return None


def _strip_tag(text, tag):
    m = re.search(rf"<{tag}>(.*?)</{tag}>", text, re.S)
    return (m.group(1) if m else text).strip()


def _read_json(path):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}:{e.lineno}: invalid JSON ({e.msg})") from None
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 text (byte {e.object[e.start]:#04x} at offset {e.start})") from None


def _keep_or_skip(where, reason, skipped):
    """Without a `skipped` list the first bad item is an error; with one it is noted there and skipped."""
    if skipped is None:
        raise ValueError(f"{where}: {reason}")
    skipped.append(f"{where}: {reason}")


def convert_video_r1(json_path, video_root, skipped=None):
    """Video-R1 annotations (one JSON list) -> internal records.

    Expected fields per item: problem, problem_type ("multiple choice", "numerical", "OCR",
    "free-form", "regression"), solution ("<answer>B</answer>"), path (video path relative to
    video_root), all strings; options (["A. ...", "B. ...", ...], a list of strings, required for
    multiple choice); optional process ("<think>...</think>", kept as reasoning without the tags),
    data_type, data_source, problem_id (kept in meta). The "A. " prefixes are stripped from options.
    A bad item raises ValueError("file: item I: reason"), or, given a list `skipped`, is skipped and
    its message appended there. A file that is not UTF-8 JSON holding a list is always an error.
    """
    json_path = str(json_path)
    items = _read_json(json_path)
    if not isinstance(items, list):
        raise ValueError(f"{json_path}: expected a JSON list of items, got {type(items).__name__}")
    records = []
    for i, it in enumerate(items):
        r = _video_r1_record(it, i, str(video_root))
        if isinstance(r, str):
            _keep_or_skip(f"{json_path}: item {i}", r, skipped)
        else:
            records.append(r)
    _check_unique_ids(json_path, records)
    return records


def _video_r1_record(it, i, video_root):
    """The internal record of item i, or the reason it is bad (a string)."""
    if not isinstance(it, dict):
        return f"expected a JSON object, got {type(it).__name__}"
    required = ["problem", "problem_type", "solution", "path"]
    reason = _missing_keys(it, required) or _not_text(it, required)
    if reason:
        return reason
    if it["problem_type"] not in VIDEO_R1_TYPES:
        return f"problem_type {it['problem_type']!r} is not one of {list(VIDEO_R1_TYPES)}"
    ptype = VIDEO_R1_TYPES[it["problem_type"]]
    options = []
    if ptype == "multiple_choice":
        if "options" not in it:
            return _missing_keys(it, required + ["options"])
        if not isinstance(it["options"], list) or not all(isinstance(o, str) for o in it["options"]):
            return f"options must be a list of strings, got {it['options']!r}"
        if not 2 <= len(it["options"]) <= 26:
            return f"multiple choice needs 2..26 options, got {len(it['options'])}"
        for j, o in enumerate(it["options"]):
            m = re.match(r"\s*([A-Z])\s*[.)]\s*(.*)", o, re.S)
            if m and m.group(1) != option_letters(j + 1)[-1]:
                return f"option {j} {o!r} should start with {option_letters(j + 1)[-1]!r}"
            options.append(m.group(2).strip() if m else o.strip())
    if not isinstance(it.get("process", ""), str):
        return f"process must be a string, got {it['process']!r}"
    meta = {k: it[k] for k in ("data_type", "data_source", "problem_id") if k in it}
    r = {"id": f"video_r1-{it.get('problem_id', i)}",
         "video": os.path.abspath(os.path.join(video_root, it["path"])),
         "question": it["problem"].strip(), "options": options,
         "answer": _strip_tag(it["solution"], "answer"), "problem_type": ptype,
         "reasoning": _strip_tag(it.get("process", ""), "think"), "meta": meta}
    return check_record(r) or r


SEEDBENCH_COMMON = ["sample_id", "question", "video_source", "video_basename"]
SEEDBENCH_TRAIN = ["answer", "negative_answers"]
SEEDBENCH_VAL = ["choice_a", "choice_b", "choice_c", "choice_d", "golden_choice_idx"]


def convert_seedbench_r1(jsonl_path, video_root, seed=0, skipped=None):
    """SEED-Bench-R1 annotations (jsonl) -> internal multiple-choice records.

    video_root is the data root holding videos/<video_source>/<video_basename> and
    images/<video_source>/<current_observation_basename>.

    Expected fields, every row: sample_id, question, video_source, video_basename.
    Training rows (training_6k.jsonl): answer (the correct option text) and negative_answers
    (a list of >= 3 wrong texts); three negatives are drawn with random.Random(f"{seed}:{sample_id}")
    and shuffled with the answer into options A-D.
    Validation rows (validation_L1/L2/L3.jsonl): choice_a, choice_b, choice_c, choice_d and
    golden_choice_idx (the letter).
    Optional, kept in meta: current_observation_basename (as meta["image"], full path),
    task_progress_metadata, task_goal, task_level, video_id, scenario. Rows whose
    task_progress_metadata is an empty list have no video clip: their "video" is the current
    observation image (PyAV reads it as a one-frame video) and meta["no_video"] is True.
    A bad row raises ValueError("file:LINE: reason", e.g. missing keys [...]; present keys [...]),
    or, given a list `skipped`, is skipped and its message appended there. A line that is not
    UTF-8 JSON is always an error.
    """
    jsonl_path = str(jsonl_path)
    records = []
    for lineno, row in jsonl_rows(jsonl_path):
        r = _seedbench_record(row, str(video_root), seed)
        if isinstance(r, str):
            _keep_or_skip(f"{jsonl_path}:{lineno}", r, skipped)
        else:
            records.append(r)
    _check_unique_ids(jsonl_path, records)
    return records


def _seedbench_record(row, root, seed):
    """The internal record of one row, or the reason it is bad (a string)."""
    if "negative_answers" in row:
        required = SEEDBENCH_COMMON + SEEDBENCH_TRAIN
    elif any(k in row for k in SEEDBENCH_VAL):
        required = SEEDBENCH_COMMON + SEEDBENCH_VAL
    else:  # neither form: name both so the user sees what was expected
        required = SEEDBENCH_COMMON + SEEDBENCH_TRAIN + SEEDBENCH_VAL
    reason = _missing_keys(row, required) or _not_text(row, ["question", "video_source", "video_basename"])
    if reason:
        return reason
    sid = str(row["sample_id"])
    if "negative_answers" in row:
        negs = row["negative_answers"]
        if not isinstance(negs, list) or len(negs) < 3:
            return f"negative_answers must be a list of >= 3 texts, got {negs!r}"
        bad = [n for n in negs if not isinstance(n, str) or not n.strip()]
        reason = _not_text(row, ["answer"]) or (bad and f"negative_answers must be non-empty strings, got {bad[0]!r}")
        if reason:
            return reason
        labels = ["answer", *(f"negative_answers[{i}]" for i in range(len(negs)))]
        repeat = repeated_text([row["answer"], *negs], labels)
        if repeat:
            return repeat
        rng = random.Random(f"{seed}:{sid}")
        options = [row["answer"]] + rng.sample(negs, 3)
        rng.shuffle(options)
        answer = option_letters(4)[options.index(row["answer"])]
    else:
        reason = _not_text(row, ["choice_a", "choice_b", "choice_c", "choice_d", "golden_choice_idx"])
        if reason:
            return reason
        options = [row[k] for k in ("choice_a", "choice_b", "choice_c", "choice_d")]
        answer = row["golden_choice_idx"].strip()
    options = [str(o).strip() for o in options]
    meta = {"source": "seedbench_r1", "sample_id": row["sample_id"],
            "video_source": row["video_source"]}
    for k in ("task_goal", "task_level", "video_id", "scenario", "task_progress_metadata"):
        if k in row:
            meta[k] = row[k]
    video = os.path.join(root, "videos", row["video_source"], row["video_basename"])
    image = row.get("current_observation_basename")
    if image is not None and not isinstance(image, str):
        return f"current_observation_basename must be a string, got {image!r}"
    if image:
        meta["image"] = os.path.abspath(os.path.join(root, "images", row["video_source"], image))
        if row.get("task_progress_metadata") == []:
            video, meta["no_video"] = meta["image"], True
    r = {"id": f"seedbench_r1-{sid}", "video": os.path.abspath(video),
         "question": row["question"].strip(), "options": options, "answer": answer,
         "problem_type": "multiple_choice", "reasoning": "", "meta": meta}
    return check_record(r) or r


def report_skips(path, skipped, n_kept, show=20):
    """Print the first `show` skipped items and their count; no item kept at all is an error."""
    for message in skipped[:show]:
        print(f"skipped {message}", file=sys.stderr)
    if len(skipped) > show:
        print(f"... and {len(skipped) - show} more", file=sys.stderr)
    if skipped:
        print(f"{path}: skipped {len(skipped)} of {len(skipped) + n_kept} items", file=sys.stderr)
    if not n_kept:
        raise SystemExit(f"{path}: no usable item ({len(skipped)} skipped)")


def converter_path_problems(annotations, video_root, out):
    """What is wrong with a converter's paths, checked before anything is read or written: every
    problem in one message, or None."""
    from machinery.configurator import writable_dir
    problems = []
    if not os.path.isfile(annotations):
        problems.append(f"--annotations {annotations}: " + ("is a directory, not a file" if os.path.isdir(annotations)
                                                            else "no such file"))
    if not os.path.isdir(video_root):
        problems.append(f"--video_root {video_root}: " + ("is a file, not a folder" if os.path.exists(video_root)
                                                         else "no such folder"))
    if os.path.isdir(out):
        problems.append(f"--out {out}: is a directory (expected a .jsonl file to write)")
    elif not writable_dir(os.path.dirname(os.path.abspath(out))):
        problems.append(f"--out {out}: cannot create or write to its folder")
    return "; ".join(problems) or None


def report_missing_videos(records, video_root, show=3):
    """Say how many records point at a video (or image) that is not there: they will be skipped when the
    records are read. Returns that count."""
    missing = [r["video"] for r in records if not os.path.isfile(r["video"])]
    if missing:
        print(f"warning: {len(missing)} of {len(records)} records name a video that is not under --video_root "
              f"{video_root} (first: {', '.join(missing[:show])}); they are kept, and skipped by the scripts "
              "that read them until the files are there", file=sys.stderr)
    return len(missing)


def _check_unique_ids(path, records):
    ids = Counter(r["id"] for r in records)
    dup = [k for k, v in ids.items() if v > 1]
    if dup:
        raise ValueError(f"{path}: duplicate ids {dup[:5]}")


def draw_prompts(records, rng, n, skipped, video, too_long=None, data_name="train_data"):
    """n records with decoded videos; a record whose video fails to decode, or whose prompt breaks the
    length rule (too_long(sample): the reason, or None), is reported and skipped (skipped: id -> reason,
    shared across steps). video: read_sample's settings (num_frames, max_pixels, fps). When every record
    is skipped the run cannot go on: SystemExit naming data_name with the counts."""
    picked = []
    while len(picked) < n:
        record = records[rng.randrange(len(records))]
        if record["id"] in skipped:
            continue
        problem, kind = too_long(record) if too_long else None, "prompt too long"     # its text, before decoding
        if problem is None:
            try:
                sample = read_sample(record, **video)
                problem = too_long(sample) if too_long else None
            except VideoError as e:
                problem, kind = str(e), e.kind
        if problem is None:
            picked.append(sample)
            continue
        skipped[record["id"]] = kind
        print(f"skipping {record.get('where')} ({record['id']}): {problem} ({len(skipped)} skipped so far)")
        if len(skipped) == len(records):
            counts = ", ".join(f"{k}: {v}" for k, v in sorted(Counter(skipped.values()).items()))
            raise SystemExit(f"{data_name}: no usable records: all {len(records)} skipped ({counts})")
    return picked


def prompts_of_step(records, seed, step, rank, n, skipped, video, too_long=None, data_name="train_data"):
    """The prompts of one step, drawn with a random stream of their own (seed, rank, step): the draw
    runs ahead in a background thread without moving any state a checkpoint saves, and a resumed run
    draws the same prompts."""
    return draw_prompts(records, random.Random(f"{seed}:{rank}:{step}"), n, skipped, video, too_long, data_name)
