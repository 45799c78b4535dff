"""bench.py --phases=step: one whole RL step on one device, timed part by part, as train.py runs it.

    python scripts/bench.py --phases=step --size=3b --device=cuda --dtype=bfloat16 --batch_size=8 --group_size=8 \
        --num_frames=16 --frame_size=252 --prompt_len=200 --gen_len=768 --min_gen_len=100 --reference=True

B prompts x G answers: rollout (rollout.generate_rollout, with whatever sampler it is configured to
use), the reference log-probs (rollout.reference_logps), then step.policy_update: `num_iterations`
passes, the first of which gives the old log-probs. Settings that train.py reads there (micro-batch
groups, rows per forward, loss, beta, ...) are train.py's defaults overridden by bench's own (train_settings).

3b / 7b have no tokenizer here (random weights): the prompts are written with the tiny model's
tokenizer and processor, and the model's special ids are set to that tokenizer's (the ids are only
numbers to the model). A random model seldom samples the end token, so answers run to gen_len;
min_gen_len > 0 then cuts each answer at a length drawn uniformly from [min_gen_len, gen_len], the
length mix of real answers, before the log-prob passes.

Reported: seconds per part, tokens (prompt + answer, real tokens only) per second, model FLOPs and
MFU of the whole step (vision tower once per prompt per pass), and tokens per second normalised to
Qwen2.5-VL-7B: the same FLOPs spent on the 7B model would process tokens_per_s * F_model / F_7b.
"""
import time

import numpy as np
import torch

from machinery.configurator import script_defaults
from machinery.speedups import compile_seconds
from reg_grpo import group_advantages
from rollout import generate_rollout, reference_logps
from machinery.distributed import autocast
from step import new_run, policy_update, step_settings

QUESTION = "Which way does the red square move?"


def step_records(processor, n, text_len, frames):
    """n multiple-choice records whose prompt text (chat template, no video) is about text_len tokens,
    with `frames` frames sampled at 2 fps (their presentation times in seconds)."""
    from rollout import build_messages
    record = {"question": QUESTION, "options": ["left", "right", "up", "down"], "problem_type": "multiple_choice",
              "answer": "B", "id": 0, "times": [i / 2.0 for i in range(frames)]}
    base = processor.apply_chat_template(build_messages(record), tokenize=False, add_generation_prompt=True)
    have = len(processor.tokenizer(base, add_special_tokens=False)["input_ids"])
    record["question"] += " A" * max(0, text_len - have)  # " A" is one token
    return [dict(record, id=i) for i in range(n)]


def step_videos(n, frames, size, seed):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (frames, size, size, 3), dtype=np.uint8) for _ in range(n)]


def cut_lengths(rollout, min_len, gen):
    """Cut each answer at a length uniform in [min_len, its own length]: the length mix of real answers."""
    mask = rollout.completion_mask
    lengths = mask.sum(1)
    low = torch.clamp(lengths, max=min_len)
    new = low + (torch.rand(len(lengths), generator=gen) * (lengths - low + 1)).long().clamp(max=lengths - low)
    keep = (torch.arange(mask.shape[1])[None] < new[:, None]).long()
    P = rollout.input_ids.shape[1] - mask.shape[1]
    rollout.completion_mask = mask * keep
    rollout.attention_mask = torch.cat([rollout.attention_mask[:, :P], rollout.completion_mask], 1)
    return rollout


def step_flops(config, prompt_lens, answer_lens, n_prompts, grid, num_iterations, lm_forward_flops,
               vision_forward_flops):
    """Model FLOPs of one step: rollout (prefill + decode = one forward over P + T per answer),
    reference forward, num_iterations x (forward + backward); vision once per prompt per pass."""
    vision = n_prompts * vision_forward_flops(config, [grid])
    lm = sum(lm_forward_flops(config, p + t, t) for p, t in zip(prompt_lens, answer_lens))
    parts = {"rollout": lm + vision, "reference": lm + vision, "update": num_iterations * (3 * lm + vision)}
    parts["step"] = sum(parts.values())
    return parts


def forward_tokens(prompt_lens, answer_lens, micro_batch, rows_per_forward):
    """Tokens the log-prob forwards compute, padding included: micro-batches of `micro_batch`
    consecutive answers, each split into forwards of `rows_per_forward` answers sorted by length
    (0: one forward), each forward padded to its longest prompt and its longest answer."""
    total, n = 0, len(answer_lens)
    for start in range(0, n, micro_batch):
        rows = list(range(start, min(start + micro_batch, n)))
        if rows_per_forward:
            rows.sort(key=lambda i: prompt_lens[i] + answer_lens[i])
        size = rows_per_forward or len(rows)
        for k in range(0, len(rows), size):
            part = rows[k:k + size]
            total += len(part) * (max(prompt_lens[i] for i in part) + max(answer_lens[i] for i in part))
    return total


def train_settings(s):
    """A step's settings (step.step_settings): train.py's defaults, with bench's `s` where it has them."""
    keys = ("group_size", "num_iterations", "micro_batch_groups", "rows_per_forward", "pack_groups", "device",
            "dtype", "beta", "grad_clip")
    return step_settings(script_defaults("train.py"), **{k: s[k] for k in keys},
                         master_dtype=s["master_dtype"] or s["dtype"], loss="reg_grpo", temperature=1.0,
                         distributed="ddp")


def timed_part(sync, reset_peak, peak_memory_gb, fn):
    reset_peak()
    sync()
    t0 = time.perf_counter()
    out = fn()
    sync()
    return time.perf_counter() - t0, peak_memory_gb(), out


def run_step(s, model, ref_model, processor, config, grid, peak_f, counting, hardware):
    """One RL step `warmup` times untimed, then the mean of `repeats` timed ones; returns a results dict.

    s: bench's settings; counting: bench's (lm_forward_flops, vision_forward_flops, qwen25vl_config);
    hardware: bench's (sync, reset_peak, peak_memory_gb).
    """
    lm_forward_flops, vision_forward_flops, qwen25vl_config = counting
    ts = train_settings(s)
    gen = torch.Generator().manual_seed(s["seed"])
    records = step_records(processor, s["batch_size"], s["prompt_len"], s["num_frames"])
    videos = step_videos(s["batch_size"], s["num_frames"], s["frame_size"], s["seed"])
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=s["learning_rate"],
                                  fused=s["fused_adamw"] and s["device"].startswith("cuda"))
    reference = ref_model if ref_model is not None else model

    def one_step():
        times, mems = {}, {}
        with autocast(ts):
            times["rollout"], mems["rollout"], rollout = timed_part(*hardware, lambda: generate_rollout(
                model, processor, records, videos, s["group_size"], max_new_tokens=s["gen_len"], temperature=1.0,
                sampler=s["sampler"]))
        if s["min_gen_len"]:
            rollout = cut_lengths(rollout, s["min_gen_len"], gen)
        with autocast(ts):
            times["reference"], mems["reference"], ref = timed_part(*hardware, lambda: reference_logps(
                rollout, reference, device=s["device"], micro_batch=s["micro_batch_groups"] * s["group_size"],
                rows_per_forward=s["rows_per_forward"], group_size=s["group_size"] if s["pack_groups"] else 0))
        rollout.ref_logps = ref
        rewards = torch.randint(0, 3, (len(rollout.texts),), generator=gen).float()  # random: an untrained model
        advantages = group_advantages(rewards, s["group_size"])
        times["update"], mems["update"], _ = timed_part(*hardware, lambda: policy_update(
            ts, new_run(model=model, optimizer=optimizer, params=params), rollout, advantages))
        return times, mems, rollout

    compile_before = compile_seconds()
    for _ in range(s["warmup"]):
        one_step()
    compile_warmup = compile_seconds() - compile_before
    runs = [one_step() for _ in range(s["repeats"])]
    times = {k: sum(r[0][k] for r in runs) / len(runs) for k in runs[0][0]}
    times["step"] = sum(times.values())
    mems = {k: max((r[1][k] or 0) for r in runs) for k in runs[0][1]}
    rollout = runs[-1][2]
    P = rollout.input_ids.shape[1] - rollout.completion_mask.shape[1]
    prompt_lens = rollout.attention_mask[:, :P].sum(1).tolist()
    answer_lens = rollout.completion_mask.sum(1).tolist()
    tokens = sum(prompt_lens) + sum(answer_lens)
    flops = step_flops(config, prompt_lens, answer_lens, s["batch_size"], grid, s["num_iterations"],
                       lm_forward_flops, vision_forward_flops)
    flops_7b = step_flops(qwen25vl_config("7b"), prompt_lens, answer_lens, s["batch_size"], grid,
                          s["num_iterations"], lm_forward_flops, vision_forward_flops)["step"]
    micro = s["micro_batch_groups"] * s["group_size"]
    return {"answers": len(answer_lens), "prompt_len_mean": sum(prompt_lens) / len(prompt_lens),
            "answer_len_mean": sum(answer_lens) / len(answer_lens), "tokens": tokens,
            "padded_over_real": {"one_padded_forward_per_micro_batch": forward_tokens(prompt_lens, answer_lens, micro, 0) / tokens,
                                 "as_run": forward_tokens(prompt_lens, answer_lens, micro, s["rows_per_forward"]) / tokens}, "compile_s_warmup": compile_warmup,
            "compile_s_timed": compile_seconds() - compile_before - compile_warmup,
            "peak_tflops": peak_f,
            "parts": {k: {"time_s": t, "flops": flops[k], "mfu": flops[k] / t / 1e12 / peak_f,
                          "peak_mem_gb": mems.get(k)} for k, t in times.items()},
            "tokens_per_s": tokens / times["step"],
            "tokens_per_s_7b_equivalent": tokens / times["step"] * flops["step"] / flops_7b}


def format_step(r, title):
    lines = [title, f"{r['answers']} answers, prompt {r['prompt_len_mean']:.0f} + answer {r['answer_len_mean']:.0f} "
             f"tokens on average; computed/real tokens {r['padded_over_real']['as_run']:.3f} "
             f"(one padded forward per micro-batch: {r['padded_over_real']['one_padded_forward_per_micro_batch']:.3f}); "
             f"compile {r['compile_s_warmup']:.1f} s in warmup, {r['compile_s_timed']:.1f} s in timed steps",
             f"| {'part':<9} | {'time s':>8} | {'MFU':>6} | {'peak mem GB':>11} |", f"|{'-' * 11}|{'-' * 9}:|{'-' * 7}:|{'-' * 12}:|"]
    for name, p in r["parts"].items():
        mem = f"{p['peak_mem_gb']:11.2f}" if p["peak_mem_gb"] is not None else f"{'':>11}"
        lines.append(f"| {name:<9} | {p['time_s']:8.3f} | {p['mfu']:6.1%} | {mem} |")
    lines.append(f"tokens/s (prompt + answer): {r['tokens_per_s']:.1f}; normalised to 7B FLOPs: "
                 f"{r['tokens_per_s_7b_equivalent']:.1f}")
    return "\n".join(lines)
