"""
Does a 2-rank torchrun of train.py exit cleanly every time? Runs the tiny FSDP2 and DDP runs over and
over while busy processes load the CPU, and counts exit codes and "terminate called" aborts.

    python scripts/exit_check.py --repeats=30 --load=2
    python scripts/exit_check.py --init_from=out/tiny-sft --train_data=... --val_data=...   # an existing tiny set

Without --init_from it makes a small synthetic set and a short SFT warm start in out_dir first.
"""
import multiprocessing
import os
import shutil
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the project's modules
from machinery.configurator import configure

# -----------------------------------------------------------------------------
out_dir = "out/exit_check"
repeats = 30                  # runs per mode
modes = "fsdp,ddp"
load = 2                      # busy-looping processes beside the runs
init_from = ""                # a tiny policy folder; empty: made here
train_data = ""
val_data = ""
# -----------------------------------------------------------------------------


def burn():
    while True:
        pass


def prepare():
    data, sft = os.path.join(out_dir, "data"), os.path.join(out_dir, "sft")
    if not os.path.exists(os.path.join(sft, "config.json")):
        subprocess.run([sys.executable, "data/synthetic/prepare.py", f"--out={data}", "--n_train=48",
                        "--n_val=8", "--seed=3"], check=True, capture_output=True)
        subprocess.run([sys.executable, "sft.py", f"--out_dir={sft}", f"--train_data={data}/train.jsonl",
                        f"--val_data={data}/val.jsonl", "--max_steps=20", "--batch_size=8",
                        "--eval_samples=4"], check=True, capture_output=True)
    return sft, f"{data}/train.jsonl", f"{data}/val.jsonl"


def main():
    configure(globals(), sys.argv[1:])
    sft, train, val = (init_from, train_data, val_data) if init_from else prepare()
    burners = [multiprocessing.Process(target=burn, daemon=True) for _ in range(load)]
    for b in burners:
        b.start()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    counts = {}
    try:
        for i in range(repeats):
            for mode in modes.split(","):
                run_dir = os.path.join(out_dir, f"run_{mode}")
                shutil.rmtree(run_dir, ignore_errors=True)
                t0 = time.time()
                proc = subprocess.run(
                    [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                     "train.py", f"--init_from={sft}", f"--train_data={train}", f"--val_data={val}",
                     f"--out_dir={run_dir}", f"--distributed={mode}", "--max_steps=2", "--checkpoint_interval=2",
                     "--group_size=4", "--prompts_per_step=2", "--max_new_tokens=16", "--eval_samples=2",
                     "--eval_interval=0", "--beta=0.0"], env=env, capture_output=True, text=True)
                text = proc.stdout + proc.stderr
                aborted = "terminate called" in text
                ok = proc.returncode == 0 and not aborted and "ranks in sync" in text
                c = counts.setdefault(mode, {"runs": 0, "clean": 0, "aborts": 0})
                c["runs"] += 1
                c["clean"] += ok
                c["aborts"] += aborted
                print(f"{mode} run {i + 1}: exit {proc.returncode}{' ABORT' if aborted else ''} "
                      f"({time.time() - t0:.0f} s)", flush=True)
                if not ok:
                    with open(os.path.join(out_dir, f"failed_{mode}_{i + 1}.log"), "w") as f:
                        f.write(text)
    finally:
        for b in burners:
            b.terminate()
    print(counts)
    if any(c["clean"] != c["runs"] for c in counts.values()):
        raise SystemExit("some runs did not exit cleanly (logs in out_dir/failed_*.log)")


if __name__ == "__main__":
    main()
