"""Shared fixtures: a small synthetic set and a briefly warm-started tiny policy, made once per session."""
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


def run_script(args, check=True, timeout=900, env=None):
    """Run one of the project's scripts as a user would; fail with its output when it fails."""
    proc = subprocess.run([sys.executable, *args], cwd=ROOT, env={**ENV, **(env or {})}, capture_output=True,
                          text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return proc


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    data = root / "data"
    run_script(["data/synthetic/prepare.py", f"--out={data}", "--n_train=48", "--n_val=8", "--seed=3"])
    sft = root / "sft"
    run_script(["sft.py", f"--out_dir={sft}", f"--train_data={data}/train.jsonl", f"--val_data={data}/val.jsonl",
                "--max_steps=60", "--batch_size=8", "--eval_samples=4", "--learning_rate=3e-3"])
    return {"data": data, "sft": sft, "root": root}
