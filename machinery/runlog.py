"""
What a run leaves to read: log.jsonl (one row per step, each step once), summary.json (over this
run's rows), curves.png (reward, validation accuracy, zero-advantage ratio against step), and, with
wandb_log, the same rows on Weights & Biases.
"""
import json
import os
import resource

import torch

from machinery.distributed import all_gather_floats, mean_over_ranks, means_over_ranks

RUN_FILES = ("log.jsonl", "summary.json", "ckpt.pt", "ckpt", "model")


def refuse_previous_run(out_dir):
    """A fresh run never mixes with an earlier one: it stops if out_dir already holds a run. An empty
    log.jsonl is no run: one that stopped before its first step (bad data found while drawing) wrote it."""
    found = [name for name in RUN_FILES if os.path.lexists(os.path.join(out_dir, name))
             and not (name == "log.jsonl" and os.path.getsize(os.path.join(out_dir, name)) == 0)]
    if found:
        raise SystemExit(f"{out_dir}: holds a previous run ({', '.join(found)}); continue it with "
                         "--resume=True, or remove those files or choose another --out_dir")


def open_log(out_dir, step):
    """log.jsonl for appending, holding only rows up to `step` (those of the checkpoint resumed from)."""
    path = os.path.join(out_dir, "log.jsonl")
    if os.path.exists(path):
        rows = read_rows(path)
        kept = [r for r in rows if r["step"] <= step]
        if len(kept) < len(rows):
            print(f"{path}: dropped {len(rows) - len(kept)} rows after step {step} (written after the checkpoint)")
        with open(path + ".tmp", "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in kept)
        os.replace(path + ".tmp", path)
    return open(path, "a")


def read_rows(path):
    """The rows of a log; a last line cut short by a kill is left out."""
    rows = []
    for line in open(path):
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            break
    return rows


def step_row(step, lr, answers_generated, rollout, info, device, **times):
    """One row of log.jsonl: rewards, zero-advantage ratios, augmentation, loss stats, completion length,
    the time of each part, peak memory. info: what the step returned (r_ref, zero_adv_before / _after of
    the sampled groups and of the batch trained on, changes, stats, rollout_time, ref_time, update_time,
    compile_time); times: step_time, video_wait. Every rank calls it: its values are means over ranks,
    except times, tokens/s and peak memory, which stay this rank's."""
    changes, stats, r_ref = info["changes"], info["stats"], info["r_ref"]
    times = {**times, **{k: info[k] for k in ("rollout_time", "ref_time", "update_time", "compile_time")}}
    gen_tokens = rollout.completion_mask.sum().item()
    row = {
        "step": step, "lr": lr, "answers_generated": answers_generated,
        "reward": mean_over_ranks(rollout.rewards.mean().item()),
        "accuracy": mean_over_ranks(rollout.accuracy.mean().item()),
        "format": mean_over_ranks(rollout.format.mean().item()),
        "zero_adv_before": mean_over_ranks(info["zero_adv_before"]),
        "zero_adv_after": mean_over_ranks(info["zero_adv_after"]),
        "flat_easy": mean_over_ranks(changes["flat_easy"]), "flat_hard": mean_over_ranks(changes["flat_hard"]),
        **{f"hints_{k}": mean_over_ranks(n) for k, n in changes["hint_counts"].items()},
        "augmented_harder": changes["harder"], "augmented_easier": changes["easier"],
        "r_ref": r_ref, "reward_hinted": mean_or_none(all_gather_floats(changes["reward_hinted"])),
        "reward_hinted_before": mean_or_none(all_gather_floats(changes["reward_hinted_before"])), **stats,
        "format_sampled": mean_over_ranks(changes["format_sampled"]),           # the first sampling's, before
        "format_failed_groups": changes["format_failed_groups"],                 # augmentation: groups all 0
        "completion_len": gen_tokens / len(rollout.texts),
        "step_time": times["step_time"], "rollout_tokens_per_s": gen_tokens / max(times["rollout_time"], 1e-9),
        **times, "peak_mem_gb": peak_memory_gb(device),
    }
    row.update(means_over_ranks({k: row[k] for k in (*stats, "augmented_harder", "augmented_easier",
                                                     "completion_len", "format_failed_groups")}))
    return row


def mean_or_none(values):
    return sum(values) / len(values) if values else None


def peak_memory_gb(device):
    """Peak memory in GB (1e9 bytes): on CUDA the most torch allocated (since torch.cuda.reset_peak_memory_stats),
    on CPU the process's peak resident set size so far."""
    if str(device).startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 1e9
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9


def write_summary(out_dir, history, steps, answers_generated, **extra):
    """summary.json over the rows of log.jsonl (this run's only), the eval history and `extra`; returns it."""
    rows = read_rows(os.path.join(out_dir, "log.jsonl"))
    summary = {"val_accuracy_start": history[0]["val_accuracy"], "val_accuracy_end": history[-1]["val_accuracy"],
               "steps": steps, "answers_generated": answers_generated, **zero_adv_summary(rows),
               "seconds_per_step": sum(r["step_time"] for r in rows) / max(1, len(rows)),
               "rollout_tokens_per_s": sum(r["rollout_tokens_per_s"] for r in rows) / max(1, len(rows)),
               **extra, "history": history}
    with open(os.path.join(out_dir, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    plot_curves(os.path.join(out_dir, "curves.png"), rows, history)
    return summary


def zero_adv_summary(rows):
    """Means of the per-step zero-advantage ratios as first sampled and as trained on (after augmentation
    and any vanishing-advantage remedy), both over the same steps: all of them, and the last 20%. Then
    where RL starts (the first 20 steps): the sampled ratio, its flat-easy and flat-hard parts, and the
    hints given in those steps by source (the rows' hints_<source> keys)."""
    last, start = rows[-max(1, len(rows) // 5):], rows[:20]
    sources = [k[len("hints_"):] for k in (rows[0] if rows else {}) if k.startswith("hints_")]

    def mean(key, part):
        return sum(r.get(key, 0.0) for r in part) / len(part)
    return {"zero_adv_sampled": mean("zero_adv_before", rows), "zero_adv_trained": mean("zero_adv_after", rows),
            "zero_adv_sampled_last": mean("zero_adv_before", last),
            "zero_adv_trained_last": mean("zero_adv_after", last),
            "zero_adv_sampled_first_20": mean("zero_adv_before", start),
            "flat_easy_first_20": mean("flat_easy", start), "flat_hard_first_20": mean("flat_hard", start),
            "hints_first_20": {k: sum(r.get(f"hints_{k}", 0) for r in start) for k in sources},
            "hints_all": {k: sum(r.get(f"hints_{k}", 0) for r in rows) for k in sources}}


def plot_curves(path, rows, history):
    """Reward, validation accuracy and zero-advantage ratio (before / after augmentation) per step."""
    try:
        import matplotlib
    except ImportError:
        print(f"matplotlib is not installed: no {path} (pip install matplotlib)")
        return
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    steps = [r["step"] for r in rows]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    axes[0].plot(steps, [r["reward"] for r in rows], label="reward")
    axes[0].plot(steps, [r["accuracy"] for r in rows], label="train accuracy")
    axes[1].plot([h["step"] for h in history], [h["val_accuracy"] for h in history], "o-", label="val accuracy")
    axes[2].plot(steps, [r["zero_adv_before"] for r in rows], label="before augmentation")
    axes[2].plot(steps, [r["zero_adv_after"] for r in rows], label="after augmentation")
    for ax, title in zip(axes, ("reward", "validation accuracy", "zero-advantage ratio")):
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def start_wandb(project, run_name, config):
    """nanoGPT's convention: wandb is imported only when wandb_log is on."""
    try:
        import wandb
    except ImportError:
        raise SystemExit("wandb_log=True needs the wandb package (pip install wandb), which is not installed")
    wandb.init(project=project, name=run_name, config=config)
    return wandb
