"""
What the paper's method is compared with, beside it so that reg_grpo.py stays the one file to copy.

Losses (the paper's baselines; both take reg_grpo_loss's inputs and use its helpers):
    grpo_loss     GRPO's clipped ratio (DeepSeekMath), the loss Reg-GRPO replaces
    rebel_loss    REBEL (arXiv 2404.16767): log-ratio differences regressed on reward differences

Remedies for vanishing advantages, compared with difficulty-aware augmentation in the ablation
(`python train.py --vanishing_fix=dynamic_sampling|group_replay`); not part of the paper's method.
A group whose G rewards are all equal has advantages A = 0 and teaches nothing ("flat"). The paper
changes the sample's difficulty (difficulty.py); these two change which groups are trained on:
    dynamic_sampling  DAPO (arXiv 2503.14476): drop flat groups, draw fresh prompts until the batch
                      is full again. Every answer generated counts against the budget.
    group_replay      replace flat groups by informative groups kept from earlier steps (off-policy).
"""
import torch

from difficulty import flat_groups
from reg_grpo import (check_inputs, flat_group_mask, group_advantages, masked_answer_mean,
                      sequence_log_ratio, upcast, with_kl)
from rollout import concat_rollouts


def grpo_loss(logps, old_logps, advantages, mask, group_ids=None, *, group_size, ref_logps=None, beta=0.04,
              clip_eps=0.2):
    """
    GRPO clipped surrogate (DeepSeekMath), the baseline. Per token, ratio = exp(logps - old_logps):

        l_t = -min(ratio * A, clip(ratio, 1 - clip_eps, 1 + clip_eps) * A)

    token mean per answer, then mean over answers, plus beta * k3 KL to pi_ref (as in reg_grpo_loss).
    Inputs as in reg_grpo_loss (the surrogate itself is per answer; group_ids are checked so that a
    shuffled batch fails here as it would in the other losses, and give the flat-group count).
    Stats: loss, pg_loss, kl, clip_frac (fraction of completion tokens whose gradient clipping cuts:
    ratio > 1 + eps with A > 0, or ratio < 1 - eps with A < 0), zero_adv_ratio (fraction of groups
    whose advantages are all 0).
    """
    check_inputs("grpo_loss", logps, old_logps, ("advantages", advantages), mask, ref_logps,
                  group_ids, group_size)
    keep = mask.bool()
    logps = upcast(logps)
    ratio = torch.exp(torch.where(keep, logps - upcast(old_logps).detach(), 0.0))  # (N, T)
    adv = upcast(advantages).detach()[:, None]  # (N, 1)
    surrogate = torch.min(ratio * adv, ratio.clamp(1 - clip_eps, 1 + clip_eps) * adv)
    pg_loss = masked_answer_mean(torch.where(keep, -surrogate, 0.0), keep)
    loss, kl = with_kl(pg_loss, logps, ref_logps, beta, keep)
    with torch.no_grad():
        cut = ((ratio > 1 + clip_eps) & (adv > 0)) | ((ratio < 1 - clip_eps) & (adv < 0))
        stats = {
            "loss": loss.item(),
            "pg_loss": pg_loss.item(),
            "kl": kl.item(),
            "clip_frac": ((cut & keep).sum() / keep.sum().clamp(min=1)).item(),
            "zero_adv_ratio": flat_group_mask(advantages, group_size).float().mean().item(),
        }
    return loss, stats


def rebel_loss(logps, old_logps, rewards, mask, group_ids=None, *, group_size, eta=1.0, ref_logps=None, beta=0.04):
    """
    REBEL (arXiv 2404.16767), the paper's other baseline: regress differences of log-ratios on
    differences of raw rewards over every pair i < j of a group,

        L = mean_g mean_{i<j in g} ((rho_i - rho_j) / eta - (r_i - r_j))^2 + beta * KL,

    rho_i = sum_t (logps - old_logps). No z-score, so no singularity at rho = 0, where
    dL/drho_j = -(4 G / ((G - 1) * eta * N)) * (r_j - mean_g r): REINFORCE with the group-mean
    baseline and unnormalised rewards. eta is REBEL's step size (1/eta the KL weight to pi_old in its
    derivation); at the minimiser rho_i - rho_j = eta * (r_i - r_j). rewards (N,) raw (not advantages).
    Needs G >= 2. Stats: loss, reg_loss, kl, zero_adv_ratio (fraction of groups with equal rewards).
    """
    check_inputs("rebel_loss", logps, old_logps, ("rewards", rewards), mask, ref_logps, group_ids, group_size)
    if group_size < 2:
        raise ValueError(f"rebel_loss: needs pairs, group_size must be >= 2, got {group_size}")
    keep = mask.bool()
    logps = upcast(logps)
    rho = sequence_log_ratio(logps, old_logps, keep, False).view(-1, group_size)  # (B, G)
    r = upcast(rewards).detach().view(-1, group_size)              # (B, G)
    diff = (rho[:, :, None] - rho[:, None, :]) / eta - (r[:, :, None] - r[:, None, :])  # (B, G, G)
    pairs = torch.triu(torch.ones(group_size, group_size, dtype=torch.bool, device=rho.device), diagonal=1)
    reg_loss = diff[:, pairs].pow(2).mean()
    loss, kl = with_kl(reg_loss, logps, ref_logps, beta, keep)
    with torch.no_grad():
        stats = {
            "loss": loss.item(),
            "reg_loss": reg_loss.item(),
            "kl": kl.item(),
            "zero_adv_ratio": flat_group_mask(group_advantages(rewards.detach(), group_size), group_size).float().mean().item(),
        }
    return loss, stats


# ----------------------------------------------------------------------------- remedies

def split_groups(rollout, group_size):
    """(informative groups, flat groups) of a rollout, each a list of one-group rollouts in order."""
    flat = flat_groups(rollout.rewards, group_size).tolist()
    groups = [rollout.select(list(range(i * group_size, (i + 1) * group_size))) for i in range(len(flat))]
    return [g for g, f in zip(groups, flat) if not f], [g for g, f in zip(groups, flat) if f]


def dynamic_sampling(rollout, group_size, rounds, sample_fresh, any_rank):
    """Keep the batch's informative groups; top it up with informative groups of fresh prompts.

    sample_fresh() draws and samples a fresh batch (a Rollout of the same number of groups);
    any_rank(flag) is True when flag is true on any rank (a collective under torchrun, so that every
    rank runs generate equally often). At most `rounds` fresh batches; then the batch is topped up
    with flat groups, which carry no signal. Returns (rollout, answers generated by the extra draws).
    """
    n_groups = len(rollout.texts) // group_size
    parts, spare = split_groups(rollout, group_size)
    n_generated = 0
    for _ in range(rounds):
        if not any_rank(len(parts) < n_groups):
            break
        extra = sample_fresh()
        n_generated += len(extra.texts)
        informative, flat = split_groups(extra, group_size)
        parts, spare = parts + informative, spare + flat
    return concat_rollouts((parts + spare)[:n_groups]), n_generated


def group_replay(rollout, group_size, store, capacity, rng):
    """Replace flat groups by informative groups kept from earlier steps.

    Replayed groups are off-policy: their first-pass log-probs under the current policy serve as
    `old_logps`, so the loss treats them as if sampled now (the usual shortcut of replay methods).
    `store` (a list, kept by the caller) holds videos too, so it stays out of checkpoints: after a
    resume it starts empty. It keeps the newest `capacity` informative groups.
    """
    flat = flat_groups(rollout.rewards, group_size).tolist()
    parts = []
    for i, is_flat in enumerate(flat):
        group = rollout.select(list(range(i * group_size, (i + 1) * group_size)))
        if not is_flat:
            store.append(group)
        elif store:
            group = store[rng.randrange(len(store))]
        parts.append(group)
    del store[:-capacity]
    return concat_rollouts(parts)
