"""
The update and the reference pass with each group's prompt packed once against G copies, side by side.

    python scripts/pack_speed.py                          # embedded default: out/tiny-sft, 8 prompts x G = 8
    python scripts/pack_speed.py --init_from=... --device=cuda --dtype=bfloat16

One rollout of `prompts` prompts x G answers is sampled from the policy; then, alternately `repeats`
times, step.policy_update (num_iterations passes, micro-batches of micro_batch_groups groups) and
rollout.reference_logps run on it with pack_groups True and False, each from the same saved weights and
optimizer state. Prints the median seconds of each and their ratio, the largest difference between the
two reference log-probs, and the tokens each forward computes.
"""
import os
import random
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import torch  # noqa: E402

from scripts.bench import clock  # noqa: E402
from scripts.bench_step import train_settings  # noqa: E402
from machinery.configurator import configure  # noqa: E402
from machinery.dataset import load_samples, read_records_or_exit  # noqa: E402
from model import freeze_vision, load_policy  # noqa: E402
from reg_grpo import group_advantages  # noqa: E402
from rollout import generate_rollout, reference_logps  # noqa: E402
from step import new_run, policy_update  # noqa: E402

init_from = "out/tiny-sft"
data = "data/synthetic/train.jsonl"
prompts = 8
group_size = 8
max_new_tokens = 48
micro_batch_groups = 4
num_iterations = 2
repeats = 5
device = "cpu"
dtype = "float32"
seed = 0


def main():
    configure(globals(), sys.argv[1:])
    torch.manual_seed(seed)
    policy, processor = load_policy(init_from, dtype=getattr(torch, dtype), device=device)
    freeze_vision(policy)
    records = random.Random(seed).sample(read_records_or_exit(data), prompts)
    samples = load_samples(records)
    with torch.autocast(device_type=torch.device(device).type, dtype=getattr(torch, dtype),
                        enabled=dtype != "float32"):
        rollout = generate_rollout(policy, processor, samples, [s["frames"] for s in samples], group_size,
                                   max_new_tokens=max_new_tokens)
    settings = {pack: train_settings({"group_size": group_size, "num_iterations": num_iterations,
                                      "micro_batch_groups": micro_batch_groups, "rows_per_forward": 0,
                                      "pack_groups": pack, "device": device, "dtype": dtype, "master_dtype": dtype,
                                      "beta": 0.0, "grad_clip": 1.0, "compile": False}) for pack in (True, False)}
    params = [p for p in policy.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-5)
    start = {k: v.clone() for k, v in policy.state_dict().items()}
    advantages = group_advantages(rollout.rewards, group_size)
    times = {(part, pack): [] for part in ("update", "reference") for pack in (True, False)}
    refs = {}
    for _ in range(repeats):
        for pack in (True, False):
            policy.load_state_dict(start)
            optimizer.state.clear()
            t, refs[pack] = clock(lambda: reference_logps(rollout, policy, device=device,
                                                          group_size=group_size if pack else 0), device)
            times["reference", pack].append(t)
            t, _ = clock(lambda: policy_update(settings[pack], new_run(model=policy, optimizer=optimizer, params=params), rollout, advantages), device)
            times["update", pack].append(t)
    P = rollout.input_ids.shape[1] - rollout.completion_mask.shape[1]
    prompt_tokens = rollout.attention_mask[:, :P].sum().item()
    answer_tokens = rollout.completion_mask.sum().item()
    print(f"{prompts} prompts x G = {group_size}: prompt tokens {prompt_tokens / len(rollout.texts):.0f} per answer, "
          f"answers {answer_tokens / len(rollout.texts):.1f} tokens on average")
    print(f"real tokens per pass: G copies {prompt_tokens + answer_tokens}, packed "
          f"{prompt_tokens // group_size + answer_tokens}")
    for part in ("update", "reference"):
        packed, copies = statistics.median(times[part, True]), statistics.median(times[part, False])
        print(f"{part:9s}: packed {packed:.3f} s, G copies {copies:.3f} s, ratio {copies / packed:.2f}x "
              f"(median of {repeats})")
    print(f"largest |difference| of the reference log-probs: {(refs[True] - refs[False]).abs().max().item():.2e}")


if __name__ == "__main__":
    main()
