"""
Speed-ups of transformers' Qwen2.5-VL, each installed by name on a loaded model, the arithmetic unchanged:

    share_videos   the vision tower runs once per distinct video of a batch, not once per answer
    group_windows  windowed vision attention as one SDPA call per window length, not one per window
    patch_matmul   the vision patch embedding's Conv3d (kernel == stride) as one matrix product
    compile        torch.compile each decoder layer (regional: one graph for all layers), for the
                   log-prob passes; applied by train.py (--compile=True), not by load_policy

model.load_policy installs the first three (`speedups=()`: the model exactly as transformers ships
it). Each has a test against the plain model (tests/test_model.py).
"""
import torch

ALL = ("share_videos", "group_windows", "patch_matmul")


def apply(model, names=ALL):
    """Install the named speed-ups (ALL by default) on `model`; returns it."""
    unknown = set(names) - set(ALL)
    if unknown:
        raise ValueError(f"speedups: unknown {sorted(unknown)}; known: {', '.join(ALL)}")
    for name, install in (("share_videos", share_repeated_videos), ("group_windows", group_vision_windows),
                          ("patch_matmul", patch_embed_as_matmul)):
        if name in names:
            install(model)
    return model


def _visual(model):
    visual = getattr(getattr(model, "model", model), "visual", None)
    if visual is None:
        raise AttributeError(f"{type(model).__name__}: no vision tower at model.model.visual")
    return visual


def share_repeated_videos(model):
    """Run the vision tower once per distinct video of a batch instead of once per answer.

    A GRPO batch holds G copies of every prompt, contiguous (rollout.repeat_batch), so the tower
    would encode each video G times; on Qwen2.5-VL-3B at 16 frames that was most of the log-prob
    forward. Runs of consecutive identical videos (same grid, equal pixels) are encoded once and
    their features repeated, which is the same tensor the tower returns (gradients, if the tower
    trains, sum over the copies as they would). Idempotent.
    """
    visual = _visual(model)
    if getattr(visual, "shares_repeated_videos", False):
        return model
    encode = visual.forward

    def forward(hidden_states, grid_thw=None, **kwargs):
        patches = grid_thw.prod(-1).tolist()
        chunks = torch.split(hidden_states, patches)
        first, owner = [0], [0]          # indices of distinct videos; which distinct one each video is
        for i in range(1, len(chunks)):
            j = first[-1]
            if not (patches[i] == patches[j] and torch.equal(grid_thw[i], grid_thw[j])
                    and torch.equal(chunks[i], chunks[j])):
                first.append(i)
            owner.append(len(first) - 1)
        if len(first) == len(chunks):
            return encode(hidden_states, grid_thw=grid_thw, **kwargs)
        out = encode(torch.cat([chunks[i] for i in first]), grid_thw=grid_thw[first], **kwargs)
        merged = [patches[i] // visual.spatial_merge_size ** 2 for i in first]
        if torch.is_tensor(out):
            return _repeat_rows(out, merged, owner)
        for key, sizes in (("pooler_output", merged), ("last_hidden_state", [patches[i] for i in first])):
            if getattr(out, key, None) is not None:
                setattr(out, key, _repeat_rows(getattr(out, key), sizes, owner))
        return out

    visual.forward = forward
    visual.shares_repeated_videos = True
    return model


def group_vision_windows(model):
    """Vision attention as one SDPA call per distinct window length, not one per window.

    Without flash-attention, transformers runs Qwen2.5-VL's windowed vision attention as a Python loop
    over windows: 16 frames of 252 px are 72 windows x 28 layers = 2016 small kernels per video, which
    left an H100 idle (vision tower at 3% MFU). Windows of equal length (most are full 8x8-patch
    windows) are stacked into one batch instead; the arithmetic is the same. Only under sdpa: flash
    attention's varlen kernel already takes every window at once, and eager stays as shipped.
    
    """
    from transformers.models.qwen2_5_vl import modeling_qwen2_5_vl as qwen
    if _visual(model).config._attn_implementation != "sdpa":
        return model
    for attn in _visual(model).modules():
        if isinstance(attn, qwen.Qwen2_5_VLVisionAttention) and not getattr(attn, "groups_windows", False):
            attn.forward = _grouped_window_attention(attn, qwen.apply_rotary_pos_emb_vision)
            attn.groups_windows = True
    return model


def _grouped_window_attention(attn, rotary):
    def forward(hidden_states, cu_seqlens, position_embeddings=None, max_seqlen=None, **kwargs):
        n = hidden_states.shape[0]
        q, k, v = attn.qkv(hidden_states).reshape(n, 3, attn.num_heads, -1).permute(1, 0, 2, 3).unbind(0)
        q, k = rotary(q, k, *position_embeddings)                           # (n, heads, head_dim)
        starts, lengths = cu_seqlens[:-1].tolist(), (cu_seqlens[1:] - cu_seqlens[:-1]).tolist()
        groups = {}
        for start, length in zip(starts, lengths):
            if length:
                groups.setdefault(length, []).append(start)
        order, outputs = [], []
        for length, group_starts in groups.items():
            rows = (torch.tensor(group_starts, device=q.device)[:, None]
                    + torch.arange(length, device=q.device)).reshape(-1)  # this group's rows, window-major
            q_, k_, v_ = (x[rows].view(len(group_starts), length, attn.num_heads, -1).transpose(1, 2)
                          for x in (q, k, v))
            out = torch.nn.functional.scaled_dot_product_attention(q_, k_, v_, scale=attn.scaling)
            outputs.append(out.transpose(1, 2).reshape(len(rows), -1))
            order.append(rows)
        out = torch.cat(outputs)[torch.argsort(torch.cat(order))]           # back to the input order
        return attn.proj(out)
    return forward


def patch_embed_as_matmul(model):
    """The vision patch embedding as one matrix product instead of its Conv3d.

    The Conv3d has kernel == stride and no padding: every output row is one patch's C*T*P*P pixels
    (the processor's flattening order) times the flattened kernel, `x @ W.view(D, -1).T`. PyTorch
    runs the conv as a general 3D convolution instead (mkldnn on CPU: a tenth of a tiny-model SFT
    step, forward plus backward; some cuDNN versions are far slower still). The weight stays the
    Conv3d's, so checkpoints and state dicts are unchanged. Idempotent.
    """
    embed = _visual(model).patch_embed
    proj = embed.proj
    degenerate = (isinstance(proj, torch.nn.Conv3d) and proj.stride == proj.kernel_size
                  and proj.padding == (0, 0, 0) and proj.dilation == (1, 1, 1) and proj.groups == 1)
    if getattr(embed, "as_matmul", False) or not degenerate:
        return model

    def forward(hidden_states):
        weight = proj.weight                                    # (D, C, T, P, P)
        patches = hidden_states.reshape(-1, weight[0].numel()).to(weight.dtype)
        return torch.nn.functional.linear(patches, weight.reshape(weight.shape[0], -1), proj.bias)

    embed.forward = forward
    embed.as_matmul = True
    return model


def _repeat_rows(x, sizes, owner):
    """Rows of x split into `sizes` blocks, then block owner[k] for every k: the per-video expansion."""
    blocks = torch.split(x, sizes)
    return torch.cat([blocks[k] for k in owner])


def compile_decoder_layers(model, **compile_kwargs):
    """torch.compile each decoder layer's forward (regional compilation: one graph, reused by every layer).

    The layers are where the update's time goes, and they are alike, so this compiles once per
    distinct input (shapes, grad mode, dtype) instead of once per model. A call with a KV cache
    (generation's prefill and decode) runs the layer eagerly: a decode recompiles at every new length
    until torch gives up on the layer altogether, for the log-prob passes too. Under FSDP2, compile
    before fully_shard (dynamo skips FSDP2's hooks and runs them eagerly). Shapes: torch's automatic
    dynamic, so the second distinct length recompiles once (about 5 s at the 3B shape) with only the
    dimensions that changed left symbolic; every dimension symbolic from the start (dynamic=True) avoids
    that recompile but made the 3B update slower (H200, 2026-12-04: 6.18 s, 48.1% MFU, against 5.82 s,
    51.1%). Warm up on two lengths before timing. Returns the model.
    """
    for layer in model.model.language_model.layers:
        eager = layer.forward
        compiled = torch.compile(eager, **compile_kwargs)

        def forward(*args, _eager=eager, _compiled=compiled, **kwargs):
            cache = kwargs.get("cache", kwargs.get("past_key_values"))   # the name changed in transformers 5.2x
            return (_eager if cache is not None else _compiled)(*args, **kwargs)
        layer.forward = forward
    return model


def compile_seconds():
    """Seconds this process has spent in torch.compile so far: tracing and compiling forward graphs,
    and the backward graphs, which are compiled at their first backward."""
    from torch._dynamo.utils import compilation_time_metrics
    return sum(sum(v) for k, v in compilation_time_metrics.items()
               if k == "_compile.compile_inner" or k.endswith("bw_compiler"))
