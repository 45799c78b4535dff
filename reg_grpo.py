"""
Reg-GRPO (DeepVideo-R1, arXiv 2506.07464): the group advantages and the loss. Torch only: copy this file
anywhere; its defaults are the ones train.py trains with:

    advantages = group_advantages(rewards, group_size=8)                     # (N,), G answers contiguous
    loss, stats = reg_grpo_loss(logps, old_logps, advantages, mask, group_size=8, ref_logps=ref_logps)

The baselines it is compared with (GRPO's clipped ratio, REBEL, dynamic sampling, group replay) are in
baselines.py, which imports this file's helpers.

Derivation of Reg-GRPO. KL-regularised RL against the sampling policy pi_old,

    max_pi  E_{y~pi}[R(x, y)] - lambda * KL(pi || pi_old),

has the closed-form optimum pi*(y|x) = pi_old(y|x) * exp(R(x, y) / lambda) / Z(x). Solving for R:

    R(x, y) = lambda * log(pi*(y|x) / pi_old(y|x)) + lambda * log Z(x) = lambda * rho* + lambda * log Z(x).

For the G answers y_1..y_G of one prompt x, z-scoring within the group removes both unknowns, so

    A_i = (R_i - mean_g R) / std_g R   equals   Ahat_i = (rho_i - mean_g rho) / std_g rho

at the optimum, rho_i = log pi_theta(y_i|x) - log pi_old(y_i|x). The paper regresses the second onto
the first: L = mean_i (A_i - Ahat_i)^2 (+ beta * KL(pi_theta || pi_ref)). No ratio clip, no min.
With population std on both sides the per-group loss is 2 * (1 - pearson(rho, A)).

One summary of the paper writes the prediction with a factor, Ahat_i = eps * (log rho_i - mu) / sigma
(no value given). It only scales the gradient: sum_i Ahat_i^2 = G above the floor whatever rho is, so
sum_i (A_i - eps * z_i)^2 = G * (1 + eps^2) - 2 * eps * sum_i A_i * z_i, whose gradient is eps times
that of eps = 1 and whose minimisers are the same. With Adam and gradient clipping, a scale is a
learning rate: neither form here has such a factor (form="scaled" fixes the gradient's scale instead).

Gradient. Per group, with c = rho - mean_g rho, s = std_g rho, z = c / s, p = mean_g(A * z):

    d/drho_j sum_i (A_i - z_i)^2 = -(2 / s) * (A_j - p * z_j)                          (s > floor)

It vanishes exactly when z is proportional to A (the ranking is learnt), and it grows like 1 / s.
Below the floor eps, s is replaced by eps (the z-score becomes linear in rho): -(2 / eps) * (A_j - z_j).
On the first pass after sampling old_logps == logps, so rho = 0, z = 0 and

    paper form:   dL/drho_j = -(2 / (N * eps)) * A_j          (2e4 / N times REINFORCE for eps = 1e-4)

It is finite, but only gradient clipping keeps the step sane, and beta * KL weighs nothing beside it.

The scaled form (form="scaled", the default) multiplies each group's squared error by the constant
w_g = max(s_g, eps) / 2, detached (no gradient flows through the weight), and drops flat groups:

    L = (1/N) * sum_{g not flat} sg[max(s_g, eps)] / 2 * sum_{i in g} (A_i - Ahat_i)^2 + beta * KL
    dL/drho_j = -(1/N) * (A_j - p * z_j)                                                 (s > eps)
              = -(1/N) * (A_j - z_j)                                                     (s <= eps)
    rho = 0:    dL/drho_j = -(1/N) * A_j,   i.e. grad L = grad of -(1/N) sum_j A_j * rho_j:

sequence-level REINFORCE with the group-normalised advantage. With token_mean=True (rho_j the mean of
the token log-ratios) that is exactly GRPO's gradient at ratio 1, token for token, so the same beta is
the same regularisation in both losses; with the sum it is T_j times GRPO's per token. Why the std to
the power 1: the weight must cancel the 1/s of the gradient. With w = s^2 (the unnormalised
regression (c - s * A)^2) the gradient at rho = 0 is eps * A: the first update would be 1e-4 times too
small instead of 1e4 times too large. A positive per-group constant weight does not move the
stationary points: each group's term is still zero-gradient exactly where z is proportional to A.
Flat groups (all rewards equal, A = 0) carry no signal; in the paper's form their term is a constant
1 above the floor and, below it, a 1/eps^2-scaled pull of their rhos together. They are left out of
the regression sum (still counted in N, like GRPO's zero-advantage answers).

Groups. Rows come in contiguous groups of group_size answers of one prompt. Pass group_ids (N,), the
prompt id of each row, to have that checked: shuffled rows (TRL shuffles a generation batch) or a
micro-batch holding part of a group then raise instead of mixing groups silently.

Choices (the paper leaves them open). The defaults of reg_grpo_loss are train.py's:
- rho is the token MEAN of the log-ratios (token_mean=True): with the scaled form the rho = 0
  gradient is then GRPO's own, token for token, so beta weighs the KL as in GRPO. token_mean=False
  takes the SUM over the completion, the paper read literally (and REBEL's rho): form="paper",
  token_mean=False is the loss as printed.
- std is the population std (unbiased=False) for A and Ahat alike; that makes the identity exact.
- Arithmetic runs in float32 (float64 stays float64): bf16 log-probs are upcast first.
- The floor is applied to var before the sqrt, so no 0 * inf = NaN reaches the gradient.
- A group is flat when every |A_i| <= FLAT_ADV_TOL (group_advantages gives exact zeros; a float mean
  elsewhere, e.g. TRL's, can leave ~1e-4).
"""
import torch

KL_LOG_RATIO_CLAMP = 20.0  # |ref - logp| cap inside the k3 KL so exp() cannot overflow float32
FLAT_ADV_TOL = 1e-3        # |A| at or below this in every answer: a flat group (no reward variance)


def upcast(x):
    # bf16/fp16 -> float32; float32/float64 unchanged
    return x.to(torch.promote_types(x.dtype, torch.float32))


def _check_group_size(n, group_size, where):
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 1:
        raise ValueError(f"{where}: group_size must be a positive int, got {group_size!r}")
    if n % group_size != 0:
        raise ValueError(f"{where}: group_size={group_size} does not divide N={n} answers")


def check_groups(group_ids, n, group_size, where="check_groups"):
    """
    Raise ValueError unless group_ids (N,) puts the rows in contiguous runs of exactly group_size rows
    with a distinct id per run: the layout the losses reshape to (B, G). Catches shuffled rows (TRL
    shuffles a generation batch) and micro-batches holding part of a group.
    """
    _check_group_size(n, group_size, where)
    if not isinstance(group_ids, torch.Tensor) or group_ids.dim() != 1 or group_ids.shape[0] != n \
            or group_ids.is_floating_point() or group_ids.is_complex():
        got = tuple(group_ids.shape) if isinstance(group_ids, torch.Tensor) else type(group_ids).__name__
        raise ValueError(f"{where}: group_ids must be an integer tensor of shape (N,) = ({n},), got {got}")
    ids = group_ids.detach().cpu().view(-1, group_size)  # (B, G)
    bad = (ids != ids[:, :1]).any(dim=1)
    if bad.any():
        b = int(bad.nonzero()[0])
        raise ValueError(f"{where}: rows {b * group_size}..{(b + 1) * group_size - 1} hold group ids "
                         f"{ids[b].tolist()}, expected {group_size} rows of one group: sort the rows by group "
                         f"id and keep whole groups together")
    if ids[:, 0].unique().numel() != ids.shape[0]:
        raise ValueError(f"{where}: a group id appears in two separate runs of rows ({ids[:, 0].tolist()}): "
                         f"each group must be {group_size} contiguous rows")


def check_inputs(where, logps, old_logps, per_answer, mask, ref_logps, group_ids, group_size):
    if logps.dim() != 2:
        raise ValueError(f"{where}: logps must be (N, T), got shape {tuple(logps.shape)}")
    named = [("old_logps", old_logps), ("mask", mask)] + ([("ref_logps", ref_logps)] if ref_logps is not None else [])
    for name, t in named:
        if tuple(t.shape) != tuple(logps.shape):
            raise ValueError(f"{where}: {name} must have the shape of logps {tuple(logps.shape)}, got {tuple(t.shape)}")
    name, t = per_answer
    if tuple(t.shape) != (logps.shape[0],):
        raise ValueError(f"{where}: {name} must be (N,) = ({logps.shape[0]},), got {tuple(t.shape)}")
    if group_ids is None:
        _check_group_size(logps.shape[0], group_size, where)
    else:
        check_groups(group_ids, logps.shape[0], group_size, where)


def center(x):
    # (B, G) -> x - mean over the group. Subtracting the first member first is a no-op in exact
    # arithmetic but makes groups of equal values come out exactly 0 in floating point.
    x = x - x[:, :1]
    return x - x.mean(dim=1, keepdim=True)


def masked_answer_mean(x, keep):
    # (N, T) with padding already zeroed -> token mean per answer (N,) -> mean over answers
    return (x.sum(dim=1) / keep.sum(dim=1).clamp(min=1)).mean()


def _k3_kl(logps, ref_logps, keep):
    """k3 estimator of KL(pi_theta || pi_ref) per token: exp(ref - logp) - (ref - logp) - 1 >= 0."""
    d = torch.where(keep, upcast(ref_logps).detach() - logps, 0.0)  # (N, T), padding -> 0
    d = d.clamp(-KL_LOG_RATIO_CLAMP, KL_LOG_RATIO_CLAMP)
    return masked_answer_mean(torch.exp(d) - d - 1.0, keep)


def with_kl(value, logps, ref_logps, beta, keep):
    kl = _k3_kl(logps, ref_logps, keep) if ref_logps is not None else torch.zeros((), device=logps.device)
    return (value + beta * kl if (ref_logps is not None and beta > 0) else value), kl


def sequence_log_ratio(logps, old_logps, keep, token_mean):
    # (N, T) -> (N,) sequence log-ratio: sum (or mean) of the completion tokens' log-ratios
    rho = torch.where(keep, logps - upcast(old_logps).detach(), 0.0).sum(dim=1)
    return rho / keep.sum(dim=1).clamp(min=1) if token_mean else rho


def flat_group_mask(advantages, group_size):
    """(N,) advantages -> (B,) bool: True for groups whose every |A| <= FLAT_ADV_TOL (zero reward variance)."""
    return (upcast(advantages).detach().view(-1, group_size).abs() <= FLAT_ADV_TOL).all(dim=1)


def group_advantages(rewards, group_size, eps=1e-4):
    """
    A_i = (r_i - mean_g r) / (std_g r + eps) within each group of `group_size` contiguous answers.
    rewards (N,), N = num_prompts * G -> (N,). Population std; eps = 1e-4 as in SEED-Bench-R1's
    trainer. A group whose rewards are all equal gets A = 0 exactly (no NaN, no rounding residue).
    """
    rewards = torch.as_tensor(rewards)
    if rewards.dim() != 1:
        raise ValueError(f"group_advantages: rewards must be (N,), got shape {tuple(rewards.shape)}")
    _check_group_size(rewards.shape[0], group_size, "group_advantages")
    r = upcast(rewards).view(-1, group_size)  # (B, G)
    c = center(r)
    std = c.pow(2).mean(dim=1, keepdim=True).sqrt()
    return (c / (std + eps)).view(-1)  # (N,)


def reg_grpo_loss(logps, old_logps, advantages, mask, group_ids=None, *, group_size, ref_logps=None, beta=0.04,
                  eps=1e-4, token_mean=True, form="scaled"):
    """
    Reg-GRPO: regression of Ahat_i = (rho_i - mean_g rho) / max(std_g rho, eps) on A_i, + beta * KL.

    logps      (N, T) log pi_theta of the completion tokens (carries grad)
    old_logps  (N, T) log pi_old, the policy that sampled them (detached here)
    advantages (N,)   targets A from group_advantages (detached here)
    mask       (N, T) 1 on completion tokens, 0 on padding (padding values are never read)
    group_ids  (N,)   integer id of each row's prompt, checked (optional: rows are read as contiguous
                      groups of group_size either way)
    group_size G
    ref_logps  (N, T) log pi_ref, optional; the k3 KL (token mean per answer, mean over answers)
               is added times beta when given and beta > 0, and always reported in stats.
    beta       KL weight (train.py's 0.04; the paper uses 0.1 on SEED-Bench-R1).
    eps        std floor of Ahat (train.py's std_floor).
    token_mean rho_i as the mean (default, train.py's rho_token_mean) or, False, the sum (the paper's
               rho read literally) of the token log-ratios.
    form       "scaled" (default, train.py's reg_form): each informative group's squared error times
               sg[max(std rho, eps)] / 2, flat groups left out (at rho = 0: REINFORCE with A at GRPO's
               scale; module docstring). "paper": mean_i (A_i - Ahat_i)^2 over all answers (at rho = 0:
               REINFORCE times 2 / eps); with token_mean=False it is the loss as printed.

    With num_iterations = 1 (one update per sampled batch, TRL's default) rho is 0 at every update:
    the scaled form is then exactly the sequence-level policy gradient -(1/N) sum_j A_j grad rho_j and
    the regression never acts; it acts from the second pass over a batch on.

    Returns (loss, stats) with float stats: loss, reg_loss (the optimised term), mse (mean (A - Ahat)^2
    over the answers of informative groups, comparable between forms), kl, zero_adv_ratio (fraction
    of flat groups), pred_adv_std (mean over groups of the std of rho, before the floor), floored_frac
    (fraction of groups with std rho < eps).
    """
    if form not in ("scaled", "paper"):
        raise ValueError(f"reg_grpo_loss: form must be 'scaled' or 'paper', got {form!r}")
    check_inputs("reg_grpo_loss", logps, old_logps, ("advantages", advantages), mask, ref_logps,
                  group_ids, group_size)
    keep = mask.bool()
    logps = upcast(logps)
    rho = sequence_log_ratio(logps, old_logps, keep, token_mean).view(-1, group_size)  # (B, G)
    c = center(rho)
    var = c.pow(2).mean(dim=1, keepdim=True)  # (B, 1)
    std = var.clamp(min=eps ** 2).sqrt()      # (B, 1) max(std, eps)
    pred_adv = c / std                        # (B, G) Ahat
    adv = upcast(advantages).detach().view(-1, group_size)  # (B, G) A
    flat = flat_group_mask(advantages, group_size)           # (B,)
    sq_err = (adv - pred_adv).pow(2)                         # (B, G)
    if form == "paper":
        reg_loss = sq_err.mean()
    else:
        weight = torch.where(flat[:, None], 0.0, std.detach() / 2)  # (B, 1)
        reg_loss = (weight * sq_err).sum() / sq_err.numel()
    loss, kl = with_kl(reg_loss, logps, ref_logps, beta, keep)
    with torch.no_grad():
        informative = ~flat
        stats = {
            "loss": loss.item(),
            "reg_loss": reg_loss.item(),
            "mse": sq_err[informative].mean().item() if informative.any() else 0.0,
            "kl": kl.item(),
            "zero_adv_ratio": flat.float().mean().item(),
            "pred_adv_std": var.sqrt().mean().item(),
            "floored_frac": (var < eps ** 2).float().mean().item(),
        }
    return loss, stats
