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

One code path on every device. The decoder (our copy of the language model's weights, and one state
per shape: cache, masks, positions) is kept on the model and reused across calls; each call refreshes
the weights in place. Two speed-ups, each a switch, for CUDA:
    compile  each decoder layer and the sampling head compiled by torch.compile (one graph for all layers)
    graph    the whole step captured once per shape in a CUDA graph; a token is then one replay after
             writing the slot and the noise into the captured inputs
With either on, shapes are bucketed (rows to a power of two, the cache to a multiple of 128) so that
rollouts, hint traces and evaluation batches reuse a few compiled / captured shapes (at most
`max_shapes`, least recently used dropped first) instead of evicting each other. Every tensor a compiled
or captured step reads is passed to it as an argument and lives as long as its shape's state: nothing
a step reads is ever freed under it. (The first version kept tensors in a closure compiled once and
re-created them per shape; on torch 2.11 some calls then decoded from the wrong memory.)
The weights are our own copies, so a captured graph never reads memory that FSDP2 or the optimizer may
move. Under FSDP2 the caller gathers the weights once (rollout.gathered_for_generation); the step runs
no collective, so ranks may decode different numbers of tokens.
"""
from collections import OrderedDict
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


COMPILE_MIN_PARAMS = 100_000_000


def speedups(device, compile=None, graph=None, lm_params=None):
    """(compile, graph) for a device. graph None: on for CUDA (it needs CUDA). compile None: on for CUDA
    when the language model has at least COMPILE_MIN_PARAMS parameters: below that a captured step is a
    few microseconds of kernels either way, and compiling costs seconds once per process (H200, the tiny
    default: rollouts 3.5 s graph only vs 4.1 s compiled, 20 steps each; compile about 10 s)."""
    cuda = torch.device(device).type == "cuda"
    if compile is None:
        compile = cuda and (lm_params is None or lm_params >= COMPILE_MIN_PARAMS)
    compile = bool(compile)
    graph = cuda if graph is None else bool(graph)
    if graph and not cuda:
        raise ValueError(f"decode_graph: CUDA graphs need a CUDA device, got {device}")
    return compile, graph


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

    into: the copies of an earlier call (captured graphs read them): refreshed in place instead.
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
            "noise": torch.full((N, V), 0.5, dtype=torch.float32, device=device),
            "logits": torch.zeros(N, V, dtype=torch.float32, device=device)}


def bucket(N, C, fixed):
    """The shape a call runs at: (N, C) itself, or with fixed shapes (compile / graph) rows rounded up
    to a power of two and the cache to a multiple of 128, so that few shapes serve a whole run."""
    if not fixed:
        return N, C
    return 1 << (N - 1).bit_length(), -(-C // 128) * 128


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


def decoder_layer(x, cos, sin, mask, slot, ln1, qkv, qkv_bias, o, ln2, gate_up, down, k_cache, v_cache,
                  heads, kv_heads, eps):
    """One decoder layer for one new token per row: x (N, D) -> (N, D); writes its k, v at `slot`.

    Attention over the static cache (N, KV, C, hd), each key head serving H / KV query heads:
        a = softmax(q k^T / sqrt(hd), masked to the row's valid slots) v      (scores in float32)
    """
    N, hd = x.shape[0], k_cache.shape[-1]
    h = rms_norm(x, ln1, eps)
    q, k, v = F.linear(h, qkv, qkv_bias).split([heads * hd, kv_heads * hd, kv_heads * hd], -1)
    q = rotate(q.view(N, kv_heads, heads // kv_heads, hd), cos, sin)          # (N, KV, H/KV, hd)
    k = rotate(k.view(N, kv_heads, 1, hd), cos, sin)
    k_cache.index_copy_(2, slot, k)                                           # (N, KV, C, hd)
    v_cache.index_copy_(2, slot, v.view(N, kv_heads, 1, hd))
    scores = torch.matmul(q, k_cache.transpose(-1, -2)).float() * hd ** -0.5  # (N, KV, H/KV, C)
    p = scores.masked_fill(~mask, float("-inf")).softmax(-1).to(x.dtype)
    a = torch.matmul(p, v_cache)                                              # (N, KV, H/KV, hd)
    x = x + F.linear(a.reshape(N, heads * hd), o)
    gate, up = F.linear(rms_norm(x, ln2, eps), gate_up).chunk(2, -1)
    return x + F.linear(F.silu(gate) * up, down)


def sampling_head(x, norm, head, noise, suppress, eps, temperature, top_p, greedy):
    """Final norm, logits (N, V) in float32, next token (N,)."""
    logits = F.linear(rms_norm(x, norm, eps), head).float()
    return logits, pick(logits, noise, suppress, temperature, top_p, greedy)


def decode_step(w, s, suppress, opt, layer_fn=decoder_layer, head_fn=sampling_head):
    """One token for all N rows: reads s["tokens"] at s["slot"], writes the next token into s["tokens"].

    opt: Python constants (heads, eps, sampling settings), fixed for a compiled / captured step.
    """
    x = w["embed"][s["tokens"]]                                               # (N, D)
    freqs = (s["delta"] + s["slot"]).float()[:, None] * w["inv_freq"]        # (N, hd/2) text rope
    angle = torch.cat([freqs, freqs], -1)[:, None, None, :]                  # (N, 1, 1, hd)
    cos, sin = (angle.cos() * opt["rope_scale"]).to(x.dtype), (angle.sin() * opt["rope_scale"]).to(x.dtype)
    s["valid"].index_fill_(1, s["slot"], True)
    mask = s["valid"][:, None, None, :]                                       # (N, 1, 1, C)
    for layer, k_cache, v_cache in zip(w["layers"], s["k"], s["v"]):
        x = layer_fn(x, cos, sin, mask, s["slot"], layer["ln1"], layer["qkv"], layer["qkv_bias"], layer["o"],
                     layer["ln2"], layer["gate_up"], layer["down"], k_cache, v_cache,
                     opt["heads"], opt["kv_heads"], opt["eps"])
    logits, token = head_fn(x, w["norm"], w["head"], s["noise"], suppress, opt["eps"], opt["temperature"],
                            opt["top_p"], opt["greedy"])
    if opt["keep_logits"]:
        s["logits"].copy_(logits)
    finish(s, token, opt)


def finish(s, token, opt):
    """Rows already ended emit pad; a row ends when it emits end_id."""
    token = torch.where(s["done"], opt["pad_id"], token)
    s["done"].logical_or_(token == opt["end_id"])
    s["tokens"].copy_(token)


# ----------------------------------------------------------------------------- kept decoders

_compiled = {}


def compiled(fn):
    """torch.compile'd `fn`, made once per process: one graph serves every layer of a model. Shapes: torch's
    automatic dynamic (a second row count or cache length recompiles once, with only those dimensions
    symbolic). With dynamic=True, every dimension symbolic from the first call, a step at the 3B shape took
    4.74 ms on an H200 against 3.80 ms for the earlier whole-step static compile (which of the two
    differences costs the time is not measured yet: scripts/gpu_check.py --parts=speed)."""
    if fn not in _compiled:
        _compiled[fn] = torch.compile(fn)
    return _compiled[fn]


def captured(step, warmup=2):
    """Run `step` on a side stream to warm it up, then capture one call in a CUDA graph -> its replay."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(warmup):
            step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step()
    return graph.replay


def decoder(model, N, C, V, dtype, device, suppress_ids, opt, compile, graph, max_shapes):
    """(weights, state, step()) for this shape, kept on the model across calls.

    The weights (one copy for all shapes) are refreshed in place each call; a shape's state and its
    compiled / captured step stay until `max_shapes` other shapes were used more recently.
    """
    kept = model.__dict__.setdefault("_decoders", {"dtype": None, "weights": None, "shapes": OrderedDict()})
    if kept["dtype"] != dtype:
        kept["shapes"].clear()                       # their steps read the old weights
        kept["weights"], kept["dtype"] = language_weights(model, dtype), dtype
    else:
        language_weights(model, dtype, into=kept["weights"])
    key = (N, C, V, tuple(suppress_ids), tuple(sorted(opt.items())), compile, graph)
    if key in kept["shapes"]:
        kept["shapes"].move_to_end(key)
        state, step = kept["shapes"][key]
        return kept["weights"], state, step
    while len(kept["shapes"]) >= max_shapes:
        kept["shapes"].popitem(last=False)
    w, state = kept["weights"], new_state(model.config.text_config, N, C, V, dtype, device)
    suppress = torch.zeros(V, dtype=torch.bool, device=device)
    suppress[list(suppress_ids)] = True
    fns = (compiled(decoder_layer), compiled(sampling_head)) if compile else (decoder_layer, sampling_head)
    step = lambda: decode_step(w, state, suppress, opt, *fns)
    if graph:
        step = captured(step)
    state["suppress"] = suppress                     # lives as long as the step that reads it
    kept["shapes"][key] = (state, step)
    return w, state, step


# ----------------------------------------------------------------------------- the loop

@torch.no_grad()
def sample(model, prompt, group_size, max_new_tokens, end_id, pad_id, suppress_ids=(), temperature=1.0,
           top_p=1.0, greedy=False, check_every=8, keep_logits=False, generator=None, compile=None, graph=None,
           max_shapes=4):
    """(N, T) completions, N = B * group_size, G answers of a prompt contiguous; T <= max_new_tokens.

    prompt: the processor's batch of B distinct prompts on the model's device. end_id None: never end
    (fixed-length decoding, for benchmarks). keep_logits: also return the raw float32 logits of every
    step, [(N, V)] * T (tests). generator: the torch.Generator for the sampling noise. compile, graph:
    the speed-ups (None: `speedups` decides); max_shapes: decoder shapes kept on the model.
    """
    text = model.config.text_config
    logits0, kv, next_position = prefill(model, prompt)
    B, P = prompt["input_ids"].shape
    N, T, V = B * group_size, max_new_tokens, logits0.shape[-1]
    device = logits0.device
    compile, graph = speedups(device, compile, graph,
                              sum(p.numel() for p in model.model.language_model.parameters()))
    dtype = (torch.get_autocast_dtype(device.type) if torch.is_autocast_enabled(device.type)
             else kv[0][0].dtype)
    Nb, C = bucket(N, P + T - 1, compile or graph)
    opt = {"heads": text.num_attention_heads, "kv_heads": text.num_key_value_heads, "eps": text.rms_norm_eps,
           "rope_scale": float(model.model.language_model.rotary_emb.attention_scaling),
           "temperature": float(temperature), "top_p": float(top_p), "greedy": bool(greedy),
           "end_id": -1 if end_id is None else int(end_id), "pad_id": int(pad_id), "keep_logits": keep_logits}
    with torch.autocast(device.type, enabled=False):                       # our dtype, chosen above
        w, s, step = decoder(model, Nb, C, V, dtype, device, sorted(set(suppress_ids)), opt, compile, graph,
                             max_shapes)
        for (k, v), k_cache, v_cache in zip(kv, s["k"], s["v"]):
            k_cache[:N].unflatten(0, (B, group_size))[:, :, :, :P] = k[:, None]   # (B, G, KV, P, hd)
            v_cache[:N].unflatten(0, (B, group_size))[:, :, :, :P] = v[:, None]
        del kv
        s["valid"].zero_()
        s["valid"][:N, :P] = prompt["attention_mask"].bool().repeat_interleave(group_size, 0)
        s["delta"].zero_()
        s["delta"][:N] = (next_position - P).repeat_interleave(group_size)
        s["done"].zero_()
        s["done"][N:] = True                                                 # bucket's spare rows
        s["tokens"].fill_(int(pad_id))
        out = torch.full((N, T), int(pad_id), dtype=torch.long, device=device)
        kept_logits = []
        logits = torch.zeros(Nb, V, dtype=torch.float32, device=device)
        logits[:N] = logits0.repeat_interleave(group_size, 0)               # (N, V) first token
        for t in range(T):
            if not greedy:
                s["noise"].uniform_(generator=generator)
            if t == 0:
                s["logits"].copy_(logits)
                finish(s, pick(logits, s["noise"], s["suppress"], opt["temperature"], opt["top_p"], greedy), opt)
            else:
                s["slot"].fill_(P + t - 1)
                step()
            out[:, t] = s["tokens"][:N]
            if keep_logits:
                kept_logits.append(s["logits"][:N].clone())
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


def teacher_forced_logits(model, prompt, completion):
    """The reference for every step's logits (tests, scripts/gpu_check.py): transformers' forward over the
    (N, P) prompt plus the (N, T) completion, (N, T, V) float32 logits, position t predicting token t."""
    batch = {k: v for k, v in prompt.items() if k not in ("mm_token_type_ids", "video_metadata")}
    batch["input_ids"] = torch.cat([prompt["input_ids"], completion], 1)
    batch["attention_mask"] = torch.cat([prompt["attention_mask"], torch.ones_like(completion)], 1)
    types = torch.zeros_like(batch["input_ids"], dtype=torch.int32)
    types[batch["input_ids"] == model.config.video_token_id] = 2
    with torch.no_grad():
        logits = model(**batch, mm_token_type_ids=types).logits
    P = prompt["input_ids"].shape[1]
    return logits[:, P - 1:-1].float()
