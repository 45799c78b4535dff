"""Smoke test of the ablation driver: every arm runs (one step each) and the table and JSON are written."""
import json

import pytest
import torch

from conftest import run_script

ARMS = ("sft", "grpo", "rebel", "reg_grpo_paper", "reg_grpo", "reg_grpo+aug", "reg_grpo+aug_flat",
        "reg_grpo+dynamic")


def test_ablation_driver_writes_every_arm(tiny, tmp_path):
    d = tiny["data"]
    out = tmp_path / "ablation"
    extra = "--group_size=4 --prompts_per_step=2 --max_new_tokens=24 --difficulty_margin=0.0 --buffer_window=1"
    proc = run_script(["ablate.py", "--smoke=True", f"--out_dir={out}", f"--init_from={tiny['sft']}",
                       f"--train_data={d}/train.jsonl", f"--val_data={d}/val.jsonl",
                       f"--select_dir={tmp_path}/select", "--seeds=(0,)", f"--arms={ARMS!r}",
                       "--lr_grid={'reg_grpo': (1e-3,), 'grpo': (1e-3,), 'rebel': (3e-4,), 'reg_grpo_paper': (2e-4,)}",
                       f"--extra={extra}"],
                      timeout=2400)   # seven short train.py runs: slow on a loaded 2-core machine
    result = json.load(open(out / "results.json"))
    assert sorted({r["arm"] for r in result["runs"]}) == sorted(ARMS)
    assert result["learning_rates"] == {"reg_grpo": 1e-3, "grpo": 1e-3, "rebel": 3e-4, "reg_grpo_paper": 2e-4}
    by_arm = {r["arm"]: r for r in result["runs"]}
    assert by_arm["reg_grpo_paper"]["learning_rate"] == 2e-4 and by_arm["reg_grpo+aug"]["learning_rate"] == 1e-3
    assert "clip_frac" in by_arm["grpo"] and "clip_frac" not in by_arm["reg_grpo"]
    assert by_arm["sft"]["final_accuracy"] == by_arm["grpo"]["start_accuracy"]    # the shared step-0 evaluation
    for r in result["runs"]:
        assert 0.0 <= r["final_accuracy"] <= 1.0 and (r["sft_seed"], r["seed"]) == (0, 0)
        if r["arm"] != "sft":
            assert r["answers_generated"] >= 2 * 4 and r["steps"] >= 1
    # each arm ran with its own settings: the printed form with the token sum, the two augmentation rules
    config = {a: torch.load(out / a.replace("+", "_") / "sft0_seed0" / "ckpt.pt", weights_only=True)["config"]
              for a in ARMS if a != "sft"}
    assert (config["reg_grpo_paper"]["reg_form"], config["reg_grpo_paper"]["rho_token_mean"]) == ("paper", False)
    assert (config["reg_grpo"]["reg_form"], config["reg_grpo"]["rho_token_mean"]) == ("scaled", True)
    assert (config["reg_grpo+aug"]["augment"], config["reg_grpo+aug"]["augment_flat_only"]) == ("both", False)
    assert (config["reg_grpo+aug_flat"]["augment"], config["reg_grpo+aug_flat"]["augment_flat_only"]) == ("both", True)
    assert config["reg_grpo+dynamic"]["vanishing_fix"] == "dynamic_sampling" and config["rebel"]["loss"] == "rebel"
    assert all(c["augment"] == "none" for a, c in config.items() if "+aug" not in a)
    table = (out / "results.md").read_text()
    for arm in ARMS:
        assert f"| {arm} |" in table
    assert "final val acc" in table and "zero-adv" in table
    assert "best" not in table  # no maximum over evaluations on the reported (test) split
    assert "wrote" in proc.stdout


def test_paired_differences_match_a_hand_computed_t_interval():
    from ablate import paired_differences
    runs = [{"arm": a, "sft_seed": f, "seed": s, "final_accuracy": v} for a, f, s, v in [
        ("grpo", 0, 0, 0.40), ("grpo", 0, 1, 0.50), ("grpo", 1, 0, 0.45),
        ("reg_grpo", 0, 0, 0.43), ("reg_grpo", 0, 1, 0.52), ("reg_grpo", 1, 0, 0.49), ("reg_grpo", 1, 1, 0.9)]]
    (pair,) = [p for p in paired_differences(runs) if (p["a"], p["b"]) == ("grpo", "reg_grpo")]
    # paired by (SFT seed, RL seed); (1, 1) has no grpo run: d = -0.03, -0.02, -0.04, mean -0.03, sd 0.01,
    # t(2) = 4.303, half 0.0248
    assert pair["seeds"] == [[0, 0], [0, 1], [1, 0]]
    assert abs(pair["mean"] + 0.03) < 1e-12
    assert abs(pair["ci95"][1] - (-0.03 + 4.303 * 0.01 / 3 ** 0.5)) < 1e-9
    assert pair["shown"]
    # RL seed 0 of SFT seed 1 is not RL seed 0 of SFT seed 0: keyed by the pair, a mix-up would pair 0.45 with 0.43
    runs += [{"arm": "rebel", "sft_seed": f, "seed": s, "final_accuracy": v}
             for f, s, v in [(0, 0, 0.40), (0, 1, 0.55), (1, 0, 0.47)]]
    (pair,) = [p for p in paired_differences(runs) if (p["a"], p["b"]) == ("rebel", "reg_grpo")]
    assert pair["differences"] == pytest.approx([-0.03, 0.03, -0.02]) and not pair["shown"]
    # every arm is compared with both references, and nothing with itself
    assert {(p["a"], p["b"]) for p in paired_differences(runs)} == {
        ("grpo", "reg_grpo"), ("rebel", "reg_grpo"), ("reg_grpo", "grpo"), ("rebel", "grpo")}
