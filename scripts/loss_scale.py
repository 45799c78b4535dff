"""
How the losses scale on the embedded default (tiny model after SFT, synthetic benchmark).

    python scripts/loss_scale.py --part=first   # first update of each loss on the same rollouts
    python scripts/loss_scale.py --part=kl      # a few updates on one rollout: KL at the end for two betas
    python scripts/loss_scale.py --part=runs    # short train.py runs: KL at the end for two betas

first: per seed, one rollout of 8 prompts x G = 8 from the SFT policy; for each loss the first pass
(rho = 0) gradient norm and the parameter change of one AdamW step and of one SGD step (lr times the
gradient), no clipping; then the second pass (old = first pass log-probs, reference = the SFT policy)
as the norm of the loss's gradient over the norm of beta * KL's gradient.
kl: per seed, one rollout of `prompts` prompts; for each loss and beta, `passes` AdamW updates on it
(lr, grad clip 1.0, old = reference = the SFT policy's log-probs), then the k3 KL to the SFT policy.
runs: train.py with --augment=none for every arm x beta x seed; the table holds the mean over the
last 5 steps of the logged KL and the final validation accuracy (mean +- std over seeds).
"""
import json
import os
import random
import statistics
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import torch  # noqa: E402

from machinery.configurator import configure, script_defaults  # noqa: E402
from step import new_run, sample_groups, step_settings  # noqa: E402

T = script_defaults("train.py")        # the main command's settings, as train.py sets them
VIDEO = {"num_frames": T["num_frames"], "max_pixels": T["max_pixels"], "fps": T["fps"]}

part = "first"
seeds = (0, 1, 2)
betas = (0.04, 0.4)
arms = ("grpo", "reg_paper", "reg_scaled", "reg_scaled_mean")
steps = 15
eval_samples = 200
lr = 3e-5
prompts = 4
passes = 4
out_dir = "out/loss_scale"

ARMS = {  # name -> train.py settings
    "grpo": {"loss": "grpo"},
    "reg_paper": {"loss": "reg_grpo", "reg_form": "paper"},
    "reg_scaled": {"loss": "reg_grpo", "reg_form": "scaled"},
    "reg_scaled_mean": {"loss": "reg_grpo", "reg_form": "scaled", "rho_token_mean": True},
    "rebel": {"loss": "rebel"},
}


def loss_fn(arm, logps, old, part_rollout, adv, mask, group_ids, G, ref=None, beta=0.0):
    from baselines import grpo_loss, rebel_loss
    from reg_grpo import reg_grpo_loss
    s = ARMS[arm]
    if s["loss"] == "grpo":
        return grpo_loss(logps, old, adv, mask, group_ids, group_size=G, ref_logps=ref, beta=beta)[0]
    if s["loss"] == "rebel":
        return rebel_loss(logps, old, part_rollout.rewards, mask, group_ids, group_size=G, ref_logps=ref,
                          beta=beta)[0]
    return reg_grpo_loss(logps, old, adv, mask, group_ids, group_size=G, ref_logps=ref, beta=beta,
                         form=s["reg_form"], token_mean=s.get("rho_token_mean", False))[0]


def grad_norm(params):
    return torch.sqrt(sum(p.grad.double().pow(2).sum() for p in params if p.grad is not None)).item()


def first_update(seed):
    from machinery.dataset import draw_prompts, read_records_or_exit
    from machinery.logprobs import completion_logps
    from model import freeze_vision, load_policy
    from reg_grpo import group_advantages
    from rollout import micro_batches
    torch.manual_seed(seed)
    policy, processor = load_policy(T["init_from"])
    freeze_vision(policy)
    records = read_records_or_exit(T["train_data"])
    prompts = draw_prompts(records, random.Random(seed), 8, {}, VIDEO)
    rollout = sample_groups(step_settings(T), new_run(generator=policy, processor=processor), prompts,
                            [p["frames"] for p in prompts])
    G, n = T["group_size"], len(rollout.texts)
    adv = group_advantages(rollout.rewards, G)
    params = [p for p in policy.parameters() if p.requires_grad]
    start = [p.detach().clone() for p in params]
    chunks = [(rows, rollout.select(rows).logp_batch()) for rows in micro_batches(n, 4 * G)]

    def backward(arm, old=None, ref=None, beta=0.0, kl_only=False):
        for p in params:
            p.grad = None
        logps_all = []
        for c, (rows, batch) in enumerate(chunks):
            logps = completion_logps(policy, batch, temperature=T["temperature"])
            logps_all.append(logps.detach())
            o = logps.detach() if old is None else old[c]
            mask, ids = batch["completion_mask"], torch.tensor(rows) // G
            if kl_only:
                value = (loss_fn("grpo", logps, o, None, adv[rows], mask, ids, G, ref[c], beta)
                         - loss_fn("grpo", logps, o, None, adv[rows], mask, ids, G))
            else:
                value = loss_fn(arm, logps, o, rollout.select(rows), adv[rows], mask, ids, G)
            (value * len(rows) / n).backward()
        return logps_all

    row = {"seed": seed, "zero_adv": float((adv.view(-1, G) == 0).all(1).float().mean())}
    for arm in arms:
        with torch.no_grad():
            for p, s in zip(params, start):
                p.copy_(s)
        first = backward(arm)
        g1 = grad_norm(params)
        opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
        opt.step()
        change = torch.sqrt(sum((p.detach() - s).double().pow(2).sum() for p, s in zip(params, start))).item()
        backward(arm, old=first)                          # second pass: the regression (or clip) acts
        g2 = grad_norm(params)
        backward(arm, old=first, ref=first, beta=0.04, kl_only=True)
        g_kl = grad_norm(params)
        row[arm] = {"grad_norm_rho0": g1, "adam_change": change, "sgd_change": lr * g1,
                    "pass2_grad_norm": g2, "pass2_over_kl004": g2 / max(g_kl, 1e-30)}
        print(json.dumps({"seed": seed, "arm": arm, **row[arm]}), flush=True)
    return row


def kl_response(seed):
    from machinery.dataset import draw_prompts, read_records_or_exit
    from machinery.logprobs import completion_logps
    from model import freeze_vision, load_policy
    from reg_grpo import group_advantages
    torch.manual_seed(seed)
    policy, processor = load_policy(T["init_from"])
    freeze_vision(policy)
    chosen = draw_prompts(read_records_or_exit(T["train_data"]), random.Random(seed), prompts, {}, VIDEO)
    rollout = sample_groups(step_settings(T), new_run(generator=policy, processor=processor), chosen,
                            [p["frames"] for p in chosen])
    G, n = T["group_size"], len(rollout.texts)
    adv, batch, ids = group_advantages(rollout.rewards, G), rollout.logp_batch(), torch.arange(n) // G
    mask = batch["completion_mask"]
    params = [p for p in policy.parameters() if p.requires_grad]
    start = [p.detach().clone() for p in params]
    with torch.no_grad():
        sft = completion_logps(policy, batch, temperature=T["temperature"])
    row = {}
    for arm in arms:
        for beta in betas:
            with torch.no_grad():
                for p, s0 in zip(params, start):
                    p.copy_(s0)
            opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
            for _ in range(passes):
                opt.zero_grad(set_to_none=True)
                logps = completion_logps(policy, batch, temperature=T["temperature"])
                loss_fn(arm, logps, sft, rollout, adv, mask, ids, G, sft, beta).backward()
                torch.nn.utils.clip_grad_norm_(params, 1.0)
                opt.step()
            with torch.no_grad():
                logps = completion_logps(policy, batch, temperature=T["temperature"])
                d = torch.where(mask.bool(), sft - logps, 0.0)
                kl = ((d.exp() - d - 1).sum(1) / mask.sum(1)).mean().item()
            row[f"{arm} {beta:g}"] = kl
            print(json.dumps({"seed": seed, "arm": arm, "beta": beta, "kl": kl}), flush=True)
    return row


def run(arm, beta, seed):
    d = os.path.join(out_dir, f"{arm}_beta{beta:g}_seed{seed}")
    if not os.path.exists(os.path.join(d, "summary.json")):
        args = [f"--{k}={v}" for k, v in ARMS[arm].items()]
        args += [f"--beta={beta}", f"--seed={seed}", f"--max_steps={steps}", "--augment=none",
                 f"--learning_rate={lr}", f"--eval_samples={eval_samples}", "--eval_interval=0",
                 "--checkpoint_interval=100000", f"--out_dir={d}"]
        if os.path.exists(os.path.join(d, "log.jsonl")):
            os.remove(os.path.join(d, "log.jsonl"))
        subprocess.run([sys.executable, "train.py", *args], check=True, capture_output=True)
    log = [json.loads(line) for line in open(os.path.join(d, "log.jsonl"))]
    summary = json.load(open(os.path.join(d, "summary.json")))
    return {"kl": statistics.mean(r["kl"] for r in log[-5:]), "acc": summary["val_accuracy_end"],
            "acc0": summary["val_accuracy_start"]}


def fmt(xs, digits):
    return f"{statistics.mean(xs):.{digits}f} ± {statistics.stdev(xs):.{digits}f}" if len(xs) > 1 else f"{xs[0]:.{digits}f}"


def main():
    configure(globals(), sys.argv[1:])
    os.makedirs(out_dir, exist_ok=True)
    if part == "first":
        rows = [first_update(s) for s in seeds]
        print("| loss | grad norm at rho = 0 | SGD change (lr x grad) | AdamW change | pass-2 grad / beta=0.04 KL grad |")
        print("|---|---|---|---|---|")
        for arm in arms:
            cols = [[r[arm][k] for r in rows] for k in ("grad_norm_rho0", "sgd_change", "adam_change", "pass2_over_kl004")]
            print(f"| {arm} | " + " | ".join(fmt(c, 3) if max(c) < 1e3 else f"{statistics.mean(c):.3g}" for c in cols) + " |")
        json.dump(rows, open(os.path.join(out_dir, "first_update.json"), "w"), indent=2)
    elif part == "kl":
        rows = [kl_response(s) for s in seeds]
        print("| loss | " + " | ".join(f"KL after {passes} updates, beta {b:g}" for b in betas) + " | ratio |")
        print("|---" * (2 + len(betas)) + "|")
        for arm in arms:
            kls = [[r[f"{arm} {b:g}"] for r in rows] for b in betas]
            ratio = [a / b for a, b in zip(kls[0], kls[-1])]
            print(f"| {arm} | " + " | ".join(fmt([k * 1e6 for k in c], 2) + "e-6" for c in kls)
                  + f" | {fmt(ratio, 2)} |")
        json.dump(rows, open(os.path.join(out_dir, "kl_response.json"), "w"), indent=2)
    elif part == "runs":
        results = {}
        for seed in seeds:
            for arm in arms:
                for beta in betas:
                    results[(arm, beta, seed)] = r = run(arm, beta, seed)
                    print(json.dumps({"arm": arm, "beta": beta, "seed": seed, **r}), flush=True)
        print("| loss | " + " | ".join(f"KL end, beta {b:g}" for b in betas)
              + " | " + " | ".join(f"val acc, beta {b:g}" for b in betas) + " |")
        print("|---" * (1 + 2 * len(betas)) + "|")
        for arm in arms:
            kl = [fmt([results[(arm, b, s)]["kl"] for s in seeds], 4) for b in betas]
            acc = [fmt([results[(arm, b, s)]["acc"] for s in seeds], 3) for b in betas]
            print(f"| {arm} | " + " | ".join(kl + acc) + " |")
        json.dump([{"arm": a, "beta": b, "seed": s, **v} for (a, b, s), v in results.items()],
                  open(os.path.join(out_dir, "runs.json"), "w"), indent=2)
    else:
        raise SystemExit(f"--part must be 'first', 'kl' or 'runs', got {part!r}")


if __name__ == "__main__":
    main()
