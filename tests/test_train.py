"""End to end on the tiny default: sft.py -> train.py (both losses), resume, torchrun DDP / FSDP2, bad input.

The scripts run as a user runs them (subprocesses), on a small synthetic set made once per session.
"""
import json
import math
import os
import re
import pytest
import torch

from conftest import run_script as run


def train_args(tiny, out_dir, *extra):
    d = tiny["data"]
    return ["train.py", f"--init_from={tiny['sft']}", f"--train_data={d}/train.jsonl",
            f"--val_data={d}/val.jsonl", f"--out_dir={out_dir}", "--group_size=4", "--prompts_per_step=2",
            "--max_new_tokens=24", "--eval_samples=4", "--eval_interval=0", "--buffer_window=2",
            "--learning_rate=1e-3", "--difficulty_margin=0.0", *extra]


def log_rows(out_dir):
    return [json.loads(line) for line in open(os.path.join(out_dir, "log.jsonl"))]


def sft_weights(tiny):
    from model import load_policy
    policy, _ = load_policy(str(tiny["sft"]))
    return policy.state_dict()


@pytest.mark.parametrize("loss", ["reg_grpo", "grpo", "rebel"])
def test_few_steps_train_each_loss(tiny, tmp_path, loss):
    out = tmp_path / loss
    sorted_rows = ["--rows_per_forward=2"] if loss == "grpo" else []  # length-sorted forwards, one loss
    run(train_args(tiny, out, f"--loss={loss}", "--max_steps=3", "--checkpoint_interval=3", *sorted_rows))
    rows = log_rows(out)
    assert [r["step"] for r in rows] == [1, 2, 3]
    for r in rows:
        assert math.isfinite(r["loss"]) and math.isfinite(r["kl"])
        assert r["update_time"] > 0 and r["ref_time"] > 0 and r["compile_time"] == 0
        assert 0.0 <= r["reward"] <= 2.0 and 0.0 <= r["accuracy"] <= 1.0 and 0.0 <= r["format"] <= 1.0
        assert 0.0 <= r["zero_adv_before"] <= 1.0 and 0.0 <= r["zero_adv_after"] <= 1.0
    assert rows[-1]["answers_generated"] >= 3 * 2 * 4
    ckpt = torch.load(out / "ckpt.pt", weights_only=True)
    before = sft_weights(tiny)
    changed = [k for k, v in ckpt["model"].items() if not torch.equal(v, before[k])]
    assert changed, "no parameter changed in 3 RL steps"
    assert not any("visual" in k for k in changed), "the frozen vision tower changed"
    assert isinstance(ckpt["hint_traces"][0]["traces"], dict) and all("reward_hinted" in r for r in rows)
    summary = json.load(open(out / "summary.json"))
    assert 0.0 <= summary["val_accuracy_end"] <= 1.0
    # sampled and trained-on zero-advantage ratios averaged over the same steps (3 steps: last 20% = 1)
    for key, col, part in (("zero_adv_sampled", "zero_adv_before", rows), ("zero_adv_trained", "zero_adv_after", rows),
                           ("zero_adv_sampled_last", "zero_adv_before", rows[-1:]),
                           ("zero_adv_trained_last", "zero_adv_after", rows[-1:])):
        assert summary[key] == pytest.approx(sum(r[col] for r in part) / len(part)), key


def test_resume_reproduces_the_next_step(tiny, tmp_path):
    """Killed while saving step 3 (after logging it): the resumed run redoes step 3 and logs it once."""
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    run(train_args(tiny, straight, "--max_steps=3", "--checkpoint_interval=2"))
    proc = run(train_args(tiny, resumed, "--max_steps=3", "--checkpoint_interval=2"),
               env={"CKPT_KILL_BEFORE_COMMIT": "3"}, check=False)
    assert proc.returncode == -9 and [r["step"] for r in log_rows(resumed)] == [1, 2, 3]
    run(train_args(tiny, resumed, "--max_steps=3", "--checkpoint_interval=2", "--resume=True"))
    a, b = log_rows(straight), log_rows(resumed)
    assert [r["step"] for r in b] == [1, 2, 3]
    for key in ("reward", "accuracy", "loss", "zero_adv_before", "answers_generated", "completion_len"):
        assert a[2][key] == pytest.approx(b[2][key], rel=1e-5, abs=1e-6), key
    final_a = torch.load(straight / "ckpt.pt", weights_only=True)["model"]
    final_b = torch.load(resumed / "ckpt.pt", weights_only=True)["model"]
    for k in final_a:
        torch.testing.assert_close(final_a[k], final_b[k], rtol=1e-5, atol=1e-6)
    proc = run(train_args(tiny, resumed, "--max_steps=3"), check=False)          # a fresh run, same out_dir
    assert proc.returncode != 0 and "holds a previous run (log.jsonl" in proc.stderr and "--resume=True" in proc.stderr


@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
def test_torchrun_two_ranks_stay_in_sync(tiny, tmp_path, mode):
    out = tmp_path / mode
    proc = run(["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                *train_args(tiny, out, f"--distributed={mode}", "--max_steps=2", "--checkpoint_interval=2")])
    assert "ranks in sync" in proc.stdout, proc.stdout[-2000:]
    rows = log_rows(out)
    assert [r["step"] for r in rows] == [1, 2]
    assert rows[-1]["answers_generated"] >= 2 * 2 * 2 * 4          # steps x ranks x prompts x G
    assert os.path.exists(out / ("ckpt.pt" if mode == "ddp" else "ckpt/state.pt"))
    if mode == "ddp":                                        # resumed by one process: stops, says what differs
        proc = run(train_args(tiny, out, "--max_steps=3", "--resume=True"), check=False)
        assert proc.returncode != 0 and "written by 2 ranks, this run has 1" in proc.stderr, proc.stderr[-2000:]
        assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
def test_sft_on_two_ranks_trains_the_one_process_model(tiny, tmp_path, mode):
    """Every rank draws the same batch of 5 and trains on its share (3 and 2 records); the loss is divided
    by the whole batch's tokens, so two ranks end with one process's weights, up to float rounding, also
    when killed while checkpointing and resumed."""
    from safetensors.torch import load_file
    d = tiny["data"]
    args = ["sft.py", f"--train_data={d}/train.jsonl", f"--val_data={d}/val.jsonl", "--max_steps=4",
            "--batch_size=5", "--eval_samples=4", "--learning_rate=3e-3", "--warmup_steps=0"]
    one = run([*args, f"--out_dir={tmp_path / 'one'}"])
    # the two-rank run is killed while saving step 3's checkpoint and resumed from step 2's
    two_ranks = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *args,
                 f"--out_dir={tmp_path / 'two'}", f"--distributed={mode}", "--checkpoint_interval=1"]
    killed = run(two_ranks, env={"CKPT_KILL_BEFORE_COMMIT": "3"}, check=False)
    assert killed.returncode != 0 and os.path.lexists(tmp_path / "two" / ("ckpt.pt" if mode == "ddp" else "ckpt"))
    two = run([*two_ranks, "--resume=True"])
    assert "at step 2" in two.stdout and not os.path.lexists(tmp_path / "two" / "ckpt")
    losses = [re.findall(r"sft step +3 +loss ([0-9.]+)", p.stdout) for p in (one, two)]
    assert len(losses[0]) == 1 and losses[0] == losses[1], (one.stdout[-1500:], two.stdout[-1500:])
    a, b = load_file(tmp_path / "one" / "model.safetensors"), load_file(tmp_path / "two" / "model.safetensors")
    assert a.keys() == b.keys()
    init = load_file(tmp_path / "one" / "init" / "model.safetensors")
    assert any(not torch.equal(a[k], init[k]) for k in a), "4 SFT steps changed nothing"
    # AdamW divides by sqrt(v): on coordinates whose gradient is near 0 rounding moves a step visibly, so
    # the bound is on the whole change: a rank training on the wrong share, or dividing by its own tokens,
    # moves the weights by a part of the update itself (about 1e-1 of it), not 1e-4
    change = sum((a[k] - init[k]).double().pow(2).sum() for k in a).sqrt()
    apart = sum((a[k] - b[k]).double().pow(2).sum() for k in a).sqrt()
    assert apart < 1e-4 * change, (apart, change)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-4, msg=k)
    for name, ranks in (("one", 1), ("two", 2)):
        summary = json.load(open(tmp_path / name / "sft_summary.json"))
        assert summary["eval_key"]["ranks"] == ranks and summary["val"]["all"]["n"] == 4


def test_sft_checkpointing_changes_nothing_and_autocast_keeps_float32_masters(tiny, tmp_path):
    """Recomputed activations give the same weights; bf16 compute over float32 weights trains, saves
    bf16 weights (the compute dtype) and leaves no evaluation for train.py to reuse."""
    from safetensors.torch import load_file
    d = tiny["data"]
    args = ["sft.py", f"--train_data={d}/train.jsonl", f"--val_data={d}/val.jsonl", "--max_steps=3",
            "--batch_size=4", "--eval_samples=2", "--learning_rate=3e-3", "--warmup_steps=0"]
    runs = {name: run([*args, f"--out_dir={tmp_path / name}", *extra]) for name, extra in (
        ("plain", []), ("checkpointed", ["--gradient_checkpointing=True"]), ("bf16", ["--dtype=bfloat16"]))}
    weights = {name: load_file(tmp_path / name / "model.safetensors") for name in runs}
    for k, v in weights["plain"].items():
        torch.testing.assert_close(weights["checkpointed"][k], v, rtol=1e-5, atol=1e-6, msg=k)
    assert {v.dtype for v in weights["bf16"].values()} == {torch.bfloat16}
    assert {v.dtype for v in weights["plain"].values()} == {torch.float32}
    loss = {name: float(re.findall(r"sft step +2 +loss ([0-9.]+)", p.stdout)[0]) for name, p in runs.items()}
    assert loss["bf16"] == pytest.approx(loss["plain"], rel=0.05) and loss["bf16"] != loss["plain"]
    assert json.load(open(tmp_path / "bf16" / "sft_summary.json"))["eval_key"] is None
    assert json.load(open(tmp_path / "plain" / "sft_summary.json"))["eval_key"]["dtype"] == "float32"


def test_sft_killed_while_saving_resumes_to_the_straight_runs_weights(tiny, tmp_path):
    """Killed while saving step 4's checkpoint: a fresh run refuses the folder, --resume=True continues
    from step 2 and ends with the weights of a run never killed; a finished run leaves no checkpoint."""
    from safetensors.torch import load_file
    d = tiny["data"]
    args = ["sft.py", f"--train_data={d}/train.jsonl", f"--val_data={d}/val.jsonl", "--max_steps=6",
            "--batch_size=4", "--eval_samples=2", "--learning_rate=3e-3", "--checkpoint_interval=2"]
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    run([*args, f"--out_dir={straight}"])
    assert not os.path.exists(straight / "ckpt.pt") and os.path.exists(straight / "model.safetensors")
    proc = run([*args, f"--out_dir={killed}"], env={"CKPT_KILL_BEFORE_COMMIT": "4"}, check=False)
    assert proc.returncode == -9 and os.path.exists(killed / "ckpt.pt")
    assert torch.load(killed / "ckpt.pt", weights_only=True)["step"] == 2
    proc = run([*args, f"--out_dir={killed}"], check=False)
    assert proc.returncode != 0 and "holds an unfinished SFT run" in proc.stderr and "Traceback" not in proc.stderr
    proc = run([*args, f"--out_dir={killed}", "--resume=True"])
    assert "at step 2" in proc.stdout and not re.search(r"sft step +0 ", proc.stdout)
    assert not os.path.exists(killed / "ckpt.pt") and not os.path.exists(killed / "ckpt.pt.tmp")
    a, b = load_file(straight / "model.safetensors"), load_file(killed / "model.safetensors")
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=0, atol=0, msg=k)
    proc = run([*args, f"--out_dir={tmp_path / 'none'}", "--resume=True"], check=False)
    assert proc.returncode != 0 and "no checkpoint to resume from" in proc.stderr and "Traceback" not in proc.stderr


def test_bad_config_key_and_bad_data_path_fail_clearly(tiny, tmp_path):
    proc = run(["train.py", "--lerning_rate=1e-3"], check=False)
    assert proc.returncode != 0 and "unknown setting 'lerning_rate'" in proc.stderr
    proc = run(train_args(tiny, tmp_path / "x", "--train_data=/nonexistent/train.jsonl"), check=False)
    assert proc.returncode != 0
    assert "/nonexistent/train.jsonl" in proc.stderr + proc.stdout
    assert "Traceback" not in proc.stderr
    for script, arg in (("sft.py", "--train_data"), ("eval.py", "--data")):
        extra = [f"--model={tiny['sft']}"] if script == "eval.py" else []
        proc = run([script, f"{arg}=/nonexistent/demos.jsonl", *extra], check=False)
        assert proc.returncode != 0 and "Traceback" not in proc.stderr, (script, proc.stderr[-2000:])
        assert "cannot read data" in proc.stderr and "/nonexistent/demos.jsonl" in proc.stderr, script


def test_bf16_compute_with_gradient_checkpointing_keeps_float32_master_weights(tiny, tmp_path):
    out = tmp_path / "bf16"
    run(train_args(tiny, out, "--dtype=bfloat16", "--gradient_checkpointing=True", "--max_steps=2",
                   "--checkpoint_interval=2"))
    rows = log_rows(out)
    assert all(math.isfinite(r["loss"]) for r in rows)
    ckpt = torch.load(out / "ckpt.pt", weights_only=True)
    assert all(v.dtype == torch.float32 for v in ckpt["model"].values() if v.is_floating_point())
    before = sft_weights(tiny)
    assert any(not torch.equal(v, before[k]) for k, v in ckpt["model"].items())



def test_augmentation_flow_hints_from_answer_conditioned_traces(tiny):
    """sample -> ask -> re-sample -> splice, in process: with r_ref above every group's r_cur, every
    group is redone with a hint; groups without a correct answer of their own get a trace written
    with the answer shown; no sentence before a hint's last piece names the answer."""
    from machinery.configurator import script_defaults
    from machinery.dataset import load_records, load_samples
    from difficulty import HintTraces, group_mean_rewards, names_answer, plan_groups
    from model import load_policy
    from step import augment, new_run, sample_groups, step_settings
    policy, processor = load_policy(str(tiny["sft"]))
    prompts = load_samples(load_records(tiny["data"] / "train.jsonl")[:3], log=lambda *a: None)
    s = step_settings(script_defaults("train.py"), group_size=2, hint_trace_samples=3, max_new_tokens=24,
                      augment="both", augment_flat_only=False, difficulty_margin=0.0, device="cpu")
    torch.manual_seed(0)
    traces = HintTraces()
    run = new_run(generator=policy, processor=processor, traces=traces, noise=torch.Generator().manual_seed(0))

    def sample_with_augmentation(r_ref):                     # rl_step's parts 1-3
        first = sample_groups(s, run, prompts, [p["frames"] for p in prompts])
        plans = plan_groups(first.rewards, 2, r_ref, s.difficulty_margin, s.augment, s.augment_flat_only)
        rollout, changes, n = augment(s, run, prompts, first, plans)
        return rollout, group_mean_rewards(first.rewards, 2), changes, n
    rollout, r_cur, changes, n = sample_with_augmentation(2.5)
    assert changes["easier"] == 3 and changes["harder"] == 0 and len(changes["reward_hinted"]) == 3
    assert n == 3 * 2 + 3 * len(traces) + 3 * 2                 # first sampling, traces, re-sampling
    assert changes["reward_hinted_before"] == pytest.approx(r_cur.tolist())
    prompts_text = processor.tokenizer.batch_decode(rollout.input_ids, skip_special_tokens=True)
    for p, hint, r in zip(prompts, changes["hints"], r_cur.tolist()):
        sentences = re.split(r"(?<=[.!?])\s+", hint)
        assert not any(names_answer(s, p) for s in sentences[:-1]), hint
        assert 1 <= len(sentences) <= math.floor(2.5 - r + 0.5) + 1, hint   # l_guide = round(|delta|) + 1
    assert all("Hint:" in t for t in prompts_text) and len(prompts_text) == 3 * 2
    _, _, none, n = sample_with_augmentation(None)
    assert none["easier"] == none["harder"] == 0 and n == 3 * 2   # empty buffer: nothing redone


def test_step_zero_reuses_sft_evaluation_only_when_it_would_repeat_it(tiny, tmp_path):
    from machinery.dataset import load_samples, read_records_or_exit
    from eval import eval_key, evaluate
    from model import load_policy
    saved = json.load(open(tiny["sft"] / "sft_summary.json"))
    assert saved["eval_key"]["max_new_tokens"] == 48 and saved["eval_key"]["questions"] == 4
    # the same settings as sft.py's evaluation: reused
    out = tmp_path / "same"
    proc = run(train_args(tiny, out, "--max_new_tokens=48", "--max_steps=1"))
    assert "its result is reused" in proc.stdout
    assert json.load(open(out / "summary.json"))["val_accuracy_start"] == saved["val"]["all"]["accuracy"]
    # and recomputing it gives the saved result, subset by subset
    policy, processor = load_policy(str(tiny["sft"]))
    val = load_samples(read_records_or_exit(str(tiny["data"] / "val.jsonl"))[:4], log=lambda *a: None)
    assert evaluate(policy, processor, val, max_new_tokens=48) == saved["val"]
    # another answer budget: evaluated afresh
    proc = run(train_args(tiny, tmp_path / "other", "--max_steps=1"))
    assert "step 0: val accuracy" in proc.stdout and "reused" not in proc.stdout
    # rewritten weights change the key
    key = eval_key(tiny["sft"], tiny["data"] / "val.jsonl", 4, 48, 8, 112 * 112, None, "auto", "float32", "cpu")
    assert key == saved["eval_key"]
    weights = next(p for p in tiny["sft"].iterdir() if p.suffix == ".safetensors")
    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 1))
    try:
        assert eval_key(tiny["sft"], tiny["data"] / "val.jsonl", 4, 48, 8, 112 * 112, None, "auto", "float32",
                        "cpu") != key
    finally:
        os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns - 1))


def test_a_failed_step_of_the_embedded_default_stops_with_one_line():
    import train
    with pytest.raises(SystemExit) as e:
        train.run_or_exit(["-c", "import sys; sys.exit(3)"])
    assert "failed (exit code 3)" in str(e.value) and "continues a killed SFT run" in str(e.value)
    with pytest.raises(SystemExit) as e:
        train.run_or_exit(["-c", "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"])
    assert "failed (signal 9)" in str(e.value)
    train.run_or_exit(["-c", "pass"])                       # success returns quietly


def test_sft_demonstration_hints_are_the_records_own_pieces(monkeypatch):
    """A hinted demonstration shows the first k of its own trace's pieces (k uniform, the answer the last
    piece); hint_fraction of them are hinted; with hint_fraction 0 nothing is drawn (the batches of a run
    without hints are those of one before hints existed)."""
    import random
    import sft
    record = {"answer": "D", "options": ["red", "green", "blue", "yellow"], "problem_type": "multiple_choice",
              "reasoning": "It turns warm. It is the brighter of the two. So it turns yellow."}
    pieces = ["It turns warm.", "It is the brighter of the two.", "The answer is D."]
    monkeypatch.setattr(sft, "hint_fraction", 1.0)
    rng = random.Random(0)
    hints = [sft.demo_hint(record, rng) for _ in range(3000)]
    want = {" ".join(pieces[:k]): 0 for k in (1, 2, 3)}
    for h in hints:
        want[h] += 1                             # a KeyError here: a hint that is not a prefix of the pieces
    assert all(abs(n / 3000 - 1 / 3) < 0.04 for n in want.values()), want
    monkeypatch.setattr(sft, "hint_fraction", 0.25)
    share = sum(sft.demo_hint(record, rng) != "" for _ in range(4000)) / 4000
    assert abs(share - 0.25) < 0.03             # 4.4 standard errors
    monkeypatch.setattr(sft, "hint_fraction", 0.0)
    state = rng.getstate()
    assert sft.demo_hint(record, rng) == "" and rng.getstate() == state
