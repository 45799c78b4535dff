"""
Our own decode loop for Qwen2.5-VL: transformers' forward for the prompt, our step for every new token.

    completion = sample(model, prompt, group_size=G, max_new_tokens=T, end_id=..., pad_id=..., suppress_ids=...)

Prefill. The B distinct prompts (left-padded, the processor's layout) go once through transformers'
own forward: vision tower, 3D rope and masks stay theirs. Its KV cache is copied G times into a static
cache of N = B * G rows, the G answers of a prompt contiguous (rollout.repeat_batch's order).

Layout of the static cache, capacity C >= P + T - 1 (P the padded prompt length):

    slot  0 ........ P-1 | P ........ P+T-2 | ... C-1
          prompt (left pad masked per row)  | generated token t-1 is written at slot P+t-1 | unused

Every row writes the same slot at a step (one scalar slot tensor), so one step serves the whole batch.

Positions. Qwen2.5-VL's 3D rope gives the prompt's video tokens (time, height, width) positions; a
text token after the prompt carries the same position p in all three sections, so its rotation is the
plain 1D rope at p. The first new token of a row sits at (max position of its real prompt tokens) + 1,
then one more per token: p = slot + delta[row]. transformers' own `rope_deltas` does not serve here:
in 5.24 it is max position + 1 - (unpadded length), so it does not absorb the left padding, and older
versions subtract the padded length instead. We read the positions the prefill actually used
(tests/test_sampler.py checks every step against a teacher-forced forward over left-padded rows).

Sampling, with z = float32 logits and the vision placeholder ids set to -inf:
    greedy       argmax z
    temperature  argmax (z / tau + g),  g = -log(-log u), u ~ U[0, 1)   (Gumbel-max: a draw from
                 softmax(z / tau) without a sort or a multinomial; u sits in a preallocated buffer)
    top-p        before the Gumbel draw, drop the least likely tokens whose total probability is
                 at most 1 - top_p (at least one token stays): transformers' nucleus rule
A row that has emitted end_id emits pad_id from then on. The loop stops once every row has ended,
checked every `check_every` tokens (a check is a device sync), and trims the columns past the last end.

Speed on CUDA: the step is one function over preallocated tensors (fused q/k/v and gate/up weights,
static cache, per-row positions and masks), compiled by torch.compile and captured once in a CUDA
graph; each token then costs one graph replay after writing the slot and the noise into the captured
inputs. The weights are our own copies (refreshed each call), so a captured graph never reads memory
that FSDP2 or the optimizer may move. Under FSDP2 the caller gathers the weights once
(rollout.gathered_for_generation); the step itself runs no collective, so ranks may decode different
numbers of tokens: each rank runs exactly one prefill forward per call, as every other rank does.
"""
import inspect

import torch
import torch.nn.functional as F


def resolve(name, device):
    """'auto' -> 'fast' on every device; 'fast' | 'hf' as given.

    CPU, embedded default (8 prompts x G = 8, 8 frames of 112 px, 48 new tokens; scripts/bench_sampler.py,
    2026-11-26, a loaded 2-core machine): whole rollout 3.1 s fast vs 8.5 s hf with a briefly trained
    policy, 3.7 s vs 15.5 s with random weights at full length. CUDA: see scripts/bench_sampler.py.
    """
    if name not in ("auto", "fast", "hf"):
        raise ValueError(f"sampler: expected auto | fast | hf, got {name!r}")
    return "fast" if name == "auto" else name


# ----------------------------------------------------------------------------- prefill

@torch.no_grad()
def prefill(model, prompt):
    """transformers' forward over the B prompts -> (last logits (B, V) float32, [(k, v)] per layer, next (B,)).

    k, v: (B, kv_heads, P, head_dim), rope already applied. next: the rope position of each row's
    first new token, max over the prompt's (real) positions + 1, read from the position ids the
    forward hands its rotary embedding.
    """
    lm = model.model.language_model
    takes_types = "mm_token_type_ids" in inspect.signature(model.forward).parameters
    inputs = {k: v for k, v in prompt.items() if k != "video_metadata" and (takes_types or k != "mm_token_type_ids")}
    seen = []
    hook = lm.rotary_emb.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(args[1] if len(args) > 1 else kwargs["position_ids"]),
        with_kwargs=True)
    try:
        out = model(**inputs, use_cache=True, logits_to_keep=1)
    finally:
        hook.remove()
    cache = out.cache if getattr(out, "cache", None) is not None else out.past_key_values
    if hasattr(cache, "layers"):                   # transformers >= 4.56
        kv = [(layer.keys, layer.values) for layer in cache.layers]
    else:
        kv = list(zip(cache.key_cache, cache.value_cache))
    B, P = prompt["input_ids"].shape
    positions = seen[0].reshape(-1, B, P).amax(0)                       # (B, P): max of the 3 sections
    real = prompt["attention_mask"].bool().to(positions.device)
    return out.logits[:, -1].float(), kv, positions.masked_fill(~real, -1).amax(1) + 1


# ----------------------------------------------------------------------------- weights and state

def language_weights(model, dtype, into=None):
    """Our copies of the language model's weights in `dtype`: q/k/v fused into one matrix, gate/up into one.

    into: the buffers of an earlier call (a captured graph reads them): refreshed in place instead.
    """
    lm = model.model.language_model
    fused = lambda *ts: torch.cat([t.detach() for t in ts]) if len(ts) > 1 else ts[0].detach()
    layers = [{"ln1": (layer.input_layernorm.weight,), "ln2": (layer.post_attention_layernorm.weight,),
               "qkv": (layer.self_attn.q_proj.weight, layer.self_attn.k_proj.weight, layer.self_attn.v_proj.weight),
               "qkv_bias": (layer.self_attn.q_proj.bias, layer.self_attn.k_proj.bias, layer.self_attn.v_proj.bias),
               "o": (layer.self_attn.o_proj.weight,), "gate_up": (layer.mlp.gate_proj.weight, layer.mlp.up_proj.weight),
               "down": (layer.mlp.down_proj.weight,)} for layer in lm.layers]
    tied = model.lm_head.weight is lm.embed_tokens.weight
    top = {"embed": (lm.embed_tokens.weight,), "head": (model.lm_head.weight,), "norm": (lm.norm.weight,)}
    if into is None:
        out = {"layers": [{k: fused(*ts).to(dtype, copy=True) for k, ts in layer.items()} for layer in layers],
               **{k: fused(*ts).to(dtype, copy=True) for k, ts in top.items() if not (tied and k == "head")},
               "inv_freq": lm.rotary_emb.inv_freq.detach().float().clone()}
        out["head"] = out["embed"] if tied else out["head"]
        return out
    for dst, layer in zip(into["layers"], layers):
        for k, ts in layer.items():
            dst[k].copy_(fused(*ts))
    for k, ts in top.items():
        into[k].copy_(fused(*ts))
    into["inv_freq"].copy_(lm.rotary_emb.inv_freq)
    return into


def new_state(text, N, C, V, dtype, device):
    """Preallocated tensors the step reads and writes in place."""
    hd = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
    kv_shape = (N, text.num_key_value_heads, C, hd)
    return {"k": [torch.zeros(kv_shape, dtype=dtype, device=device) for _ in range(text.num_hidden_layers)],
            "v": [torch.zeros(kv_shape, dtype=dtype, device=device) for _ in range(text.num_hidden_layers)],
            "valid": torch.zeros(N, C, dtype=torch.bool, device=device),   # key slots each row may see
            "delta": torch.zeros(N, dtype=torch.long, device=device),      # rope offset per row
            "tokens": torch.zeros(N, dtype=torch.long, device=device),     # last token in, next token out
            "slot": torch.zeros(1, dtype=torch.long, device=device),       # cache slot of the token going in
            "done": torch.zeros(N, dtype=torch.bool, device=device),
            "noise": torch.zeros(N, V, dtype=torch.float32, device=device),
            "logits": torch.zeros(N, V, dtype=torch.float32, device=device)}


# ----------------------------------------------------------------------------- the step

def rms_norm(x, weight, eps):
    """x / sqrt(mean(x^2) + eps) * weight, in float32 then back to x's dtype (as transformers does)."""
    h = x.float()
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return weight * h.to(x.dtype)


def rotate(x, cos, sin):
    """Rope: x * cos + rotate_half(x) * sin, rotate_half(x1, x2) = (-x2, x1) over the two halves."""
    x1, x2 = x.chunk(2, -1)
    return x * cos + torch.cat([-x2, x1], -1) * sin


def nucleus(z, top_p):
    """Set to -inf the least likely tokens whose total probability is at most 1 - top_p (keep >= 1)."""
    ascending, order = z.sort(-1)
    mass_below = ascending.softmax(-1).cumsum(-1)            # probability of this token and all less likely
    drop = mass_below <= 1 - top_p
    drop[..., -1] = False                                     # the most likely token always stays
    return z.masked_fill(drop.scatter(-1, order, drop), float("-inf"))


def pick(logits, noise, suppress, temperature, top_p, greedy):
    """Next token per row from float32 logits (N, V); see the module docstring."""
    z = logits.masked_fill(suppress, float("-inf"))
    if greedy:
        return z.argmax(-1)
    z = z / temperature
    if top_p < 1.0:
        z = nucleus(z, top_p)
    return (z - torch.log(-torch.log(noise))).argmax(-1)


def decode_step(w, s, suppress, opt):
    """One token for all N rows: reads s["tokens"] at s["slot"], writes the next token into s["tokens"].

    opt: Python constants (heads, eps, sampling settings), fixed for a compiled / captured step.
    """
    N = s["tokens"].shape[0]
    H, KV, hd = opt["heads"], opt["kv_heads"], opt["head_dim"]
    x = w["embed"][s["tokens"]]                                               # (N, D)
    freqs = (s["delta"] + s["slot"]).float()[:, None] * w["inv_freq"]        # (N, hd/2) text rope
    angle = torch.cat([freqs, freqs], -1)[:, None, None, :]                  # (N, 1, 1, hd)
    cos, sin = (angle.cos() * opt["rope_scale"]).to(x.dtype), (angle.sin() * opt["rope_scale"]).to(x.dtype)
    s["valid"].index_fill_(1, s["slot"], True)
    mask = s["valid"][:, None, None, :]                                       # (N, 1, 1, C)
    for layer, k_cache, v_cache in zip(w["layers"], s["k"], s["v"]):
        h = rms_norm(x, layer["ln1"], opt["eps"])
        q, k, v = F.linear(h, layer["qkv"], layer["qkv_bias"]).split([H * hd, KV * hd, KV * hd], -1)
        q = rotate(q.view(N, H, 1, hd), cos, sin)                             # (N, H, 1, hd)
        k = rotate(k.view(N, KV, 1, hd), cos, sin)
        k_cache.index_copy_(2, s["slot"], k)                                  # (N, KV, C, hd)
        v_cache.index_copy_(2, s["slot"], v.view(N, KV, 1, hd))
        a = F.scaled_dot_product_attention(q, k_cache, v_cache, attn_mask=mask, enable_gqa=True)
        x = x + F.linear(a.reshape(N, H * hd), layer["o"])
        gate, up = F.linear(rms_norm(x, layer["ln2"], opt["eps"]), layer["gate_up"]).chunk(2, -1)
        x = x + F.linear(F.silu(gate) * up, layer["down"])
    logits = F.linear(rms_norm(x, w["norm"], opt["eps"]), w["head"]).float()  # (N, V)
    if opt["keep_logits"]:
        s["logits"].copy_(logits)
    finish(s, pick(logits, s["noise"], suppress, opt["temperature"], opt["top_p"], opt["greedy"]), opt)


def finish(s, token, opt):
    """Rows already ended emit pad; a row ends when it emits end_id."""
    token = torch.where(s["done"], opt["pad_id"], token)
    s["done"].logical_or_(token == opt["end_id"])
    s["tokens"].copy_(token)


# ----------------------------------------------------------------------------- CUDA graph

def captured(step, warmup=3):
    """torch.compile the step, warm it up on a side stream, capture one call in a CUDA graph."""
    compiled = torch.compile(step)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(warmup):
            compiled()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        compiled()
    return graph.replay


def decoder(model, N, C, V, dtype, device, suppress, opt):
    """(weights, state, step()) for this shape. On CUDA kept on the model and reused across calls (the
    graph is captured once per shape; between rollouts that holds one copy of the LM weights and the cache)."""
    if device.type != "cuda":
        w, state = language_weights(model, dtype), new_state(model.config.text_config, N, C, V, dtype, device)
        return w, state, lambda: decode_step(w, state, suppress, opt)
    key = (N, C, V, dtype, tuple(suppress.nonzero().flatten().tolist()), tuple(sorted(opt.items())))
    kept = model.__dict__.get("_fast_sampler")
    if kept is None or kept[0] != key:
        model.__dict__["_fast_sampler"] = None      # free the old graph and buffers first
        w, state = language_weights(model, dtype), new_state(model.config.text_config, N, C, V, dtype, device)
        state["noise"].fill_(0.5)
        replay = captured(lambda: decode_step(w, state, suppress, opt))
        kept = (key, w, state, replay)
        model.__dict__["_fast_sampler"] = kept
    else:
        language_weights(model, dtype, into=kept[1])
    return kept[1], kept[2], kept[3]


# ----------------------------------------------------------------------------- the loop

@torch.no_grad()
def sample(model, prompt, group_size, max_new_tokens, end_id, pad_id, suppress_ids=(), temperature=1.0,
           top_p=1.0, greedy=False, check_every=8, keep_logits=False, generator=None):
    """(N, T) completions, N = B * group_size, G answers of a prompt contiguous; T <= max_new_tokens.

    prompt: the processor's batch of B distinct prompts on the model's device. end_id None: never end
    (fixed-length decoding, for benchmarks). keep_logits: also return the raw float32 logits of every
    step, [(N, V)] * T (tests). generator: the torch.Generator for the sampling noise.
    """
    text = model.config.text_config
    logits0, kv, next_position = prefill(model, prompt)
    B, P = prompt["input_ids"].shape
    N, T, V = B * group_size, max_new_tokens, logits0.shape[-1]
    device = logits0.device
    dtype = (torch.get_autocast_dtype(device.type) if torch.is_autocast_enabled(device.type)
             else kv[0][0].dtype)
    C = P + T - 1 if device.type != "cuda" else -(-(P + T) // 128) * 128   # CUDA: steps of 128, fewer recompiles
    suppress = torch.zeros(V, dtype=torch.bool, device=device)
    suppress[list(suppress_ids)] = True
    opt = {"heads": text.num_attention_heads, "kv_heads": text.num_key_value_heads,
           "head_dim": kv[0][0].shape[-1], "eps": text.rms_norm_eps,
           "rope_scale": float(model.model.language_model.rotary_emb.attention_scaling),
           "temperature": float(temperature), "top_p": float(top_p), "greedy": bool(greedy),
           "end_id": -1 if end_id is None else int(end_id), "pad_id": int(pad_id), "keep_logits": keep_logits}
    with torch.autocast(device.type, enabled=False):                       # our dtype, chosen above
        w, s, step = decoder(model, N, C, V, dtype, device, suppress, opt)
        for (k, v), k_cache, v_cache in zip(kv, s["k"], s["v"]):
            k_cache[:, :, :P] = k.repeat_interleave(group_size, 0)          # (N, KV, P, hd)
            v_cache[:, :, :P] = v.repeat_interleave(group_size, 0)
        del kv
        s["valid"].zero_()
        s["valid"][:, :P] = prompt["attention_mask"].bool().repeat_interleave(group_size, 0)
        s["delta"].copy_((next_position - P).repeat_interleave(group_size))
        s["done"].zero_()
        out = torch.full((N, T), int(pad_id), dtype=torch.long, device=device)
        kept_logits = []
        logits = logits0.repeat_interleave(group_size, 0)                   # (N, V) first token
        for t in range(T):
            if not greedy:
                s["noise"].uniform_(generator=generator)
            if t == 0:
                s["logits"].copy_(logits)
                finish(s, pick(logits, s["noise"], suppress, opt["temperature"], opt["top_p"], greedy), opt)
            else:
                s["slot"].fill_(P + t - 1)
                step()
            out[:, t] = s["tokens"]
            if keep_logits:
                kept_logits.append(s["logits"].clone())
            if (t + 1) % check_every == 0 and bool(s["done"].all()):
                break
    out = out[:, :trimmed_length(out[:, :t + 1], end_id)]
    return (out, kept_logits[:out.shape[1]]) if keep_logits else out


def trimmed_length(out, end_id):
    """Columns up to the last row's end when every row ended (as generate stops), else all of them."""
    if end_id is None or not bool((out == end_id).any(1).all()):
        return out.shape[1]
    is_end = out == end_id
    return int(is_end.int().argmax(1).max()) + 1
