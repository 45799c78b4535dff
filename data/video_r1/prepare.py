"""Convert Video-R1 annotations (one JSON list, e.g. Video-R1-260k.json) to our JSONL records.

    python data/video_r1/prepare.py --annotations Video-R1-260k.json --video_root /data/Video-R1 \
        --out data/video_r1/train.jsonl

Video paths in the output are absolute (video_root joined with each item's "path"). Items whose
data_type is "image" are kept: PyAV reads an image as a one-frame video.

The paths are checked before anything is read: --annotations a file, --video_root a folder, --out
writable. A bad item (a missing, null or mistyped field, an answer that is not an option letter or
not a number, too many options, options that repeat) is skipped and named with its file and index;
the count is printed at the end, and so is the number of records whose video is not under
--video_root (kept: the scripts that read them skip them).
A file that is not UTF-8 JSON, or with no good item at all, is an error.
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
from machinery.dataset import (converter_path_problems, convert_video_r1, report_missing_videos, report_skips,  # noqa: E402
                     write_records)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--annotations", required=True, help="Video-R1 JSON list")
    p.add_argument("--video_root", required=True, help="folder the items' paths are relative to")
    p.add_argument("--out", required=True, help="output .jsonl")
    args = p.parse_args(argv)
    problem = converter_path_problems(args.annotations, args.video_root, args.out)
    if problem:
        raise SystemExit(f"cannot convert: {problem}")
    skipped = []
    try:
        records = convert_video_r1(args.annotations, args.video_root, skipped=skipped)
    except (OSError, ValueError) as e:
        raise SystemExit(f"cannot convert: {e}")
    report_skips(args.annotations, skipped, len(records))
    report_missing_videos(records, args.video_root)
    try:
        write_records(args.out, records)
    except OSError as e:
        raise SystemExit(f"cannot convert: --out {args.out}: cannot write ({e.strerror})")
    print(f"wrote {len(records)} records to {args.out}")


if __name__ == "__main__":
    main()
