"""
One RL step of DeepVideo-R1, top to bottom as the paper's algorithm; train.py runs it in its loop.

    rl_step  1. sample G answers per prompt and score them           sample_groups (rollout.py, rewards.py)
             2. classify each prompt: its mean reward r_cur against
                r_ref, the moving average of earlier steps            difficulty.plan_groups
             3. augment: a noisier video for a too-easy prompt, a hint
                for a too-hard one; re-sample those groups, splice     augment
             4. (ablation only) another remedy for flat groups        baselines.py
             5. the reference policy's log-probs, for the KL term     rollout.reference_logps
             6. group advantages A_i = (r_i - mean) / (std + eps)    reg_grpo.group_advantages
             7. num_iterations passes of the loss over the batch      policy_update (reg_grpo.py / baselines.py)
             8. push r_cur into the reward buffer (r_ref of later steps)

`s` holds the settings a step reads (STEP_SETTINGS; train.py's config block says what each does), made
by step_settings from train.py's settings, or, in the measurement scripts, from
configurator.script_defaults("train.py"). `run` holds what the run keeps across steps (below).
"""
import time
from types import SimpleNamespace

import torch

from baselines import dynamic_sampling, grpo_loss, group_replay, rebel_loss
from difficulty import (HINT_SOURCES, answer_piece, flat_groups, group_mean_rewards, plan_groups, redo_groups,
                        wants_trace, zero_advantage_ratio)
from machinery.configurator import resolve_auto
from machinery.distributed import all_gather_floats, any_rank, autocast, gradient_sync
from machinery.logprobs import length_sorted_logps
from machinery.speedups import compile_seconds
from reg_grpo import group_advantages, reg_grpo_loss
from rollout import concat_rollouts, generate_rollout, micro_batches, reference_logps, to_device

STEP_SETTINGS = (
    "group_size", "max_new_tokens", "temperature", "top_p", "sampler", "decode_compile", "decode_graph",  # sampling
    "augment", "augment_flat_only", "difficulty_margin", "harder_mode", "noise_sigma0", "hint_trace_samples",
    "vanishing_fix", "resample_rounds", "replay_capacity",                                                 # remedies
    "beta", "adv_eps", "loss", "reg_form", "std_floor", "rho_token_mean", "clip_eps", "rebel_eta",         # the loss
    "num_iterations", "micro_batch_groups", "rows_per_forward", "pack_groups", "grad_clip",                # the update
    "device", "dtype", "master_dtype", "distributed")


def step_settings(config, **overrides):
    """The namespace of STEP_SETTINGS a step reads, from a dict of train.py's settings (with overrides)."""
    config = {**config, **overrides}
    resolve_auto(config)                                     # device / dtype "auto"
    missing = [k for k in STEP_SETTINGS if k not in config]
    if missing:
        raise KeyError(f"step_settings: missing {missing}")
    return SimpleNamespace(**{k: config[k] for k in STEP_SETTINGS})


def new_run(**objects):
    """What a run keeps across steps, as rl_step reads it:
    model (for the update: DDP / FSDP2-wrapped), generator (the model that samples), reference (None when
    beta = 0), processor, optimizer, params (the trained ones), buffer (difficulty.RewardBuffer), traces
    (difficulty.HintTraces), noise (torch.Generator of the augmentation noise), world_size, synced (FSDP2:
    every rank samples as often), fresh_prompts (a function drawing new prompts, for dynamic sampling),
    replay_store and rng (group replay)."""
    defaults = dict(reference=None, world_size=1, synced=False, fresh_prompts=None, replay_store=None, rng=None)
    return SimpleNamespace(**{**defaults, **objects})


def rl_step(s, run, prompts):
    """One step on `prompts` (records with decoded frames). Returns (the rollout trained on, what the log
    needs: r_ref, r_cur, zero-advantage ratios before and after augmentation, the changes made, the
    answers generated, the loss stats, and the time of each part)."""
    G, t0, compile_before = s.group_size, time.time(), compile_seconds()
    r_ref = run.buffer.mean()                                # read before this step's push
    with autocast(s):
        first = sample_groups(s, run, prompts, [p["frames"] for p in prompts])                    # 1
        plans = plan_groups(first.rewards, G, r_ref, s.difficulty_margin, s.augment, s.augment_flat_only)  # 2
        rollout, changes, answers = augment(s, run, prompts, first, plans)                         # 3
        if s.vanishing_fix == "dynamic_sampling":                                                  # 4
            rollout, extra = dynamic_sampling(rollout, G, s.resample_rounds, lambda: fresh_groups(s, run), any_rank)
            answers += extra
    if s.vanishing_fix == "group_replay":
        rollout = group_replay(rollout, G, run.replay_store, s.replay_capacity, run.rng)
    t_ref = time.time()
    if s.beta > 0:                                                                                 # 5
        with autocast(s):
            rollout.ref_logps = reference_logps(rollout, run.reference, temperature=s.temperature, device=s.device,
                                                rows_per_forward=s.rows_per_forward,
                                                group_size=G if s.pack_groups else 0)
    advantages = group_advantages(rollout.rewards, G, eps=s.adv_eps)                               # 6
    t_update = time.time()
    stats = policy_update(s, run, rollout, advantages)                                             # 7
    r_cur = group_mean_rewards(first.rewards, G)
    run.buffer.push(all_gather_floats(r_cur.tolist()))                                             # 8
    t_end = time.time()
    return rollout, {"r_ref": r_ref, "r_cur": r_cur, "zero_adv_before": zero_advantage_ratio(first.rewards, G),
                     "zero_adv_after": zero_advantage_ratio(rollout.rewards, G), "changes": changes,
                     "answers": answers, "stats": stats, "rollout_time": t_ref - t0, "ref_time": t_update - t_ref,
                     "update_time": t_end - t_update, "compile_time": compile_seconds() - compile_before}


# ----------------------------------------------------------------------------- sampling and augmentation

def sample_groups(s, run, prompts, videos, hints=None, n=None):
    """n (default G) answers per prompt with the sampling settings, scored."""
    return generate_rollout(run.generator, run.processor, prompts, videos, n or s.group_size, hints=hints,
                            max_new_tokens=s.max_new_tokens, temperature=s.temperature, top_p=s.top_p,
                            synced_gpus=run.synced, sampler=s.sampler, decode_compile=s.decode_compile,
                            decode_graph=s.decode_graph)


def sample_subset(s, run, prompts, videos, hints, spare, n=None):
    """sample_groups on a possibly empty subset of the step's prompts (None when empty).

    Under FSDP2 every rank must run generate as often as the others: a rank with nothing to do
    samples `spare` (one of its own prompts) and throws the answers away.
    """
    if run.synced and any_rank(prompts) and not prompts:   # any_rank is a collective: every rank calls it
        sample_groups(s, run, [spare], [spare["frames"]], n=n)
    return sample_groups(s, run, prompts, videos, hints, n) if prompts else None


def augment(s, run, prompts, first, plans):
    """Redo the groups difficulty.py planned: write the hint traces they need, re-sample each on its
    noisier video or with its hint, splice the new groups in place of the old.

    Returns the rollout to train on, what was changed (counts of "harder" and "easier" groups, the
    hints and where each came from, the mean rewards of hinted groups before and after the hint; the
    first sampling's format rate and the shares of its groups that were flat with every answer right,
    flat_easy, and with every answer wrong, flat_hard) and the number of answers generated.
    """
    G = s.group_size
    need = [prompts[i] for i in wants_trace(plans, prompts, first, G, run.traces)]
    n_traces = write_hint_traces(s, run, need, spare=prompts[0])
    redo = redo_groups(plans, prompts, [p["frames"] for p in prompts], first, G, run.traces, s.harder_mode,
                       s.noise_sigma0, run.noise)
    rows = [i for i, r in enumerate(redo) if r["redo"]]
    new = sample_subset(s, run, [prompts[i] for i in rows], [redo[i]["frames"] for i in rows],
                        [redo[i]["hint"] for i in rows], spare=prompts[0])
    groups = [first.select(group_rows(i, G)) for i in range(len(prompts))]
    for k, i in enumerate(rows):
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
    answers = len(first.texts) + n_traces + (len(new.texts) if rows else 0)
    return concat_rollouts(groups), changes, answers


def write_hint_traces(s, run, prompts, spare):
    """The paper's hint source, made once per sample: shown the question and its ground-truth answer,
    the policy writes `hint_trace_samples` traces; HintTraces keeps the highest-reward right one whose
    reasoning agrees with the answer. Returns the number of answers generated."""
    k = s.hint_trace_samples
    out = sample_subset(s, run, prompts, [p["frames"] for p in prompts], [answer_piece(p) for p in prompts], spare, n=k)
    for i, p in enumerate(prompts):
        rows = slice(i * k, (i + 1) * k)
        run.traces.add(p["id"], out.texts[rows], out.accuracy[rows], out.rewards[rows], record=p)
    return len(out.texts) if out is not None else 0


def fresh_groups(s, run):
    """Dynamic sampling's extra draw: new prompts, sampled and scored."""
    fresh = run.fresh_prompts()
    return sample_groups(s, run, fresh, [p["frames"] for p in fresh])


def group_rows(i, G):
    return list(range(i * G, (i + 1) * G))


# ----------------------------------------------------------------------------- the update

def policy_update(s, run, rollout, advantages):
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
        run.optimizer.zero_grad(set_to_none=True)
        for c, rows in enumerate(chunks):
            part = rollout.select(rows)
            batch = to_device(part.logp_batch(), s.device)
            with gradient_sync(run.model, c == len(chunks) - 1, run.world_size):
                with autocast(s):
                    logps = length_sorted_logps(run.model, batch, s.rows_per_forward, G if s.pack_groups else 0,
                                                temperature=s.temperature)                          # (n_c, T)
                if old[c] is None:                       # pass 1: pi_old is this pass's own log-probs
                    old[c] = logps.detach()
                value, stats = loss_of(s, logps, old[c], part, advantages[rows].to(s.device), batch["completion_mask"],
                                       torch.tensor(rows, device=s.device) // G)        # rows hold whole groups
                (value * len(rows) / n).backward()
            for k, v in stats.items():
                stats_sum[k] = stats_sum.get(k, 0.0) + float(v) * len(rows) / n / s.num_iterations
        grad_norm = torch.nn.utils.clip_grad_norm_(run.params, s.grad_clip)
        run.optimizer.step()
    stats_sum["grad_norm"] = float(grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm)
    return stats_sum


def loss_of(s, logps, old_logps, part, advantages, mask, group_ids):
    """The chosen loss of one micro-batch: (value, stats)."""
    ref = part.ref_logps.to(s.device) if part.ref_logps is not None else None
    if s.loss == "reg_grpo":
        return reg_grpo_loss(logps, old_logps, advantages, mask, group_ids, group_size=s.group_size, ref_logps=ref,
                             beta=s.beta, eps=s.std_floor, token_mean=s.rho_token_mean, form=s.reg_form)
    if s.loss == "rebel":
        return rebel_loss(logps, old_logps, part.rewards.to(s.device), mask, group_ids, group_size=s.group_size,
                          eta=s.rebel_eta, ref_logps=ref, beta=s.beta)
    return grpo_loss(logps, old_logps, advantages, mask, group_ids, group_size=s.group_size, ref_logps=ref,
                     beta=s.beta, clip_eps=s.clip_eps)
