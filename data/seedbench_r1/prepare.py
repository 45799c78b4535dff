"""Convert SEED-Bench-R1 annotations (jsonl) to our JSONL records.

    python data/seedbench_r1/prepare.py --annotations SEED-Bench-R1/annotations/training_6k.jsonl \
        --video_root SEED-Bench-R1 --out data/seedbench_r1/train.jsonl [--seed 0]

video_root is the data root holding videos/<video_source>/<video_basename> and
images/<video_source>/<current_observation_basename>. Training rows get four options: the answer
and three negatives drawn with --seed; validation rows keep choice_a..choice_d. See
dataset.convert_seedbench_r1 for the field names.

The paths are checked before anything is read: --annotations a file, --video_root a folder, --out
writable. A bad item (a missing, null or mistyped field, an answer that is not an option letter or
not a number, too many options, options that repeat, negatives that repeat the answer or each other)
is skipped and named with its file and line; the count is printed at the end, and so is the number
of records whose video is not under --video_root (kept: the scripts that read them skip them).
A line that is not UTF-8 JSON, or a file with no good row at all, is an error.
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
from machinery.dataset import (converter_path_problems, convert_seedbench_r1, report_missing_videos, report_skips,  # noqa: E402
                     write_records)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--annotations", required=True, help="SEED-Bench-R1 .jsonl")
    p.add_argument("--video_root", required=True, help="data root with videos/ and images/")
    p.add_argument("--out", required=True, help="output .jsonl")
    p.add_argument("--seed", type=int, default=0, help="draws the three negatives per training row")
    args = p.parse_args(argv)
    problem = converter_path_problems(args.annotations, args.video_root, args.out)
    if problem:
        raise SystemExit(f"cannot convert: {problem}")
    skipped = []
    try:
        records = convert_seedbench_r1(args.annotations, args.video_root, seed=args.seed, skipped=skipped)
    except (OSError, ValueError) as e:
        raise SystemExit(f"cannot convert: {e}")
    report_skips(args.annotations, skipped, len(records))
    report_missing_videos(records, args.video_root)
    try:
        write_records(args.out, records)
    except OSError as e:
        raise SystemExit(f"cannot convert: --out {args.out}: cannot write ({e.strerror})")
    n_img = sum(r["meta"].get("no_video", False) for r in records)
    print(f"wrote {len(records)} records to {args.out} ({n_img} without a clip use the "
          f"current-observation image)")


if __name__ == "__main__":
    main()
