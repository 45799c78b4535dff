"""
Feed the scripts the bad inputs a new user makes and print what each gets: a markdown table of the
input, the exit code, whether a Python traceback was printed, and the message's first line.

    python scripts/bad_inputs.py --init_from=out/tiny-sft --data=data/synthetic   # after python train.py

Every case should end with exit code != 0 (or a reported skip) and no traceback. Bad data files are
written into `out_dir`; nothing else is touched.
"""
import json
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the project's modules
from configurator import configure

init_from = "out/tiny-sft"
data = "data/synthetic"
out_dir = "out/bad_inputs"
timeout = 300


def cases(d, good, video):
    """(what, command) pairs; d: a folder for bad files, good: a valid record, video: a readable clip."""
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

    base = [f"--init_from={init_from}", f"--train_data={data}/train.jsonl", f"--val_data={data}/val.jsonl",
            f"--out_dir={d}/run", "--max_steps=1", "--eval_samples=4"]
    train = lambda *a: ["train.py", *base, *a]
    ok = {**good, "video": video}
    r1 = [{"problem_id": 1, "problem": None, "data_type": "video", "problem_type": "multiple choice",
           "options": ["A. x", "B. y"], "solution": "<answer>A</answer>", "path": "v.mp4"},
          {"problem_id": 2, "problem": "q", "data_type": "video", "problem_type": "numerical", "options": [],
           "solution": 3, "path": "v.mp4"},
          {"problem_id": 3, "problem": "q", "data_type": "video", "problem_type": "multiple choice",
           "options": "A. x B. y", "solution": "<answer>A</answer>", "path": "v.mp4"}]
    good_line = json.dumps(ok).encode()
    latin1 = raw("latin1.jsonl", good_line + b"\n" + good_line.replace(b'"question": "', b'"question": "caf\xe9 ') + b"\n")
    bad_json = jsonl("badjson.jsonl", [ok, "{not json\n"])
    r1_latin1 = raw("r1_latin1.json", json.dumps(r1).encode().replace(b'"q"', b'"caf\xe9"'))
    return [
        ("`--loss=reg-grpo` (dash)", train("--loss=reg-grpo")),
        ("`--augment=hardr`", train("--augment=hardr")),
        ("`--vanishing_fix=dynamic`", train("--vanishing_fix=dynamic")),
        ("`--compile=yes`", train("--compile=yes")),
        ("`--lerning_rate=1e-5` (unknown key)", train("--lerning_rate=1e-5")),
        ("`--harder_mode=blur`", train("--harder_mode=blur")),
        ("`--difficulty_margin=-0.1`", train("--difficulty_margin=-0.1")),
        ("`--checkpoint_interval=0`", train("--checkpoint_interval=0")),
        ("`--group_size=1`", train("--group_size=1")),
        ("`--prompts_per_step=0`", train("--prompts_per_step=0")),
        ("`--micro_batch_groups=-1`", train("--micro_batch_groups=-1")),
        ("`--init_from=out/nope` (mistyped path)", ["train.py", *base[1:], "--init_from=out/nope"]),
        ("train.py, read-only `out_dir`", train("--out_dir=/proc/nope")),
        ("sft.py, read-only `out_dir`", ["sft.py", "--out_dir=/proc/nope", f"--train_data={data}/sft.jsonl"]),
        ("sft.py, `--batch_size` above the set's size", ["sft.py", f"--out_dir={d}/sft", "--batch_size=5000",
                                                         f"--train_data={data}/sft.jsonl", "--max_steps=1"]),
        ("eval.py `--model=out/nope`", ["eval.py", "--model=out/nope", f"--data={data}/val.jsonl"]),
        ("eval.py, `--max_samples=-1`", ["eval.py", f"--model={init_from}", f"--data={data}/val.jsonl",
                                          "--max_samples=-1"]),
        ("ablate.py `--arms=grpo,reg-grpo`", ["ablate.py", "--arms=('grpo','reg-grpo')"]),
        ("empty validation file", train(f"--val_data={jsonl('empty.jsonl', [])}")),
        ("bad JSON line", train(f"--val_data={bad_json}")),
        ("option letter E of 4 options", train(f"--val_data={jsonl('letter.jsonl', [{**ok, 'answer': 'E'}])}")),
        ("numerical answer not a number", train(f"--val_data={jsonl('num.jsonl', [{**ok, 'problem_type': 'numerical', 'options': [], 'answer': 'three'}])}")),
        ("non-UTF-8 line", train(f"--val_data={latin1}")),
        ("missing video (one of two records)", train(f"--val_data={jsonl('missing.jsonl', [ok, {**ok, 'id': 'gone', 'video': 'nope.mp4'}])}")),
        ("corrupt video (one of two records)", train(f"--val_data={jsonl('corrupt.jsonl', [ok, {**ok, 'id': 'bad', 'video': raw('corrupt.mp4', b'not an mp4' * 100)}])}")),
        ("question longer than the model's positions", train(f"--val_data={jsonl('long.jsonl', [ok, {**ok, 'id': 'long', 'question': 'why ' * 20000}])}")),
        ("Video-R1 converter: null problem, integer solution, options as a string",
         ["data/video_r1/prepare.py", f"--annotations={raw('r1.json', json.dumps(r1).encode())}",
          f"--video_root={d}", f"--out={d}/r1.jsonl"]),
        ("Video-R1 converter: non-UTF-8 file", ["data/video_r1/prepare.py", f"--annotations={r1_latin1}",
                                                f"--video_root={d}", f"--out={d}/r1.jsonl"]),
    ]


def main():
    configure(globals(), sys.argv[1:])
    os.makedirs(out_dir, exist_ok=True)
    d = os.path.abspath(out_dir)
    first = json.loads(open(os.path.join(data, "val.jsonl")).readline())
    video = os.path.abspath(os.path.join(data, first["video"]))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    print("| input | exit | traceback | message (first line) |\n|---|---|---|---|")
    for what, cmd in cases(d, first, video):
        subprocess.run(["rm", "-rf", f"{d}/run"])
        try:
            p = subprocess.run([sys.executable, *cmd], capture_output=True, text=True, timeout=timeout, env=env)
        except subprocess.TimeoutExpired:
            print(f"| {what} | timeout | | |")
            continue
        text = p.stdout + p.stderr
        lines = [l.strip() for l in text.splitlines() if l.strip() and not l.startswith(("Loading", "Writing"))
                 and "it/s]" not in l and "(none bad)" not in l]
        key = [l for l in lines if any(w in l for w in ("skip", "bad", "error", "Error", "not", "cannot", "no "))]
        if key and key[0] == "bad settings:":                      # the problems follow, one per line
            key[0] = "bad settings: " + lines[lines.index("bad settings:") + 1]
        msg = (key or lines or [""])[0][:160].replace("|", "/")
        print(f"| {what} | {p.returncode} | {'yes' if 'Traceback' in text else 'no'} | {msg} |", flush=True)


if __name__ == "__main__":
    main()
