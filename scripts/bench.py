"""
Time one training step's three phases on a model of a named size, against the hardware's limits.

    python scripts/bench.py --size=tiny                                   # CPU, seconds
    python scripts/bench.py --size=3b --device=cuda --dtype=bfloat16 --batch_size=1 --group_size=8 \
        --num_frames=16 --frame_size=252 --gen_len=768 --json=out/bench_3b.json
    python scripts/bench.py --plan=True --size=7b --n_gpus=8              # memory plan only, no model built

Phases, timed separately (warmup, then timed repeats; cuda synchronised):
  generate   sample gen_len tokens for batch_size * group_size answers (split into prefill / decode)
  logprob    logprobs.completion_logps under no_grad over prompt + completion (old / reference log-probs)
  vision     the vision tower alone over the batch's videos (its share of prefill / logprob / train)
  train      completion_logps + reg_grpo_loss + backward + AdamW step (vision tower frozen)
  step       one whole RL step as train.py runs it, part by part (bench_step.py; --phases=step alone)
--phases picks some; --compile=True compiles the decoder layers; --master_dtype=float32 times train.py's
default (fp32 weights, bf16 autocast); --reference=True holds the frozen reference too (peak memory);
--profile=PREFIX writes torch.profiler tables (slow on real sizes: profile with --gen_len small).
3b / 7b use the published Qwen2.5-VL shapes with random weights (no download, no tokenizer): the
prompt is random text ids around <|vision_start|> <|video_pad|> * n <|vision_end|>.

FLOPs, decode bytes and the memory plan are counted from the config alone in flops.py.
"""
import contextlib
import inspect
import json as jsonlib
import math
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the project's modules
from scripts import bench_step  # noqa: E402
from machinery.configurator import configure
from scripts.flops import (ID_TOKENS, QWEN_IDS, decode_bytes, format_plan, lm_forward_flops, memory_plan, param_counts,
                   phase_flops, qwen25vl_config, video_grid, vision_forward_flops)
from machinery import runlog
from machinery.logprobs import completion_logps
from machinery.speedups import compile_decoder_layers, group_vision_windows, patch_embed_as_matmul, share_repeated_videos
from model import (build_tiny, enable_gradient_checkpointing, freeze_vision,
                   vision_token_ids)
from reg_grpo import group_advantages, reg_grpo_loss
from rollout import gathered_for_generation, join_prompt_completion, repeat_batch

# ----------------------------------------------------------------------------- config
size = "tiny"                 # tiny | 3b | 7b
device = "cpu"
dtype = "float32"             # compute dtype; bfloat16 on GPUs
master_dtype = ""             # weights / grads / AdamW: "" = dtype; float32 = train.py's default (autocast)
reference = False             # also hold a frozen reference copy in `dtype` and score old logps with it
cache_implementation = ""     # "" = dynamic KV cache; static = static cache (transformers compiles decode)
phases = "generate,logprob,train"  # which to time; without generate the completions are random tokens
share_videos = True           # encode each distinct video once per batch (machinery/speedups.py: share_videos)
fused_adamw = True            # cuda: torch's fused AdamW kernel (train.py uses it on cuda)
group_windows = True          # vision attention: one SDPA call per window length (speedups: group_windows)
patch_matmul = True           # vision patch embedding as a matmul, not a Conv3d (speedups: patch_matmul)
attn_implementation = "sdpa"  # sdpa | flash_attention_2 (when installed) | eager
batch_size = 2                # prompts
group_size = 4                # G answers per prompt
num_frames = 8
frame_size = 112              # square frames, a multiple of 28
prompt_len = 32               # text tokens of the prompt besides the video
gen_len = 16                  # new tokens per answer (forced: min_new_tokens = max_new_tokens)
warmup = 1
repeats = 2
gradient_checkpointing: bool | None = None  # None: on for 3b / 7b, off for tiny
learning_rate = 1e-6
beta = 0.04
peak_tflops = 0.0             # 0: 989 on cuda (H100 bf16 dense), measured with a matmul on cpu
peak_bandwidth_gbs = 0.0      # 0: 3000 on cuda (H100 copy, measured), measured with a copy on cpu
seed = 0
compile = False               # torch.compile each decoder layer (speedups.compile_decoder_layers) for logprob / train
# --phases=step only (bench_step.py): one whole RL step as train.py runs it
num_iterations = 2            # update passes per rollout
micro_batch_groups = 1        # groups per forward/backward
rows_per_forward = 0          # answers per forward, sorted by length (0: the micro-batch, one forward)
pack_groups = True            # step: each group's prompt once per forward (train.py's pack_groups); needs rows_per_forward=0
min_gen_len = 0               # > 0: cut each answer at a length uniform in [min_gen_len, gen_len]
sampler = "auto"              # rollout.generate_rollout's sampler: fast | hf | auto
grad_clip = 1.0
json = ""                     # path: write every number as JSON
profile = ""                  # path prefix: torch.profiler tables of one call per phase, <prefix>_<phase>.txt
# memory plan
plan = False                  # print the memory plan for `size` and exit
n_gpus = 8
plan_micro_batch = 8          # answers per forward/backward (one group of G = 8)
plan_frames = 16              # SEED-Bench-R1: at most 16 frames of 252x252
plan_frame_size = 252
plan_image_tokens = 81        # the current-observation frame as an extra 252x252 image
plan_prompt_len = 200
plan_gen_len = 768            # Video-R1's max completion length
plan_master = "fp32"          # fp32: FSDP2 MixedPrecisionPolicy(bf16 params, fp32 reduce), fp32 master
                              # params / grads / AdamW; bf16: everything bf16 (train.py with dtype=bfloat16)
plan_reference = "sharded"    # sharded | replicated | none (beta = 0)
plan_checkpointing = True     # gradient checkpointing in the update
plan_group_size = 8           # answers packed after their prompt (train.py's pack_groups); 0: unpacked rows
# -----------------------------------------------------------------------------

# ----------------------------------------------------------------------------- model and inputs

def build_model(name, device_, torch_dtype, attn, ids=QWEN_IDS):
    """(model, config, ids to suppress) with random weights, built on the device in the dtype."""
    from transformers import GenerationConfig, Qwen2_5_VLForConditionalGeneration
    if name == "tiny":
        model, processor = build_tiny(seed=seed)
        model.config._attn_implementation = attn  # sdpa is the default already; eager/flash when asked
        model = model.to(device=device_, dtype=torch_dtype)
        return share(model), model.config, vision_token_ids(processor)
    config = qwen25vl_config(name, ids)
    with torch.device(device_):
        model = Qwen2_5_VLForConditionalGeneration._from_config(config, dtype=torch_dtype, attn_implementation=attn)
    model.generation_config = GenerationConfig(eos_token_id=[ids["eos"], ids["bos"]],
                                               pad_token_id=ids["bos"], bos_token_id=ids["bos"],
                                               do_sample=True, temperature=1.0, top_k=0, top_p=1.0)
    suppress = [ids[k] for k in ("vision_start", "vision_end", "vision_pad", "image", "video")]
    return share(model), model.config, suppress


def share(model):
    model = group_vision_windows(model) if group_windows else model
    model = patch_embed_as_matmul(model) if patch_matmul else model
    return share_repeated_videos(model) if share_videos else model


def random_prompts(model, config, n_prompts, grid, text_len, torch_dtype, banned, gen):
    """A left-padded processor-like batch: random text ids around one video's placeholders."""
    vision = config.vision_config
    t, h, w = grid
    n_video = t * h * w // vision.spatial_merge_size ** 2
    ids = torch.randint(0, config.text_config.vocab_size, (n_prompts, text_len), generator=gen)
    safe = min(set(range(len(banned) + 1)) - set(banned))
    ids[torch.isin(ids, torch.tensor(banned))] = safe
    half = text_len // 2
    video = torch.tensor([config.vision_start_token_id] + [config.video_token_id] * n_video
                         + [config.vision_end_token_id]).expand(n_prompts, -1)
    input_ids = torch.cat([ids[:, :half], video, ids[:, half:]], 1)  # (B, P)
    patch_dim = vision.in_channels * vision.temporal_patch_size * vision.patch_size ** 2
    batch = {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids),
             "pixel_values_videos": torch.randn(n_prompts * t * h * w, patch_dim, generator=gen).to(torch_dtype),
             "video_grid_thw": torch.tensor([grid] * n_prompts),
             "second_per_grid_ts": torch.full((n_prompts,), vision.temporal_patch_size / 2.0)}  # 2 fps
    if "mm_token_type_ids" in inspect.signature(model.forward).parameters:
        batch["mm_token_type_ids"] = (input_ids == config.video_token_id).int() * 2
    return batch


# ----------------------------------------------------------------------------- hardware

def sync(on=None):
    """Wait for the device `on` (default: this bench's) to finish its queued work."""
    if (on or device).startswith("cuda"):
        torch.cuda.synchronize()


def clock(fn, on=None):
    """(seconds of one call of fn, its result), the device `on` synchronised before and after."""
    sync(on)
    t0 = time.perf_counter()
    out = fn()
    sync(on)
    return time.perf_counter() - t0, out


def measure_cpu_peaks(torch_dtype):
    """(TFLOP/s of a 2048^3 matmul in the bench dtype, GB/s of a 256 MB copy counting read + write)."""
    a = torch.randn(2048, 2048, dtype=torch_dtype)
    b = torch.randn(2048, 2048, dtype=torch_dtype)
    best = math.inf
    for _ in range(3):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    x = torch.empty(64 * 2 ** 20, dtype=torch.float32).normal_()
    y = torch.empty_like(x)
    best_copy = math.inf
    for _ in range(3):
        t0 = time.perf_counter()
        y.copy_(x)
        best_copy = min(best_copy, time.perf_counter() - t0)
    return 2 * 2048 ** 3 / best / 1e12, 2 * x.numel() * 4 / best_copy / 1e9


def reset_peak():
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()


def peak_memory_gb():
    return runlog.peak_memory_gb(device)


def profiled(name, fn):
    """Run fn once under torch.profiler; write its top ops by device (else CPU) time to a text file."""
    if not profile:
        return
    from torch.profiler import ProfilerActivity
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.startswith("cuda") else [])
    with torch.profiler.profile(activities=activities) as prof:
        fn()
        sync()
    key = "cuda_time_total" if device.startswith("cuda") else "cpu_time_total"
    with open(f"{profile}_{name}.txt", "w") as f:
        f.write(prof.key_averages().table(sort_by=key, row_limit=40))


def timed(fn):
    """(seconds per call, last result): `warmup` untimed calls, then the mean of `repeats` timed ones."""
    for _ in range(warmup):
        out = fn()
    sync()
    t0 = time.perf_counter()
    for _ in range(repeats):
        out = fn()
    sync()
    return (time.perf_counter() - t0) / repeats, out


# ----------------------------------------------------------------------------- main

def run_bench():
    wanted = set(phases.split(","))
    if wanted - {"generate", "logprob", "train"} and wanted != {"step"}:
        raise SystemExit(f"phases: expected a comma list of generate, logprob, train, or step alone; got {phases!r}")
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    torch_dtype = getattr(torch, dtype)
    weights_dtype = getattr(torch, master_dtype or dtype)
    if device.startswith("cuda"):
        peak_f, peak_bw = peak_tflops or 989.0, peak_bandwidth_gbs or 3000.0
    else:
        measured = measure_cpu_peaks(torch_dtype)
        peak_f, peak_bw = peak_tflops or measured[0], peak_bandwidth_gbs or measured[1]
    checkpointing = gradient_checkpointing if gradient_checkpointing is not None else size != "tiny"
    if wanted == {"step"}:
        return run_step_phase(weights_dtype, torch_dtype, checkpointing, peak_f)
    model, config, suppress = build_model(size, device, weights_dtype, attn_implementation)
    freeze_vision(model)
    ref_model = None
    if reference:
        ref_model = build_model(size, device, torch_dtype, attn_implementation)[0].eval().requires_grad_(False)
    if compile:
        for m in (model, ref_model) if ref_model is not None else (model,):
            compile_decoder_layers(m)
    amp = (torch.autocast(device_type=torch.device(device).type, dtype=torch_dtype)
           if weights_dtype != torch_dtype else contextlib.nullcontext())
    grid = video_grid(config.vision_config, num_frames, frame_size)
    banned = sorted(set(suppress) | {config.text_config.bos_token_id, config.text_config.eos_token_id})
    prompts = random_prompts(model, config, batch_size, grid, prompt_len, torch_dtype, banned, gen)
    batch = repeat_batch(prompts, group_size)  # B -> N = B * G rows, G copies contiguous
    batch = {k: v.to(device) for k, v in batch.items()}
    N, P = batch["input_ids"].shape

    def generate(new_tokens):
        model.eval()
        extra = {"cache_implementation": cache_implementation} if cache_implementation else {}
        with torch.no_grad(), amp, gathered_for_generation(model):
            return model.generate(**batch, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                                  suppress_tokens=suppress, do_sample=True, **extra)

    rows = {}
    if "generate" in wanted:
        reset_peak()
        t_prefill, _ = timed(lambda: generate(1))
        t_gen, sequences = timed(lambda: generate(gen_len))
        profiled("generate", lambda: generate(gen_len))
        rows["generate"] = (t_gen, N * gen_len, peak_memory_gb())
        rows["prefill"] = (t_prefill, N * P, None)
        rows["decode"] = (max(t_gen - t_prefill, 1e-9), N * (gen_len - 1), None)
        completion = sequences[:, P:]                           # (N, T)
    else:
        completion = torch.randint(len(banned) + 1, config.text_config.vocab_size // 2, (N, gen_len),
                                   generator=gen).to(device)   # low ids: clear of Qwen's special tokens
    with torch.no_grad(), amp:  # the vision tower alone: its share of prefill / logprob / train
        t_vis, _ = timed(lambda: model.model.visual(batch["pixel_values_videos"], grid_thw=batch["video_grid_thw"]))
    rows["vision"] = (t_vis, (batch_size if share_videos else N) * grid[0] * grid[1] * grid[2], None)
    mask = torch.ones_like(completion)
    lp_batch = join_prompt_completion(batch, completion, mask)  # input_ids (N, P+T)
    reset_peak()
    with torch.no_grad(), amp:
        t_lp, old = timed(lambda: completion_logps(model, lp_batch))
    if "logprob" in wanted:
        rows["logprob"] = (t_lp, N * (P + gen_len), peak_memory_gb())
    if "train" not in wanted:
        return results_of(rows, config, N, P, grid, checkpointing, peak_f, peak_bw)

    if checkpointing:
        enable_gradient_checkpointing(model)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=learning_rate, fused=fused_adamw and device.startswith("cuda"))
    rewards = torch.randint(0, 3, (N,), generator=gen).float().to(device)
    adv = group_advantages(rewards, group_size)
    if ref_model is not None:
        with torch.no_grad():
            ref = completion_logps(ref_model, lp_batch)
    else:
        ref = old + 0.01 * torch.randn(old.shape, generator=gen).to(device)

    def train_step():
        with amp:
            logps = completion_logps(model, lp_batch)
        loss, _ = reg_grpo_loss(logps, old, adv, mask, torch.arange(N) // group_size, group_size=group_size,
                                ref_logps=ref, beta=beta)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss

    reset_peak()
    t_train, _ = timed(train_step)
    profiled("train", train_step)
    rows["train"] = (t_train, N * (P + gen_len), peak_memory_gb())
    return results_of(rows, config, N, P, grid, checkpointing, peak_f, peak_bw)


def run_step_phase(weights_dtype, torch_dtype, checkpointing, peak_f):
    """--phases=step (bench_step.py): prompts from the tiny tokenizer, whose special ids the model takes."""
    _, processor = build_tiny(seed=seed)
    ids = {k: processor.tokenizer.convert_tokens_to_ids(t) for k, t in ID_TOKENS.items()}
    model, config, _ = build_model(size, device, weights_dtype, attn_implementation, ids)
    freeze_vision(model)
    if checkpointing:
        enable_gradient_checkpointing(model)
    ref_model = None
    if reference:
        ref_model = build_model(size, device, torch_dtype, attn_implementation, ids)[0].eval().requires_grad_(False)
    if compile:
        for m in (model, ref_model) if ref_model is not None else (model,):
            compile_decoder_layers(m)
    grid = video_grid(config.vision_config, num_frames, frame_size)
    settings = {k: globals()[k] for k in ("group_size", "num_iterations", "micro_batch_groups", "rows_per_forward", "pack_groups",
                                          "device", "dtype", "master_dtype", "beta", "grad_clip", "compile", "seed",
                                          "batch_size", "prompt_len", "num_frames", "frame_size", "gen_len",
                                          "min_gen_len", "learning_rate", "fused_adamw", "warmup", "repeats", "sampler")}
    r = bench_step.run_step(settings, model, ref_model, processor, config, grid, peak_f,
                            (lm_forward_flops, vision_forward_flops, qwen25vl_config),
                            (sync, reset_peak, peak_memory_gb))
    r.update(config={k: globals()[k] for k in CONFIG_KEYS}, gradient_checkpointing=checkpointing,
             params=param_counts(config))
    return r


def results_of(rows, config, N, P, grid, checkpointing, peak_f, peak_bw):
    """Every measured phase as time, tokens/s, TFLOP/s, MFU (and decode bandwidth, train HFU)."""
    torch_dtype = getattr(torch, dtype)
    flops = phase_flops(config, N, P, gen_len, grid, n_videos=batch_size if share_videos else None)
    bytes_per = torch.finfo(torch_dtype).bits // 8  # decode reads the weights in the compute dtype
    dbytes = decode_bytes(config, N, P, gen_len, bytes_per)
    results = {"config": {k: globals()[k] for k in CONFIG_KEYS}, "params": param_counts(config),
               "peak_tflops": peak_f, "peak_bandwidth_gbs": peak_bw, "prompt_len_total": P, "answers": N,
               "gradient_checkpointing": checkpointing, "phases": {}}
    if device.startswith("cuda"):
        results["cuda_alloc_retries"] = torch.cuda.memory_stats().get("num_alloc_retries", 0)
    for name in [k for k in ("generate", "prefill", "decode", "vision", "logprob", "train") if k in rows]:
        t, tokens, mem = rows[name]
        r = {"time_s": t, "tokens": tokens, "tokens_per_s": tokens / t, "flops": flops[name],
             "tflops": flops[name] / t / 1e12, "mfu": flops[name] / t / 1e12 / peak_f, "peak_mem_gb": mem}
        if name == "decode":
            r["bytes"] = dbytes
            r["bandwidth_gbs"] = dbytes / t / 1e9
            r["bandwidth_use"] = r["bandwidth_gbs"] / peak_bw
        if name == "train":
            r["hfu"] = flops["train_hardware_with_recompute" if checkpointing else "train"] / t / 1e12 / peak_f
        results["phases"][name] = r
    return results


def format_table(results):
    extras = "".join([f", master {master_dtype}" if master_dtype else "", ", + reference" if reference else "",
                      f", {cache_implementation} cache" if cache_implementation else ""])
    lines = [f"{size} on {device} ({dtype}, {attn_implementation}{extras}): {results['answers']} answers x "
             f"(prompt {results['prompt_len_total']} + {gen_len} new tokens), "
             f"{results['params']['total'] / 1e6:.2f} M params; peak {results['peak_tflops']:.3g} TFLOP/s, "
             f"{results['peak_bandwidth_gbs']:.4g} GB/s",
             f"| {'phase':<8} | {'time s':>8} | {'tokens/s':>9} | {'TFLOP/s':>8} | {'MFU':>6} | "
             f"{'BW GB/s':>8} | {'BW use':>6} | {'peak mem GB':>11} |",
             "|" + "|".join(["-" * 10] + ["-" * (w + 1) + ":" for w in (8, 9, 8, 6, 8, 6, 11)]) + "|"]
    for name, r in results["phases"].items():
        bw = f"{r['bandwidth_gbs']:8.3g}" if "bandwidth_gbs" in r else f"{'':>8}"
        use = f"{r['bandwidth_use']:6.1%}" if "bandwidth_use" in r else f"{'':>6}"
        mem = f"{r['peak_mem_gb']:11.2f}" if r["peak_mem_gb"] is not None else f"{'':>11}"
        lines.append(f"| {name:<8} | {r['time_s']:8.4f} | {r['tokens_per_s']:9.1f} | {r['tflops']:8.4f} | "
                     f"{r['mfu']:6.1%} | {bw} | {use} | {mem} |")
    return "\n".join(lines)


CONFIG_KEYS = []

if __name__ == "__main__":
    CONFIG_KEYS = [k for k in configure(globals(), sys.argv[1:])]
    if plan:
        cfg = qwen25vl_config(size) if size != "tiny" else build_model("tiny", "cpu", torch.float32, "sdpa")[1]
        p = memory_plan(cfg, n_gpus, plan_micro_batch, plan_frames, plan_frame_size, plan_image_tokens,
                        plan_prompt_len, plan_gen_len, plan_master, plan_reference, plan_checkpointing, plan_group_size)
        print(format_plan(p))
        out = {"plan": {**p, "parts": {k: list(v) for k, v in p["parts"].items()}}}
    elif phases == "step":
        out = run_bench()
        print(bench_step.format_step(out, f"{size} on {device} ({dtype}), one RL step: {batch_size} prompts x "
                                          f"{group_size} answers, {num_iterations} update passes"))
    else:
        out = run_bench()
        print(format_table(out))
    if json:
        with open(json, "w") as f:
            jsonlib.dump(out, f, indent=2)
        print(f"wrote {json}")
