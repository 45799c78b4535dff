"""
Where RL starts on a benchmark: G answers per training question from a policy, sampled as train.py
samples them, and how the groups fall (flat easy: every answer right; flat hard: every answer wrong;
informative: rewards differ), overall, per family and per difficulty bucket. Then the hint source
the paper prescribes: for the flat-hard questions, the policy is shown the question and its answer
(difficulty.answer_piece) and writes `trace_samples` traces; the share of those questions for which
one qualifies (difficulty.HintTraces: right, and reasoning that agrees with the answer) is the share
whose hints can come from the policy's own answer-conditioned traces instead of the dataset.

    python scripts/regime.py --model=out/tiny-sft --data=data/synthetic/train.jsonl --questions=256
"""
import json
import os
import sys
from collections import defaultdict

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import torch  # noqa: E402

from machinery.configurator import configure  # noqa: E402

model = "out/tiny-sft"
data = "data/synthetic/train.jsonl"
questions = 256               # the first this many records
group_size = 8
trace_samples = 8             # train.py's hint_trace_samples
temperature = 1.0
max_new_tokens = 48
batch = 16                    # questions per sampling call
seed = 0
out_file = ""                 # JSON of the result (default: print only)


def bucket(record):
    d = record["meta"].get("difficulty")
    return None if d is None else "easy" if d < 1 / 3 else "medium" if d < 2 / 3 else "hard"


def main():
    configure(globals(), sys.argv[1:], {}, lambda c: [(c["questions"] >= 1, "questions: need >= 1")])
    from machinery.dataset import load_samples, read_records_or_exit
    from difficulty import HintTraces, answer_piece
    from model import load_policy
    from rollout import generate_rollout
    torch.manual_seed(seed)
    policy, processor = load_policy(model, dtype=torch.float32, device="cpu")
    samples = load_samples(read_records_or_exit(data)[:questions], log=lambda *a, **k: None)
    G = group_size
    kinds, hard, n_right = {}, [], {}
    for b in range(0, len(samples), batch):
        part = samples[b:b + batch]
        r = generate_rollout(policy, processor, part, [s["frames"] for s in part], G,
                             max_new_tokens=max_new_tokens, temperature=temperature)
        acc, rew = r.accuracy.view(-1, G), r.rewards.view(-1, G)
        for i, s in enumerate(part):
            n_right[s["id"]] = int(acc[i].sum())
            flat = bool((rew[i] == rew[i, 0]).all())
            kinds[s["id"]] = ("flat_easy" if acc[i].mean() >= 0.5 else "flat_hard") if flat else "informative"
            if kinds[s["id"]] == "flat_hard":
                hard.append(s)
    traces = HintTraces()
    for b in range(0, len(hard), batch):
        part = hard[b:b + batch]
        r = generate_rollout(policy, processor, part, [s["frames"] for s in part], trace_samples,
                             hints=[answer_piece(s) for s in part], max_new_tokens=max_new_tokens,
                             temperature=temperature)
        for i, s in enumerate(part):
            rows = slice(i * trace_samples, (i + 1) * trace_samples)
            traces.add(s["id"], r.texts[rows], r.accuracy[rows], r.rewards[rows], record=s)
    table = defaultdict(lambda: defaultdict(int))
    for s in samples:
        for key in ("all", f"family:{s['meta'].get('family')}", f"difficulty:{bucket(s)}",
                    f"{s['meta'].get('family')}:{bucket(s)}"):
            table[key][kinds[s["id"]]] += 1
            table[key]["n"] += 1
    rows = {k: {kind: v[kind] / v["n"] for kind in ("flat_easy", "flat_hard", "informative")} | {"n": v["n"]}
            for k, v in sorted(table.items())}
    own = sum(bool(traces.get(s["id"])) for s in hard)
    histogram = [sum(v == k for v in n_right.values()) for k in range(G + 1)]
    print(f"questions by answers right out of {G}: {histogram}")
    result = {"model": model, "data": data, "group_size": G, "groups": rows, "right_of_G": histogram,
              "flat_hard_with_policy_trace": own / len(hard) if hard else None, "flat_hard": len(hard),
              "example_traces": [traces.get(s["id"]) for s in hard if traces.get(s["id"])][:5]}
    print(f"{'':22s} {'flat easy':>9s} {'flat hard':>9s} {'informative':>11s} {'n':>5s}")
    for k, v in rows.items():
        print(f"{k:22s} {v['flat_easy']:9.2f} {v['flat_hard']:9.2f} {v['informative']:11.2f} {v['n']:5d}")
    if hard:
        print(f"flat-hard questions with a qualifying answer-conditioned trace of the policy's own: "
              f"{own} of {len(hard)} ({own / len(hard):.2f})")
    for t in result["example_traces"]:
        print(f"  trace: {t}")
    if out_file:
        json.dump(result, open(out_file, "w"), indent=2)


if __name__ == "__main__":
    main()
