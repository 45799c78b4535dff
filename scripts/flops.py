"""
What a Qwen2.5-VL training step costs, counted from its config alone (pure functions, no model built):
parameters, FLOPs per phase, bytes a decode step reads, and the memory plan of a multi-GPU run.
bench.py divides measured times by these counts (MFU, bandwidth use); `python scripts/bench.py --plan=True`
prints the plan.

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
                gen_len_=768, master="fp32", reference="sharded", checkpointing=True, group_size=8):
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
    group_size > 0: each group's prompt runs once with its answers packed after it (train.py's
    pack_groups), micro_batch / group_size groups of P + group_size * T tokens; 0: micro_batch rows of P + T.
    Against a measurement (H200, 2026-12-04, bench.py --phases=step at the 3B shape on one GPU, bf16,
    replicated reference, no checkpointing, 8 answers of up to 768 tokens): peak 65.5 GB, the plan
    about 58 GB at the mean answer length: leave about 10 GB of headroom.
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
    tokens = micro_batch // group_size * (P + group_size * T) if group_size else micro_batch * S
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
    if checkpointing:
        parts["activations: one layer recomputed + grads"] = (2 * tokens * (6 * h + 2 * kv + 4 * i) * 2, 0)
    chunk = min(1024, micro_batch * T)  # logprobs.completion_logps: chunk_tokens
    parts["logits: one 1024-token chunk"] = (chunk * V * (2 + 4 + 4 + 2), 0)  # bf16, fp32, their grads
    parts["rollout: full bf16 policy (gathered)"] = (0, 2 * total * (fsdp or master == "fp32"))
    parts["rollout: KV cache bf16"] = (0, 2 * L * kv * S * micro_batch * 2)
    update = sum(u for u, _ in parts.values())
    rollout = sum(r for _, r in parts.values())
    return {"parts": parts, "sharded": [k for k in parts if "(sharded" in k], "update": update,
            "rollout": rollout, "peak": max(update, rollout),
            "shape": {"n_gpus": n_gpus, "micro_batch": micro_batch, "seq_len": S, "prompt_len": P, "tokens": tokens,
                      "checkpointing": checkpointing,
                      "gen_len": T, "params": total, "trainable": trainable, "master": master,
                      "reference": reference}}


def format_plan(p):
    s = p["shape"]
    lines = [f"memory plan per GPU: {s['n_gpus']} GPUs, {s['params'] / 1e9:.2f} B params "
             f"({s['trainable'] / 1e9:.2f} B trainable, vision frozen), master {s['master']}, reference "
             f"{s['reference']}, micro batch {s['micro_batch']} answers of {s['seq_len']} tokens "
             f"(prompt {s['prompt_len']} incl. video, completion {s['gen_len']}), {s['tokens']} tokens per forward, "
             f"gradient checkpointing {'on' if s['checkpointing'] else 'off'}",
             f"| {'part':<42} | {'update GB':>9} | {'rollout GB':>10} |", f"|{'-' * 44}|{'-' * 10}:|{'-' * 11}:|"]
    for name, (u, r) in p["parts"].items():
        lines.append(f"| {name:<42} | {u / 1e9:9.2f} | {r / 1e9:10.2f} |")
    lines.append(f"| {'total':<42} | {p['update'] / 1e9:9.2f} | {p['rollout'] / 1e9:10.2f} |")
    return "\n".join(lines)
