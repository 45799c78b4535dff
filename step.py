"""
One RL step as train.py runs it: draw its prompts (videos decoded, unreadable ones skipped), sample
G answers per prompt with difficulty-aware augmentation (sample -> ask difficulty.py which groups to
redo, on what video or with what hint -> re-sample -> splice), then the policy update
(`num_iterations` passes of Reg-GRPO, GRPO or REBEL over the rollout).

`s` is a namespace of train.py's settings (train.settings(); its config block says what each does).
"""
import random
from collections import Counter
from contextlib import nullcontext

import torch
import torch.distributed as dist

from machinery.dataset import VideoError, read_sample
from difficulty import (HINT_SOURCES, answer_piece, flat_groups, group_mean_rewards, plan_groups, redo_groups,
                        wants_trace, zero_advantage_ratio)
from machinery.distributed import any_rank, gradient_sync
from machinery.logprobs import length_sorted_logps
from baselines import grpo_loss, rebel_loss
from reg_grpo import reg_grpo_loss
from rollout import concat_rollouts, generate_rollout, micro_batches, to_device


def draw_prompts(s, records, rng, n, skipped, too_long=None):
    """n records with decoded videos; a record whose video fails to decode, or whose prompt breaks the
    length rule (too_long(sample): the reason, or None), is reported and skipped (skipped: id -> reason,
    shared across steps). When every record is skipped the run cannot go on: SystemExit with the counts."""
    picked = []
    while len(picked) < n:
        record = records[rng.randrange(len(records))]
        if record["id"] in skipped:
            continue
        problem, kind = too_long(record) if too_long else None, "prompt too long"     # its text, before decoding
        if problem is None:
            try:
                sample = read_sample(record, num_frames=s.num_frames, max_pixels=s.max_pixels, fps=s.fps)
                problem = too_long(sample) if too_long else None
            except VideoError as e:
                problem, kind = str(e), e.kind
        if problem is None:
            picked.append(sample)
            continue
        skipped[record["id"]] = kind
        print(f"skipping {record.get('where')} ({record['id']}): {problem} ({len(skipped)} skipped so far)")
        if len(skipped) == len(records):
            counts = ", ".join(f"{k}: {v}" for k, v in sorted(Counter(skipped.values()).items()))
            raise SystemExit(f"{s.train_data}: no usable records: all {len(records)} skipped ({counts})")
    return picked


def prompts_of_step(s, records, step, rank, skipped, too_long=None):
    """The prompts of one step, drawn with a random stream of their own (seed, rank, step): the draw
    runs ahead in a background thread without moving any state a checkpoint saves, and a resumed run
    draws the same prompts."""
    return draw_prompts(s, records, random.Random(f"{s.seed}:{rank}:{step}"), s.prompts_per_step, skipped, too_long)


def autocast(s):
    """Compute in `dtype` while the weights stay in `master_dtype` (FSDP2 does this on its own)."""
    if s.dtype == s.master_dtype or (s.distributed == "fsdp" and dist.is_initialized() and dist.get_world_size() > 1):
        return nullcontext()
    return torch.autocast(device_type=torch.device(s.device).type, dtype=getattr(torch, s.dtype))


def sample_groups(s, policy, processor, prompts, videos, hints=None, synced=False, n=None):
    """n (default G) answers per prompt with the sampling settings, scored."""
    return generate_rollout(policy, processor, prompts, videos, n or s.group_size, hints=hints,
                            max_new_tokens=s.max_new_tokens, temperature=s.temperature, top_p=s.top_p,
                            synced_gpus=synced, sampler=s.sampler, decode_compile=s.decode_compile,
                            decode_graph=s.decode_graph)


def sample_subset(s, policy, processor, prompts, videos, hints, synced, spare, n=None):
    """sample_groups on a possibly empty subset of the step's prompts (None when empty).

    Under FSDP2 every rank must run generate as often as the others: a rank with nothing to do
    samples `spare` (one of its own prompts) and throws the answers away.
    """
    if synced and any_rank(prompts) and not prompts:   # any_rank is a collective: every rank calls it
        sample_groups(s, policy, processor, [spare], [spare["frames"]], synced=synced, n=n)
    return sample_groups(s, policy, processor, prompts, videos, hints, synced, n) if prompts else None


def sample_with_augmentation(s, policy, processor, prompts, r_ref, traces, gen, synced):
    """Sample; ask difficulty.py which groups to redo, and with what video or hint; re-sample; splice.

    Returns the rollout to train on, the per-prompt group means r_cur of the first sampling (what goes
    into the reward buffer), its zero-advantage ratio, what was changed (counts of "harder" and
    "easier" groups, the hints and where each came from, the mean rewards of hinted groups before and
    after the hint; the shares of the first sampling's groups that were flat with every answer right,
    flat_easy, and with every answer wrong, flat_hard) and the number of answers generated.
    """
    G = s.group_size
    videos = [p["frames"] for p in prompts]
    first = sample_groups(s, policy, processor, prompts, videos, synced=synced)                   # sample
    plans = plan_groups(first.rewards, G, r_ref, s.difficulty_margin, s.augment, s.augment_flat_only)  # ask
    need = [prompts[i] for i in wants_trace(plans, prompts, first, G, traces)]
    n_traces = write_hint_traces(s, policy, processor, need, traces, synced, spare=prompts[0])
    redo = redo_groups(plans, prompts, videos, first, G, traces, s.harder_mode, s.noise_sigma0, gen)
    rows = [i for i, r in enumerate(redo) if r["redo"]]
    new = sample_subset(s, policy, processor, [prompts[i] for i in rows], [redo[i]["frames"] for i in rows],
                        [redo[i]["hint"] for i in rows], synced, spare=prompts[0])               # re-sample
    groups = [first.select(group_rows(i, G)) for i in range(len(prompts))]
    for k, i in enumerate(rows):                                                                  # splice
        groups[i] = new.select(group_rows(k, G))
    r_cur = group_mean_rewards(first.rewards, G)
    r_new = dict(zip(rows, group_mean_rewards(new.rewards, G).tolist())) if rows else {}
    hinted = [i for i in rows if redo[i]["hint"]]
    flat_acc = first.accuracy.view(-1, G).mean(1)[flat_groups(first.rewards, G)]     # flat groups' accuracy
    changes = {"harder": len(rows) - len(hinted), "easier": len(hinted), "hints": [redo[i]["hint"] for i in hinted],
               "reward_hinted": [r_new[i] for i in hinted], "reward_hinted_before": [r_cur[i].item() for i in hinted],
               "format_sampled": first.format.mean().item(),
               "format_failed_groups": int((first.format.view(-1, G).amax(1) == 0).sum()),
               "hint_counts": {k: [redo[i]["hint_source"] for i in hinted].count(k) for k in HINT_SOURCES},
               "flat_easy": (flat_acc >= 0.5).sum().item() / len(prompts),   # every answer right
               "flat_hard": (flat_acc < 0.5).sum().item() / len(prompts)}    # every answer wrong
    n_generated = len(first.texts) + n_traces + (len(new.texts) if rows else 0)
    return concat_rollouts(groups), r_cur, zero_advantage_ratio(first.rewards, G), changes, n_generated


def write_hint_traces(s, policy, processor, prompts, traces, synced, spare):
    """The paper's hint source, made once per sample: shown the question and its ground-truth answer,
    the policy writes `hint_trace_samples` traces; HintTraces keeps the highest-reward right one whose
    reasoning agrees with the answer.
    Returns the number of answers generated."""
    k = s.hint_trace_samples
    out = sample_subset(s, policy, processor, prompts, [p["frames"] for p in prompts],
                        [answer_piece(p) for p in prompts], synced, spare, n=k)
    for i, p in enumerate(prompts):
        rows = slice(i * k, (i + 1) * k)
        traces.add(p["id"], out.texts[rows], out.accuracy[rows], out.rewards[rows], record=p)
    return len(out.texts) if out is not None else 0


def group_rows(i, G):
    return list(range(i * G, (i + 1) * G))


def policy_update(s, model, optimizer, rollout, advantages, params, world_size):
    """`num_iterations` passes over the rollout, each one optimizer step over all its groups.

    Pass 1 computes log pi_theta(y|x) while theta is still the sampling policy's: those log-probs,
    detached, are log pi_old for every pass, so no separate no-grad forward is needed. In pass 1 the
    ratio is therefore rho = log pi_theta - log pi_old = 0 for every answer (in value; its gradient is
    that of log pi_theta): pass 1 of Reg-GRPO is the rho = 0 case. Passes 2.. see the moved policy.
    The reference log-probs (KL term) come with the rollout, computed once by reference_logps.
    A micro-batch holds whole groups (the loss normalises within a group); inside it each group's prompt
    runs once with its G answers packed after it (pack_groups), or the answers go through
    `rows_per_forward`-row forwards sorted by length (logprobs.length_sorted_logps).
    """
    G = s.group_size
    n = len(rollout.texts)
    chunks = micro_batches(n, s.micro_batch_groups * G)
    old = [None] * len(chunks)
    stats_sum = {}
    for it in range(s.num_iterations):
        optimizer.zero_grad(set_to_none=True)
        for c, rows in enumerate(chunks):
            last = c == len(chunks) - 1
            part = rollout.select(rows)
            batch = to_device(part.logp_batch(), s.device)
            with gradient_sync(model, last, world_size):
                with autocast(s):
                    logps = length_sorted_logps(model, batch, s.rows_per_forward, G if s.pack_groups else 0,
                                                temperature=s.temperature)                          # (n_c, T)
                if old[c] is None:                       # pass 1: pi_old is this pass's own log-probs
                    old[c] = logps.detach()
                mask = batch["completion_mask"]
                ref = part.ref_logps.to(s.device) if part.ref_logps is not None else None
                adv = advantages[rows].to(s.device)
                group_ids = torch.tensor(rows, device=s.device) // G      # rows hold whole groups
                if s.loss == "reg_grpo":
                    value, stats = reg_grpo_loss(logps, old[c], adv, mask, group_ids, group_size=G, ref_logps=ref,
                                                 beta=s.beta, eps=s.std_floor, token_mean=s.rho_token_mean,
                                                 form=s.reg_form)
                elif s.loss == "rebel":
                    value, stats = rebel_loss(logps, old[c], part.rewards.to(s.device), mask, group_ids, group_size=G,
                                              eta=s.rebel_eta, ref_logps=ref, beta=s.beta)
                else:
                    value, stats = grpo_loss(logps, old[c], adv, mask, group_ids, group_size=G, ref_logps=ref,
                                             beta=s.beta, clip_eps=s.clip_eps)
                (value * len(rows) / n).backward()
            for k, v in stats.items():
                stats_sum[k] = stats_sum.get(k, 0.0) + float(v) * len(rows) / n / s.num_iterations
        grad_norm = torch.nn.utils.clip_grad_norm_(params, s.grad_clip)
        optimizer.step()
    stats_sum["grad_norm"] = float(grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm)
    return stats_sum
