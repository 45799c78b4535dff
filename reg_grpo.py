"""
Reg-GRPO and GRPO losses (DeepVideo-R1, arXiv 2506.07464). Torch only: copy this file anywhere.

Derivation of Reg-GRPO. KL-regularised RL against the sampling policy pi_old,

    max_pi  E_{y~pi}[R(x, y)] - lambda * KL(pi || pi_old),

has the closed-form optimum pi*(y|x) = pi_old(y|x) * exp(R(x, y) / lambda) / Z(x). Solving for R:

    R(x, y) = lambda * log(pi*(y|x) / pi_old(y|x)) + lambda * log Z(x) = lambda * rho* + lambda * log Z(x).

For the G answers y_1..y_G of one prompt x, z-scoring within the group removes both unknowns: the
scale lambda cancels against the std and the shift lambda * log Z(x) against the mean, so

    A_i = (R_i - mean_g R) / std_g R   equals   Ahat_i = (rho_i - mean_g rho) / std_g rho

at the optimum, with rho_i = log pi_theta(y_i|x) - log pi_old(y_i|x). Reg-GRPO regresses the
second onto the first: L = mean_i (A_i - Ahat_i)^2 (+ beta * KL(pi_theta || pi_ref)).
No ratio clip and no min are needed: this is a regression with a finite minimiser, so the gradient
vanishes once the policy ranks its answers like the rewards do, whereas GRPO's linear surrogate
A * ratio keeps pushing and needs clipping as a trust region. Per-token ratios never appear.

With population std on both sides, A and Ahat each have mean 0 and mean square 1 within a group, so
the per-group loss is (1/G) sum (A - Ahat)^2 = 2 * (1 - pearson(rho, A)): the loss sees only the
correlation. Reg-GRPO teaches the policy to *rank* its answers like the rewards rank them; how far
the policy moves (the scale of rho) is invisible to it and is set by the learning rate and the KL.

Choices (the paper leaves them open):
- rho is the SUM of token log-ratios over the completion (the paper read literally; REBEL does so).
- std is the population std (unbiased=False) for A and Ahat alike; that makes the identity above exact.
- Arithmetic runs in float32 (float64 stays float64): bf16 log-probs are upcast first.
- std floor: Ahat = (rho - mean) / sqrt(max(var, eps^2)) = (rho - mean) / max(std, eps). Above eps
  this is the exact z-score (so rho = c * A + const, c > 0, gives loss 0 up to A's own
  std of std_R / (std_R + eps), i.e. (eps / std_R)^2 < 1e-7 for G = 8 binary rewards). Below eps it is
  linear in rho. On the first update after sampling, logps == old_logps, so rho = 0, var = 0 and
      dL/drho_j = -(2/N) sum_i A_i (delta_ij - 1/G) / eps = -(2 / (N * eps)) * A_j   (mean_g A = 0)
  hence grad_theta L = -(2 / (N * eps)) * sum_j A_j * grad_theta rho_j: the group policy gradient
  (sequence level), scaled by 2 / (N * eps). The floor is applied to var before the sqrt, so the
  sqrt never sees 0 and no 0 * inf = NaN reaches the gradient. Note the scale: near rho = 0 the
  regression gradient is ~1/eps times a plain policy gradient (the z-score is scale-free, so its
  gradient grows like 1/std rho); Adam and grad-norm clipping remove the scale, but beta * KL weighs
  little there by comparison.
"""
import torch

KL_LOG_RATIO_CLAMP = 20.0  # |ref - logp| cap inside the k3 KL so exp() cannot overflow float32


def _upcast(x):
    # bf16/fp16 -> float32; float32/float64 unchanged
    return x.to(torch.promote_types(x.dtype, torch.float32))


def _check_group_size(n, group_size, where):
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 1:
        raise ValueError(f"{where}: group_size must be a positive int, got {group_size!r}")
    if n % group_size != 0:
        raise ValueError(f"{where}: group_size={group_size} does not divide N={n} answers")


def _check_inputs(where, logps, old_logps, advantages, mask, ref_logps):
    if logps.dim() != 2:
        raise ValueError(f"{where}: logps must be (N, T), got shape {tuple(logps.shape)}")
    named = [("old_logps", old_logps), ("mask", mask)] + ([("ref_logps", ref_logps)] if ref_logps is not None else [])
    for name, t in named:
        if tuple(t.shape) != tuple(logps.shape):
            raise ValueError(f"{where}: {name} must have the shape of logps {tuple(logps.shape)}, got {tuple(t.shape)}")
    if tuple(advantages.shape) != (logps.shape[0],):
        raise ValueError(f"{where}: advantages must be (N,) = ({logps.shape[0]},), got {tuple(advantages.shape)}")


def _center(x):
    # (B, G) -> x - mean over the group. Subtracting the first member first is a no-op in exact
    # arithmetic but makes groups of equal values come out exactly 0 in floating point.
    x = x - x[:, :1]
    return x - x.mean(dim=1, keepdim=True)


def _masked_answer_mean(x, keep):
    # (N, T) with padding already zeroed -> token mean per answer (N,) -> mean over answers
    return (x.sum(dim=1) / keep.sum(dim=1).clamp(min=1)).mean()


def _k3_kl(logps, ref_logps, keep):
    """k3 estimator of KL(pi_theta || pi_ref) per token: exp(ref - logp) - (ref - logp) - 1 >= 0."""
    d = torch.where(keep, _upcast(ref_logps).detach() - logps, 0.0)  # (N, T), padding -> 0
    d = d.clamp(-KL_LOG_RATIO_CLAMP, KL_LOG_RATIO_CLAMP)
    return _masked_answer_mean(torch.exp(d) - d - 1.0, keep)


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
    r = _upcast(rewards).view(-1, group_size)  # (B, G)
    c = _center(r)
    std = c.pow(2).mean(dim=1, keepdim=True).sqrt()
    return (c / (std + eps)).view(-1)  # (N,)


def reg_grpo_loss(logps, old_logps, advantages, mask, group_size, ref_logps=None, beta=0.0, *, eps=1e-4,
                  token_mean=False):
    """
    Reg-GRPO: L = mean_i (A_i - Ahat_i)^2 + beta * KL(pi_theta || pi_ref).

    logps      (N, T) log pi_theta of the completion tokens (carries grad)
    old_logps  (N, T) log pi_old, the policy that sampled them (detached here)
    advantages (N,)   targets A from group_advantages (detached here)
    mask       (N, T) 1 on completion tokens, 0 on padding (padding values are never read)
    group_size G: the G answers of a prompt are contiguous, N = num_prompts * G
    ref_logps  (N, T) log pi_ref, optional; the k3 KL (token mean per answer, mean over answers)
               is added times beta when given and beta > 0, and always reported in stats.
    eps        std floor of Ahat = (rho - mean_g rho) / max(std_g rho, eps); see the module docstring.
    token_mean rho_i as the mean instead of the sum of token log-ratios (a variant; with equal lengths
               in a group the two give the same loss, since Ahat is scale-free).

    rho_i = sum_t mask * (logps - old_logps). Returns (loss, stats) with float stats: loss, reg_loss,
    kl, zero_adv_ratio (fraction of groups whose advantages are all 0, i.e. zero reward variance),
    pred_adv_std (mean over groups of the std of rho, before the floor), floored_frac (fraction of
    groups with std rho < eps, where Ahat is linear in rho).
    """
    _check_inputs("reg_grpo_loss", logps, old_logps, advantages, mask, ref_logps)
    _check_group_size(logps.shape[0], group_size, "reg_grpo_loss")
    keep = mask.bool()
    logps = _upcast(logps)
    log_ratio = torch.where(keep, logps - _upcast(old_logps).detach(), 0.0)  # (N, T)
    rho = log_ratio.sum(dim=1)
    if token_mean:
        rho = rho / keep.sum(dim=1).clamp(min=1)
    rho = rho.view(-1, group_size)  # (B, G)
    c = _center(rho)
    var = c.pow(2).mean(dim=1, keepdim=True)  # (B, 1)
    pred_adv = c / var.clamp(min=eps ** 2).sqrt()  # (B, G) Ahat
    adv = _upcast(advantages).detach().view(-1, group_size)  # (B, G) A
    reg_loss = (adv - pred_adv).pow(2).mean()
    kl = _k3_kl(logps, ref_logps, keep) if ref_logps is not None else torch.zeros((), device=logps.device)
    loss = reg_loss + beta * kl if (ref_logps is not None and beta > 0) else reg_loss
    with torch.no_grad():
        stats = {
            "loss": loss.item(),
            "reg_loss": reg_loss.item(),
            "kl": kl.item(),
            "zero_adv_ratio": (adv == 0).all(dim=1).float().mean().item(),
            "pred_adv_std": var.sqrt().mean().item(),
            "floored_frac": (var < eps ** 2).float().mean().item(),
        }
    return loss, stats


def grpo_loss(logps, old_logps, advantages, mask, ref_logps=None, beta=0.0, clip_eps=0.2, *, group_size=None):
    """
    GRPO clipped surrogate (DeepSeekMath), the baseline. Per token, ratio = exp(logps - old_logps):

        l_t = -min(ratio * A, clip(ratio, 1 - clip_eps, 1 + clip_eps) * A)

    token mean per answer, then mean over answers, plus beta * k3 KL to pi_ref (as in reg_grpo_loss).
    Shapes as in reg_grpo_loss. Stats: loss, pg_loss, kl, clip_frac (fraction of completion tokens
    whose gradient clipping cuts: ratio > 1 + eps with A > 0, or ratio < 1 - eps with A < 0),
    zero_adv_ratio: with group_size, the fraction of groups whose advantages are all 0; without it
    (the signature carries no group size) the fraction of answers whose advantage is exactly 0,
    which is the same number when advantages come from group_advantages.
    """
    _check_inputs("grpo_loss", logps, old_logps, advantages, mask, ref_logps)
    if group_size is not None:
        _check_group_size(logps.shape[0], group_size, "grpo_loss")
    keep = mask.bool()
    logps = _upcast(logps)
    ratio = torch.exp(torch.where(keep, logps - _upcast(old_logps).detach(), 0.0))  # (N, T)
    adv = _upcast(advantages).detach()[:, None]  # (N, 1)
    surrogate = torch.min(ratio * adv, ratio.clamp(1 - clip_eps, 1 + clip_eps) * adv)
    pg_loss = _masked_answer_mean(torch.where(keep, -surrogate, 0.0), keep)
    kl = _k3_kl(logps, ref_logps, keep) if ref_logps is not None else torch.zeros((), device=logps.device)
    loss = pg_loss + beta * kl if (ref_logps is not None and beta > 0) else pg_loss
    with torch.no_grad():
        cut = ((ratio > 1 + clip_eps) & (adv > 0)) | ((ratio < 1 - clip_eps) & (adv < 0))
        zero = (adv.view(-1, group_size) == 0).all(dim=1) if group_size is not None else (adv == 0)
        stats = {
            "loss": loss.item(),
            "pg_loss": pg_loss.item(),
            "kl": kl.item(),
            "clip_frac": ((cut & keep).sum() / keep.sum().clamp(min=1)).item(),
            "zero_adv_ratio": zero.float().mean().item(),
        }
    return loss, stats
