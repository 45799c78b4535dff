"""
Accuracy of a policy on a JSONL split: greedy (or n sampled answers per question), overall and per
question family / difficulty bucket, written to JSON and printed as a small table.

    python eval.py                                   # the main command's model on the synthetic validation split
    python eval.py --model=Qwen/Qwen2.5-VL-7B-Instruct --data=seedbench/validation_L1.jsonl --device=cuda

`--model` takes a checkpoint `train.py` wrote (`ckpt.pt`, or its folder), the model folder it exports
(`out/tiny-rl/model`), or any Qwen2.5-VL checkpoint `load_policy` can open (hub id or local folder).
"""
import json
import os
import sys
from collections import defaultdict

import torch

from machinery.configurator import DTYPES, configure, video_problems, writable_dir
from machinery.dataset import load_samples, read_records_or_exit
from machinery.distributed import all_gather_objects_or_self
from model import max_positions
from rollout import drop_long_prompts, generate_rollout

# -----------------------------------------------------------------------------
model = "out/tiny-rl/model"       # what the main command exports; also a ckpt.pt or its folder, or a hub id
data = "data/synthetic/val.jsonl"
out_file = ""                 # default: <model folder>/eval_<split>.json
max_samples = 0               # 0: all
samples_per_question = 1      # 1: greedy; n > 1: n answers at `temperature`, accuracy averaged
temperature = 1.0
sampler = "auto"              # fast (machinery/sampler.py) | hf (transformers' generate) | auto (fast)
decode_compile: bool | None = None  # fast sampler on CUDA: torch.compile its decode step (None: models >= 100M)
decode_graph = True           # fast sampler on CUDA: capture its decode step in a CUDA graph
batch_size = 64              # questions per generate call; wider is faster on CPU, same greedy answers
max_new_tokens = 64
num_frames = 8
max_pixels = 112 * 112
fps: float | None = None      # frames sampled at this rate (at most num_frames); None: spread over the clip
device = "auto"               # auto: cuda when a GPU is visible, else cpu
dtype = "auto"                # auto: bfloat16 on cuda, float32 on cpu
seed = 0
# -----------------------------------------------------------------------------
CHOICES = {"dtype": DTYPES, "sampler": ("auto", "fast", "hf")}


def setting_problems(c):
    """Ranges, as (holds, message); the model and the output folder checked before loading."""
    return video_problems(c) + [
        (c["max_samples"] >= 0, f"max_samples={c['max_samples']}: need >= 0 (0: all)"),
        (c["samples_per_question"] >= 1, f"samples_per_question={c['samples_per_question']}: need >= 1"),
        (c["temperature"] > 0, f"temperature={c['temperature']}: need > 0"),
        (c["batch_size"] >= 1, f"batch_size={c['batch_size']}: need >= 1"),
        (c["max_new_tokens"] >= 1, f"max_new_tokens={c['max_new_tokens']}: need >= 1"),
        (not model_problem(c["model"]), f"model: {model_problem(c['model'])}"),
        (os.path.isfile(c["data"]), f"data: cannot read data: {c['data']}: no such file"),
        (writable_dir(os.path.dirname(output_path(c)) or "."),
         f"out_file={output_path(c)!r}: cannot create or write to its folder"),
    ]


def setting_warnings(c, given):
    """Allowed but inert: a temperature for greedy answers."""
    return [("temperature" not in given or c["samples_per_question"] > 1,
             f"temperature={c['temperature']} does nothing with samples_per_question=1 (greedy answers; it acts "
             "only with samples_per_question > 1)")]


def model_problem(path):
    """None when `path` is a train.py / sft.py checkpoint (ckpt.pt or its folder) or a loadable model."""
    from machinery.checkpoint import torch_file_problem
    from model import source_problem
    if path.endswith(".pt"):
        if not os.path.isfile(path):
            return f"{path}: no such checkpoint file"
        problem = torch_file_problem(path)
        return f"{path}: {problem}" if problem else None
    if os.path.isfile(os.path.join(path, "ckpt.pt")):
        return model_problem(os.path.join(path, "ckpt.pt"))
    return source_problem(path)


def output_path(c):
    """out_file, or eval_<split>.json beside the checkpoint (or in the model folder, or here)."""
    split = os.path.splitext(os.path.basename(c["data"]))[0]
    model = c["model"]
    return c["out_file"] or os.path.join(os.path.dirname(model) if model.endswith(".pt") else
                                         (model if os.path.isdir(model) else "."), f"eval_{split}.json")


def difficulty_bucket(record):
    d = (record.get("meta") or {}).get("difficulty")
    if d is None:
        return None
    return "easy" if d < 1 / 3 else "medium" if d < 2 / 3 else "hard"


@torch.no_grad()
def evaluate(policy, processor, samples, batch_size=64, max_new_tokens=64, samples_per_question=1,
             temperature=1.0, rank=0, world_size=1, sampler="auto", decode_compile=None, decode_graph=True):
    """Accuracy and format rate over `samples` (records with decoded "frames" and their "times").

    Under torchrun each rank answers a strided shard and the counts are summed; every rank runs the
    same number of generate calls (needed when the model is sharded with FSDP2).
    """
    greedy = samples_per_question == 1
    shard = samples[rank::world_size]
    n_batches = -(-len(samples) // (batch_size * world_size))
    sums = defaultdict(lambda: [0.0, 0.0, 0])                          # key -> [acc, fmt, count]
    for b in range(n_batches):
        batch = shard[b * batch_size:(b + 1) * batch_size]
        real = len(batch)
        batch = batch or samples[:1]                                  # keep ranks in step
        rollout = generate_rollout(policy, processor, batch, [s["frames"] for s in batch],
                                   samples_per_question, max_new_tokens=max_new_tokens,
                                   temperature=temperature, greedy=greedy,
                                   synced_gpus=world_size > 1, sampler=sampler, decode_compile=decode_compile,
                                   decode_graph=decode_graph)
        acc = rollout.accuracy.view(len(batch), -1).mean(1)
        fmt = rollout.format.view(len(batch), -1).mean(1)
        for s, a, f in list(zip(batch, acc.tolist(), fmt.tolist()))[:real]:
            family = (s.get("meta") or {}).get("family")
            for key in ("all", f"type:{s['problem_type']}", family and f"family:{family}",
                        difficulty_bucket(s) and f"difficulty:{difficulty_bucket(s)}"):
                if key:
                    sums[key][0] += a
                    sums[key][1] += f
                    sums[key][2] += 1
    if world_size > 1:
        keys = sorted(set().union(*all_gather_objects_or_self(sorted(sums))))
        counts = torch.tensor([sums[k] for k in keys], dtype=torch.float64, device=policy.device)
        torch.distributed.all_reduce(counts)
        sums = {k: c.tolist() for k, c in zip(keys, counts.cpu())}
    return {k: {"accuracy": a / n, "format": f / n, "n": int(n)} for k, (a, f, n) in sorted(sums.items())}


def eval_key(model_dir, data_path, n_questions, max_new_tokens, num_frames, max_pixels, fps, sampler, dtype,
             device, batch_size=64, ranks=1):
    """What a greedy evaluation's result depends on, as JSON-ready lists: the weight files (name, size,
    mtime), the split's file, the number of questions, the answer budget, the video settings, the
    sampler, the dtype, the device type, the batch width and the number of ranks sharing the questions
    (both decide which questions share a batch, whose padding can move float sums)."""
    def stamp(path):
        st = os.stat(path)
        return [st.st_size, st.st_mtime_ns]
    weights = sorted([f, *stamp(os.path.join(model_dir, f))]
                     for f in os.listdir(model_dir) if f.endswith((".safetensors", ".bin")))
    data = [os.path.abspath(data_path), *stamp(data_path)]
    return {"weights": weights, "data": data, "questions": n_questions, "max_new_tokens": max_new_tokens,
            "num_frames": num_frames, "max_pixels": max_pixels, "fps": fps, "sampler": sampler,
            "dtype": str(dtype), "device": torch.device(device).type, "batch_size": batch_size, "ranks": ranks}


def saved_eval(model_dir, key):
    """The greedy results sft.py saved beside the weights in model_dir/sft_summary.json when they were
    computed under exactly `key` (eval_key), else None: train.py's step-0 evaluation of the same
    weights on the same questions would repeat them answer for answer."""
    summary_file = os.path.join(model_dir, "sft_summary.json")
    if not os.path.isfile(summary_file):
        return None
    try:
        with open(summary_file) as f:
            summary = json.load(f)
    except (OSError, ValueError):
        return None
    return summary.get("val") if summary.get("eval_key") == key else None


def format_table(results):
    lines = [f"{'subset':<28} {'n':>5} {'accuracy':>9} {'format':>7}"]
    for key, r in results.items():
        lines.append(f"{key:<28} {r['n']:>5} {r['accuracy']:>9.3f} {r['format']:>7.3f}")
    return "\n".join(lines)


def load_any_policy(path, device="cpu", dtype="float32"):
    """A train.py / sft.py checkpoint (ckpt.pt or its folder) or any Qwen2.5-VL checkpoint."""
    from model import load_policy
    torch_dtype = getattr(torch, dtype)
    ckpt_file = path if path.endswith(".pt") else os.path.join(path, "ckpt.pt")
    if os.path.isfile(ckpt_file):
        from machinery.checkpoint import load_weights, safe_load
        from model import source_problem
        ckpt = safe_load(ckpt_file)                                 # tensors and plain types only
        init_from = ckpt.get("config", {}).get("init_from") if isinstance(ckpt, dict) else None
        if not isinstance(init_from, str) or not isinstance(ckpt.get("model"), dict):
            raise SystemExit(f"{ckpt_file}: not a train.py / sft.py checkpoint (expected a dict with 'model' "
                             "weights and the run's 'config' naming its init_from)")
        if source_problem(init_from):
            raise SystemExit(f"{ckpt_file}: its model is built from init_from, which does not load: "
                             f"{source_problem(init_from)}")
        policy, processor = load_policy(init_from, dtype=torch_dtype, device=device)
        load_weights(policy, ckpt["model"], ckpt_file)
        return policy, processor
    if path.endswith(".pt"):
        raise SystemExit(f"{path}: no such checkpoint file")
    return load_policy(path, dtype=torch_dtype, device=device)


def main():
    config = configure(globals(), sys.argv[1:], CHOICES, setting_problems, setting_warnings)
    torch.manual_seed(seed)
    records = read_records_or_exit(data)                            # fail before loading the model
    policy, processor = load_any_policy(model, device=device, dtype=dtype)
    if max_samples:
        records = records[:max_samples]
    skipped = {}                                                    # reason -> count, into the JSON
    samples = load_samples(records, num_frames=num_frames, max_pixels=max_pixels, fps=fps, skipped=skipped)
    samples = drop_long_prompts(processor, samples, max_positions(policy), max_new_tokens, skipped=skipped)
    results = evaluate(policy, processor, samples, batch_size, max_new_tokens, samples_per_question,
                       temperature, sampler=sampler, decode_compile=decode_compile, decode_graph=decode_graph)
    print(format_table(results))
    target = output_path(config)
    with open(target, "w") as f:
        json.dump({"model": model, "data": data, "results": results, "skipped_records": skipped}, f, indent=2)
    print(f"wrote {target}")


if __name__ == "__main__":
    main()
