"""
The paper's ablation on the built-in benchmark, with two other remedies for vanishing advantages.

    python ablate.py                    # the study: lr selection, then every arm x 3 seeds
    python ablate.py --smoke=True       # a few steps per arm, to check the plumbing (the test does this)
    python ablate.py config/ablate_paper.py --jobs=2   # two runs at a time, one core each

Every arm starts from the same SFT checkpoint and stops after the same number of generated answers
(`answers_budget`; augmentation and dynamic sampling generate extra answers, and those count).

    sft               no RL: the starting point
    grpo              GRPO, clipped surrogate                 reg_grpo          Reg-GRPO
    reg_grpo+aug      Reg-GRPO + difficulty-aware augmentation, both directions (the paper's method)
    reg_grpo+noise    ... harder only (frame noise)           reg_grpo+hints    ... easier only (hints)
    reg_grpo+dynamic  Reg-GRPO + dynamic sampling (DAPO)      reg_grpo+replay   Reg-GRPO + group replay
    rebel, reg_grpo_paper (only when named in --arms): REBEL; Reg-GRPO in the paper's printed form

The table reports the final validation accuracy of each run (the mean over seeds): the validation
set is the test split here, so no maximum over its evaluations is taken.

Learning-rate rule, fixed before the final runs and the same for every arm: for each loss, each rate
in `lr_grid[loss]` trains once (seed 100, no augmentation) on the same budget; the rate with the
best mean accuracy over that run's evaluations after the start wins, measured on a *selection* split
(a synthetic split made with another seed, never the validation set reported below). Arms use their
loss's winner (a one-value grid fixes the rate instead). Runs go seed by seed, every arm of a seed
before the next seed, and the outputs are rewritten after each seed: results.json (every run),
results.md (mean +- std over seeds, then the paired difference per seed of the arms the paper
compares, with a 95% t interval and whether it excludes 0), ablation.png (validation accuracy and
zero-advantage ratio against answers generated).
"""
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

from machinery.configurator import choice_problem, configure, writable_dir

# -----------------------------------------------------------------------------
out_dir = "out/ablation"
init_from = "out/ablation/sft"
sft_data = "data/synthetic/train.jsonl"   # the table in the README: SFT on the ground-truth traces
train_data = "data/synthetic/train.jsonl"
val_data = "data/synthetic/val.jsonl"
select_dir = "data/synthetic_select"      # selection split, made with select_seed
select_seed = 1
seeds = (0, 1, 2)
answers_budget = 1280                     # answers generated per run (20 steps of 8 prompts x 8)
eval_every = 10                           # steps between validation passes
eval_samples = 200
lr_grid = {"reg_grpo": (1e-5, 3e-5, 1e-4), "grpo": (1e-5, 3e-5, 1e-4), "rebel": (1e-5, 3e-5, 1e-4)}
arms = ("sft", "grpo", "reg_grpo", "reg_grpo+aug", "reg_grpo+noise", "reg_grpo+hints",
        "reg_grpo+dynamic", "reg_grpo+replay")
extra = ""                                # more train.py overrides for every run, space separated
jobs = 1                                  # train.py runs at once, each with cpu_count // jobs threads (CPU)
smoke = False                             # tiny budget: checks the driver, not the method
# -----------------------------------------------------------------------------

ARM_SETTINGS = {
    "grpo": {"loss": "grpo", "augment": "none"},
    "reg_grpo": {"loss": "reg_grpo", "augment": "none"},
    "reg_grpo+aug": {"loss": "reg_grpo", "augment": "both"},
    "reg_grpo+noise": {"loss": "reg_grpo", "augment": "harder"},
    "reg_grpo+hints": {"loss": "reg_grpo", "augment": "easier"},
    "reg_grpo+dynamic": {"loss": "reg_grpo", "augment": "none", "vanishing_fix": "dynamic_sampling"},
    "reg_grpo+replay": {"loss": "reg_grpo", "augment": "none", "vanishing_fix": "group_replay"},
    "rebel": {"loss": "rebel", "augment": "none"},
    "reg_grpo_paper": {"loss": "reg_grpo", "reg_form": "paper", "augment": "none"},
}


def setting_problems(c):
    """Ranges, and every arm's train.py settings checked by train.py's own rules before any run."""
    unknown_arms = [a for a in c["arms"] if a != "sft" and a not in ARM_SETTINGS]
    return [
        (not unknown_arms, "arms: " + "; ".join(choice_problem("arm", a, ["sft", *ARM_SETTINGS])
                                                 for a in unknown_arms)),
        (len(c["seeds"]) >= 1 and all(isinstance(s, int) for s in c["seeds"]),
         f"seeds={c['seeds']!r}: need a tuple of one or more integers"),
        (c["jobs"] >= 1, f"jobs={c['jobs']}: need >= 1"),
        (c["answers_budget"] >= 1, f"answers_budget={c['answers_budget']}: need >= 1"),
        (c["eval_every"] >= 1, f"eval_every={c['eval_every']}: need >= 1"),
        (c["eval_samples"] >= 1, f"eval_samples={c['eval_samples']}: need >= 1"),
        (all(lrs and all(isinstance(lr, (int, float)) and lr > 0 for lr in lrs) for lrs in c["lr_grid"].values()),
         f"lr_grid={c['lr_grid']!r}: each loss needs a tuple of positive learning rates"),
        (writable_dir(c["out_dir"]), f"out_dir={c['out_dir']!r}: cannot create or write to this directory"),
    ]


def setting_warnings(c, given):
    """Allowed but inert: the budget settings a smoke run replaces."""
    replaced = sorted({"answers_budget", "eval_samples", "eval_every"} & given)
    return [(not (c["smoke"] and replaced), f"{', '.join(replaced)}: {'does' if len(replaced) == 1 else 'do'} "
                                             "nothing with smoke=True (a smoke run uses answers_budget=1, "
                                             "eval_samples=8, eval_every=1)")]


def check_train_settings(c):
    """Every run's train.py arguments through train.py's checks (fails before the first run)."""
    import train
    for arm in c["arms"]:
        if arm == "sft":
            continue
        loss = ARM_SETTINGS[arm]["loss"]
        if loss not in c["lr_grid"]:
            raise SystemExit(f"bad settings:\n  lr_grid has no learning rates for loss {loss!r} (arm {arm})")
        args = train_args(c, c["out_dir"], ARM_SETTINGS[arm], c["seeds"][0], c["val_data"], c["answers_budget"])
        configure({k: v for k, v in vars(train).items()}, [a for a in args if not a.startswith("--init_from=")],
                  train.CHOICES, train.setting_problems)


def train_args(c, run_dir, settings, seed, val, budget):
    """train.py's arguments for one run; `c`: this script's settings."""
    args = [f"--{k}={v}" for k, v in settings.items()]
    return args + [f"--init_from={c['init_from']}", f"--train_data={c['train_data']}", f"--val_data={val}",
                   f"--out_dir={run_dir}", f"--seed={seed}", f"--max_answers={budget}", "--max_steps=1000000",
                   f"--eval_interval={c['eval_every']}", f"--eval_samples={c['eval_samples']}",
                   "--checkpoint_interval=1000000", *c["extra"].split()]


def train(run_dir, settings, seed, val, budget):
    """One train.py run; returns its summary (with eval history) and per-step log."""
    args = train_args(globals(), run_dir, settings, seed, val, budget)
    if os.path.exists(os.path.join(run_dir, "summary.json")):
        print(f"  {run_dir}: done already, reusing")
    else:
        shutil.rmtree(run_dir, ignore_errors=True)          # an unfinished run is redone from the start
        t0 = time.time()
        proc = subprocess.run([sys.executable, "train.py", *args], capture_output=True, text=True, env=run_env())
        if proc.returncode != 0:
            raise SystemExit(f"{run_dir}: train.py failed\n{proc.stderr[-3000:]}")
        summary = json.load(open(os.path.join(run_dir, "summary.json")))
        summary["wall_seconds"] = time.time() - t0
        json.dump(summary, open(os.path.join(run_dir, "summary.json"), "w"), indent=2)
    summary = json.load(open(os.path.join(run_dir, "summary.json")))
    log = [json.loads(line) for line in open(os.path.join(run_dir, "log.jsonl"))]
    return summary, log


def select_learning_rates(budget):
    """The lr rule: per loss, the grid value with the best mean selection accuracy after the start."""
    chosen, trials = {}, {}
    for loss, grid in lr_grid.items():
        if not any(ARM_SETTINGS.get(a, {}).get("loss") == loss for a in arms):
            continue
        if len(grid) == 1:                                    # a fixed rate: nothing to select
            chosen[loss], trials[loss] = grid[0], {}
            continue
        scores = {}
        for lr in grid:
            summary, _ = train(os.path.join(out_dir, "lr_select", f"{loss}_lr{lr:g}"),
                               {**ARM_SETTINGS[loss], "learning_rate": lr}, 100,
                               os.path.join(select_dir, "val.jsonl"), budget)
            accs = [h["val_accuracy"] for h in summary["history"][1:]]
            scores[lr] = sum(accs) / len(accs)
            print(f"  lr selection {loss} lr={lr:g}: mean selection accuracy {scores[lr]:.3f}")
        chosen[loss] = max(scores, key=scores.get)
        trials[loss] = {f"{lr:g}": s for lr, s in scores.items()}
    return chosen, trials


def run_record(arm, seed, lr, summary, log):
    history = summary["history"]
    accs = [h["val_accuracy"] for h in history]
    return {"arm": arm, "seed": seed, "learning_rate": lr,
            "final_accuracy": accs[-1], "start_accuracy": accs[0],
            "zero_adv_before": mean([r["zero_adv_before"] for r in log]),
            "zero_adv_after": mean([r["zero_adv_after"] for r in log]),
            "zero_adv_first_10_steps": mean([r["zero_adv_before"] for r in log[:10]]),
            "mean_reward": mean([r["reward"] for r in log]),
            "answers_generated": summary["answers_generated"], "steps": summary["steps"],
            "wall_seconds": summary.get("wall_seconds"), "history": history,
            "curve": [(r["answers_generated"], r["zero_adv_after"], r["zero_adv_before"]) for r in log]}


def sft_record(seed):
    """The starting point: greedy accuracy of the SFT checkpoint (the same for every seed)."""
    target = os.path.join(out_dir, "sft_eval.json")
    if not os.path.exists(target):
        subprocess.run([sys.executable, "eval.py", f"--model={init_from}", f"--data={val_data}",
                        f"--max_samples={eval_samples}", f"--out_file={target}"], check=True,
                       capture_output=True)
    acc = json.load(open(target))["results"]["all"]["accuracy"]
    return {"arm": "sft", "seed": seed, "learning_rate": None, "final_accuracy": acc,
            "start_accuracy": acc, "zero_adv_before": None, "zero_adv_after": None, "mean_reward": None,
            "answers_generated": 0, "steps": 0, "wall_seconds": None, "history": [], "curve": []}


def mean(xs):
    return sum(xs) / len(xs) if xs else float("nan")


def fmt(values, digits=3):
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


# Two-sided 95% quantiles of Student's t with n - 1 degrees of freedom (n = seeds), for paired intervals.
T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262,
        10: 2.228, 11: 2.201, 12: 2.179, 13: 2.160, 14: 2.145, 15: 2.131, 19: 2.093, 29: 2.045}
PAIRS = (("reg_grpo", "grpo"), ("reg_grpo", "rebel"), ("reg_grpo", "reg_grpo_paper"),
         ("reg_grpo+aug", "reg_grpo"), ("reg_grpo+aug", "grpo"), ("grpo", "sft"), ("reg_grpo", "sft"))


def paired_differences(runs):
    """
    Per pair of arms (a, b) present: d_s = final_acc(a, seed s) - final_acc(b, seed s) over the seeds both
    ran (same seed: same SFT start, same prompts drawn until the runs diverge), with the paired 95%
    interval mean(d) +- t_{0.975, n-1} * sd(d) / sqrt(n). "shown" when the interval excludes 0.
    """
    by = {(r["arm"], r["seed"]): r["final_accuracy"] for r in runs}
    out = []
    for a, b in PAIRS:
        common = sorted(s for (arm, s) in by if arm == a and (b, s) in by)
        if len(common) < 2:
            continue
        d = [by[(a, s)] - by[(b, s)] for s in common]
        n, m, sd = len(d), statistics.mean(d), statistics.stdev(d)
        t = T975[max(k for k in T975 if k <= n - 1)]       # conservative for df between table rows
        half = t * sd / n ** 0.5
        out.append({"a": a, "b": b, "seeds": common, "differences": d, "mean": m, "ci95": [m - half, m + half],
                    "shown": (m - half > 0) or (m + half < 0)})
    return out


def paired_table(pairs):
    lines = ["| difference | seeds | per seed | mean | 95% interval | shown? |", "|---|---|---|---|---|---|"]
    for p in pairs:
        per = " ".join(f"{x:+.3f}" for x in p["differences"])
        verdict = ("yes, " + ("a > b" if p["mean"] > 0 else "a < b")) if p["shown"] else "no"
        lines.append(f"| {p['a']} - {p['b']} | {len(p['seeds'])} | {per} | {p['mean']:+.3f} | "
                     f"[{p['ci95'][0]:+.3f}, {p['ci95'][1]:+.3f}] | {verdict} |")
    return "\n".join(lines)


def markdown_table(runs, chosen):
    cols = [("final val acc", "final_accuracy", 3),
            ("zero-adv (sampled)", "zero_adv_before", 2), ("zero-adv (trained on)", "zero_adv_after", 2),
            ("mean reward", "mean_reward", 2), ("answers", "answers_generated", 0), ("wall s", "wall_seconds", 0)]
    lines = ["| arm | lr | " + " | ".join(c[0] for c in cols) + " |", "|---" * (len(cols) + 2) + "|"]
    for arm in arms:
        rs = [r for r in runs if r["arm"] == arm]
        if not rs:
            continue
        cells = []
        for _, key, digits in cols:
            vals = [r[key] for r in rs if r.get(key) is not None]
            cells.append(fmt(vals, digits) if vals else "-")
        lr = f"{rs[0]['learning_rate']:g}" if rs[0]["learning_rate"] else "-"
        lines.append(f"| {arm} | {lr} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append(f"{len({r['seed'] for r in runs})} seeds per arm, mean ± std; learning rates chosen per loss: "
                 + ", ".join(f"{k} {v:g}" for k, v in chosen.items()))
    return "\n".join(lines)


def plot(runs, path):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: skipping the plot (pip install matplotlib)")
        return None
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    for arm in arms:
        rs = [r for r in runs if r["arm"] == arm and r["history"]]
        if not rs or arm == "sft":
            continue
        n = min(len(r["history"]) for r in rs)
        xs = [statistics.mean(r["history"][i]["answers_generated"] for r in rs) for i in range(n)]
        ys = [statistics.mean(r["history"][i]["val_accuracy"] for r in rs) for i in range(n)]
        ax1.plot(xs, ys, marker="o", ms=3, label=arm)
        m = min(len(r["curve"]) for r in rs)
        k = max(1, m // 12)                                   # moving average over k steps
        xz = [statistics.mean(r["curve"][i][0] for r in rs) for i in range(m)]
        yz = [statistics.mean(r["curve"][i][1] for r in rs) for i in range(m)]
        smooth = [statistics.mean(yz[max(0, i - k + 1):i + 1]) for i in range(m)]
        ax2.plot(xz, smooth, label=arm)
    sft = [r for r in runs if r["arm"] == "sft"]
    if sft:
        ax1.axhline(statistics.mean(r["final_accuracy"] for r in sft), color="gray", ls="--", label="sft")
    ax1.set(xlabel="answers generated", ylabel="validation accuracy", title="accuracy (mean over seeds)")
    ax2.set(xlabel="answers generated", ylabel="zero-advantage ratio of the trained batch",
            title="zero-advantage ratio (moving average)")
    ax1.legend(fontsize=8)
    ax2.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


def run_env():
    """The environment of one train.py run: with jobs > 1 the cores are split between the runs (two runs
    of one thread each finish a tiny-model study sooner than one run of two threads after another)."""
    if jobs == 1:
        return None
    return {**os.environ, "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // jobs))}


def ensure_inputs():
    if not os.path.exists(train_data):
        subprocess.run([sys.executable, "data/synthetic/prepare.py"], check=True)
    if not os.path.exists(os.path.join(select_dir, "val.jsonl")):
        subprocess.run([sys.executable, "data/synthetic/prepare.py", f"--out={select_dir}",
                        f"--seed={select_seed}", "--n_train=8", "--n_val=200"], check=True)
    if not os.path.exists(os.path.join(init_from, "config.json")):
        subprocess.run([sys.executable, "sft.py", f"--out_dir={init_from}", f"--train_data={sft_data}"],
                       check=True)


def main():
    global eval_samples, eval_every, answers_budget
    config = configure(globals(), sys.argv[1:], {}, setting_problems, setting_warnings)
    if smoke:
        answers_budget, eval_samples, eval_every = 1, 8, 1  # one step per run
    budget = answers_budget
    check_train_settings({**config, "eval_samples": eval_samples, "eval_every": eval_every})
    ensure_inputs()
    os.makedirs(out_dir, exist_ok=True)
    t0 = time.time()
    chosen, trials = select_learning_rates(budget)
    print(f"learning rates chosen: {chosen}")
    runs = []
    if "sft" in arms:
        sft_record(seeds[0])                                  # evaluated once, before runs share it
    pool = ThreadPoolExecutor(max_workers=jobs)               # runs are subprocesses: threads only wait
    try:
        pending = {(seed, arm): pool.submit(run_arm, arm, seed, chosen) for seed in seeds for arm in arms}
        for seed in seeds:                                    # seed-major: every finished seed is a full pairing
            for arm in arms:
                record = pending[seed, arm].result()          # a failed run raises here
                runs.append(record)
                print(f"  {arm:18s} seed {seed}: final {record['final_accuracy']:.3f}", flush=True)
            write_results(config, budget, trials, chosen, runs, t0)  # after every seed: a stop loses one seed at most
    finally:
        pool.shutdown(cancel_futures=True)                    # after a failure, start no further run


def run_arm(arm, seed, chosen):
    """One arm's record for one seed (SFT: the start's accuracy; else a train.py run)."""
    if arm == "sft":
        return sft_record(seed)
    settings = dict(ARM_SETTINGS[arm])
    lr = chosen[settings["loss"]]
    run_dir = os.path.join(out_dir, arm.replace("+", "_"), f"seed{seed}")
    summary, log = train(run_dir, {**settings, "learning_rate": lr}, seed, val_data, answers_budget)
    return run_record(arm, seed, lr, summary, log)


def write_results(config, budget, trials, chosen, runs, t0):
    pairs = paired_differences(runs)
    table = markdown_table(runs, chosen) + ("\n\nPaired differences of final validation accuracy (a - b):\n\n"
                                           + paired_table(pairs) if pairs else "")
    result = {"config": config, "budget": budget, "lr_selection": trials, "learning_rates": chosen,
              "runs": runs, "paired_differences": pairs, "seconds": time.time() - t0}
    json.dump(result, open(os.path.join(out_dir, "results.json"), "w"), indent=2)
    open(os.path.join(out_dir, "results.md"), "w").write(table + "\n")
    png = plot(runs, os.path.join(out_dir, "ablation.png"))
    print(table)
    print(f"wrote {out_dir}/results.json, results.md" + (f", {png}" if png else "")
          + f" in {time.time() - t0:.0f}s", flush=True)


if __name__ == "__main__":
    main()
