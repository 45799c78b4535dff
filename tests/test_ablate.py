"""Smoke test of the ablation driver: every arm runs (one step each) and the table and JSON are written."""
import json

from conftest import run_script

ARMS = ("sft", "grpo", "reg_grpo", "reg_grpo+aug", "reg_grpo+noise", "reg_grpo+hints",
        "reg_grpo+dynamic", "reg_grpo+replay")


def test_ablation_driver_writes_every_arm(tiny, tmp_path):
    d = tiny["data"]
    out = tmp_path / "ablation"
    extra = "--group_size=4 --prompts_per_step=2 --max_new_tokens=24 --difficulty_margin=0.0 --buffer_window=1"
    proc = run_script(["ablate.py", "--smoke=True", f"--out_dir={out}", f"--init_from={tiny['sft']}",
                       f"--train_data={d}/train.jsonl", f"--val_data={d}/val.jsonl",
                       f"--select_dir={tmp_path}/select", "--seeds=(0,)",
                       "--lr_grid={'reg_grpo': (1e-3,), 'grpo': (1e-3,)}", f"--extra={extra}"])
    result = json.load(open(out / "results.json"))
    assert sorted({r["arm"] for r in result["runs"]}) == sorted(ARMS)
    assert result["learning_rates"] == {"reg_grpo": 1e-3, "grpo": 1e-3}
    for r in result["runs"]:
        assert 0.0 <= r["final_accuracy"] <= 1.0
        if r["arm"] != "sft":
            assert r["answers_generated"] >= 2 * 4 and r["steps"] >= 1
    table = (out / "results.md").read_text()
    for arm in ARMS:
        assert f"| {arm} |" in table
    assert "final val acc" in table and "zero-adv" in table
    assert "best" not in table  # no maximum over evaluations on the reported (test) split
    assert "wrote" in proc.stdout
