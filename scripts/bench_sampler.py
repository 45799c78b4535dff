"""
Time our decode loop (sampler.py, "fast") against transformers' generate ("hf") side by side, one run.

    python scripts/bench_sampler.py                                  # tiny random model on CPU, embedded-default shapes
    python scripts/bench_sampler.py --init_from=out/tiny-sft         # the embedded default's real rollout (answers end)
    python scripts/bench_sampler.py --size=3b --device=cuda --dtype=bfloat16 --batch_size=8 --group_size=8 \
        --num_frames=16 --frame_size=252 --prompt_len=200 --gen_len=768 --json=out/bench_sampler_3b.json

Random-weights mode (bench.py's models and prompts): every answer decodes exactly gen_len tokens
(fast: no end token; hf: min_new_tokens), so both samplers do the same work. Rows per sampler:
  prefill   fast: one transformers forward over the B distinct prompts; hf: generate(max_new_tokens=1)
            over the B * G repeated prompts (what generate does)
  decode    whole rollout - prefill, per token step (ms), and the bandwidth it reaches: bytes of the
            LM weights + KV cache read per step (flops.decode_bytes) / time, against the peak
  rollout   the whole call; first_call_s - rollout_s is the fast sampler's compile + CUDA graph
            capture (CUDA), reported apart from the steady state.
--init_from=DIR: generate_rollout itself (prompt encoding, sampling, scoring) on the first batch_size
records of `data`, both samplers, same seed; answers stop at their end-of-turn token.
"""
import json as jsonlib
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the project's modules
from scripts import bench
from scripts import flops
from machinery import sampler
from machinery.configurator import configure

# -----------------------------------------------------------------------------
size = "tiny"                 # tiny | 3b | 7b (random weights, bench.py's shapes)
init_from = ""                # a trained policy folder: time generate_rollout on real data instead
data = "data/synthetic/train.jsonl"
device = "cpu"
dtype = "float32"
batch_size = 8                # distinct prompts
group_size = 8                # answers per prompt
num_frames = 8
frame_size = 112
prompt_len = 32               # text tokens around the video (random-weights mode)
gen_len = 48
temperature = 1.0
top_p = 1.0
samplers = "fast,hf"
warmup = 1
repeats = 3
peak_bandwidth_gbs = 0.0      # 0: 3000 on cuda (H100 copy), measured with a copy on cpu
seed = 0
json = ""
# -----------------------------------------------------------------------------


def timed(fn):
    """(first call s, steady mean s over `repeats` after `warmup`, last result)."""
    first, out = bench.clock(fn, device)
    for _ in range(warmup - 1):
        fn()
    times = []
    for _ in range(repeats):
        t, out = bench.clock(fn, device)
        times.append(t)
    return first, sum(times) / len(times), out


def capture(first, steady):
    """The first call's extra time (compile + CUDA graph capture); None on CPU, where nothing compiles."""
    return first - steady if device.startswith("cuda") else None


def random_weights_rows():
    """Prefill / decode / rollout of both samplers on bench.py's random-weights model."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    torch_dtype = getattr(torch, dtype)
    model, config, suppress = bench.build_model(size, device, torch_dtype, "sdpa")
    model.eval()
    grid = flops.video_grid(config.vision_config, num_frames, frame_size)
    banned = sorted(set(suppress) | {config.text_config.bos_token_id, config.text_config.eos_token_id})
    prompt = bench.random_prompts(model, config, batch_size, grid, prompt_len, torch_dtype, banned, gen)
    prompt = {k: v.to(device) for k, v in prompt.items()}
    repeated = {k: v.to(device) for k, v in bench.repeat_batch(prompt, group_size).items()}
    pad = config.text_config.pad_token_id
    N, P = repeated["input_ids"].shape
    peak_bw = peak_bandwidth_gbs or (3000.0 if device.startswith("cuda") else bench.measure_cpu_peaks(torch_dtype)[1])
    step_bytes = flops.decode_bytes(config, N, P, gen_len, torch.finfo(torch_dtype).bits // 8) / (gen_len - 1)

    def run(name, new_tokens):
        if name == "fast":
            return sampler.sample(model, prompt, group_size, new_tokens, None, pad, suppress,
                                  temperature=temperature, top_p=top_p)
        return model.generate(**repeated, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=True,
                              temperature=temperature, top_p=top_p, top_k=0, suppress_tokens=suppress,
                              pad_token_id=pad)

    prefill_of = {"fast": lambda: sampler.prefill(model, prompt), "hf": lambda: run("hf", 1)}
    rows = {}
    with torch.no_grad():
        for name in samplers.split(","):
            first, t_all, _ = timed(lambda: run(name, gen_len))
            _, t_pre, _ = timed(prefill_of[name])
            step = (t_all - t_pre) / (gen_len - 1)
            rows[name] = {"prefill_s": t_pre, "decode_s": t_all - t_pre, "step_ms": 1e3 * step,
                          "rollout_s": t_all, "first_call_s": first, "compile_capture_s": capture(first, t_all),
                          "tokens_per_s": N * gen_len / t_all, "decode_bandwidth_gbs": step_bytes / step / 1e9,
                          "bandwidth_use": step_bytes / step / 1e9 / peak_bw}
    return rows, {"answers": N, "prompt_len_total": P, "peak_bandwidth_gbs": peak_bw}


def real_rollout_rows():
    """generate_rollout on the first batch_size records of `data` with a trained policy, both samplers."""
    from machinery.dataset import load_records, load_samples
    from model import load_policy
    from rollout import generate_rollout
    model, processor = load_policy(init_from, dtype=getattr(torch, dtype), device=device)
    samples = load_samples(load_records(data)[:batch_size], num_frames=num_frames,
                           max_pixels=frame_size * frame_size, log=lambda *a: None)
    rows = {}
    for name in samplers.split(","):
        torch.manual_seed(seed)

        def run():
            return generate_rollout(model, processor, samples, [s["frames"] for s in samples], group_size,
                                    max_new_tokens=gen_len, temperature=temperature, top_p=top_p,
                                    sampler=name)
        first, t_all, rollout = timed(run)
        tokens = int(rollout.completion_mask.sum())
        rows[name] = {"rollout_s": t_all, "first_call_s": first, "compile_capture_s": capture(first, t_all),
                      "answer_tokens": tokens, "tokens_per_s": tokens / t_all,
                      "reward": float(rollout.rewards.mean())}
    return rows, {"answers": batch_size * group_size, "data": data, "init_from": init_from}


def format_rows(rows):
    cols = [c for c in ("prefill_s", "decode_s", "step_ms", "rollout_s", "compile_capture_s", "tokens_per_s",
                        "bandwidth_use", "answer_tokens", "reward") if c in next(iter(rows.values()))]
    where = f"{init_from} on {data}" if init_from else f"{size} random weights"
    lines = [f"{where}, {device} {dtype}: {batch_size} prompts x G={group_size}, {num_frames} frames "
             f"{frame_size}px, {gen_len} new tokens; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores",
             "| sampler | " + " | ".join(cols) + " |",
             "|---|" + "---:|" * len(cols)]
    for name, r in rows.items():
        lines.append(f"| {name} | " + " | ".join("-" if r[c] is None else f"{r[c]:.1%}" if c == "bandwidth_use"
                                                else f"{r[c]:.4g}" for c in cols) + " |")
    if "fast" in rows and "hf" in rows:
        lines.append(f"fast vs hf: rollout {rows['hf']['rollout_s'] / rows['fast']['rollout_s']:.2f}x"
                     + (f", decode step {rows['hf']['step_ms'] / rows['fast']['step_ms']:.2f}x"
                        if "step_ms" in rows["fast"] else ""))
    return "\n".join(lines)


if __name__ == "__main__":
    settings = configure(globals(), sys.argv[1:])
    rows, info = real_rollout_rows() if init_from else random_weights_rows()
    print(format_rows(rows))
    if json:
        with open(json, "w") as f:
            jsonlib.dump({"config": dict(settings), **info, "samplers": rows}, f, indent=2)
        print(f"wrote {json}")
