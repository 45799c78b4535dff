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
def _head_returns_logps(head, targets, keep, temperature, suppress, chunk_tokens):
    """Make `head` (the lm_head) return (N, T) log-probs of `targets` instead of (N, T+1, V) logits."""
    def forward(hidden):                                     # (N, T+1, H): positions P-1 .. P+T-1
        h = hidden[:, :-1][keep]                             # (M, H) real completion tokens only
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
    suppress = None
    if suppress_tokens is not None:
        suppress = torch.as_tensor(list(suppress_tokens), dtype=torch.long, device=input_ids.device)
    targets = input_ids[:, -T:]                              # (N, T): token P+t, predicted at P+t-1
    with _head_returns_logps(inner.get_output_embeddings(), targets, completion_mask.bool(), temperature,
                             suppress, chunk_tokens):
        out = model(**inputs, use_cache=False, logits_to_keep=T + 1)
    return out.logits                                        # (N, T) float32 log-probs, not logits


def select_rows(batch, rows):
    """Rows `rows` (a 1-D index tensor) of a completion_logps batch; one video (image) per row."""
    out = {k: v[rows] if torch.is_tensor(v) and v.dim() and v.shape[0] == len(batch["input_ids"]) else v
           for k, v in batch.items()}
    for pixels, grid, kind in VISUAL_ROWS:
        if pixels in batch:
            if batch[grid].shape[0] != len(batch["input_ids"]):
                raise ValueError(f"{grid}: expected one {kind} per row "
                                 f"({len(batch['input_ids'])}), got {batch[grid].shape[0]}")
            chunks = batch[pixels].split(batch[grid].prod(-1).tolist())
            out[pixels] = torch.cat([chunks[i] for i in rows.tolist()])
            out[grid] = batch[grid][rows]
    return out


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


def length_sorted_logps(model, batch, rows_per_forward=0, **kwargs):
    """completion_logps over the rows sorted by length, `rows_per_forward` rows per forward, each
    forward trimmed to its own longest row. 0: one forward over the whole batch (trimmed too).
    Returns (N, T).

    Rows of one video sorted apart cost one vision-tower pass per forward that holds them (the tower
    is shared only within a forward, model.share_repeated_videos).
    """
    N, T = batch["completion_mask"].shape
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
