"""Log-probabilities of sampled completions under a policy, without the (N, T, V) logits.

completion_logps is the one forward pass the trainer needs: log pi(y_t | x, y_<t) for every completion
token, with temperature applied the way sampling applies it (softmax(logits / tau)):

    log pi(y_t) = z_{y_t} / tau - logsumexp_v(z_v / tau),   z = lm_head(h_{P+t-1})

Memory and time: the lm_head and the float32 log-softmax run on the real completion tokens only
(completion_mask 1), `chunk_tokens` of them at a time; under autograd each chunk is recomputed in
backward (checkpoint), so forward keeps the (n_real, H) hidden states and nothing of vocabulary size,
and backward holds one chunk's (c, V) logits at a time. The head is swapped in for lm_head's forward
during the model call, so the computation stays inside the model's own forward (DDP and FSDP2 see an
ordinary forward and backward).

group_packed_logps runs each group's prompt once: the G answers of a prompt follow it in one sequence,
each seeing the prompt and itself (a block mask) at the positions of its own unpacked row.

length_sorted_logps runs the same forward on rows sorted by length, `rows_per_forward` at a time, each
forward trimmed to its own longest prompt and completion: a right-padded batch of answers of mixed
lengths otherwise pays for its longest row on every row. The rows' results are exactly those of one
padded forward (positions come from the attention mask, not the padding).
"""

import inspect
from contextlib import contextmanager

import torch
import torch.utils.checkpoint

VISUAL_ROWS = (("pixel_values_videos", "video_grid_thw", "video"), ("pixel_values", "image_grid_thw", "image"))


def _mm_token_type_ids(config, input_ids):
    """0 text, 1 image placeholder, 2 video placeholder, for the full prompt+completion sequence."""
    types = torch.zeros_like(input_ids, dtype=torch.int32)
    types[input_ids == config.image_token_id] = 1
    types[input_ids == config.video_token_id] = 2
    return types


def _chunk_logps(hidden, targets, weight, bias, temperature, suppress):
    """(c, H) final hidden states -> (c,) float32 log-probs of the targets; logits in the model dtype."""
    z = torch.nn.functional.linear(hidden, weight, bias).float() / temperature    # (c, V) float32
    if suppress is not None:
        z = z.index_fill(-1, suppress, float("-inf"))
    return z.gather(-1, targets[:, None]).squeeze(-1) - torch.logsumexp(z, dim=-1)  # (c,)


@contextmanager
def _head_returns_logps(head, targets, keep, where, temperature, suppress, chunk_tokens):
    """Make `head` (the lm_head) return (N, T) log-probs of `targets` instead of logits.

    where (N, T): for each target, the row of hidden.reshape(-1, H) whose state predicts it."""
    def forward(hidden):
        h = hidden.reshape(-1, hidden.shape[-1])[where[keep]]  # (M, H) real completion tokens only
        y = targets[keep]                                    # (M,)
        grad = torch.is_grad_enabled() and (h.requires_grad or head.weight.requires_grad)
        parts = []
        for s in range(0, h.shape[0], chunk_tokens):
            args = (h[s:s + chunk_tokens], y[s:s + chunk_tokens], head.weight, head.bias, temperature, suppress)
            parts.append(torch.utils.checkpoint.checkpoint(_chunk_logps, *args, use_reentrant=False)
                         if grad else _chunk_logps(*args))
        values = torch.cat(parts) if parts else h.new_zeros(0, dtype=torch.float32)
        return torch.zeros(keep.shape, dtype=torch.float32, device=h.device).masked_scatter(keep, values)

    head.forward = forward
    try:
        yield
    finally:
        del head.forward                                     # back to nn.Linear.forward


def completion_logps(model, batch, temperature=1.0, suppress_tokens=None, chunk_tokens=1024):
    """log pi(y_t | x, y_<t) at temperature tau, for the T completion tokens. Returns (N, T) float32.

    batch: input_ids (N, P+T) = left-padded prompt + right-padded completion, attention_mask (N, P+T),
    completion_mask (N, T), and the processor's visual keys (pixel_values_videos, video_grid_thw,
    second_per_grid_ts, ...). Positions with completion_mask 0 come back as 0 (and cost nothing).
    The same as sampling with temperature tau (generate divides the float32 logits by tau). With
    suppress_tokens those ids get z = -inf first, as SuppressTokensLogitsProcessor does in generate.
    """
    input_ids, attention_mask, completion_mask = batch["input_ids"], batch["attention_mask"], batch["completion_mask"]
    N, L = input_ids.shape
    T = completion_mask.shape[1]
    if completion_mask.shape[0] != N or attention_mask.shape != input_ids.shape or T >= L:
        raise ValueError(f"completion_mask {tuple(completion_mask.shape)} and attention_mask "
                         f"{tuple(attention_mask.shape)} do not fit input_ids {tuple(input_ids.shape)}")
    drop = ("completion_mask", "mm_token_type_ids", "video_metadata")
    inputs = {k: v for k, v in batch.items() if k not in drop}
    inner = getattr(model, "module", model)  # DDP wraps; FSDP2 keeps the class
    if "mm_token_type_ids" in inspect.signature(inner.forward).parameters:
        # The processor's mm_token_type_ids covers the prompt only. Newer transformers build the 3D rope
        # index from it and silently fall back to 1D positions without it, so rebuild it full length.
        inputs["mm_token_type_ids"] = _mm_token_type_ids(inner.config, input_ids)
    targets = input_ids[:, -T:]                              # (N, T): token P+t, predicted at P+t-1
    # the forward keeps the last T + 1 positions, P-1 .. P+T-1; target t is predicted at the t-th of them
    where = torch.arange(N, device=input_ids.device)[:, None] * (T + 1) + torch.arange(T, device=input_ids.device)
    with _head_returns_logps(inner.get_output_embeddings(), targets, completion_mask.bool(), where, temperature,
                             _suppress_ids(suppress_tokens, input_ids.device), chunk_tokens):
        out = model(**inputs, use_cache=False, logits_to_keep=T + 1)
    return out.logits                                        # (N, T) float32 log-probs, not logits


def _suppress_ids(suppress_tokens, device):
    if suppress_tokens is None:
        return None
    return torch.as_tensor(list(suppress_tokens), dtype=torch.long, device=device)


def group_packed_logps(model, batch, group_size, temperature=1.0, suppress_tokens=None, chunk_tokens=1024):
    """completion_logps with each group's prompt encoded once: (N, T) float32, the same values.

    The G answers of a prompt share its tokens and its video, so a padded batch of N = B * G rows runs
    the prompt (vision tower included) G times, and pads every answer to the longest. Packed, a group
    is one sequence, its answers back to back:

        [ prompt (P) | answer 1 (l_1) | answer 2 (l_2) | ... | answer G (l_G) | pad to the longest group ]

    with a block mask: the prompt is causal over itself; answer j sees the prompt's real tokens and its
    own earlier tokens, never another answer. Answer j's token t sits at rope position p_end + t, p_end
    one past the prompt's largest (3D rope) position, as in its own unpacked row, so every attention
    score, and so every log-prob, is the unpacked one; its first token is predicted from the prompt's
    last state. Tokens computed: about B * (P + sum l) instead of B * G * (P + max l).
    Rows must come in groups of `group_size` identical prompts (rollout.repeat_batch's layout).
    Needs a 4D mask: attn_implementation sdpa or eager.
    """
    T_in = batch["completion_mask"].shape[1]
    batch = trim_padding(batch)
    input_ids, attention_mask, completion_mask = batch["input_ids"], batch["attention_mask"], batch["completion_mask"]
    (N, L), T, G = input_ids.shape, completion_mask.shape[1], group_size
    P, B, dev = L - T, N // G, input_ids.device
    if N % G:
        raise ValueError(f"group_packed_logps: {N} rows are not whole groups of {G}")
    prompt_ids, prompt_mask = input_ids[:, :P].reshape(B, G, P), attention_mask[:, :P].reshape(B, G, P)
    if not (torch.equal(prompt_ids, prompt_ids[:, :1].expand_as(prompt_ids))
            and torch.equal(prompt_mask, prompt_mask[:, :1].expand_as(prompt_mask))):
        raise ValueError(f"group_packed_logps: the {G} rows of a group must share one prompt")
    inner = getattr(model, "module", model)
    first = select_rows(batch, torch.arange(0, N, G, device=dev))             # one row per group: its visual
    positions = _prompt_positions(inner, first, P)                             # (3, B, P)
    p_end = positions.amax(0).masked_fill(first["attention_mask"][:, :P] == 0, -1).amax(1) + 1   # (B,)

    keep = completion_mask.bool()                                              # (N, T): each row 1s, then 0s
    lengths = completion_mask.sum(1).reshape(B, G)
    S = P + int(lengths.sum(1).max())                                          # packed length
    t = torch.arange(T, device=dev)
    col = (P + lengths.cumsum(1) - lengths).reshape(N, 1) + t                  # (N, T) packed column of token t
    row = (torch.arange(N, device=dev) // G)[:, None].expand(N, T)             # (N, T) packed sequence
    answer = (torch.arange(N, device=dev) % G + 1)[:, None].expand(N, T)
    dest = (row[keep], col[keep])
    ids = input_ids.new_full((B, S), int(input_ids[0, 0]))   # padding: a text id (never a vision placeholder), masked
    ids[:, :P] = first["input_ids"][:, :P]
    ids[dest] = input_ids[:, P:][keep]
    seg = torch.full((B, S), -1, dtype=torch.long, device=dev)                 # -1 padding, 0 prompt, j answer j
    seg[:, :P] = 0
    seg[dest] = answer[keep]
    text_pos = p_end[:, None].repeat(1, S - P)                                 # answers: p_end + t
    text_pos[dest[0], dest[1] - P] = (p_end[row] + t)[keep]
    real = torch.cat([first["attention_mask"][:, :P].bool(), seg[:, P:] > 0], 1)

    drop = ("input_ids", "attention_mask", "completion_mask", "mm_token_type_ids", "video_metadata")
    inputs = {k: v for k, v in first.items() if k not in drop}
    inputs["input_ids"] = ids
    inputs["position_ids"] = torch.cat([positions, text_pos[None].expand(3, B, S - P)], 2)
    inputs["attention_mask"] = _block_mask(seg, real, inner.config, next(inner.parameters()).dtype)
    at = torch.where(t == 0, P - 1, col - 1)                  # token t is predicted one column before its own
    where = (row * S + at).masked_fill(~keep, 0)
    with _head_returns_logps(inner.get_output_embeddings(), input_ids[:, P:], keep, where,
                             temperature, _suppress_ids(suppress_tokens, dev), chunk_tokens):
        out = model(**inputs, use_cache=False, logits_to_keep=0)
    return torch.nn.functional.pad(out.logits, (0, T_in - T))                # (N, T_in)


def _prompt_positions(inner, prompt_rows, P):
    """The 3D rope positions transformers gives the prompts: (3, B, P)."""
    get_rope_index = inner.model.get_rope_index
    ids, mask = prompt_rows["input_ids"][:, :P], prompt_rows["attention_mask"][:, :P]
    args = {"input_ids": ids, "attention_mask": mask, "mm_token_type_ids": _mm_token_type_ids(inner.config, ids),
            **{k: prompt_rows.get(k) for k in ("image_grid_thw", "video_grid_thw", "second_per_grid_ts")}}
    takes = inspect.signature(get_rope_index).parameters
    positions, _ = get_rope_index(**{k: v for k, v in args.items() if k in takes})
    if positions.shape != (3, *ids.shape):
        raise RuntimeError(f"get_rope_index gave positions of shape {tuple(positions.shape)}, expected "
                           f"(3, {ids.shape[0]}, {P}): this transformers version needs --pack_groups=False")
    return positions.to(ids.device)


def _block_mask(seg, real, config, dtype):
    """(B, 1, S, S) mask of the packed sequences: True (0.0) where a query may attend to a key.

    seg: (B, S) 0 prompt, j answer j, -1 padding; real: (B, S) the tokens that count as keys.
    Causal; a key must be real; an answer's key only for queries of the same answer. Every query
    sees itself, so padding positions attend to something (no all-masked row, no NaN)."""
    S = seg.shape[1]
    idx = torch.arange(S, device=seg.device)
    causal = idx[None, :] <= idx[:, None]                                          # (S, S) [query, key]
    same = (seg[:, None, :] == 0) | (seg[:, None, :] == seg[:, :, None])           # (B, S, S)
    mask = (causal & same & real[:, None, :]) | torch.eye(S, dtype=torch.bool, device=seg.device)
    if getattr(config, "_attn_implementation", "sdpa") == "eager":                 # eager adds the mask
        return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(
            ~mask, torch.finfo(dtype).min)[:, None]
    return mask[:, None]


def select_rows(batch, rows):
    """Rows `rows` (a 1-D index tensor) of a completion_logps batch; one video (image) per row."""
    out = {k: v[rows] if torch.is_tensor(v) and v.dim() and v.shape[0] == len(batch["input_ids"]) else v
           for k, v in batch.items()}
    for pixels, grid, kind in VISUAL_ROWS:
        if pixels in batch:
            if batch[grid].shape[0] != len(batch["input_ids"]):
                raise ValueError(f"{grid}: expected one {kind} per row "
                                 f"({len(batch['input_ids'])}), got {batch[grid].shape[0]}")
            out[pixels] = visual_rows(batch[pixels], batch[grid], rows)
            out[grid] = batch[grid][rows]
    return out


def visual_rows(pixels, grid_thw, rows):
    """The patches of videos (images) `rows` from the processor's flat patch list, cut by their grids.
    A run of consecutive rows is a slice (no copy): micro-batches are such runs."""
    rows = torch.as_tensor(rows, dtype=torch.long).cpu()
    sizes = grid_thw.prod(-1).cpu()
    ends = sizes.cumsum(0)
    starts = ends - sizes
    if len(rows) and torch.equal(rows, torch.arange(int(rows[0]), int(rows[0]) + len(rows))):
        return pixels[int(starts[rows[0]]):int(ends[rows[-1]])]
    return torch.cat([pixels[int(starts[i]):int(ends[i])] for i in rows.tolist()]) if len(rows) else pixels[:0]


def trim_padding(batch):
    """Drop the columns that every row pads: leading prompt padding, trailing completion padding."""
    attention, completion = batch["attention_mask"], batch["completion_mask"]
    L, T = attention.shape[1], completion.shape[1]
    first = int(attention.any(0).nonzero()[0])                       # first column some row attends to
    used = completion.any(0).nonzero()
    keep_T = int(used[-1]) + 1 if len(used) else 1                   # through the longest completion
    cols = slice(first, L - T + keep_T)
    return {**batch, "input_ids": batch["input_ids"][:, cols], "attention_mask": attention[:, cols],
            "completion_mask": completion[:, :keep_T]}


def length_sorted_logps(model, batch, rows_per_forward=0, group_size=0, **kwargs):
    """completion_logps over the rows sorted by length, `rows_per_forward` rows per forward, each
    forward trimmed to its own longest row. 0: one forward over the whole batch (trimmed too), with
    each group's prompt packed once when `group_size` > 1 (group_packed_logps). Returns (N, T).

    Rows of one video sorted apart cost one vision-tower pass per forward that holds them (the tower
    is shared only within a forward, speedups.share_repeated_videos).
    """
    N, T = batch["completion_mask"].shape
    if rows_per_forward <= 0 and group_size > 1:
        return group_packed_logps(model, batch, group_size, **kwargs)
    if rows_per_forward <= 0 or rows_per_forward >= N:
        logps = completion_logps(model, trim_padding(batch), **kwargs)
        return torch.nn.functional.pad(logps, (0, T - logps.shape[1]))
    lengths = batch["attention_mask"].sum(1)                         # (N,) real tokens per row
    order = torch.argsort(lengths.cpu(), stable=True)
    parts = []
    for rows in order.split(rows_per_forward):
        part = trim_padding(select_rows(batch, rows.to(lengths.device)))
        logps = completion_logps(model, part, **kwargs)              # (n, T') with T' <= T
        parts.append(torch.nn.functional.pad(logps, (0, T - logps.shape[1])))
    return torch.cat(parts)[torch.argsort(order).to(lengths.device)]  # (N, T) back in the batch's order
