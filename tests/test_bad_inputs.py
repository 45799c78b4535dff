"""Bad input, round two: values brought to their declared types, presets that fail, contradictory or
inert settings, model and checkpoint files that cannot load, resume against the checkpoint's settings,
one length rule for every split, the converters' paths and items, and clips whose packets failed.
Most rules are called in-process; a few script runs check the exit code and that no traceback shows."""
import json
import os
import shutil

import numpy as np
import pytest
import torch

import ablate
import eval as eval_script
import sft
import train
from machinery.checkpoint import check_resume_settings, load_weights, safe_load
from machinery.configurator import configure
from conftest import run_script
from machinery.dataset import draw_prompts, load_records, write_records
from model import load_policy, source_problem, tiny_qwen25vl
from rollout import drop_long_prompts, length_problem
from machinery.video import VideoError, read_video, write_video


def check(script, *args, problems=None, warnings=None):
    rules = problems or script.setting_problems
    return configure(dict(vars(script)), list(args), getattr(script, "CHOICES", {}), rules, warnings)


def train_check(tmp_path, *args, warnings=None):
    return check(train, f"--out_dir={tmp_path}/out", "--init_from=Qwen/Qwen2.5-VL-3B-Instruct", *args,
                 problems=lambda c: train.setting_problems(c) + train.path_problems(c), warnings=warnings)


def exits(fn, *args, **kwargs):
    with pytest.raises(SystemExit) as e:
        fn(*args, **kwargs)
    return str(e.value)


# ----------------------------------------------------------------------------- types and presets

@pytest.mark.parametrize("arg,message", [
    ("--fps=two", "command line: 'fps' expects float or None (default None), got 'two'"),
    ("--num_frames=True", "'num_frames' expects int (default 8), got True"),
    ("--max_steps=2.5", "'max_steps' expects int (default 100), got 2.5"),
    ("--learning_rate=1e999", "'learning_rate' expects float (default 3e-05), got inf"),
    ("--init_from=None", "'init_from' expects str"),
    ("--compile=1", "'compile' expects bool (default False), got 1"),
])
def test_a_value_of_the_wrong_type_names_key_value_and_type(tmp_path, arg, message):
    assert message in exits(train_check, tmp_path, arg)


def test_values_are_brought_to_their_declared_types(tmp_path):
    c = train_check(tmp_path, "--fps=2", "--learning_rate=1", "--wandb_run_name=2024")
    assert c["fps"] == 2.0 and isinstance(c["fps"], float) and c["learning_rate"] == 1.0
    assert c["wandb_run_name"] == "2024"                                 # a string setting keeps the text
    assert train_check(tmp_path, "--fps=None")["fps"] is None
    c = check(ablate, f"--out_dir={tmp_path}/a", "--seeds=4", "--arms=grpo,reg_grpo",
              "--lr_grid={'grpo': [1, 2e-5], 'reg_grpo': 3e-5}")
    assert c["seeds"] == (4,) and c["arms"] == ("grpo", "reg_grpo")
    assert c["lr_grid"] == {"grpo": (1.0, 2e-5), "reg_grpo": (3e-5,)}
    for arg in ("--lr_grid=(1e-5,)", "--lr_grid={'grpo': 'fast'}", "--lr_grid={1: (1e-5,)}"):
        assert "'lr_grid' expects dict of str -> tuple of float" in exits(check, ablate, arg)
    assert "'seeds' expects tuple of int" in exits(check, ablate, "--seeds=(0, 'one')")
    with pytest.raises(TypeError, match=r"\['x'\] default to None: declare their type"):
        configure({"x": None}, [])


def test_presets_that_fail_name_their_file_and_line(tmp_path):
    cases = {"syntax.py": ("loss = 'grpo'\ngroup_size = (4\n", "syntax.py:2: cannot read preset (syntax error"),
             "undefined.py": ("loss = 'grpo'\nbeta = kl_weight\n",
                              "undefined.py:2: preset failed to run (NameError: name 'kl_weight' is not defined)"),
             "types.py": ("import math\nbeta = math.sqrt(0.01)\ngroup_size = '8'\n",
                          "types.py:3: 'group_size' expects int (default 8), got '8'"),
             "unknown.py": ("lr = 1e-3\n", "unknown.py:1: unknown setting 'lr'")}
    for name, (source, message) in cases.items():
        (tmp_path / name).write_text(source)
        assert message in exits(train_check, tmp_path, str(tmp_path / name)), name
    (tmp_path / "ok.py").write_text("import math\nbeta = math.sqrt(0.01)\ngroup_size = 4\n")
    c = train_check(tmp_path, str(tmp_path / "ok.py"))
    assert c["beta"] == pytest.approx(0.1) and c["group_size"] == 4


# ----------------------------------------------------------------------------- contradictory or inert

def test_inert_settings_warned_once_each_contradictions_refused(tmp_path, capsys):
    warn = lambda c, given: train.setting_warnings(c, given)
    train_check(tmp_path, "--reg_form=paper", "--loss=grpo", "--clip_eps=0.3", "--max_steps=10", warnings=warn)
    err = capsys.readouterr().err.splitlines()
    assert err == ["warning: reg_form='paper' does nothing with loss='grpo' (it acts only with loss=reg_grpo)"]
    train_check(tmp_path, "--augment=none", "--noise_sigma0=0.5", "--warmup_steps=50", "--max_steps=10", warnings=warn)
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("warning: noise_sigma0=0.5 does nothing with augment='none'")
    assert err[1].startswith("warning: warmup_steps=50 > max_steps=10: the learning rate ends at 0.2 x")
    train_check(tmp_path, "--harder_mode=mask", "--noise_sigma0=0.5", warnings=warn)
    assert "noise_sigma0=0.5 does nothing with harder_mode='mask'" in capsys.readouterr().err
    train_check(tmp_path, "--warmup_steps=0", warnings=warn)                  # the defaults: no warning
    assert capsys.readouterr().err == ""
    (tmp_path / "val.jsonl").write_text("")
    check(eval_script, "--model=Qwen/x", f"--data={tmp_path}/val.jsonl", "--temperature=0.5",
          warnings=eval_script.setting_warnings)
    assert "temperature=0.5 does nothing with samples_per_question=1" in capsys.readouterr().err
    check(ablate, f"--out_dir={tmp_path}/a", "--smoke=True", "--eval_every=3", warnings=ablate.setting_warnings)
    assert "eval_every: does nothing with smoke=True" in capsys.readouterr().err
    assert "master_dtype='bfloat16' with dtype='float32'" in exits(train_check, tmp_path, "--master_dtype=bfloat16")
    assert "flash_attention_2' needs a CUDA device" in exits(train_check, tmp_path,
                                                             "--attn_implementation=flash_attention_2")
    assert "resume_changes='loss,los': 'los' not a setting" in exits(train_check, tmp_path, "--resume_changes=loss,los")


def test_every_missing_path_named_in_one_message(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "out").mkdir()
    msg = exits(check, eval_script, "--model=out/nope", "--data=out/nope.jsonl")
    assert "model: out/nope: no such model directory" in msg
    assert "data: cannot read data: out/nope.jsonl: no such file" in msg
    msg = exits(train_check, tmp_path, "--train_data=t.jsonl", "--val_data=v.jsonl")
    assert "train_data: cannot read data: t.jsonl: no such file" in msg
    assert "val_data: cannot read data: v.jsonl: no such file" in msg


# ----------------------------------------------------------------------------- model and checkpoint files

@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    return tiny_qwen25vl(tmp_path_factory.mktemp("m") / "tiny", texts=["What colour? A. red B. blue"], seed=0)


def test_model_folders_that_cannot_load_name_the_file(tiny_model, tmp_path):
    def damaged(name, how):
        folder = tmp_path / name
        shutil.copytree(tiny_model, folder)
        weights = folder / "model.safetensors"
        if how == "truncate":
            weights.write_bytes(weights.read_bytes()[:weights.stat().st_size // 2])
        elif how == "random":
            weights.write_bytes(np.random.default_rng(0).bytes(weights.stat().st_size))
        elif how == "remove":
            weights.unlink()
        elif how == "config":
            (folder / "config.json").write_text('{"model_type": ')
        elif how == "tokenizer":
            for f in ("tokenizer.json", "tokenizer_config.json"):
                (folder / f).unlink()
        elif how == "index":
            weights.rename(folder / "model-00001-of-00002.safetensors")
            (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {
                "a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}))
        return str(folder)
    assert source_problem(tiny_model) is None
    cases = [("truncate", "model.safetensors: truncated (it ends before its tensors do)"),
             ("random", "model.safetensors: corrupt: not a loadable safetensors file"),
             ("remove", ": no weights (expected model.safetensors or pytorch_model.bin"),
             ("config", "config.json: not readable JSON"),
             ("tokenizer", ": no tokenizer"),
             ("index", "model-00002-of-00002.safetensors: missing (the weights index names it)")]
    for how, message in cases:
        folder = damaged(how, how)
        assert message in source_problem(folder), how
        assert message in exits(load_policy, folder), how                  # no library traceback either


def test_checkpoint_files_that_cannot_load_name_the_file(tmp_path):
    good = tmp_path / "ckpt.pt"
    torch.save({"model": {"w": torch.zeros(64, 64)}, "step": 3}, good)
    assert safe_load(good)["step"] == 3
    data = good.read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[:len(data) // 2])
    (tmp_path / "random.pt").write_bytes(np.random.default_rng(0).bytes(4096))
    (tmp_path / "empty.pt").write_bytes(b"")
    assert "cut.pt: truncated: the zip archive" in exits(safe_load, tmp_path / "cut.pt")
    assert "random.pt: not a checkpoint torch.save wrote" in exits(safe_load, tmp_path / "random.pt")
    assert "empty.pt: empty file (0 bytes)" in exits(safe_load, tmp_path / "empty.pt")
    assert "random.pt: not a checkpoint" in exits(check, eval_script, f"--model={tmp_path}/random.pt")


# ----------------------------------------------------------------------------- resume

def test_resume_compares_the_checkpoints_settings():
    saved = {"loss": "reg_grpo", "group_size": 8, "learning_rate": 3e-5, "max_steps": 100, "eval_samples": 100}
    new = dict(saved, loss="grpo", group_size=4, max_steps=200, eval_samples=50, added_later=1)
    msg = exits(check_resume_settings, "out/run", saved, new, ("max_steps", "eval_samples"))
    assert msg.startswith("out/run: resuming would change what the checkpoint's run was: loss 'reg_grpo' -> 'grpo', "
                          "group_size 8 -> 4. Resume with the checkpoint's values, or accept the change with "
                          "--resume_changes=loss,group_size (or all)")
    check_resume_settings("out/run", saved, new, ("max_steps", "eval_samples"), "loss, group_size")
    check_resume_settings("out/run", saved, new, (), "all")
    assert "max_steps" in train.RESUME_MAY_CHANGE and "loss" not in train.RESUME_MAY_CHANGE
    assert "max_steps" in sft.RESUME_MAY_CHANGE and "batch_size" not in sft.RESUME_MAY_CHANGE


def test_weights_of_another_shape_are_named_not_a_traceback():
    small, big = torch.nn.Linear(4, 4), torch.nn.Sequential(torch.nn.Linear(4, 8))
    msg = exits(load_weights, small, big.state_dict(), "run/ckpt.pt")
    assert msg.startswith("run/ckpt.pt: its weights do not fit this model: 0 tensors of another shape, 2 missing, "
                          "2 unexpected (first: weight)")
    msg = exits(load_weights, small, torch.nn.Linear(4, 8).state_dict(), "run/ckpt.pt")
    assert "2 tensors of another shape" in msg and "weight is (8, 4) there, (4, 4) in the model" in msg


def test_train_resume_refuses_a_changed_method_and_another_model_size(tiny, tmp_path, tiny_model):
    d = tiny["data"]
    args = ["train.py", f"--init_from={tiny['sft']}", f"--train_data={d}/train.jsonl", f"--val_data={d}/val.jsonl",
            f"--out_dir={tmp_path}/run", "--eval_samples=2", "--group_size=2", "--prompts_per_step=2",
            "--max_new_tokens=4", "--checkpoint_interval=1", "--eval_interval=0", "--beta=0.0"]
    run_script([*args, "--max_steps=1"])
    proc = run_script([*args, "--max_steps=2", "--resume=True", "--loss=grpo", "--learning_rate=1e-4"], check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "loss 'reg_grpo' -> 'grpo', learning_rate 3e-05 -> 0.0001" in proc.stderr
    proc = run_script([*args[:1], f"--init_from={tiny_model}", *args[2:], "--max_steps=2", "--resume=True",
                       "--resume_changes=init_from"], check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert f"{tmp_path}/run/ckpt.pt: its weights do not fit this model" in proc.stderr


# ----------------------------------------------------------------------------- one length rule

@pytest.fixture(scope="module")
def clip_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("v") / "clip.mp4"
    write_video(path, np.zeros((4, 56, 56, 3), np.uint8), fps=4)
    return str(path)


def record(i, clip_file, **kw):
    return {"id": f"r{i}", "video": clip_file, "question": "Which colour?", "options": ["red", "blue"],
            "answer": "A", "problem_type": "multiple_choice", "reasoning": "", "meta": {},
            "where": f"x.jsonl:{i + 1}", **kw}


def test_one_length_rule_for_validation_training_and_sft(tiny_model, clip_file):
    from machinery.dataset import read_sample
    from transformers import AutoProcessor
    processor = AutoProcessor.from_pretrained(tiny_model)
    short = read_sample(record(0, clip_file), num_frames=2, max_pixels=56 * 56)
    huge = record(1, clip_file, question="why " * 20000)                     # no frames: judged on its question
    assert length_problem(processor, short, 4096, 48) is None
    assert length_problem(processor, huge, 4096, 48).startswith("prompt of at least ")
    assert length_problem(processor, record(2, clip_file, question="why " * 3000), 4096, 48) is not None
    assert length_problem(processor, record(3, clip_file), 4096, 48) is None
    # validation: the sampling budget; SFT: each target's length; both through drop_long_prompts
    lines, counts = [], {}
    assert drop_long_prompts(processor, [short], 4096, 48, log=lines.append, skipped=counts) == [short]
    kept = drop_long_prompts(processor, [short, dict(short, id="t", where="x.jsonl:9")], 4096,
                             lambda s: 5000 if s["id"] == "t" else 10, log=lines.append, skipped=counts, answer="target")
    assert [s["id"] for s in kept] == ["r0"] and counts == {"prompt too long": 1}
    assert lines[0].startswith("skip x.jsonl:9 (t): prompt of ") and "+ 5000 target tokens exceeds" in lines[0]
    # training: a drawn record is judged before its video is decoded; all too long ends the run, counted
    video = {"num_frames": 2, "max_pixels": 56 * 56, "fps": None}
    records = [record(i, clip_file, question="why " * 20000) for i in range(5)]
    skipped = {}
    msg = exits(draw_prompts, records, __import__("random").Random(0), 2, skipped, video,
                lambda r: length_problem(processor, r, 4096, 48), "x.jsonl")
    assert msg == "x.jsonl: no usable records: all 5 skipped (prompt too long: 5)"


def test_a_training_set_of_long_prompts_ends_at_once(tiny, tmp_path):
    d = tiny["data"]
    records = [dict(r, question="why " * 20000) for r in load_records(d / "train.jsonl")]
    write_records(tmp_path / "long.jsonl", records)
    proc = run_script(["train.py", f"--init_from={tiny['sft']}", f"--train_data={tmp_path}/long.jsonl",
                       f"--val_data={d}/val.jsonl", f"--out_dir={tmp_path}/o", "--eval_samples=2",
                       "--max_new_tokens=4", "--max_steps=1"], check=False, timeout=60)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert f"{tmp_path}/long.jsonl: no usable records: all {len(records)} skipped (prompt too long: " in proc.stderr


# ----------------------------------------------------------------------------- converters

def test_converters_check_paths_and_skip_bad_items_by_index(tmp_path, capsys):
    from data.seedbench_r1.prepare import main as seedbench
    from data.video_r1.prepare import main as video_r1
    good = {"problem_id": 1, "problem": "q", "problem_type": "multiple choice", "options": ["A. x", "B. y"],
            "solution": "<answer>A</answer>", "path": "v.mp4"}
    items = [good, dict(good, problem_id=2, options=[f"{chr(65 + i % 26)}. o{i}" for i in range(27)]),
             dict(good, problem_id=3, options=["A. left", "B. Left "])]
    (tmp_path / "r1.json").write_text(json.dumps(items))
    (tmp_path / "v.mp4").write_bytes(b"")
    video_r1(["--annotations", str(tmp_path / "r1.json"), "--video_root", str(tmp_path), "--out", str(tmp_path / "o.jsonl")])
    err = capsys.readouterr().err
    assert f"{tmp_path}/r1.json: item 1: multiple choice needs 2..26 options, got 27" in err
    assert f"{tmp_path}/r1.json: item 2: option B 'Left' repeats option A 'left'" in err
    assert f"{tmp_path}/r1.json: skipped 2 of 3 items" in err and "warning" not in err   # v.mp4 is there
    assert "--video_root /nope: no such folder" in exits(
        video_r1, ["--annotations", str(tmp_path / "r1.json"), "--video_root", "/nope", "--out", str(tmp_path / "o.jsonl")])
    sb = {"sample_id": 1, "question": "What next?", "answer": "cut", "negative_answers": ["a", "b", "c"],
          "video_source": "E", "video_basename": "v.mp4"}
    val = {"sample_id": 4, "question": "q", "choice_a": "x", "choice_b": None, "choice_c": "z", "choice_d": "w",
           "golden_choice_idx": "A", "video_source": "E", "video_basename": "v.mp4"}
    rows = [sb, dict(sb, sample_id=2, answer=None), dict(sb, sample_id=3, negative_answers=["a", "Cut", "b"]), val]
    (tmp_path / "sb.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    args = ["--annotations", str(tmp_path / "sb.jsonl"), "--video_root", str(tmp_path)]
    seedbench([*args, "--out", str(tmp_path / "sb_out.jsonl")])
    err = capsys.readouterr().err
    assert f"{tmp_path}/sb.jsonl:2: answer must be a non-empty string, got None" in err
    assert f"{tmp_path}/sb.jsonl:3: negative_answers[1] 'Cut' repeats answer 'cut'" in err
    assert f"{tmp_path}/sb.jsonl:4: choice_b must be a non-empty string, got None" in err
    assert "warning: 1 of 1 records name a video that is not under --video_root" in err
    assert [r["id"] for r in load_records(tmp_path / "sb_out.jsonl")] == ["seedbench_r1-1"]
    assert "--out /proc/sb.jsonl: cannot create or write to its folder" in exits(seedbench, [*args, "--out", "/proc/sb.jsonl"])
    assert f"--out {tmp_path}: is a directory" in exits(seedbench, [*args, "--out", str(tmp_path)])


# ----------------------------------------------------------------------------- video

def test_a_clip_whose_packets_mostly_failed_is_rejected_a_few_warned(tmp_path):
    path = tmp_path / "noise.mp4"
    write_video(path, np.random.default_rng(0).integers(0, 256, (30, 64, 160, 3), dtype=np.uint8), fps=10)
    data = path.read_bytes()

    def damaged(name, fraction):
        out = bytearray(data)
        start, n = len(out) // 10, int(len(out) * fraction)
        out[start:start + n] = bytes(n)
        (tmp_path / name).write_bytes(bytes(out))
        return tmp_path / name
    with pytest.raises(VideoError) as e:
        read_video(damaged("mostly.mp4", 0.8), num_frames=8, max_pixels=10**6)
    assert e.value.kind == "damaged" and "7 of the 8 sampled frames repeat an earlier picture" in str(e.value)
    with pytest.warns(UserWarning, match=r"dented.mp4: \d+ packets failed to decode, and 2 of the 8 sampled"):
        frames, _ = read_video(damaged("dented.mp4", 0.3), num_frames=8, max_pixels=10**6)
    assert frames.shape[0] == 8
    frames, _ = read_video(path, num_frames=40, max_pixels=10**6)    # repeats because asked for more: no damage
    assert frames.shape[0] == 40
