"""Bad records met by the scripts: an unusable split is named before the model loads, and skipped
records are counted by reason in the JSON outputs (eval's results, train's summary.json)."""
import json

from conftest import run_script
from machinery.dataset import load_records, write_records


def with_missing_videos(src, dst, n_bad):
    """The records of `src`, the first `n_bad` of them pointing at a video that does not exist."""
    records = load_records(src)
    for r in records[:n_bad]:
        r["video"] = r["video"] + ".missing.mp4"
    write_records(dst, records)
    return records


def test_unusable_val_split_is_named_before_the_model_loads(tiny, tmp_path):
    d = tiny["data"]
    with_missing_videos(d / "val.jsonl", tmp_path / "val.jsonl", n_bad=100)
    proc = run_script(["train.py", "--init_from=Qwen/not-loaded", f"--train_data={d}/train.jsonl",
                       f"--val_data={tmp_path}/val.jsonl", f"--out_dir={tmp_path}/o"], check=False)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert f"{tmp_path}/val.jsonl: no usable records: all 8 skipped (file not found: 8)" in proc.stderr
    assert f"skip {tmp_path}/val.jsonl:1 (" in proc.stdout                   # file:line, then the id


def test_skipped_records_counted_in_eval_and_train_outputs(tiny, tmp_path):
    d = tiny["data"]
    with_missing_videos(d / "val.jsonl", tmp_path / "val.jsonl", n_bad=2)
    run_script(["eval.py", f"--model={tiny['sft']}", f"--data={tmp_path}/val.jsonl", f"--out_file={tmp_path}/e.json",
                "--max_new_tokens=8"])
    result = json.load(open(tmp_path / "e.json"))
    assert result["skipped_records"] == {"file not found": 2} and result["results"]["all"]["n"] == 6
    run_script(["train.py", f"--init_from={tiny['sft']}", f"--train_data={d}/train.jsonl",
                f"--val_data={tmp_path}/val.jsonl", f"--out_dir={tmp_path}/rl", "--group_size=2",
                "--prompts_per_step=2", "--max_new_tokens=8", "--eval_samples=4", "--max_steps=1",
                "--eval_interval=0", "--beta=0.0"])
    summary = json.load(open(tmp_path / "rl" / "summary.json"))
    assert summary["skipped_records"] == {"train": {}, "val": {"file not found": 2}}
