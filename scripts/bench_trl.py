"""
Seconds per RL step: our train.py against TRL's GRPOTrainer on the same model folder, side by side.

    python scripts/bench_trl.py                                   # out/tiny-sft, 3 rounds of 10 steps each
    python scripts/bench_trl.py --model=out/tiny-sft --rounds=5 --steps=20 --variants=matched

TRL is not a dependency of this project: run this from an environment that has both, e.g.
    python3 -m venv /tmp/trlvenv && /tmp/trlvenv/bin/pip install -r requirements.txt trl
    /tmp/trlvenv/bin/python scripts/bench_trl.py

Each round runs TRL for `steps` steps, then each of our variants for `steps` steps, every run in its
own process (same imports, same threads); the first step of every run is dropped (warm-up) and the
median over all rounds is reported. Shapes are matched: G answers for each of `prompts_per_step`
prompts, at most `max_new_tokens` new tokens, temperature 1, lr and grad clip the same.
TRL (GRPOConfig: loss_type "grpo", beta 0, one iteration) gets our questions as text prompts, without
the video, as its GRPO trainer takes no video; it is rewarded for the answer format. Our variants:
  matched   --loss=grpo --num_iterations=1 --beta=0.0 --augment=none --num_frames=2 --max_pixels=784
  method    the project's method (reg_grpo, 2 iterations, reference model, augmentation), 2 frames
  default   the project's method on the default video (8 frames of 112x112)
The completions' mean length is printed beside each time: a policy that stops earlier is faster for
that reason alone. Timings on a shared machine are only as good as its load (printed).
"""
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the project's modules
from machinery.configurator import configure

# -----------------------------------------------------------------------------
model = "out/tiny-sft"
train_data = "data/synthetic/train.jsonl"
rounds = 3
steps = 10                    # per run; the first is dropped
variants = "matched,method"   # ours, comma-separated: matched | method | default
group_size = 8
prompts_per_step = 4
max_new_tokens = 32
learning_rate = 3e-5
threads = 0                   # torch threads in every run (0: torch's default)
# -----------------------------------------------------------------------------
OURS = {
    "matched": ["--loss=grpo", "--num_iterations=1", "--beta=0.0", "--augment=none", "--num_frames=2",
                "--max_pixels=784"],
    "method": ["--num_frames=2", "--max_pixels=784"],
    "default": [],
}


def run_ours(args, out_dir):
    """(per-step seconds, mean completion length) of `steps` steps of train.py."""
    cmd = [sys.executable, "train.py", f"--init_from={model}", f"--train_data={train_data}",
           f"--val_data={train_data}", f"--out_dir={out_dir}", f"--max_steps={steps}", "--eval_samples=1",
           "--eval_interval=0", f"--checkpoint_interval={steps + 1}", f"--group_size={group_size}",
           f"--prompts_per_step={prompts_per_step}", f"--max_new_tokens={max_new_tokens}",
           f"--learning_rate={learning_rate}", "--warmup_steps=0", *args]
    run(cmd)
    rows = [json.loads(line) for line in open(os.path.join(out_dir, "log.jsonl"))]
    return [r["step_time"] for r in rows], statistics.mean(r["completion_len"] for r in rows)


def run_trl(out_dir):
    run([sys.executable, __file__, "--trl_child=" + out_dir, *sys.argv[1:]])
    with open(os.path.join(out_dir, "trl_times.json")) as f:
        result = json.load(f)
    return result["step_times"], result["completion_len"]


def run(cmd):
    env = dict(os.environ)
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[:3])} ... failed ({proc.returncode}):\n{proc.stderr[-3000:]}")


def trl_child(out_dir):
    """One TRL run in this process: GRPOTrainer on our questions as text, step end times recorded."""
    import time

    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from machinery.dataset import format_question, read_records_or_exit
    from rewards import format_reward
    from rollout import SYSTEM_PROMPT

    records = read_records_or_exit(train_data)
    data = Dataset.from_list([{"prompt": [{"role": "system", "content": SYSTEM_PROMPT},
                                          {"role": "user", "content": format_question(r)}]}
                              for r in records[:prompts_per_step * steps * 2]])
    lengths, ends = [], []

    def reward(completions, **kwargs):
        texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
        return [format_reward(t) for t in texts]

    class StepTimes(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            ends.append(time.perf_counter())

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "completions/mean_length" in logs:
                lengths.append(logs["completions/mean_length"])

    config = GRPOConfig(output_dir=out_dir, per_device_train_batch_size=prompts_per_step * group_size,
                        num_generations=group_size, max_completion_length=max_new_tokens, beta=0.0,
                        loss_type="grpo", num_iterations=1, learning_rate=learning_rate, max_grad_norm=1.0,
                        temperature=1.0, max_steps=steps, logging_steps=1, save_strategy="no",
                        report_to="none", use_cpu=True, bf16=False, seed=0)
    trainer = GRPOTrainer(model=model, reward_funcs=reward, args=config, train_dataset=data,
                          callbacks=[StepTimes()])
    start = time.perf_counter()
    trainer.train()
    times = [b - a for a, b in zip([start] + ends[:-1], ends)]
    with open(os.path.join(out_dir, "trl_times.json"), "w") as f:
        json.dump({"step_times": times, "completion_len": statistics.mean(lengths) if lengths else None}, f)


def main():
    child = [a for a in sys.argv[1:] if a.startswith("--trl_child=")]
    sys.argv = [a for a in sys.argv if not a.startswith("--trl_child=")]
    configure(globals(), sys.argv[1:])
    if child:
        return trl_child(child[0].split("=", 1)[1])
    if importlib.util.find_spec("trl") is None:
        raise SystemExit("bench_trl.py needs TRL beside the project, which is not a dependency: "
                         "pip install trl (in a separate venv), then run it with that venv's python")
    names = [v for v in variants.split(",") if v]
    unknown = [v for v in names if v not in OURS]
    if unknown:
        raise SystemExit(f"--variants: unknown {unknown}; choose from {sorted(OURS)}")
    if not os.path.isfile(os.path.join(model, "config.json")):
        raise SystemExit(f"{model}: no config.json; make the model first (python sft.py)")
    times = {name: [] for name in ["trl"] + names}
    lengths = {name: [] for name in times}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(rounds):
            for name in times:
                out_dir = os.path.join(tmp, f"{name}_{r}")
                t, n = run_trl(out_dir) if name == "trl" else run_ours(OURS[name], out_dir)
                times[name] += t[1:]
                lengths[name].append(n)
                print(f"round {r + 1}/{rounds} {name:<8} median {statistics.median(t[1:]):.3f} s/step, "
                      f"completions {n if n is None else round(n, 1)} tokens", flush=True)
    base = statistics.median(times["trl"])
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"\n{'run':<8} {'s/step':>7} {'/ TRL':>6} {'tokens':>7}   ({rounds} x {steps - 1} steps each, "
          f"load {load:.1f} on {os.cpu_count()} cores)")
    for name in times:
        med = statistics.median(times[name])
        n = [x for x in lengths[name] if x is not None]
        print(f"{name:<8} {med:>7.3f} {med / base:>6.2f} {statistics.mean(n) if n else float('nan'):>7.1f}")


if __name__ == "__main__":
    main()
