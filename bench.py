"""
Time one training step's three phases on a model of a named size, against the hardware's limits.

    python bench.py --size=tiny                                   # CPU, seconds
    python bench.py --size=3b --device=cuda --dtype=bfloat16 --batch_size=1 --group_size=8 \
        --num_frames=16 --frame_size=252 --gen_len=768 --json=out/bench_3b.json
    python bench.py --plan=True --size=7b --n_gpus=8              # memory plan only, no model built

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

FLOP accounting (model FLOPs, what MFU counts; pure functions of the config below):
  LM forward per token      2 * N_lm  +  4 * n_layers * ctx * (n_heads * head_dim)  [+ 2 * hidden * vocab]
      N_lm = matmul weights of the decoder layers (q, k, v, o, gate, up, down; no embedding, no norms).
      attention: QK^T and AV are 2 * ctx * d each, ctx = keys the query sees. Causal: query i of a
      sequence sees i keys, so a length-S sequence has S(S+1)/2 pairs, about half of S^2 (we count the
      half, as flash attention computes it; SDPA's math kernel computes all S^2).
      lm_head term only for positions whose logits are computed (completion tokens, logprobs.py).
  vision forward per patch  2 * (patch embed + depth * (4 d^2 + 3 d i))  + merger 2 * ((4d)^2 + 4d * out) per
      merged token  +  attention 4 * d * sum over windows of len^2 (non-causal; window layers use the
      112-pixel windows, the fullatt_block_indexes layers one frame's patches).
  backward = 2 * forward (input and weight gradients) for the language model; the frozen vision tower
      has no backward. Train step = 3 * LM forward + 1 * vision forward. The vision tower counts once per
      distinct video (batch_size of them; share_repeated_videos), not once per answer.
  Gradient checkpointing recomputes each decoder layer's forward once more in backward: hardware
      FLOPs (HFU) add 1 * LM layer forward; MFU (the standard sense) does not count it.
Decode bytes per step: all LM weights read once (decoder layers + lm_head) + the KV cache read,
  2 * n_layers * kv_heads * head_dim * ctx * bytes per answer; the bandwidth floor of decoding.
"""
import json as jsonlib
import contextlib
import inspect
import math
import resource
import sys
import time

import torch

import bench_step
from configurator import configure
from logprobs import completion_logps
from model import (build_tiny, compile_decoder_layers, enable_gradient_checkpointing, freeze_vision,
                   group_vision_windows, share_repeated_videos, vision_token_ids)
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
share_videos = True           # encode each distinct video once per batch (model.share_repeated_videos)
fused_adamw = True            # cuda: torch's fused AdamW kernel (train.py uses it on cuda)
group_windows = True          # vision attention: one SDPA call per window length (model.group_vision_windows)
attn_implementation = "sdpa"  # sdpa | flash_attention_2 (when installed) | eager
batch_size = 2                # prompts
group_size = 4                # G answers per prompt
num_frames = 8
frame_size = 112              # square frames, a multiple of 28
prompt_len = 32               # text tokens of the prompt besides the video
gen_len = 16                  # new tokens per answer (forced: min_new_tokens = max_new_tokens)
warmup = 1
repeats = 2
gradient_checkpointing = None  # None: on for 3b / 7b, off for tiny
learning_rate = 1e-6
beta = 0.04
peak_tflops = 0.0             # 0: 989 on cuda (H100 bf16 dense), measured with a matmul on cpu
peak_bandwidth_gbs = 0.0      # 0: 3000 on cuda (H100 copy, measured), measured with a copy on cpu
seed = 0
compile = False               # torch.compile each decoder layer (model.compile_decoder_layers) for logprob / train
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
# -----------------------------------------------------------------------------

# Published Qwen2.5-VL shapes (config.json of Qwen/Qwen2.5-VL-{3B,7B}-Instruct).
VISION = dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, in_channels=3, patch_size=14,
              temporal_patch_size=2, spatial_merge_size=2, window_size=112, fullatt_block_indexes=[7, 15, 23, 31],
              tokens_per_second=2, hidden_act="silu")
TEXT = {
    "7b": dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
               num_key_value_heads=4, vocab_size=152064, tie_word_embeddings=False),
    "3b": dict(hidden_size=2048, intermediate_size=11008, num_hidden_layers=36, num_attention_heads=16,
               num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True),
}
QWEN_IDS = dict(bos=151643, eos=151645, vision_start=151652, vision_end=151653, vision_pad=151654,
                image=151655, video=151656)
ID_TOKENS = dict(bos="<|endoftext|>", eos="<|im_end|>", vision_start="<|vision_start|>", vision_end="<|vision_end|>",
                 vision_pad="<|vision_pad|>", image="<|image_pad|>", video="<|video_pad|>")


def qwen25vl_config(name, ids=QWEN_IDS):
    """Qwen2_5_VLConfig of the published 3B / 7B model (random weights are built from it)."""
    from transformers import Qwen2_5_VLConfig
    if name not in TEXT:
        raise SystemExit(f"size: expected one of tiny, {', '.join(TEXT)}; got {name!r}")
    t = TEXT[name]
    text = dict(t, max_position_embeddings=128000, rms_norm_eps=1e-6, hidden_act="silu",
                rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": [16, 24, 24]},
                bos_token_id=ids["bos"], eos_token_id=ids["eos"], pad_token_id=ids["bos"])
    vision = dict(VISION, out_hidden_size=t["hidden_size"])
    return Qwen2_5_VLConfig(text_config=text, vision_config=vision, image_token_id=ids["image"],
                            video_token_id=ids["video"], vision_start_token_id=ids["vision_start"],
                            vision_end_token_id=ids["vision_end"], bos_token_id=ids["bos"],
                            eos_token_id=ids["eos"], pad_token_id=ids["bos"],
                            tie_word_embeddings=t["tie_word_embeddings"])


# ----------------------------------------------------------------------------- counting (pure)

def tied(config):
    return bool(getattr(config, "tie_word_embeddings", False))


def head_dim(text):
    return getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads


def lm_layer_matmul_params(text):
    """Weights of one decoder layer's matmuls: q, k, v, o (attention) + gate, up, down (MLP)."""
    h, hd, i = text.hidden_size, head_dim(text), text.intermediate_size
    q, kv = text.num_attention_heads * hd, text.num_key_value_heads * hd
    return h * q + 2 * h * kv + q * h + 3 * h * i


def vision_patch_matmul_params(vision):
    """Matmul weights applied to every patch: patch embed + depth * (qkv, proj, gate, up, down)."""
    d, i = vision.hidden_size, vision.intermediate_size
    embed = vision.in_channels * vision.temporal_patch_size * vision.patch_size ** 2 * d
    return embed + vision.depth * (4 * d * d + 3 * d * i)


def vision_merger_matmul_params(vision):
    """Matmul weights applied to every merged token (m^2 patches): two-layer MLP to the LM width."""
    dm = vision.hidden_size * vision.spatial_merge_size ** 2
    return dm * dm + dm * vision.out_hidden_size


def param_counts(config):
    """Exact parameter counts (weights, biases, norms) by part, as transformers builds Qwen2.5-VL."""
    text, vision = config.text_config, config.vision_config
    h, hd, i, V = text.hidden_size, head_dim(text), text.intermediate_size, text.vocab_size
    q, kv = text.num_attention_heads * hd, text.num_key_value_heads * hd
    layer = lm_layer_matmul_params(text) + q + 2 * kv + 2 * h  # + q/k/v biases + two RMSNorms
    d, vi, dm = vision.hidden_size, vision.intermediate_size, vision.hidden_size * vision.spatial_merge_size ** 2
    block = 4 * d * d + 3 * d * vi + 3 * d + d + 2 * vi + d + 2 * d  # + qkv/proj/mlp biases + two norms
    counts = {
        "embed": V * h,
        "lm_layers": text.num_hidden_layers * layer + h,  # + final norm
        "lm_head": 0 if tied(config) else V * h,
        "vision": (vision.in_channels * vision.temporal_patch_size * vision.patch_size ** 2 * d
                   + vision.depth * block + d + vision_merger_matmul_params(vision) + dm + vision.out_hidden_size),
    }
    counts["total"] = sum(counts.values())
    return counts


def causal_pairs(start, stop):
    """(query, key) pairs when queries start+1..stop each see all keys up to themselves."""
    return (stop * (stop + 1) - start * (start + 1)) // 2


def lm_forward_flops(config, seq_len, logit_positions, past=0):
    """FLOPs of one sequence's LM forward over seq_len new tokens after `past` cached ones.

    2 * n_layers * (layer matmul weights) per token + 4 * n_layers * q_width per (query, key) pair
    (causal) + 2 * h * V per logit.
    """
    text = config.text_config
    q_width = text.num_attention_heads * head_dim(text)
    attn = 4 * text.num_hidden_layers * q_width * causal_pairs(past, past + seq_len)
    matmuls = 2 * text.num_hidden_layers * lm_layer_matmul_params(text) * seq_len
    return matmuls + attn + 2 * text.hidden_size * text.vocab_size * logit_positions


def vision_windows(vision, grid_t, grid_h, grid_w):
    """Patch counts of the attention sequences: (window layers' windows, full layers' frames)."""
    m = vision.spatial_merge_size
    ws = vision.window_size // m // vision.patch_size  # window side in merged tokens
    gh, gw = grid_h // m, grid_w // m
    rows = [min(ws, gh - a) for a in range(0, gh, ws)]
    cols = [min(ws, gw - b) for b in range(0, gw, ws)]
    windows = [r * c * m * m for r in rows for c in cols] * grid_t
    return windows, [grid_h * grid_w] * grid_t


def vision_forward_flops(config, grid_thw):
    """FLOPs of the vision tower over videos with grids [(t, h, w), ...] (in patches)."""
    vision = config.vision_config
    d, total = vision.hidden_size, 0
    full = set(vision.fullatt_block_indexes)
    for t, h, w in grid_thw:
        patches = t * h * w
        windows, frames = vision_windows(vision, t, h, w)
        attn_window, attn_full = sum(n * n for n in windows), sum(n * n for n in frames)
        n_full = len([k for k in range(vision.depth) if k in full])
        total += (2 * vision_patch_matmul_params(vision) * patches
                  + 2 * vision_merger_matmul_params(vision) * patches // vision.spatial_merge_size ** 2
                  + 4 * d * (n_full * attn_full + (vision.depth - n_full) * attn_window))
    return total


def phase_flops(config, n, prompt_len_, gen_len_, grid, n_videos=None):
    """Model FLOPs of the three phases for n answers of prompt P (incl. video tokens) + T new tokens.

    grid: one video's (t, h, w). The vision tower runs once per distinct video (n_videos, the
    prompts, under share_repeated_videos), or n times when every answer's copy is encoded (None).
    Returns dict of FLOPs (and hardware FLOPs with recompute).
    """
    P, T = prompt_len_, gen_len_
    vis = (n if n_videos is None else n_videos) * vision_forward_flops(config, [grid])
    prefill = n * lm_forward_flops(config, P, 1) + vis
    decode = n * sum(lm_forward_flops(config, 1, 1, past=P + k - 1) for k in range(1, T))
    lm_full = n * lm_forward_flops(config, P + T, T)  # completion_logps: lm_head on the T completion tokens
    text = config.text_config
    head = n * 2 * text.hidden_size * text.vocab_size * T
    return {"prefill": prefill, "decode": decode, "generate": prefill + decode, "logprob": lm_full + vis,
            "vision": vis,
            "train": 3 * lm_full + vis, "train_hardware_with_recompute": 4 * lm_full - head + vis}


def decode_bytes(config, n, prompt_len_, gen_len_, bytes_per_param):
    """Bytes read by the gen_len - 1 decode steps: LM weights each step + the growing KV cache."""
    text = config.text_config
    weights = (param_counts(config)["lm_layers"] + text.hidden_size * text.vocab_size) * bytes_per_param
    kv_per_token = 2 * text.num_hidden_layers * text.num_key_value_heads * head_dim(text) * bytes_per_param
    steps = range(1, gen_len_)
    return sum(weights + n * kv_per_token * (prompt_len_ + k) for k in steps)


def video_grid(vision, frames, frame_px):
    """(t, h, w) patch grid of frames x frame_px x frame_px; errors name the setting."""
    unit = vision.patch_size * vision.spatial_merge_size
    if frame_px % unit or frames % vision.temporal_patch_size:
        raise SystemExit(f"frame_size must be a multiple of {unit} and num_frames of "
                         f"{vision.temporal_patch_size}; got {frame_px}, {frames}")
    return (frames // vision.temporal_patch_size, frame_px // vision.patch_size, frame_px // vision.patch_size)


# ----------------------------------------------------------------------------- memory plan

def memory_plan(config, n_gpus, micro_batch=8, frames=16, frame_px=252, image_tokens=81, prompt_len_=200,
                gen_len_=768, master="fp32", reference="sharded", checkpointing=True):
    """Per-GPU bytes for full fine-tuning (vision frozen) under FSDP2 on n_gpus, by part and phase.

    FSDP2 as train.py wraps it: fully_shard each decoder layer, then the root (embeddings, lm_head,
    vision tower, final norm: one big group). master="fp32": sharded params fp32 with
    MixedPrecisionPolicy(param_dtype=bf16, reduce_dtype=fp32), so fp32 grads and fp32 AdamW m, v for
    the trainable part; master="bf16": params, grads and AdamW states in bf16. Reference model bf16,
    sharded with its own fully_shard, replicated, or absent (beta = 0).
    Activations (update phase, bf16): with checkpointing each decoder layer keeps its input (h per
    token); the layer being recomputed holds about 6h + 2*kv*hd + 4i values per token, twice (its
    activations and their gradients) -- an estimate, not a measurement. Logits: one chunk of 1024
    completion tokens at a time (logprobs.py): bf16 logits, float32 log-softmax, and their gradients.
    Rollout phase: gathered_for_generation holds a full bf16 copy of the policy plus the KV cache.
    Returns {"parts": {name: (update_bytes, rollout_bytes)}, "sharded": [names that scale 1/n_gpus],
    "update": total, "rollout": total, "peak": max}.
    """
    text, vision = config.text_config, config.vision_config
    counts = param_counts(config)
    total, trainable = counts["total"], counts["total"] - counts["vision"]
    h, i, L, V = text.hidden_size, text.intermediate_size, text.num_hidden_layers, text.vocab_size
    kv = text.num_key_value_heads * head_dim(text)
    t, gh, gw = video_grid(vision, frames, frame_px)
    P = prompt_len_ + image_tokens + t * gh * gw // vision.spatial_merge_size ** 2
    S, T = P + gen_len_, gen_len_
    tokens = micro_batch * S
    mbytes = 4 if master == "fp32" else 2
    layer_params = (counts["lm_layers"] - h) // L
    root_params = total - counts["lm_layers"] + h
    parts = {}
    persist = {"params (sharded, master)": total * mbytes / n_gpus,
               "grads (sharded)": trainable * mbytes / n_gpus,
               "AdamW m, v (sharded)": 2 * trainable * mbytes / n_gpus}
    if reference == "sharded":
        persist["reference bf16 (sharded)"] = 2 * total / n_gpus
    elif reference == "replicated":
        persist["reference bf16 (replicated)"] = 2 * total
    elif reference != "none":
        raise ValueError(f"memory_plan: reference must be sharded | replicated | none, got {reference!r}")
    for name, b in persist.items():
        parts[name] = (b, b)
    # gathered during the update: the root group (bf16) + two decoder layers (current + prefetch);
    # on one GPU there is no FSDP: bf16 weights are used in place (fp32 master: autocast's transient casts)
    fsdp = n_gpus > 1
    parts["gathered bf16 params (root + 2 layers)"] = (2 * (root_params + 2 * layer_params) * fsdp, 0)
    saved = L * tokens * h * 2 if checkpointing else L * tokens * (6 * h + 2 * kv + 4 * i) * 2
    parts["activations: layer inputs" if checkpointing else "activations: all layers"] = (saved, 0)
    parts["activations: one layer recomputed + grads"] = (2 * tokens * (6 * h + 2 * kv + 4 * i) * 2, 0)
    chunk = min(1024, micro_batch * T)  # logprobs.completion_logps: chunk_tokens
    parts["logits: one 1024-token chunk"] = (chunk * V * (2 + 4 + 4 + 2), 0)  # bf16, fp32, their grads
    parts["rollout: full bf16 policy (gathered)"] = (0, 2 * total * (fsdp or master == "fp32"))
    parts["rollout: KV cache bf16"] = (0, 2 * L * kv * S * micro_batch * 2)
    update = sum(u for u, _ in parts.values())
    rollout = sum(r for _, r in parts.values())
    return {"parts": parts, "sharded": [k for k in parts if "(sharded" in k], "update": update,
            "rollout": rollout, "peak": max(update, rollout),
            "shape": {"n_gpus": n_gpus, "micro_batch": micro_batch, "seq_len": S, "prompt_len": P,
                      "gen_len": T, "params": total, "trainable": trainable, "master": master,
                      "reference": reference}}


def format_plan(p):
    s = p["shape"]
    lines = [f"memory plan per GPU: {s['n_gpus']} GPUs, {s['params'] / 1e9:.2f} B params "
             f"({s['trainable'] / 1e9:.2f} B trainable, vision frozen), master {s['master']}, reference "
             f"{s['reference']}, micro batch {s['micro_batch']} x {s['seq_len']} tokens "
             f"(prompt {s['prompt_len']} incl. video, completion {s['gen_len']})",
             f"| {'part':<42} | {'update GB':>9} | {'rollout GB':>10} |", f"|{'-' * 44}|{'-' * 10}:|{'-' * 11}:|"]
    for name, (u, r) in p["parts"].items():
        lines.append(f"| {name:<42} | {u / 1e9:9.2f} | {r / 1e9:10.2f} |")
    lines.append(f"| {'total':<42} | {p['update'] / 1e9:9.2f} | {p['rollout'] / 1e9:10.2f} |")
    return "\n".join(lines)


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

def sync():
    if device.startswith("cuda"):
        torch.cuda.synchronize()


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
    """cuda: max allocated since the phase began; cpu: the process's max RSS so far (monotonic)."""
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 1e9
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9


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
                        plan_prompt_len, plan_gen_len, plan_master, plan_reference)
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
