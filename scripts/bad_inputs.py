"""
Feed the scripts the bad inputs a new user makes and print what each gets: a markdown table of the
input, the exit code, whether a Python traceback was printed, the seconds it took, whether the
message holds what it must name (the key, file or item), and the message's first line.

    python scripts/bad_inputs.py --init_from=out/tiny-sft --data=data/synthetic   # after python train.py

Every case should end within a minute with no traceback: exit code != 0 where the run cannot go on,
0 where the bad part is skipped by rule (a record, an item) or only warned about (a setting that does
nothing) and the run goes on. Bad files are written into `out_dir`; nothing else is touched.
"""
import json
import os
import shutil
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the project's modules
from machinery.configurator import configure

init_from = "out/tiny-sft"
data = "data/synthetic"
out_dir = "out/bad_inputs"
timeout = 300
only = ""                     # run only the cases whose description contains this text


def cases(d, good, video):
    """(what, command, expected text, prepare) tuples; d: a folder for bad files, good: a valid record,
    video: a readable clip. `expected`: what the message must hold ("" for the older cases, judged by
    eye); `prepare`: a function run just before the case, or None."""
    def jsonl(name, rows):
        path = os.path.join(d, name)
        with open(path, "w", encoding="utf-8") as f:
            for r in rows:
                f.write(r if isinstance(r, str) else json.dumps(r) + "\n")
        return path

    def raw(name, data_bytes):
        path = os.path.join(d, name)
        open(path, "wb").write(data_bytes)
        return path

    def text(name, content):
        return raw(name, content.encode())

    base = [f"--init_from={init_from}", f"--train_data={data}/train.jsonl", f"--val_data={data}/val.jsonl",
            f"--out_dir={d}/run", "--max_steps=1", "--eval_samples=4"]
    small = ["--group_size=2", "--prompts_per_step=2", "--max_new_tokens=8"]
    train = lambda *a: ["train.py", *base, *a]
    resume = lambda *a: ["train.py", *base[:3], f"--out_dir={d}/resumed", "--eval_samples=4", *small,
                         "--checkpoint_interval=1", "--resume=True", *a]
    ok = {**good, "video": video}
    r1 = [{"problem_id": 1, "problem": None, "data_type": "video", "problem_type": "multiple choice",
           "options": ["A. x", "B. y"], "solution": "<answer>A</answer>", "path": "v.mp4"},
          {"problem_id": 2, "problem": "q", "data_type": "video", "problem_type": "numerical", "options": [],
           "solution": 3, "path": "v.mp4"},
          {"problem_id": 3, "problem": "q", "data_type": "video", "problem_type": "multiple choice",
           "options": "A. x B. y", "solution": "<answer>A</answer>", "path": "v.mp4"}]
    r1_good = {"problem_id": 4, "problem": "q", "data_type": "video", "problem_type": "multiple choice",
               "options": ["A. x", "B. y"], "solution": "<answer>A</answer>", "path": "v.mp4"}
    r1_many = dict(r1_good, problem_id=5, options=[f"{chr(65 + i % 26)}. o{i}" for i in range(27)])
    r1_same = dict(r1_good, problem_id=6, options=["A. left", "B. Left "])
    sb = {"sample_id": 1, "question": "What next?", "answer": "cut onion", "negative_answers": ["a", "b", "c"],
          "video_source": "E", "video_basename": "v.mp4"}
    sb_rows = [sb, dict(sb, sample_id=2, answer=None),
               dict(sb, sample_id=3, negative_answers=["cut onion", "cut onion", "cut onion"])]
    good_line = json.dumps(ok).encode()
    latin1 = raw("latin1.jsonl", good_line + b"\n" + good_line.replace(b'"question": "', b'"question": "caf\xe9 ') + b"\n")
    bad_json = jsonl("badjson.jsonl", [ok, "{not json\n"])
    r1_latin1 = raw("r1_latin1.json", json.dumps(r1).encode().replace(b'"q"', b'"caf\xe9"'))
    long_q = "why " * 20000
    long_train = jsonl("long_train.jsonl", [{**ok, "id": f"long{i}", "question": long_q} for i in range(200)])
    long_sft = jsonl("long_sft.jsonl", [{**ok, "id": f"t{i}", "reasoning": "because " * 6000} for i in range(8)])
    one_long_sft = jsonl("one_long_sft.jsonl", [{**ok, "id": f"t{i}"} for i in range(8)]
                         + [{**ok, "id": "t8", "reasoning": "because " * 6000}])

    return [
        ("`--loss=reg-grpo` (dash)", train("--loss=reg-grpo"), "", None),
        ("`--augment=hardr`", train("--augment=hardr"), "", None),
        ("`--vanishing_fix=dynamic`", train("--vanishing_fix=dynamic"), "", None),
        ("`--compile=yes`", train("--compile=yes"), "", None),
        ("`--lerning_rate=1e-5` (unknown key)", train("--lerning_rate=1e-5"), "", None),
        ("`--harder_mode=blur`", train("--harder_mode=blur"), "", None),
        ("`--difficulty_margin=-0.1`", train("--difficulty_margin=-0.1"), "", None),
        ("`--checkpoint_interval=0`", train("--checkpoint_interval=0"), "", None),
        ("`--group_size=1`", train("--group_size=1"), "", None),
        ("`--prompts_per_step=0`", train("--prompts_per_step=0"), "", None),
        ("`--micro_batch_groups=-1`", train("--micro_batch_groups=-1"), "", None),
        ("`--init_from=out/nope` (mistyped path)", ["train.py", *base[1:], "--init_from=out/nope"], "", None),
        ("train.py, read-only `out_dir`", train("--out_dir=/proc/nope"), "", None),
        ("sft.py, read-only `out_dir`", ["sft.py", "--out_dir=/proc/nope", f"--train_data={data}/sft.jsonl"], "", None),
        ("sft.py, `--batch_size` above the set's size", ["sft.py", f"--out_dir={d}/sft", "--batch_size=5000",
                                                         f"--train_data={data}/sft.jsonl",
                                                         f"--val_data={data}/val.jsonl", "--max_steps=1"],
         "fewer than batch_size=5000", None),
        ("eval.py `--model=out/nope`", ["eval.py", "--model=out/nope", f"--data={data}/val.jsonl"], "", None),
        ("eval.py, `--max_samples=-1`", ["eval.py", f"--model={init_from}", f"--data={data}/val.jsonl",
                                          "--max_samples=-1"], "", None),
        ("ablate.py `--arms=grpo,reg-grpo`", ["ablate.py", "--arms=('grpo','reg-grpo')"], "", None),
        ("empty validation file", train(f"--val_data={jsonl('empty.jsonl', [])}"), "", None),
        ("bad JSON line", train(f"--val_data={bad_json}"), "", None),
        ("option letter E of 4 options", train(f"--val_data={jsonl('letter.jsonl', [{**ok, 'answer': 'E'}])}"), "", None),
        ("numerical answer not a number", train(f"--val_data={jsonl('num.jsonl', [{**ok, 'problem_type': 'numerical', 'options': [], 'answer': 'three'}])}"), "", None),
        ("non-UTF-8 line", train(f"--val_data={latin1}"), "", None),
        ("missing video (one of two records)", train(f"--val_data={jsonl('missing.jsonl', [ok, {**ok, 'id': 'gone', 'video': 'nope.mp4'}])}"), "", None),
        ("corrupt video (one of two records)", train(f"--val_data={jsonl('corrupt.jsonl', [ok, {**ok, 'id': 'bad', 'video': raw('corrupt.mp4', b'not an mp4' * 100)}])}"), "", None),
        ("question longer than the model's positions", train(f"--val_data={jsonl('long.jsonl', [ok, {**ok, 'id': 'long', 'question': long_q}])}"), "", None),
        ("Video-R1 converter: null problem, integer solution, options as a string",
         ["data/video_r1/prepare.py", f"--annotations={raw('r1.json', json.dumps(r1).encode())}",
          f"--video_root={d}", f"--out={d}/r1.jsonl"], "", None),
        ("Video-R1 converter: non-UTF-8 file", ["data/video_r1/prepare.py", f"--annotations={r1_latin1}",
                                                f"--video_root={d}", f"--out={d}/r1.jsonl"], "", None),
        # --- a value of the wrong type
        ("`--fps=two`", train("--fps=two"), "'fps' expects float or None", None),
        ("`--num_frames=True`", train("--num_frames=True"), "'num_frames' expects int", None),
        ("`--max_steps=2.5`", train("--max_steps=2.5"), "'max_steps' expects int", None),
        ("`--learning_rate=1e999` (infinite)", train("--learning_rate=1e999"), "'learning_rate' expects float", None),
        ("`--init_from=None`", train("--init_from=None"), "'init_from' expects str", None),
        ("ablate.py `--lr_grid=(1e-5,)` (a tuple for a dict)", ["ablate.py", "--lr_grid=(1e-5,)"],
         "'lr_grid' expects dict of str -> tuple of float", None),
        ("ablate.py `--lr_grid={'grpo': 'fast'}`", ["ablate.py", "--lr_grid={'grpo': 'fast'}"],
         "'lr_grid' expects dict of str -> tuple of float", None),
        ("ablate.py `--seeds=(0, 'one')`", ["ablate.py", "--seeds=(0, 'one')"], "'seeds' expects tuple of int", None),
        ("eval.py `--batch_size=big`", ["eval.py", f"--model={init_from}", f"--data={data}/val.jsonl",
                                        "--batch_size=big"], "'batch_size' expects int", None),
        # --- presets
        ("preset with a syntax error", train(text("syntax.py", "loss = 'grpo'\ngroup_size = (4\n")), "syntax.py:2:", None),
        ("preset with an undefined name", train(text("undefined.py", "loss = 'grpo'\nbeta = kl_weight\n")),
         "undefined.py:2: preset failed to run (NameError", None),
        ("preset with a value of the wrong type", train(text("wrongtype.py", "loss = 'grpo'\ngroup_size = '8'\n")),
         "wrongtype.py:2: 'group_size' expects int", None),
        ("preset that is a folder", train(d), "cannot read preset", None),
        # --- contradictory or inert settings
        ("`--warmup_steps=50` > `--max_steps=1` (warned, runs)", train("--warmup_steps=50", *small),
         "warning: warmup_steps=50 > max_steps=1", None),
        ("`--reg_form=paper` with `--loss=grpo` (warned, runs)", train("--reg_form=paper", "--loss=grpo", *small),
         "warning: reg_form='paper' does nothing with loss='grpo'", None),
        ("`--clip_eps=0.3` with Reg-GRPO, `--noise_sigma0` with `--augment=none` (warned, runs)",
         train("--clip_eps=0.3", "--augment=none", "--noise_sigma0=0.5", *small), "warning: clip_eps=0.3 does nothing", None),
        ("`--master_dtype=bfloat16` with `--dtype=float32`", train("--master_dtype=bfloat16"),
         "master_dtype='bfloat16' with dtype='float32'", None),
        ("`--attn_implementation=flash_attention_2` on CPU", train("--attn_implementation=flash_attention_2"),
         "attn_implementation='flash_attention_2' needs a CUDA device", None),
        ("eval.py `--temperature=0.7` with greedy answers (warned, runs)",
         ["eval.py", f"--model={init_from}", f"--data={data}/val.jsonl", "--temperature=0.7", "--max_samples=2",
          "--max_new_tokens=4", f"--out_file={d}/e.json"], "warning: temperature=0.7 does nothing", None),
        # --- model and checkpoint files
        ("`init_from` with a truncated model.safetensors", train(f"--init_from={d}/m_truncated"),
         "m_truncated/model.safetensors: truncated", lambda: bad_model(d, "m_truncated", "truncate")),
        ("`init_from` with a model.safetensors of random bytes", train(f"--init_from={d}/m_random"),
         "m_random/model.safetensors: corrupt", lambda: bad_model(d, "m_random", "random")),
        ("`init_from` folder without weights", train(f"--init_from={d}/m_noweights"), "m_noweights: no weights",
         lambda: bad_model(d, "m_noweights", "remove")),
        ("`init_from=Qwen/not-here` (a hub id, no network)", train("--init_from=Qwen/not-here"),
         "Qwen/not-here: cannot load the model", None),
        ("`init_from` whose config.json is not JSON", train(f"--init_from={d}/m_badconfig"),
         "m_badconfig/config.json: not readable JSON", lambda: bad_model(d, "m_badconfig", "config")),
        ("eval.py `--model=` a ckpt.pt of random bytes", ["eval.py", f"--model={raw('random_ckpt.pt', os.urandom(4096))}",
                                                          f"--data={data}/val.jsonl"],
         "random_ckpt.pt: not a checkpoint torch.save wrote", None),
        ("eval.py `--model=` a truncated ckpt.pt", ["eval.py", f"--model={d}/truncated_ckpt.pt", f"--data={data}/val.jsonl"],
         "truncated_ckpt.pt: truncated", lambda: truncated_copy(f"{d}/ckpt_run/ckpt.pt", f"{d}/truncated_ckpt.pt")),
        ("eval.py, model and data both missing", ["eval.py", f"--model={d}/no_model", f"--data={d}/no_data.jsonl"],
         "no_data.jsonl: no such file", None),
        # --- resume
        ("resume with another loss, group size and learning rate", resume("--loss=grpo", "--group_size=4",
                                                                            "--learning_rate=1e-4", "--max_steps=2"),
         "loss 'reg_grpo' -> 'grpo', group_size 2 -> 4", lambda: fresh_copy(d)),
        ("resume with another model size", resume(f"--init_from={d}/m_other", "--max_steps=2"),
         "init_from", lambda: (fresh_copy(d), other_size_model(d))),
        ("resume with another model size, the change accepted", resume(f"--init_from={d}/m_other", "--max_steps=2",
                                                                        "--resume_changes=init_from"),
         "its weights do not fit this model", lambda: fresh_copy(d)),
        ("resume past the checkpoint's end (`--max_steps` not raised)", resume("--max_steps=1"),
         "nothing left to run", lambda: fresh_copy(d)),
        ("resume naming a setting that does not exist", resume("--max_steps=2", "--resume_changes=los"),
         "resume_changes='los'", lambda: fresh_copy(d)),
        ("resume with a longer run and a new eval_samples (allowed, runs)", resume("--max_steps=2", "--eval_samples=2"),
         "resumed from", lambda: fresh_copy(d)),
        ("resume from a ckpt.pt of random bytes", resume("--max_steps=2"), "ckpt.pt: not a checkpoint torch.save wrote",
         lambda: (fresh_copy(d), raw("resumed/ckpt.pt", os.urandom(4096)))),
        # --- lengths
        ("training set whose every prompt is too long", train(f"--train_data={long_train}", *small),
         "no usable records: all 200 skipped (prompt too long: 200)", None),
        ("SFT set whose every target is too long", ["sft.py", f"--out_dir={d}/sft_long", f"--train_data={long_sft}",
                                                    f"--val_data={data}/val.jsonl", "--batch_size=2", "--max_steps=1"],
         "every prompt + its answer exceeds", None),
        ("SFT set with one target too long (skipped, runs)",
         ["sft.py", f"--out_dir={d}/sft_one_long", f"--train_data={one_long_sft}", f"--val_data={data}/val.jsonl",
          "--batch_size=2", "--max_steps=1", "--eval_samples=2", "--max_new_tokens=4"],
         "one_long_sft.jsonl:9 (t8): prompt of", lambda: shutil.rmtree(f"{d}/sft_one_long", ignore_errors=True)),
        # --- converters
        ("Video-R1 converter: one item with 27 options, one with repeated options (skipped, runs)",
         ["data/video_r1/prepare.py", f"--annotations={raw('r1_many.json', json.dumps([r1_good, r1_many, r1_same]).encode())}",
          f"--video_root={d}", f"--out={d}/r1.jsonl"], "item 1: multiple choice needs 2..26 options, got 27", None),
        ("Video-R1 converter: `--video_root` that does not exist",
         ["data/video_r1/prepare.py", f"--annotations={d}/r1_many.json", f"--video_root={d}/no_root", f"--out={d}/r1.jsonl"],
         "--video_root", None),
        ("SEED-Bench-R1 converter: null answer, negatives equal to the answer (skipped, runs)",
         ["data/seedbench_r1/prepare.py", f"--annotations={jsonl('sb.jsonl', sb_rows)}", f"--video_root={d}",
          f"--out={d}/sb_out.jsonl"], "sb.jsonl:2: answer must be a non-empty string, got None", None),
        ("SEED-Bench-R1 converter: unwritable `--out`",
         ["data/seedbench_r1/prepare.py", f"--annotations={d}/sb.jsonl", f"--video_root={d}", "--out=/proc/sb.jsonl"],
         "--out /proc/sb.jsonl: cannot create or write", None),
        ("SEED-Bench-R1 converter: `--out` is a folder",
         ["data/seedbench_r1/prepare.py", f"--annotations={d}/sb.jsonl", f"--video_root={d}", f"--out={d}"],
         "is a directory", None),
        # --- video
        ("clip whose packets mostly fail to decode (one of two records)",
         train(f"--val_data={jsonl('damaged.jsonl', [ok, {**ok, 'id': 'damaged', 'video': f'{d}/damaged.mp4'}])}", *small),
         "damaged.mp4: damaged: ", lambda: damaged_clip(f"{d}/damaged.mp4", 0.8)),
        ("clip with a few packets that fail to decode (warned, runs)",
         train(f"--val_data={jsonl('dented.jsonl', [ok, {**ok, 'id': 'dented', 'video': f'{d}/dented.mp4'}])}", *small),
         "packets failed to decode", lambda: damaged_clip(f"{d}/dented.mp4", 0.3)),
    ]


# ----------------------------------------------------------------------------- bad files

def bad_model(d, name, how):
    """A copy of init_from's model folder, damaged: truncate | random | remove (the weights) | config."""
    folder = os.path.join(d, name)
    shutil.rmtree(folder, ignore_errors=True)
    shutil.copytree(init_from, folder, ignore=shutil.ignore_patterns("init", "ckpt*"))
    weights = os.path.join(folder, "model.safetensors")
    if how == "truncate":
        truncated_copy(weights, weights)
    elif how == "random":
        open(weights, "wb").write(os.urandom(os.path.getsize(weights)))
    elif how == "remove":
        os.remove(weights)
    elif how == "config":
        open(os.path.join(folder, "config.json"), "w").write('{"model_type": "qwen2_5_vl", ')


def truncated_copy(src, dst):
    data = open(src, "rb").read()
    open(dst, "wb").write(data[:len(data) // 2])


def fresh_copy(d):
    """d/resumed: a copy of the one-step run with a checkpoint made at the start."""
    shutil.rmtree(f"{d}/resumed", ignore_errors=True)
    shutil.copytree(f"{d}/ckpt_run", f"{d}/resumed", symlinks=True)


def other_size_model(d):
    """d/m_other: a tiny model of another size (2 layers) with init_from's tokenizer texts."""
    if not os.path.isdir(f"{d}/m_other"):
        subprocess.run([sys.executable, "-c", "from model import tiny_qwen25vl; "
                        f"tiny_qwen25vl({f'{d}/m_other'!r}, texts=['hello'], num_hidden_layers=2)"],
                       check=True, capture_output=True)


def damaged_clip(path, fraction):
    """A noise clip (its packets fill the file) with `fraction` of its bytes zeroed from 10% in: the
    packets there fail to decode."""
    import numpy as np
    from machinery.video import write_video
    write_video(path, np.random.default_rng(0).integers(0, 256, (30, 64, 160, 3), dtype=np.uint8), fps=10)
    data = bytearray(open(path, "rb").read())
    start, n = len(data) // 10, int(len(data) * fraction)
    data[start:start + n] = bytes(n)
    open(path, "wb").write(bytes(data))


def first_line(text, expected):
    """The line a reader looks at: the one holding `expected`, else the first that reads as a message."""
    lines = [l.rsplit("it/s]", 1)[-1].strip() for l in text.splitlines()]   # what follows a progress bar
    lines = [l for l in lines if l and not l.startswith(("Loading", "Writing")) and "(none bad)" not in l]
    if expected:
        hit = [l for l in lines if expected in l]
        if hit:
            return hit[-1]
    key = [l for l in lines if any(w in l for w in ("skip", "bad", "error", "Error", "not", "cannot", "no "))
           and not l.startswith("warning:")]
    if key and key[0] == "bad settings:":                      # the problems follow, one per line
        key[0] = "bad settings: " + lines[lines.index("bad settings:") + 1]
    return (key or [l for l in lines if not l.startswith("warning:")] or lines or [""])[0]


def main():
    configure(globals(), sys.argv[1:])
    os.makedirs(out_dir, exist_ok=True)
    d = os.path.abspath(out_dir)
    first = json.loads(open(os.path.join(data, "val.jsonl")).readline())
    video = os.path.abspath(os.path.join(data, first["video"]))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    shutil.rmtree(f"{d}/ckpt_run", ignore_errors=True)          # the run the resume cases continue
    subprocess.run([sys.executable, "train.py", f"--init_from={init_from}", f"--train_data={data}/train.jsonl",
                    f"--val_data={data}/val.jsonl", f"--out_dir={d}/ckpt_run", "--max_steps=1", "--eval_samples=4",
                    "--group_size=2", "--prompts_per_step=2", "--max_new_tokens=8", "--checkpoint_interval=1"],
                   check=True, capture_output=True, env=env)
    print("| input | exit | traceback | seconds | names it | message (first line) |\n|---|---|---|---|---|---|")
    for what, cmd, expected, prepare in cases(d, first, video):
        if only not in what:
            continue
        subprocess.run(["rm", "-rf", f"{d}/run"])
        if prepare:
            prepare()
        t0 = time.time()
        try:
            p = subprocess.run([sys.executable, *cmd], capture_output=True, text=True, timeout=timeout, env=env)
        except subprocess.TimeoutExpired:
            print(f"| {what} | timeout | | {timeout} | | |")
            continue
        seconds = time.time() - t0
        text = p.stdout + p.stderr
        msg = first_line(text, expected)[:160].replace("|", "/")
        named = ("yes" if expected in text else "NO") if expected else "-"
        print(f"| {what} | {p.returncode} | {'yes' if 'Traceback' in text else 'no'} | {seconds:.0f} | {named} | "
              f"{msg} |", flush=True)


if __name__ == "__main__":
    main()
