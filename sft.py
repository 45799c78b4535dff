"""
Supervised warm start on the reasoning traces, so that RL starts from a policy that answers in the
`<think>...</think><answer>...</answer>` format. The tiny default starts from random weights and needs
it; a released Qwen2.5-VL checkpoint follows the format from its prompt (the paper's SFT baseline is
this step on SEED-Bench-R1's training traces). On the embedded default the demonstrations come from a
simulated teacher that guesses A on the clips it cannot read and sometimes slips its letter on those it
reads (`data/synthetic/sft.jsonl`); RL's rewards use the truth. A quarter of the demonstrations are
shown with a hint in the prompt (`hint_fraction`), so the policy can write the answer-conditioned traces
the paper's hints are made of.

    python sft.py                                    # tiny model from scratch -> out/tiny-sft
    python sft.py --init_from=Qwen/Qwen2.5-VL-3B-Instruct --device=cuda --dtype=bfloat16 ...
    torchrun --nproc_per_node=8 sft.py --init_from=... --device=cuda --dtype=bfloat16 --distributed=fsdp

Under torchrun every rank draws the same batch of `batch_size` and trains on its share of it; the loss
is divided by the whole batch's completion tokens, so the gradient is the single-process one. As in
train.py, `dtype` is the compute dtype (autocast) and `master_dtype` that of the trained weights and
AdamW states, float32 unless set; `--gradient_checkpointing=True` recomputes activations in backward.

The result is a save_pretrained folder (model + processor, weights in `dtype`) that
`train.py --init_from=...` loads.
"""
import json
import os
import random
import sys
import time
from types import SimpleNamespace

import torch

from machinery.checkpoint import (barrier, check_resume_settings, checkpoint_path, load_states, remove_checkpoint, rng_state,
                        safe_load, save_checkpoint, save_full_model, set_rng_state, unwrap)
from machinery.configurator import DTYPES, configure, inert_settings, video_problems, warmup_warning, writable_dir
from machinery.dataset import format_question, load_samples, read_records_or_exit
from difficulty import build_hint, hint_pieces
from machinery.distributed import all_reduce_sum, leave_process_group, setup_distributed, wrap_policy
from machinery.optim import adamw, lr_at
from machinery.logprobs import completion_logps
from model import enable_gradient_checkpointing, freeze_vision as freeze_vision_tower, load_policy, max_positions
from model import source_problem, tiny_qwen25vl
from rollout import (SYSTEM_PROMPT, drop_long_prompts, encode_prompts, join_prompt_completion, reference_completion,
                     to_device)
from machinery.distributed import autocast
from eval import eval_key, evaluate, format_table

# -----------------------------------------------------------------------------
out_dir = "out/tiny-sft"
resume = False                # continue the unfinished run whose checkpoint out_dir holds
resume_changes = ""           # settings a resume may change besides RESUME_MAY_CHANGE: "all", or keys "batch_size,seed"
checkpoint_interval = 200     # steps; a killed run loses at most this many (the checkpoint goes when the run ends)
init_from = "tiny"            # "tiny": random-init tiny Qwen2.5-VL, tokenizer trained on the data
train_data = "data/synthetic/sft.jsonl"   # the teacher's demonstrations (see data/synthetic/prepare.py)
val_data = "data/synthetic/val.jsonl"
max_steps = 800
batch_size = 16
hint_fraction = 0.25          # share of demonstrations shown with a hint in the prompt (demo_hint), so the policy
                              # learns to follow one: the paper's hints are the policy's own answer-conditioned traces
learning_rate = 1e-3
min_lr_ratio = 0.1
warmup_steps = 30
weight_decay = 0.01
grad_clip = 1.0
freeze_vision = False         # the tiny vision tower is random: it must learn too
eval_samples = 1000
max_new_tokens = 48           # the evaluation's answer budget (train.py's: its step 0 reuses this evaluation)
num_frames = 8
max_pixels = 112 * 112
fps: float | None = None      # frames sampled at this rate (at most num_frames); None: spread over the clip
device = "auto"               # auto: cuda when a GPU is visible (one per rank under torchrun), else cpu
dtype = "auto"                # compute dtype and the saved weights' dtype; auto: bfloat16 on cuda, float32 on cpu
master_dtype = "float32"      # trained weights, gradients, AdamW states; bfloat16 to save memory
distributed = "ddp"           # ddp | fsdp (torchrun only)
gradient_checkpointing = False
seed = 0
# -----------------------------------------------------------------------------
CHOICES = {"dtype": DTYPES, "master_dtype": DTYPES, "distributed": ("ddp", "fsdp")}
ACTS_ONLY_WITH = {"resume_changes": {"resume": (True,)}}
# what a resume may change: the evaluation at the end, intervals, how the same arithmetic is run; any other
# difference (data, model, schedule, batch, seed, dtypes) is refused unless resume_changes names it; max_steps
# too while the learning rate decays over it (min_lr_ratio < 1)
RESUME_MAY_CHANGE = ("resume", "resume_changes", "out_dir", "max_steps", "checkpoint_interval", "val_data",
                     "eval_samples", "max_new_tokens", "device", "distributed", "gradient_checkpointing")


def setting_problems(c):
    """Ranges, as (holds, message); out_dir and init_from checked before anything is loaded."""
    return video_problems(c) + [
        (c["max_steps"] >= 1, f"max_steps={c['max_steps']}: need >= 1"),
        (c["checkpoint_interval"] >= 1, f"checkpoint_interval={c['checkpoint_interval']}: need >= 1 step"),
        (c["batch_size"] >= 1, f"batch_size={c['batch_size']}: need >= 1"),
        (0 <= c["hint_fraction"] <= 1, f"hint_fraction={c['hint_fraction']}: need 0..1"),
        (c["learning_rate"] > 0, f"learning_rate={c['learning_rate']}: need > 0"),
        (0 <= c["min_lr_ratio"] <= 1, f"min_lr_ratio={c['min_lr_ratio']}: need 0..1"),
        (c["warmup_steps"] >= 0, f"warmup_steps={c['warmup_steps']}: need >= 0"),
        (c["weight_decay"] >= 0, f"weight_decay={c['weight_decay']}: need >= 0"),
        (c["grad_clip"] > 0, f"grad_clip={c['grad_clip']}: need > 0"),
        (c["eval_samples"] >= 1, f"eval_samples={c['eval_samples']}: need >= 1"),
        (c["max_new_tokens"] >= 1, f"max_new_tokens={c['max_new_tokens']}: need >= 1"),
        (c["master_dtype"] in ("float32", c["dtype"]),
         f"master_dtype={c['master_dtype']!r} with dtype={c['dtype']!r}: the trained weights cannot be coarser "
         "than the compute; master_dtype float32, or the same as dtype"),
        (writable_dir(c["out_dir"]), f"out_dir={c['out_dir']!r}: cannot create or write to this directory"),
        (c["init_from"] == "tiny" or not source_problem(c["init_from"]),
         f"init_from: {source_problem(c['init_from'])}"),
        (os.path.isfile(c["train_data"]), f"train_data: cannot read data: {c['train_data']}: no such file"),
        (os.path.isfile(c["val_data"]), f"val_data: cannot read data: {c['val_data']}: no such file"),
    ]


def setting_warnings(c, given):
    return inert_settings(c, given, ACTS_ONLY_WITH) + [warmup_warning(c)]


def require_batch(samples, what):
    """An SFT step samples batch_size records without replacement: fewer is an error up front."""
    if len(samples) < batch_size:
        raise SystemExit(f"{train_data}: {len(samples)} {what}, fewer than batch_size={batch_size}")


def corpus_texts(records):
    """Everything the tokenizer will see: instruction, questions with options, answers, hints."""
    texts = [SYSTEM_PROMPT, "Hint: The answer is A."]
    for r in records:
        texts += [format_question(r), reference_completion(r)]
    return texts


def demo_hint(record, rng):
    """The hint a demonstration is shown with: "" (no hint) with probability 1 - hint_fraction, else the
    first k of difficulty.hint_pieces of its own reasoning, k uniform over them (the answer is the last
    piece), the form train.py's augmentation gives. The completion stays the whole demonstration: a
    policy that saw these follows a hint, and shown "The answer is X." it reasons toward X, which is what
    the paper's answer-conditioned traces ask of it. No draw at all when hint_fraction is 0."""
    if hint_fraction <= 0 or rng.random() >= hint_fraction:
        return ""
    pieces = hint_pieces(record.get("reasoning") or "", record)
    return build_hint(rng.randint(1, len(pieces)), pieces)


def target_ids(tok, sample):
    """The tokens SFT teaches for a sample: its reference completion ending in <|im_end|>."""
    return tok(reference_completion(sample) + "<|im_end|>", add_special_tokens=False)["input_ids"]


def sft_batch(processor, samples, hints=None):
    """Prompts with their videos (and hints, when given), then the reference completion ending in <|im_end|>."""
    tok = processor.tokenizer
    prompt = encode_prompts(processor, samples, [s["frames"] for s in samples], hints)
    targets = [target_ids(tok, s) for s in samples]
    T = max(map(len, targets))
    completion = torch.full((len(samples), T), tok.pad_token_id, dtype=torch.long)
    mask = torch.zeros(len(samples), T, dtype=torch.long)
    for i, t in enumerate(targets):
        completion[i, :len(t)] = torch.tensor(t)
        mask[i, :len(t)] = 1
    return join_prompt_completion(prompt, completion, mask)


def saved_run(sharded):
    """The run state of the checkpoint to resume from (None for a fresh run); a fresh run refuses an
    out_dir whose unfinished run left a checkpoint."""
    path = checkpoint_path(out_dir, sharded)
    left = [p for p in (checkpoint_path(out_dir, False), os.path.join(out_dir, "ckpt")) if os.path.lexists(p)]
    if not resume:
        if left:
            raise SystemExit(f"{out_dir}: holds an unfinished SFT run ({left[0]}); continue it with --resume=True, "
                             "or remove it or choose another --out_dir")
        return None
    if not os.path.exists(path):
        kind = f" (it holds {left[0]}: resume with the --distributed setting that wrote it)" if left else ""
        raise SystemExit(f"{path}: no checkpoint to resume from{kind}")
    return safe_load(path)


def check_resume(saved, config):
    """The checkpoint's run and this one may differ only in what RESUME_MAY_CHANGE (and resume_changes) allow."""
    may_change = [k for k in RESUME_MAY_CHANGE if k != "max_steps" or min_lr_ratio == 1]
    check_resume_settings(out_dir, saved.get("config", {}), config, may_change, resume_changes)
    if saved["step"] >= max_steps:
        raise SystemExit(f"{out_dir}: its checkpoint is at step {saved['step']}: nothing left to run with "
                         f"max_steps={max_steps}")


def main():
    global device
    config = configure(globals(), sys.argv[1:], CHOICES, setting_problems, setting_warnings)
    rank, local_rank, world_size = setup_distributed(device)
    if device.startswith("cuda") and world_size > 1:
        device = f"cuda:{local_rank}"
        torch.cuda.set_device(device)
    master, sharded = rank == 0, distributed == "fsdp" and world_size > 1
    say = print if master else (lambda *a, **k: None)
    saved = saved_run(sharded)
    if saved:
        check_resume(saved, config)
    torch.manual_seed(seed)
    rng = random.Random(seed)                # the same on every rank: all ranks draw the same batches
    records = read_records_or_exit(train_data)
    require_batch(records, "records")
    init_dir = init_from
    if init_from == "tiny":
        init_dir = os.path.join(out_dir, "init")
        if master and not (saved and os.path.isfile(os.path.join(init_dir, "config.json"))):
            tiny_qwen25vl(init_dir, texts=corpus_texts(records), seed=seed)
        barrier()
    policy, processor = load_policy(init_dir, dtype=getattr(torch, master_dtype), device=device)
    if freeze_vision:
        freeze_vision_tower(policy)
    if gradient_checkpointing:
        enable_gradient_checkpointing(policy)
    compute = autocast(SimpleNamespace(dtype=dtype, master_dtype=master_dtype, distributed=distributed, device=device))
    samples = load_samples(records, num_frames=num_frames, max_pixels=max_pixels, fps=fps, log=say)
    positions = max_positions(policy)            # the length rule of every split (rollout.length_problem)
    samples = drop_long_prompts(processor, samples, positions, lambda s: len(target_ids(processor.tokenizer, s)),
                                log=say, answer="target")
    require_batch(samples, "records with a readable video and a prompt + target that fit the model")
    val = load_samples(read_records_or_exit(val_data)[:eval_samples], num_frames=num_frames, max_pixels=max_pixels,
                       fps=fps, log=say)
    val = drop_long_prompts(processor, val, positions, max_new_tokens, log=say)
    model = wrap_policy(policy, device, world_size, distributed, dtype)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = adamw(params, learning_rate, weight_decay, device)
    first = 0
    if saved:
        # the batches are drawn from rng alone (every rank the same), so its state is the run's position;
        # any number of ranks may resume: each takes its share of the same batch
        load_states(out_dir, model, optimizer, saved, sharded)
        set_rng_state(saved["rng"], rng, torch.Generator())
        first = saved["step"]
        say(f"resumed from {checkpoint_path(out_dir, sharded)} at step {first}")
    model.train()
    t0 = time.time()
    for step in range(first, max_steps):
        lr = lr_at(step, learning_rate, warmup_steps, max_steps, min_lr_ratio)
        for group in optimizer.param_groups:
            group["lr"] = lr
        picked = rng.sample(samples, batch_size)
        hints = [demo_hint(r, rng) for r in picked]                            # the same draws on every rank
        batch = to_device(sft_batch(processor, picked[rank::world_size], hints[rank::world_size]), device)
        with compute:
            logps = completion_logps(model, batch)                               # (B / ranks, T), float32
        mask = batch["completion_mask"].float()
        # DDP and FSDP2 average the ranks' gradients: times world_size over the batch's tokens is the sum
        tokens = all_reduce_sum(mask.sum())
        loss = -(logps * mask).sum() * world_size / tokens
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, grad_clip)
        optimizer.step()
        if step % 50 == 0 or step == max_steps - 1:
            say(f"sft step {step:4d}  loss {all_reduce_sum(loss).item() / world_size:.4f}  "
                f"lr {lr:.2e}  {time.time() - t0:.0f}s", flush=True)
        if (step + 1) % checkpoint_interval == 0 and step + 1 < max_steps:
            os.makedirs(out_dir, exist_ok=True)
            save_checkpoint(out_dir, model, optimizer, {"step": step + 1, "rng": rng_state(rng, torch.Generator()),
                                                        "world_size": world_size, "config": config}, sharded)
    save_full_model(out_dir, model, processor, getattr(torch, dtype), sharded)
    model.eval()
    with compute:
        results = evaluate(model if sharded else unwrap(model), processor, val, max_new_tokens=max_new_tokens,
                           rank=rank, world_size=world_size)
    if master:
        print(format_table(results))
        # train.py reuses this evaluation only where it would compute the same: no autocast
        key = eval_key(out_dir, val_data, len(val), max_new_tokens, num_frames, max_pixels, fps, "auto", dtype,
                       device, ranks=world_size) if dtype == master_dtype else None
        with open(os.path.join(out_dir, "sft_summary.json"), "w") as f:
            json.dump({"config": config, "val": results, "eval_key": key, "seconds": time.time() - t0}, f, indent=2)
        print(f"SFT done: val accuracy {results['all']['accuracy']:.3f} -> {out_dir}")
    remove_checkpoint(out_dir)                   # the run is complete: out_dir holds its result
    if world_size > 1:
        leave_process_group()


if __name__ == "__main__":
    main()
