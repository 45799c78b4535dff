"""Checkpoints: RNG state as plain types, loading that refuses pickled objects, the sharded (FSDP2)
checkpoint killed in the middle of a save, and the exported model folder."""
import json
import os
import pickle
import random

import numpy as np
import pytest
import torch

from machinery.checkpoint import read_metadata, rng_state, safe_load, set_rng_state
from conftest import run_script as run
from test_train import log_rows, train_args


class Opaque:
    """Any class outside torch's safe list: unpickling it means importing and running code."""

    def __reduce__(self):
        return (print, ("this would run at load time",))


def draws(rng, gen):
    return (rng.random(), float(np.random.rand()), torch.rand(1).item(), torch.rand(1, generator=gen).item())


def test_rng_state_round_trips_through_a_weights_only_file(tmp_path):
    rng, gen = random.Random(5), torch.Generator().manual_seed(5)
    np.random.seed(5)
    draws(rng, gen)
    np.random.randn()                                         # leaves a cached gaussian in numpy's state
    torch.save(rng_state(rng, gen), tmp_path / "rng.pt")
    expected = draws(rng, gen)
    rng2, gen2 = random.Random(0), torch.Generator()
    np.random.seed(0)
    set_rng_state(safe_load(tmp_path / "rng.pt"), rng2, gen2)
    assert draws(rng2, gen2) == expected


def test_a_checkpoint_holding_a_pickled_object_is_refused(tmp_path):
    path = tmp_path / "ckpt.pt"
    torch.save({"model": {}, "step": 3, "extra": Opaque()}, path)
    with pytest.raises(SystemExit, match="refused: it holds pickled Python objects.*could run code"):
        safe_load(path)
    from eval import load_any_policy
    with pytest.raises(SystemExit, match=f"{path}: refused"):
        load_any_policy(str(path))


def test_sharded_checkpoint_metadata_is_read_without_running_code(tmp_path):
    import torch.distributed.checkpoint as dcp
    dcp.save({"w": torch.arange(6.0).view(2, 3)}, checkpoint_id=tmp_path / "good")
    metadata = read_metadata(tmp_path / "good")
    assert metadata.state_dict_metadata["w"].size == torch.Size([2, 3])
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / ".metadata").write_bytes(pickle.dumps(Opaque()))
    with pytest.raises(SystemExit, match="metadata holds a pickled object.*builtins.print"):
        read_metadata(bad)


def torchrun(tiny, out, *extra, env=None, check=True):
    return run(["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                *train_args(tiny, out, "--distributed=fsdp", "--max_steps=3", "--checkpoint_interval=2", *extra)],
               env=env, check=check)


def test_fsdp_killed_in_the_middle_of_a_save_resumes_to_the_same_parameters(tiny, tmp_path):
    from safetensors.torch import load_file
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    torchrun(tiny, straight)
    proc = torchrun(tiny, killed, env={"CKPT_KILL_BEFORE_COMMIT": "3"}, check=False)
    assert proc.returncode != 0
    assert os.readlink(killed / "ckpt") == "ckpt-000002"          # step 3's shards are written, not committed
    assert (killed / "ckpt-000003" / ".metadata").exists()
    assert [r["step"] for r in log_rows(killed)] == [1, 2, 3]
    proc = torchrun(tiny, killed, "--resume=True")
    assert "resumed from" in proc.stdout and "at step 2" in proc.stdout
    assert [r["step"] for r in log_rows(killed)] == [1, 2, 3]      # step 3 once, from the resumed run
    assert sorted(p for p in os.listdir(killed) if p.startswith(("ckpt", "model"))) == \
        ["ckpt", "ckpt-000003", "model", "model-000003"]
    a, b = load_file(straight / "model" / "model.safetensors"), load_file(killed / "model" / "model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    proc = run(train_args(tiny, killed, "--max_steps=4", "--resume=True"), check=False)
    assert proc.returncode != 0 and "holds a sharded (FSDP2) checkpoint" in proc.stderr, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr


def test_exported_model_loads_with_transformers_and_answers_as_the_trained_policy(tiny, tmp_path):
    from transformers import AutoModelForImageTextToText, AutoProcessor
    from machinery.dataset import load_samples, read_records_or_exit
    from eval import load_any_policy
    from rollout import generate_rollout
    out = tmp_path / "run"
    run(train_args(tiny, out, "--max_steps=2", "--checkpoint_interval=2"))
    assert json.load(open(out / "model" / "config.json"))["architectures"] == ["Qwen2_5_VLForConditionalGeneration"]
    assert (out / "curves.png").stat().st_size > 0
    samples = load_samples(read_records_or_exit(str(tiny["data"] / "val.jsonl"))[:4], num_frames=8,
                           max_pixels=112 * 112)
    trained, processor = load_any_policy(str(out / "ckpt.pt"))
    exported = AutoModelForImageTextToText.from_pretrained(out / "model")
    exported_processor = AutoProcessor.from_pretrained(out / "model")
    answers = [generate_rollout(m, p, samples, [s["frames"] for s in samples], 1, max_new_tokens=24, greedy=True).texts
               for m, p in ((trained, processor), (exported, exported_processor))]
    assert answers[0] == answers[1]
    sft = load_any_policy(str(tiny["sft"]))[0].state_dict()
    assert any(not torch.equal(v, sft[k]) for k, v in exported.state_dict().items()), "export is the SFT model"
    proc = run(["eval.py", f"--model={out / 'model'}", f"--data={tiny['data'] / 'val.jsonl'}", "--max_samples=2",
                f"--out_file={tmp_path / 'eval.json'}"])
    assert json.load(open(tmp_path / "eval.json"))["results"]["all"]["n"] == 2
