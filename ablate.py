"""
The paper's ablation on the built-in benchmark, with our variants and two other remedies for vanishing
advantages.

    python ablate.py config/ablate_paper.py --jobs=2   # the paper's comparison (README, assets/ablation_paper)
    python ablate.py --smoke=True                      # a step per arm, to check the plumbing (the test does this)

Every run starts from an SFT model and stops after the same number of generated answers
(`answers_budget`; augmentation, hint traces and dynamic sampling generate extra answers, and those
count). With `init_from = ""` the study trains one SFT model per seed in `sft_seeds` (sft.py on
`sft_data`, into out_dir/sft<seed>), and runs every RL seed in `seeds` from each: a run is named by
(SFT seed, RL seed), and two arms' runs with the same pair start from the same weights and draw the
same prompts until they diverge.

    sft                no RL: the starting point (its step-0 evaluation)
    grpo               GRPO, clipped surrogate (its clip fraction is logged)
    rebel              REBEL (the paper's other baseline)
    reg_grpo_paper     Reg-GRPO as printed: form "paper", rho the token sum
    reg_grpo           Reg-GRPO, our scaled form with rho the token mean (train.py's default)
    reg_grpo+aug       + difficulty-aware augmentation by the paper's rule: every sample whose r_cur is
                       more than the margin away from r_ref is redone (augment_flat_only=False)
    reg_grpo+aug_flat  + augmentation on flat groups only (our variant, augment_flat_only=True)
    reg_grpo+noise     + the paper's rule, harder direction only (frame noise)
    reg_grpo+hints     + the paper's rule, easier direction only (hints)
    reg_grpo+dynamic   + dynamic sampling (DAPO)          reg_grpo+replay   + group replay

The table reports each run's final validation accuracy (the validation set is the test split here, so
no maximum over its evaluations is taken), mean +- std over runs, then the paired difference of every arm
against Reg-GRPO and against GRPO over the (SFT seed, RL seed) pairs both ran, with a 95% t interval
and whether it excludes 0.

Learning-rate rule, fixed before the final runs and the same for every arm: each loss (GRPO, REBEL,
Reg-GRPO as printed, Reg-GRPO scaled: `lr_key`) trains once per rate in `lr_grid[key]` from the first
SFT model (RL seed 100, no augmentation, `select_budget` answers); the rate with the best mean accuracy
over that run's evaluations after the start wins, measured on a *selection* split (a synthetic split made
with another seed, never the validation set reported). Every arm uses its loss's winner (a one-value grid
fixes the rate). Outputs are rewritten after each (SFT seed, RL seed) pair finishes: results.json (every
run), results.md, ablation.png (validation accuracy and zero-advantage ratio against answers generated).
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
init_from = ""                            # "": one SFT model per sft_seeds, made here; a path: every run's start
sft_data = "data/synthetic/sft.jsonl"     # the SFT models' demonstrations
train_data = "data/synthetic/train.jsonl"
val_data = "data/synthetic/val.jsonl"
select_dir = "data/synthetic_select"      # selection split, made with select_seed
select_seed = 1
sft_seeds = (0,)                          # SFT models (with init_from set: one, its label)
seeds = (0, 1, 2)                         # RL seeds per SFT model
answers_budget = 1280                     # answers generated per run (20 steps of 8 prompts x 8)
select_budget = 0                         # answers per learning-rate selection run (0: answers_budget)
eval_every = 10                           # steps between validation passes
eval_samples = 200
lr_grid = {"grpo": (1e-5, 3e-5, 1e-4), "rebel": (1e-5, 3e-5, 1e-4), "reg_grpo_paper": (1e-5, 3e-5, 1e-4),
           "reg_grpo": (1e-5, 3e-5, 1e-4)}
arms = ("sft", "grpo", "rebel", "reg_grpo_paper", "reg_grpo", "reg_grpo+aug", "reg_grpo+aug_flat", "reg_grpo+dynamic")
extra = ""                                # more train.py overrides for every run, space separated
jobs = 1                                  # runs at once, each with cpu_count // jobs threads (CPU)
smoke = False                             # tiny budget: checks the driver, not the method
# -----------------------------------------------------------------------------

ARM_SETTINGS = {
    "grpo": {"loss": "grpo", "augment": "none"},
    "rebel": {"loss": "rebel", "augment": "none"},
    "reg_grpo_paper": {"loss": "reg_grpo", "reg_form": "paper", "rho_token_mean": False, "augment": "none"},
    "reg_grpo": {"loss": "reg_grpo", "reg_form": "scaled", "rho_token_mean": True, "augment": "none"},
    "reg_grpo+aug": {"loss": "reg_grpo", "augment": "both", "augment_flat_only": False},
    "reg_grpo+aug_flat": {"loss": "reg_grpo", "augment": "both", "augment_flat_only": True},
    "reg_grpo+noise": {"loss": "reg_grpo", "augment": "harder", "augment_flat_only": False},
    "reg_grpo+hints": {"loss": "reg_grpo", "augment": "easier", "augment_flat_only": False},
    "reg_grpo+dynamic": {"loss": "reg_grpo", "augment": "none", "vanishing_fix": "dynamic_sampling"},
    "reg_grpo+replay": {"loss": "reg_grpo", "augment": "none", "vanishing_fix": "group_replay"},
}
SELECTION_ARM = {"grpo": "grpo", "rebel": "rebel", "reg_grpo": "reg_grpo", "reg_grpo_paper": "reg_grpo_paper"}


def lr_key(arm):
    """Which learning rate an arm uses: its loss's, the printed Reg-GRPO form counting as a loss of its own."""
    s = ARM_SETTINGS[arm]
    return "reg_grpo_paper" if s.get("reg_form") == "paper" else s["loss"]


def setting_problems(c):
    """Ranges, and every arm's train.py settings checked by train.py's own rules before any run."""
    unknown_arms = [a for a in c["arms"] if a != "sft" and a not in ARM_SETTINGS]
    ints = lambda xs: len(xs) >= 1 and all(isinstance(s, int) and not isinstance(s, bool) for s in xs)
    return [
        (not unknown_arms, "arms: " + "; ".join(choice_problem("arm", a, ["sft", *ARM_SETTINGS])
                                                 for a in unknown_arms)),
        (ints(c["seeds"]), f"seeds={c['seeds']!r}: need a tuple of one or more integers"),
        (ints(c["sft_seeds"]), f"sft_seeds={c['sft_seeds']!r}: need a tuple of one or more integers"),
        (not c["init_from"] or len(c["sft_seeds"]) == 1,
         f"sft_seeds={c['sft_seeds']!r}: with init_from={c['init_from']!r} every run starts from that one model, "
         "so sft_seeds names it with one value"),
        (c["jobs"] >= 1, f"jobs={c['jobs']}: need >= 1"),
        (c["answers_budget"] >= 1, f"answers_budget={c['answers_budget']}: need >= 1"),
        (c["select_budget"] >= 0, f"select_budget={c['select_budget']}: need >= 0 (0: answers_budget)"),
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
    """Every arm's train.py arguments through train.py's own checks (`--check_only=True`, all arms at
    once in separate processes): a bad one fails the study before its first run."""
    for arm in c["arms"]:
        if arm != "sft" and lr_key(arm) not in c["lr_grid"]:
            raise SystemExit(f"bad settings:\n  lr_grid has no learning rates for {lr_key(arm)!r} (arm {arm})")

    def check(arm):
        args = train_args(c, c["out_dir"], "", ARM_SETTINGS[arm], c["seeds"][0], c["val_data"], c["answers_budget"])
        args = [a for a in args if not a.startswith("--init_from=")] + ["--check_only=True"]
        return arm, subprocess.run([sys.executable, "train.py", *args], capture_output=True, text=True)
    with ThreadPoolExecutor(max_workers=4) as pool:
        for arm, proc in pool.map(check, [a for a in c["arms"] if a != "sft"]):
            if proc.returncode != 0:
                raise SystemExit(f"arm {arm}: train.py refuses its settings:\n{proc.stderr.strip()[-2000:]}")


def sft_dir(sft_seed):
    return init_from or os.path.join(out_dir, f"sft{sft_seed}")


def train_args(c, run_dir, start, settings, seed, val, budget):
    """train.py's arguments for one run from the SFT model `start`; `c`: this script's settings."""
    args = [f"--{k}={v}" for k, v in settings.items()]
    return args + [f"--init_from={start}", f"--train_data={c['train_data']}", f"--val_data={val}",
                   f"--out_dir={run_dir}", f"--seed={seed}", f"--max_answers={budget}", "--max_steps=1000000",
                   f"--eval_interval={c['eval_every']}", f"--eval_samples={c['eval_samples']}",
                   "--checkpoint_interval=1000000", *c["extra"].split()]


def run(args, log_path):
    """One script run with this study's thread budget; its output into log_path; stop the study if it fails."""
    with open(log_path, "w") as log:
        code = subprocess.run([sys.executable, *args], stdout=log, stderr=subprocess.STDOUT, env=run_env()).returncode
    if code != 0:
        tail = open(log_path).read()[-3000:]
        raise SystemExit(f"python {' '.join(args[:1])} failed (exit {code}); its log {log_path} ends:\n{tail}")


def train(run_dir, start, settings, seed, val, budget):
    """One train.py run; returns its summary (with eval history) and per-step log."""
    args = train_args(globals(), run_dir, start, settings, seed, val, budget)
    if os.path.exists(os.path.join(run_dir, "summary.json")):
        print(f"  {run_dir}: done already, reusing", flush=True)
    else:
        shutil.rmtree(run_dir, ignore_errors=True)          # an unfinished run is redone from the start
        os.makedirs(run_dir)
        t0 = time.time()
        run(["train.py", *args], os.path.join(run_dir, "stdout.txt"))
        summary = json.load(open(os.path.join(run_dir, "summary.json")))
        summary["wall_seconds"] = time.time() - t0
        json.dump(summary, open(os.path.join(run_dir, "summary.json"), "w"), indent=2)
    summary = json.load(open(os.path.join(run_dir, "summary.json")))
    log = [json.loads(line) for line in open(os.path.join(run_dir, "log.jsonl"))]
    return summary, log


def make_sft(sft_seed):
    """The SFT model of one seed (sft.py on sft_data), unless init_from names the start or it exists."""
    path = sft_dir(sft_seed)
    if init_from or os.path.exists(os.path.join(path, "config.json")):
        return path
    resume = os.path.exists(os.path.join(path, "ckpt.pt"))      # a killed study continues its SFT
    os.makedirs(path, exist_ok=True)
    run(["sft.py", f"--seed={sft_seed}", f"--out_dir={path}", f"--train_data={sft_data}", f"--val_data={val_data}",
         f"--eval_samples={eval_samples}", *(["--resume=True"] if resume else [])],
        os.path.join(out_dir, f"sft{sft_seed}.log"))
    return path


def select_learning_rates(pool, budget):
    """The lr rule: per loss, the grid value with the best mean selection accuracy after the start."""
    chosen, trials, pending = {}, {}, {}
    for key, grid in lr_grid.items():
        if not any(lr_key(a) == key for a in arms if a != "sft"):
            continue
        if len(grid) == 1:                                    # a fixed rate: nothing to select
            chosen[key], trials[key] = grid[0], {}
            continue
        for lr in grid:
            pending[key, lr] = pool.submit(train, os.path.join(out_dir, "lr_select", f"{key}_lr{lr:g}"),
                                           sft_dir(sft_seeds[0]),
                                           {**ARM_SETTINGS[SELECTION_ARM[key]], "learning_rate": lr}, 100,
                                           os.path.join(select_dir, "val.jsonl"), budget)
    for key in {k for k, _ in pending}:
        scores = {}
        for lr in lr_grid[key]:
            summary, _ = pending[key, lr].result()
            accs = [h["val_accuracy"] for h in summary["history"][1:]]
            scores[lr] = sum(accs) / len(accs)
            print(f"  lr selection {key} lr={lr:g}: mean selection accuracy {scores[lr]:.3f}", flush=True)
        chosen[key] = max(scores, key=scores.get)
        trials[key] = {f"{lr:g}": s for lr, s in scores.items()}
    return chosen, trials


def run_record(arm, sft_seed, seed, lr, summary, log):
    history = summary["history"]
    first20 = log[:20]
    record = {"arm": arm, "sft_seed": sft_seed, "seed": seed, "learning_rate": lr,
              "final_accuracy": history[-1]["val_accuracy"], "start_accuracy": history[0]["val_accuracy"],
              "final_by_subset": history[-1].get("val_by_subset", {}),
              "start_by_subset": history[0].get("val_by_subset", {}),
              "zero_adv_before": mean([r["zero_adv_before"] for r in log]),
              "zero_adv_after": mean([r["zero_adv_after"] for r in log]),
              "zero_adv_before_first_20": mean([r["zero_adv_before"] for r in first20]),
              "zero_adv_after_first_20": mean([r["zero_adv_after"] for r in first20]),
              "flat_easy_first_20": mean([r.get("flat_easy", float("nan")) for r in first20]),
              "flat_hard_first_20": mean([r.get("flat_hard", float("nan")) for r in first20]),
              "hints": {k.removeprefix("hints_"): sum(r.get(k, 0) for r in log) for k in log[0] if k.startswith("hints_")},
              "mean_reward": mean([r["reward"] for r in log]),
              "answers_generated": summary["answers_generated"], "steps": summary["steps"],
              "wall_seconds": summary.get("wall_seconds"), "history": history,
              "curve": [(r["answers_generated"], r["zero_adv_after"], r["zero_adv_before"]) for r in log]}
    if "clip_frac" in log[0]:
        record["clip_frac"] = mean([r["clip_frac"] for r in log])
    return record


def sft_record(sft_seed, seed, run):
    """The starting point of the runs from one SFT model: a run's step-0 evaluation (greedy: the same in
    every run from that model)."""
    return {"arm": "sft", "sft_seed": sft_seed, "seed": seed, "learning_rate": None,
            "final_accuracy": run["start_accuracy"], "start_accuracy": run["start_accuracy"],
            "final_by_subset": run["start_by_subset"],
            "zero_adv_before": None, "zero_adv_after": None, "mean_reward": None,
            "answers_generated": 0, "steps": 0, "wall_seconds": None, "history": [], "curve": []}


def mean(xs):
    return sum(xs) / len(xs) if xs else float("nan")


def fmt(values, digits=3):
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


# Two-sided 95% quantiles of Student's t with df = n - 1 degrees of freedom (n = paired runs).
T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262,
        10: 2.228, 11: 2.201, 12: 2.179, 13: 2.160, 14: 2.145, 15: 2.131, 16: 2.120, 17: 2.110, 18: 2.101,
        19: 2.093, 20: 2.086, 21: 2.080, 22: 2.074, 23: 2.069, 24: 2.064, 25: 2.060, 26: 2.056, 27: 2.052,
        28: 2.048, 29: 2.045, 30: 2.042, 40: 2.021, 60: 2.000}
REFERENCES = ("reg_grpo", "grpo")          # every arm is compared with these two


def pairs_of(names):
    """(a, b) for every arm a against each reference b present, in the order of `names`."""
    return [(a, b) for b in REFERENCES if b in names for a in names if a != b]


def paired_differences(runs, names=None):
    """
    Per pair of arms (a, b): d_k = final_acc(a, k) - final_acc(b, k) over the run keys k = (SFT seed, RL seed)
    both ran (the same start and the same prompts until the runs diverge), with the paired 95% interval
    mean(d) +- t_{0.975, n-1} * sd(d) / sqrt(n). "shown" when the interval excludes 0.
    """
    key = lambda r: (r.get("sft_seed", 0), r["seed"])
    by = {(r["arm"], key(r)): r["final_accuracy"] for r in runs}
    names = names or list(dict.fromkeys(r["arm"] for r in runs))
    out = []
    for a, b in pairs_of(names):
        common = sorted(k for (arm, k) in by if arm == a and (b, k) in by)
        if len(common) < 2:
            continue
        d = [by[(a, k)] - by[(b, k)] for k in common]
        n, m, sd = len(d), statistics.mean(d), statistics.stdev(d)
        t = T975[max(k for k in T975 if k <= n - 1)]       # conservative for df between table rows
        half = t * sd / n ** 0.5
        out.append({"a": a, "b": b, "seeds": [list(k) for k in common], "differences": d, "mean": m,
                    "ci95": [m - half, m + half], "shown": (m - half > 0) or (m + half < 0)})
    return out


def paired_table(pairs):
    lines = ["| difference | pairs | mean | 95% interval | shown? | per (SFT seed, RL seed) |",
             "|---|---|---|---|---|---|"]
    for p in pairs:
        per = " ".join(f"{x:+.3f}" for x in p["differences"])
        verdict = ("yes, " + ("a > b" if p["mean"] > 0 else "a < b")) if p["shown"] else "no"
        lines.append(f"| {p['a']} - {p['b']} | {len(p['seeds'])} | {p['mean']:+.3f} | "
                     f"[{p['ci95'][0]:+.3f}, {p['ci95'][1]:+.3f}] | {verdict} | {per} |")
    return "\n".join(lines)


def markdown_table(runs, chosen):
    cols = [("final val acc", "final_accuracy", 3), ("zero-adv sampled, steps 1-20", "zero_adv_before_first_20", 2),
            ("flat easy / hard, steps 1-20", None, 2), ("zero-adv sampled", "zero_adv_before", 2),
            ("zero-adv trained on", "zero_adv_after", 2), ("GRPO clip frac", "clip_frac", 3),
            ("answers", "answers_generated", 0), ("wall s", "wall_seconds", 0)]
    lines = ["| arm | lr | " + " | ".join(c[0] for c in cols) + " |", "|---" * (len(cols) + 2) + "|"]
    for arm in arms:
        rs = [r for r in runs if r["arm"] == arm]
        if not rs:
            continue
        cells = []
        for _, key, digits in cols:
            if key is None:
                e = [r["flat_easy_first_20"] for r in rs if r.get("flat_easy_first_20") is not None]
                h = [r["flat_hard_first_20"] for r in rs if r.get("flat_hard_first_20") is not None]
                cells.append(f"{mean(e):.2f} / {mean(h):.2f}" if e else "-")
                continue
            vals = [r[key] for r in rs if r.get(key) is not None]
            cells.append(fmt(vals, digits) if vals else "-")
        lr = f"{rs[0]['learning_rate']:g}" if rs[0]["learning_rate"] else "-"
        lines.append(f"| {arm} | {lr} | " + " | ".join(cells) + " |")
    lines.append("")
    n_runs = len({(r.get("sft_seed", 0), r["seed"]) for r in runs})
    lines.append(f"{n_runs} runs per arm ({len({r.get('sft_seed', 0) for r in runs})} SFT models x "
                 f"{len({r['seed'] for r in runs})} RL seeds), mean ± std over runs; learning rates per loss: "
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
    ax1.set(xlabel="answers generated", ylabel="validation accuracy", title="accuracy (mean over runs)")
    ax2.set(xlabel="answers generated", ylabel="zero-advantage ratio of the trained batch",
            title="zero-advantage ratio (moving average)")
    ax1.legend(fontsize=8)
    ax2.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def run_env():
    """The environment of one run: with jobs > 1 the cores are split between the runs (two runs of one
    thread each finish a tiny-model study sooner than one run of two threads after another)."""
    if jobs == 1:
        return None
    return {**os.environ, "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // jobs))}


def ensure_inputs():
    if not os.path.exists(train_data):
        subprocess.run([sys.executable, "data/synthetic/prepare.py"], check=True)
    if not os.path.exists(os.path.join(select_dir, "val.jsonl")):
        subprocess.run([sys.executable, "data/synthetic/prepare.py", f"--out={select_dir}",
                        f"--seed={select_seed}", "--n_train=8", "--n_val=200"], check=True)


def main():
    global eval_samples, eval_every, answers_budget, select_budget
    config = configure(globals(), sys.argv[1:], {}, setting_problems, setting_warnings)
    if smoke:
        answers_budget, select_budget, eval_samples, eval_every = 1, 1, 8, 1  # one step per run
    check_train_settings({**config, "eval_samples": eval_samples, "eval_every": eval_every})
    ensure_inputs()
    os.makedirs(out_dir, exist_ok=True)
    t0 = time.time()
    pool = ThreadPoolExecutor(max_workers=jobs)               # runs are subprocesses: threads only wait
    try:
        for future in [pool.submit(make_sft, s) for s in sft_seeds]:
            future.result()
        chosen, trials = select_learning_rates(pool, select_budget or answers_budget)
        print(f"learning rates chosen: {chosen}", flush=True)
        rl_arms = [a for a in arms if a != "sft"]
        keys = [(s, r) for s in sft_seeds for r in seeds]
        pending = {(k, arm): pool.submit(run_arm, arm, *k, chosen) for k in keys for arm in rl_arms}
        runs = []
        for k in keys:                                         # pair by pair: every finished pair is complete
            done = [pending[k, arm].result() for arm in rl_arms]  # a failed run raises here
            if "sft" in arms:
                runs.append(sft_record(*k, done[0]))
            runs += done
            for r in runs[-len(arms):]:
                print(f"  {r['arm']:18s} sft seed {k[0]} seed {k[1]}: final {r['final_accuracy']:.3f}", flush=True)
            write_results(config, trials, chosen, runs, t0)   # a stop loses the unfinished pairs only
    finally:
        pool.shutdown(cancel_futures=True)                    # after a failure, start no further run


def run_arm(arm, sft_seed, seed, chosen):
    """One RL arm's record for one (SFT seed, RL seed)."""
    settings = dict(ARM_SETTINGS[arm])
    lr = chosen[lr_key(arm)]
    run_dir = os.path.join(out_dir, arm.replace("+", "_"), f"sft{sft_seed}_seed{seed}")
    summary, log = train(run_dir, sft_dir(sft_seed), {**settings, "learning_rate": lr}, seed, val_data, answers_budget)
    return run_record(arm, sft_seed, seed, lr, summary, log)


def write_results(config, trials, chosen, runs, t0):
    pairs = paired_differences(runs, list(arms))
    table = markdown_table(runs, chosen) + ("\n\nPaired differences of final validation accuracy (a - b):\n\n"
                                           + paired_table(pairs) if pairs else "")
    result = {"config": config, "lr_selection": trials, "learning_rates": chosen,
              "runs": runs, "paired_differences": pairs, "seconds": time.time() - t0}
    json.dump(result, open(os.path.join(out_dir, "results.json"), "w"), indent=2)
    open(os.path.join(out_dir, "results.md"), "w").write(table + "\n")
    png = plot(runs, os.path.join(out_dir, "ablation.png"))
    print(table)
    print(f"wrote {out_dir}/results.json, results.md" + (f", {png}" if png else "")
          + f" in {time.time() - t0:.0f}s", flush=True)


if __name__ == "__main__":
    main()
