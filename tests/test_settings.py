"""Settings are checked before anything is loaded: choices (with "did you mean"), ranges, relations,
paths. The rules are called in-process (no model is loaded); one run of each script checks the exit."""
import pytest

import ablate
import eval as eval_script
import sft
import train
from machinery.configurator import configure
from conftest import run_script
from machinery.dataset import write_records
from model import source_problem


def check(script, *args, problems=None):
    """Configure a copy of `script`'s settings with `args`; SystemExit carries the message."""
    rules = problems or script.setting_problems
    return configure(dict(vars(script)), list(args), getattr(script, "CHOICES", {}), rules)


def train_check(tmp_path, *args):
    return check(train, f"--out_dir={tmp_path}/out", "--init_from=Qwen/Qwen2.5-VL-3B-Instruct", *args,
                 problems=lambda c: train.setting_problems(c) + train.path_problems(c))


@pytest.mark.parametrize("arg,message", [
    ("--loss=reg-grpo", "loss='reg-grpo' is not one of reg_grpo | grpo | rebel (did you mean 'reg_grpo'?)"),
    ("--reg_form=printed", "reg_form='printed' is not one of scaled | paper"),
    ("--rebel_eta=0.0", "rebel_eta=0.0: need > 0"),
    ("--augment=hardr", "(did you mean 'harder'?)"),
    ("--vanishing_fix=dynamic", "vanishing_fix='dynamic' is not one of none | dynamic_sampling"),
    ("--harder_mode=blur", "harder_mode='blur' is not one of noise | mask"),
    ("--distributed=zero3", "distributed='zero3' is not one of ddp | fsdp"),
    ("--dtype=fp16", "(did you mean 'float16'?)"),
    ("--sampler=fastest", "sampler='fastest' is not one of auto | fast | hf (did you mean 'fast'?)"),
    ("--master_dtype=float8", "master_dtype='float8' is not one of"),
    ("--difficulty_margin=-0.1", "difficulty_margin=-0.1: need >= 0"),
    ("--checkpoint_interval=0", "checkpoint_interval=0: need >= 1 step"),
    ("--group_size=1", "group_size=1: need >= 2"),
    ("--group_size=-4", "group_size=-4: need >= 2"),
    ("--prompts_per_step=0", "prompts_per_step=0: need >= 1"),
    ("--micro_batch_groups=-1", "micro_batch_groups=-1: need >= 1"),
    ("--eval_samples=0", "eval_samples=0: need >= 1"),
    ("--top_p=1.5", "top_p=1.5: need 0 < top_p <= 1"),
    ("--max_pixels=100", "max_pixels=100: need >= 784"),
    ("--device=gpu", "device='gpu': expected cpu"),
    ("--beta=None", "'beta' expects float"),
    ("--lerning_rate=1e-3", "unknown setting 'lerning_rate' (did you mean 'learning_rate'?)"),
    ("--EMBEDDED_SFT=x", "unknown setting 'EMBEDDED_SFT'"),
    ("--init_from=out/nope", "init_from: out/nope: no such model directory"),
    ("--init_from=./nope", "init_from: ./nope: no such model directory"),
])
def test_train_rejects_bad_settings(tmp_path, monkeypatch, arg, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "out").mkdir()
    with pytest.raises(SystemExit) as e:
        train_check(tmp_path, arg)
    assert message in str(e.value), str(e.value)


def test_train_lists_every_problem_and_accepts_good_settings(tmp_path):
    with pytest.raises(SystemExit) as e:
        train_check(tmp_path, "--group_size=1", "--checkpoint_interval=0", "--learning_rate=-1.0")
    assert str(e.value).count("\n  ") == 3
    c = train_check(tmp_path, "--loss=grpo", "--compile=True", "--group_size=2", "--vanishing_fix=group_replay")
    assert c["loss"] == "grpo" and c["compile"] is True        # compile: the update step reads it
    assert (tmp_path / "out").is_dir()


def test_out_dir_that_cannot_be_written(tmp_path):
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(SystemExit, match="out_dir=.*a_file/run'.*cannot create or write"):
        check(train, f"--out_dir={tmp_path}/a_file/run", problems=train.path_problems)
    with pytest.raises(SystemExit, match="out_dir=.*cannot create or write"):
        check(sft, f"--out_dir={tmp_path}/a_file/sft")


def test_local_path_or_hub_id(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert source_problem("Qwen/Qwen2.5-VL-7B-Instruct") is None          # a hub id: passed through
    assert source_problem("out/nope") is None       # no folder out/ here: could be the hub's 'out' org
    (tmp_path / "out").mkdir()
    assert "no such model directory" in source_problem("out/nope")
    for name in ("./model", "../x/y", "/abs/model", "a/b/c", "~/m", "nodir"):
        assert "no such model directory" in source_problem(name), name
    (tmp_path / "out" / "m").mkdir()
    assert "no config.json" in source_problem("out/m")
    (tmp_path / "f").write_text("x")
    assert "found a file" in source_problem("f")


def test_sft_eval_ablate_rules(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cases = [
        (sft, ["--batch_size=0"], "batch_size=0: need >= 1"),
        (sft, ["--dtype=bf16"], "did you mean 'bfloat16'"),
        (sft, ["--init_from=o/nope"], "init_from: o/nope: no such model directory"),   # o/: out_dir
        (eval_script, ["--model=run/ckpt.pt"], "model: run/ckpt.pt: no such checkpoint file"),
        (eval_script, ["--sampler=HF"], "did you mean 'hf'"),
        (eval_script, ["--model=Qwen/Qwen2.5-VL-3B-Instruct", "--samples_per_question=0"],
         "samples_per_question=0: need >= 1"),
        (ablate, ["--arms=('grpo', 'reg-grpo+aug')"], "did you mean 'reg_grpo+aug'"),
        (ablate, ["--seeds=()"], "seeds=(): need a tuple of one or more integers"),
        (ablate, ["--eval_every=0"], "eval_every=0: need >= 1"),
    ]
    for script, args, message in cases:
        with pytest.raises(SystemExit) as e:
            check(script, f"--out_dir={tmp_path}/o" if script is not eval_script else "--seed=0", *args)
        assert message in str(e.value), (args, str(e.value))
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(SystemExit, match="out_file=.*cannot create or write to its folder"):
        check(eval_script, "--model=Qwen/Qwen2.5-VL-3B-Instruct", f"--out_file={tmp_path}/a_file/r.json")


def test_ablate_checks_every_arm_with_train_rules(tmp_path):
    c = check(ablate, f"--out_dir={tmp_path}/o", "--extra=--group_size=1")
    with pytest.raises(SystemExit, match="group_size=1: need >= 2"):
        ablate.check_train_settings(c)
    c = check(ablate, f"--out_dir={tmp_path}/o", "--lr_grid={'reg_grpo': (1e-3,)}")
    with pytest.raises(SystemExit, match=r"no learning rates for 'grpo' \(arm grpo\)"):
        ablate.check_train_settings(c)
    c = check(ablate, f"--out_dir={tmp_path}/o", "--arms=('reg_grpo_paper',)", "--lr_grid={'reg_grpo': (1e-3,)}")
    with pytest.raises(SystemExit, match=r"no learning rates for 'reg_grpo_paper' \(arm reg_grpo_paper\)"):
        ablate.check_train_settings(c)          # the printed form has a rate of its own
    with pytest.raises(SystemExit, match="with init_from='m' every run starts from that one model"):
        check(ablate, f"--out_dir={tmp_path}/o", "--init_from=m", "--sft_seeds=(0, 1)")


def test_scripts_exit_before_loading_anything(tmp_path):
    proc = run_script(["train.py", "--loss=reg-grpo", f"--out_dir={tmp_path}/o"], check=False)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "did you mean 'reg_grpo'" in proc.stderr
    rec = {"id": "a", "video": "a.mp4", "question": "q", "options": ["x", "y"], "answer": "A",
           "problem_type": "multiple_choice"}
    write_records(tmp_path / "two.jsonl", [rec, dict(rec, id="b")])
    proc = run_script(["sft.py", f"--train_data={tmp_path}/two.jsonl", f"--val_data={tmp_path}/two.jsonl",
                       "--batch_size=4", f"--out_dir={tmp_path}/sft"], check=False)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert f"{tmp_path}/two.jsonl: 2 records, fewer than batch_size=4" in proc.stderr
    assert not (tmp_path / "sft" / "init").exists()                     # failed before building a model


def test_auto_device_is_cuda_with_bf16_when_a_gpu_is_seen(monkeypatch):
    import torch
    from machinery.configurator import configure
    assert configure({"device": "auto", "dtype": "auto"}, []) == {"device": "cpu", "dtype": "float32"}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert configure({"device": "auto", "dtype": "auto"}, []) == {"device": "cuda", "dtype": "bfloat16"}
    assert configure({"device": "auto", "dtype": "auto"}, ["--dtype=float32"])["dtype"] == "float32"
    assert configure({"device": "auto", "dtype": "auto"}, ["--device=cpu"])["dtype"] == "float32"


def test_one_process_fsdp_run_computes_in_its_dtype(tmp_path):
    """torchrun with one process and --distributed=fsdp leaves the model unsharded: autocast must stay on
    (it was off there, so a bf16 run computed in float32)."""
    from types import SimpleNamespace
    import torch
    import torch.distributed as dist
    from machinery.distributed import autocast
    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/store", rank=0, world_size=1)
    try:
        with autocast(SimpleNamespace(dtype="bfloat16", master_dtype="float32", distributed="fsdp", device="cpu")):
            assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
    finally:
        dist.destroy_process_group()


def test_script_defaults_read_train_settings_without_importing_it():
    """The measurement scripts read train.py's settings from its file (configurator.script_defaults):
    the same values as importing it, with the declared types; difficulty_margin is written as a number
    there and must stay the module's DEFAULT_MARGIN."""
    import difficulty
    from machinery.configurator import is_setting, script_defaults
    from step import STEP_SETTINGS, step_settings
    read = script_defaults("train.py")
    assert {k: v for k, v in read.items() if k != "__annotations__"} == \
        {k: v for k, v in vars(train).items() if is_setting(k, v)}
    assert read["__annotations__"]["fps"] == (float | None)
    assert read["difficulty_margin"] == difficulty.DEFAULT_MARGIN
    s = step_settings(read)
    assert set(vars(s)) == set(STEP_SETTINGS) and s.device == "cpu" and s.dtype == "float32"   # "auto" resolved


def test_check_only_checks_and_exits(tmp_path):
    ok = run_script(["train.py", "--check_only=True", f"--out_dir={tmp_path}/run"])
    assert "settings and paths: ok" in ok.stdout and not (tmp_path / "run" / "log.jsonl").exists()
    bad = run_script(["train.py", "--check_only=True", "--group_size=1", f"--out_dir={tmp_path}/run"], check=False)
    assert bad.returncode == 1 and "group_size=1" in bad.stderr
