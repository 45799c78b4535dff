"""
Reinforcement fine-tuning of a video model with Reg-GRPO (or GRPO) and difficulty-aware augmentation.

    python train.py                                    # embedded default: tiny Qwen2.5-VL, CPU
    python train.py --loss=grpo --augment=none         # the GRPO baseline
    torchrun --nproc_per_node=8 train.py config/qwen25vl_7b_seedbench.py

One step: draw prompts -> sample G answers each -> score -> difficulty-aware augmentation (regenerate
the groups of too-easy samples on a noisier video and of too-hard samples with a hint) -> group
advantages -> `num_iterations` optimisation passes -> push the step's rewards into the buffer.
On the embedded default a missing dataset or SFT warm start is made first (prepare.py, sft.py).
"""
import copy
import json
import os
import random
import subprocess
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

from machinery.checkpoint import (check_resume_settings, export_model, load_run_state, load_states, rng_state,
                                  save_checkpoint, set_rng_state, unwrap)
from machinery.configurator import DTYPES, configure, inert_settings, video_problems, warmup_warning, writable_dir
from machinery.dataset import draw_prompts, load_samples, prompts_of_step, read_records_or_exit
from machinery.distributed import (all_gather_objects_or_self, autocast, check_ranks_in_sync, leave_process_group,
                                   mean_over_ranks, setup_distributed, shard, wrap_policy)
from machinery.optim import adamw, lr_at
from machinery.runlog import open_log, refuse_previous_run, start_wandb, step_row, write_summary
from machinery.speedups import compile_decoder_layers
from difficulty import HintTraces, RewardBuffer
from eval import eval_key, evaluate, saved_eval
from model import enable_gradient_checkpointing, freeze_vision as freeze_vision_tower, load_policy, load_reference
from model import max_positions, source_problem
from rollout import drop_long_prompts, length_problem
from step import new_run, rl_step, step_settings

# ----------------------------------------------------------------------------- config
# I/O
out_dir = "out/tiny-rl"
init_from = "out/tiny-sft"    # policy to start from: save_pretrained folder or hub id
train_data = "data/synthetic/train.jsonl"
val_data = "data/synthetic/val.jsonl"
resume = False                # continue from out_dir's checkpoint (a fresh run refuses an out_dir holding one)
resume_changes = ""           # settings a resume may change besides RESUME_MAY_CHANGE: "all", or keys "loss,beta"
checkpoint_interval = 25      # steps; a killed run loses at most this many
export_every_checkpoint = False  # out_dir/model (save_pretrained folder) at each checkpoint; always at the end
wandb_log = False             # also log the rows to Weights & Biases (needs wandb installed)
wandb_project = "deepvideo-r1"
wandb_run_name = "rl"
eval_interval = 50            # steps; 0: only before and after
eval_samples = 1000
seed = 1337
# method
loss = "reg_grpo"             # reg_grpo | grpo | rebel
reg_form = "scaled"           # reg_grpo: scaled (each group's error times its detached max(std rho, floor) / 2,
                              # flat groups out: rho = 0 gives GRPO-scale REINFORCE) | paper (as printed)
rebel_eta = 1.0               # rebel: ((rho_i - rho_j) / eta - (r_i - r_j))^2 over pairs of a group
group_size = 8                # G answers per prompt
prompts_per_step = 8          # per rank
num_iterations = 2            # optimisation passes over each rollout batch
beta = 0.04                   # KL to the reference policy (0: no reference model is loaded)
clip_eps = 0.2                # grpo only
adv_eps = 1e-4
std_floor = 1e-4              # reg_grpo: Ahat = (rho - mean) / max(std, std_floor)
rho_token_mean = True         # reg_grpo: rho = token mean of the log-ratios (False: their sum, the paper read
                              # literally). With the scaled form the mean makes the rho = 0 gradient GRPO's own,
                              # so beta weighs the KL as in GRPO (scripts/loss_scale.py)
augment = "both"              # none | harder | easier | both
harder_mode = "noise"         # noise | mask
noise_sigma0 = 0.1            # noise std in [0, 1] pixel units per unit of l_perturb
buffer_window = 12            # steps in the reward buffer (the paper: 100 samples)
difficulty_margin = 0.25     # (difficulty.DEFAULT_MARGIN) the paper augments on any nonzero delta (margin 0); with G = 8 a group
                              # mean moves about 0.2 by sampling noise alone, so a margin leaves those alone
augment_flat_only = True      # our variant: augment only groups whose rewards are all equal; False: the paper's rule
                              # (every sample whose r_cur is off r_ref by more than the margin; difficulty.plan_groups)
hint_trace_samples = 8        # traces the policy writes, shown the answer, per sample that needs a hint
vanishing_fix = "none"        # other remedies, for the ablation: none | dynamic_sampling | group_replay
resample_rounds = 3           # dynamic_sampling: at most this many extra draws per step
replay_capacity = 32          # group_replay: informative groups kept for reuse
# sampling
max_new_tokens = 48
temperature = 1.0
top_p = 1.0
sampler = "auto"              # fast (machinery/sampler.py) | hf (transformers' generate) | auto: fast
decode_compile: bool | None = None  # fast sampler on CUDA: torch.compile its decode step (None: for language models of
                              # >= 100M parameters, where it pays for its compile; False: eager, to bisect)
decode_graph = True           # fast sampler on CUDA: capture its decode step in CUDA graphs (off: to bisect)
num_frames = 8
max_pixels = 112 * 112
fps: float | None = None      # frames sampled at this rate (at most num_frames); None: spread over the clip
# optimisation
max_steps = 100
max_answers = 0               # stop once this many answers were generated (0: off); equal budgets
learning_rate = 3e-5                 # the ablation's lr rule picked 3e-5 for Reg-GRPO on the tiny default
min_lr_ratio = 1.0            # 1.0: constant after warmup
warmup_steps = 5
weight_decay = 0.0
grad_clip = 1.0
micro_batch_groups = 4        # groups per forward/backward (gradient accumulation inside a pass)
# system
device = "auto"               # auto: cuda when a GPU is visible (one per rank under torchrun), else cpu
dtype = "auto"                # compute dtype; auto: bfloat16 on cuda, float32 on cpu (the loss stays float32)
master_dtype = "float32"      # trained weights, gradients, AdamW states; bfloat16 to save memory
attn_implementation = "sdpa"  # sdpa | flash_attention_2 (when installed) | eager
distributed = "ddp"           # ddp | fsdp (torchrun only)
freeze_vision = True          # the paper trains only the language model
gradient_checkpointing = False
compile = False               # torch.compile the decoder layers (policy, reference) for the log-prob passes
pack_groups = True            # each group's prompt (video included) runs once per forward, its G answers after it,
                              # each seeing the prompt and itself (logprobs.group_packed_logps); False: G copies.
                              # Off with rows_per_forward > 0 or flash_attention_2 (no 4D mask there)
rows_per_forward = 0          # answers per forward, sorted by length, each forward trimmed to its longest
                              # (0: a micro-batch is one forward, trimmed to its longest answer)
check_only = False            # check the settings and paths, then exit (before a long job; ablate.py's arms)
# -----------------------------------------------------------------------------
EMBEDDED_DATA, EMBEDDED_SFT = "data/synthetic/train.jsonl", "out/tiny-sft"
EMBEDDED_SFT_DATA = "data/synthetic/sft.jsonl"   # the warm start's demonstrations, written beside train.jsonl
CHOICES = {"loss": ("reg_grpo", "grpo", "rebel"), "reg_form": ("scaled", "paper"), "augment": ("none", "harder", "easier", "both"),
           "harder_mode": ("noise", "mask"), "vanishing_fix": ("none", "dynamic_sampling", "group_replay"),
           "dtype": DTYPES, "master_dtype": DTYPES, "distributed": ("ddp", "fsdp"),
           "attn_implementation": ("sdpa", "flash_attention_2", "eager"), "sampler": ("auto", "fast", "hf")}
# settings that act only under certain values of others: given with other values they do nothing (a warning)
ACTS_ONLY_WITH = {
    "reg_form": {"loss": ("reg_grpo",)}, "std_floor": {"loss": ("reg_grpo",)},
    "rho_token_mean": {"loss": ("reg_grpo",)}, "clip_eps": {"loss": ("grpo",)}, "rebel_eta": {"loss": ("rebel",)},
    "adv_eps": {"loss": ("reg_grpo", "grpo")},
    "harder_mode": {"augment": ("harder", "both")}, "hint_trace_samples": {"augment": ("easier", "both")},
    "noise_sigma0": {"augment": ("harder", "both"), "harder_mode": ("noise",)},
    "difficulty_margin": {"augment": ("harder", "easier", "both")},
    "augment_flat_only": {"augment": ("harder", "easier", "both")},
    "resample_rounds": {"vanishing_fix": ("dynamic_sampling",)},
    "replay_capacity": {"vanishing_fix": ("group_replay",)},
    "wandb_project": {"wandb_log": (True,)}, "wandb_run_name": {"wandb_log": (True,)},
    "resume_changes": {"resume": (True,)},
}
# what a resume may change: run length, intervals, logging, and how the same arithmetic is run. Any other
# difference from the checkpoint's settings (method, model, data, schedule, dtypes, seed) is refused unless
# resume_changes names it; max_steps too while the learning rate decays over it (min_lr_ratio < 1)
RESUME_MAY_CHANGE = ("resume", "resume_changes", "check_only", "out_dir", "max_steps", "max_answers", "checkpoint_interval",
                     "export_every_checkpoint", "eval_interval", "eval_samples", "wandb_log", "wandb_project",
                     "wandb_run_name", "device", "distributed", "attn_implementation", "sampler", "decode_compile",
                     "decode_graph", "compile", "gradient_checkpointing", "micro_batch_groups", "rows_per_forward",
                     "pack_groups")


def setting_problems(c):
    """The ranges and relations the loop relies on, as (holds, message). No divisibility is needed:
    micro-batches take whole groups and the last one may be smaller."""
    return video_problems(c) + [
        (c["group_size"] >= 2, f"group_size={c['group_size']}: need >= 2 answers per prompt to compare"),
        (c["prompts_per_step"] >= 1, f"prompts_per_step={c['prompts_per_step']}: need >= 1"),
        (c["micro_batch_groups"] >= 1, f"micro_batch_groups={c['micro_batch_groups']}: need >= 1"),
        (c["rows_per_forward"] >= 0, f"rows_per_forward={c['rows_per_forward']}: need >= 0 (0: one forward "
                                     "per micro-batch)"),
        (c["num_iterations"] >= 1, f"num_iterations={c['num_iterations']}: need >= 1"),
        (c["max_steps"] >= 1, f"max_steps={c['max_steps']}: need >= 1"),
        (c["max_answers"] >= 0, f"max_answers={c['max_answers']}: need >= 0 (0: off)"),
        (c["checkpoint_interval"] >= 1, f"checkpoint_interval={c['checkpoint_interval']}: need >= 1 step"),
        (c["eval_interval"] >= 0, f"eval_interval={c['eval_interval']}: need >= 0 (0: only before and after)"),
        (c["eval_samples"] >= 1, f"eval_samples={c['eval_samples']}: need >= 1"),
        (c["beta"] >= 0, f"beta={c['beta']}: the KL weight must be >= 0"),
        (c["clip_eps"] > 0, f"clip_eps={c['clip_eps']}: need > 0"),
        (c["rebel_eta"] > 0, f"rebel_eta={c['rebel_eta']}: need > 0"),
        (c["adv_eps"] >= 0 and c["std_floor"] > 0, f"adv_eps={c['adv_eps']} must be >= 0 and "
                                                   f"std_floor={c['std_floor']} > 0"),
        (c["noise_sigma0"] >= 0, f"noise_sigma0={c['noise_sigma0']}: need >= 0"),
        (c["buffer_window"] >= 1, f"buffer_window={c['buffer_window']}: need >= 1 step"),
        (c["difficulty_margin"] >= 0, f"difficulty_margin={c['difficulty_margin']}: need >= 0"),
        (c["resample_rounds"] >= 0, f"resample_rounds={c['resample_rounds']}: need >= 0"),
        (c["replay_capacity"] >= 1, f"replay_capacity={c['replay_capacity']}: need >= 1"),
        (c["max_new_tokens"] >= 1, f"max_new_tokens={c['max_new_tokens']}: need >= 1"),
        (c["temperature"] > 0, f"temperature={c['temperature']}: need > 0"),
        (0 < c["top_p"] <= 1, f"top_p={c['top_p']}: need 0 < top_p <= 1"),
        (c["learning_rate"] > 0, f"learning_rate={c['learning_rate']}: need > 0"),
        (0 <= c["min_lr_ratio"] <= 1, f"min_lr_ratio={c['min_lr_ratio']}: need 0..1"),
        (c["warmup_steps"] >= 0, f"warmup_steps={c['warmup_steps']}: need >= 0"),
        (c["weight_decay"] >= 0, f"weight_decay={c['weight_decay']}: need >= 0"),
        (c["grad_clip"] > 0, f"grad_clip={c['grad_clip']}: need > 0"),
        (c["hint_trace_samples"] >= 1, f"hint_trace_samples={c['hint_trace_samples']}: need >= 1"),
        (c["master_dtype"] in ("float32", c["dtype"]),
         f"master_dtype={c['master_dtype']!r} with dtype={c['dtype']!r}: the trained weights cannot be coarser "
         "than the compute; master_dtype float32, or the same as dtype"),
        (c["attn_implementation"] != "flash_attention_2" or c["device"].startswith("cuda") and flash_attn_installed(),
         f"attn_implementation='flash_attention_2' needs a CUDA device and the flash_attn package "
         f"(device={c['device']!r}, flash_attn {'installed' if flash_attn_installed() else 'not installed'})"),
        resume_keys_problem(c),
    ]


def setting_warnings(c, given):
    """Allowed but inert: settings the chosen method never reads, a warmup longer than the run."""
    return inert_settings(c, given, ACTS_ONLY_WITH) + [warmup_warning(c)]


def flash_attn_installed():
    import importlib.util
    return importlib.util.find_spec("flash_attn") is not None


def resume_keys_problem(c):
    """resume_changes: "all", or setting names."""
    unknown = [k for k in c["resume_changes"].split(",") if k.strip() and k.strip() not in c and k.strip() != "all"]
    return (not unknown, f"resume_changes={c['resume_changes']!r}: {', '.join(map(repr, unknown))} "
                         "not a setting (expected \"all\" or setting names separated by commas)")


def path_problems(c):
    """Paths checked at start: a mistyped model or data path, an out_dir we cannot write (every one listed).
    The embedded default's data and model are made when missing."""
    out_ok = writable_dir(c["out_dir"])        # first: then out/ exists, and out/nope reads as a path
    made = c["train_data"] == EMBEDDED_DATA    # prepare.py writes train, val and sft splits side by side
    return [
        (out_ok, f"out_dir={c['out_dir']!r}: cannot create or write to this directory"),
        (c["init_from"] == EMBEDDED_SFT or not source_problem(c["init_from"]),
         f"init_from: {source_problem(c['init_from'])}"),
        (made or os.path.isfile(c["train_data"]),
         f"train_data: cannot read data: {c['train_data']}: no such file"),
        (os.path.isfile(c["val_data"]) or made and os.path.dirname(c["val_data"]) == os.path.dirname(EMBEDDED_DATA),
         f"val_data: cannot read data: {c['val_data']}: no such file"),
    ]


# ----------------------------------------------------------------------------- data

def ensure_embedded_default(rank):
    """Make the synthetic data and the SFT warm start when the embedded default asks for them."""
    missing = [p for p in (train_data, EMBEDDED_SFT_DATA) if not os.path.exists(p)]
    if rank == 0 and train_data == EMBEDDED_DATA and missing:
        print(f"{missing[0]} not found: generating the synthetic benchmark (data/synthetic/prepare.py)")
        run_or_exit(["data/synthetic/prepare.py"])
    if rank == 0 and init_from == EMBEDDED_SFT and not os.path.exists(os.path.join(init_from, "config.json")):
        resume_sft = ["--resume=True"] if os.path.exists(os.path.join(init_from, "ckpt.pt")) else []  # killed
        print(f"{init_from} not found: running the SFT warm start first (python {' '.join(['sft.py', *resume_sft])})")
        run_or_exit(["sft.py", f"--device={device}", *resume_sft])
    if dist.is_initialized():
        dist.barrier()


def run_or_exit(args):
    """Run one of the project's scripts; when it fails, stop with its name (it printed its own reason)."""
    code = subprocess.run([sys.executable, *args]).returncode
    if code != 0:
        raise SystemExit(f"python {' '.join(args)} failed ({f'signal {-code}' if code < 0 else f'exit code {code}'}); "
                         "python train.py again continues a killed SFT run from its last checkpoint")


def sft_eval_of_start(n_questions):
    """sft.py's evaluation of init_from when it ran exactly as step 0's would (eval.saved_eval), else None.
    One process only, and no autocast or compile: those change the arithmetic."""
    if not os.path.isdir(init_from) or dist.is_initialized() or compile or dtype != master_dtype:
        return None
    key = eval_key(init_from, val_data, n_questions, max_new_tokens, num_frames, max_pixels, fps, sampler,
                   master_dtype, device)
    results = saved_eval(init_from, key)
    if results is not None:
        print(f"step 0: {init_from} holds these weights as sft.py evaluated them, same settings: its result is reused")
    return results


# ----------------------------------------------------------------------------- main

def main():
    global device, pack_groups
    config = configure(globals(), sys.argv[1:], CHOICES, lambda c: setting_problems(c) + path_problems(c),
                       setting_warnings)
    if check_only:
        print("settings and paths: ok")
        return
    rank, local_rank, world_size = setup_distributed(device)
    if device.startswith("cuda") and world_size > 1:
        device = f"cuda:{local_rank}"
        torch.cuda.set_device(device)
    master = rank == 0
    sharded = distributed == "fsdp" and world_size > 1
    saved = load_run_state(out_dir, sharded, world_size, prompts_per_step) if resume else None
    if resume:
        may_change = [k for k in RESUME_MAY_CHANGE if k != "max_steps" or min_lr_ratio == 1]
        check_resume_settings(out_dir, saved.get("config", {}), config, may_change, resume_changes)
        if saved["step"] >= max_steps or (max_answers and saved["answers_generated"] >= max_answers):
            raise SystemExit(f"{out_dir}: its checkpoint is at step {saved['step']} ({saved['answers_generated']} "
                             f"answers): nothing left to run with max_steps={max_steps}, max_answers={max_answers}")
    if not resume:
        refuse_previous_run(out_dir)
    wandb = start_wandb(wandb_project, wandb_run_name, config) if wandb_log and master else None
    ensure_embedded_default(rank)
    os.makedirs(out_dir, exist_ok=True)
    torch.manual_seed(seed + rank)
    np.random.seed(seed + rank)
    rng = random.Random(seed + rank)
    gen = torch.Generator().manual_seed(seed + rank)

    records, val_records = read_records_or_exit(train_data), read_records_or_exit(val_data)
    val_skips = {}                                              # reason -> count, into summary.json
    val = load_samples(val_records[:eval_samples], num_frames=num_frames, max_pixels=max_pixels, fps=fps,
                       log=print if master else (lambda *a, **k: None), skipped=val_skips)
    policy, processor = load_policy(init_from, dtype=getattr(torch, master_dtype), device=device,
                                    attn_implementation=attn_implementation)
    positions = max_positions(policy)
    val = drop_long_prompts(processor, val, positions, max_new_tokens,
                            log=print if master else (lambda *a, **k: None), skipped=val_skips)

    drawing_processor = copy.deepcopy(processor)  # the drawing thread's own: a fast tokenizer is not thread-safe

    def too_long(sample):                    # the same length rule for the training prompts, as they are drawn
        return length_problem(drawing_processor, sample, positions, max_new_tokens)
    if freeze_vision:
        freeze_vision_tower(policy)
    if gradient_checkpointing:
        enable_gradient_checkpointing(policy)
    if pack_groups and (rows_per_forward or attn_implementation == "flash_attention_2"):
        pack_groups = False
        if master:
            why = "rows_per_forward > 0 sorts a group's answers apart" if rows_per_forward else "flash_attention_2 takes no 4D mask"
            print(f"pack_groups off: {why}")
    s = step_settings(config, device=device, pack_groups=pack_groups)    # what one step reads
    if rows_per_forward and distributed == "ddp" and world_size > 1:
        raise SystemExit("rows_per_forward > 0 runs several forwards before one backward, which DDP does not "
                         "allow: use --distributed=fsdp or --rows_per_forward=0")
    if compile:                              # before fully_shard: dynamo skips FSDP2's hooks
        compile_decoder_layers(policy)
    reference = None                         # beta = 0: no reference model in memory at all
    if beta > 0:
        # the policy's dtype, run under the same autocast: identical log-probs at step 0 (KL exactly 0);
        # in bf16 the reference would see other rounding than the float32-master policy under autocast
        reference = load_reference(init_from, dtype=getattr(torch, master_dtype), device=device,
                                   attn_implementation=attn_implementation)
        if compile:
            compile_decoder_layers(reference)
        if distributed == "fsdp" and world_size > 1:
            reference = shard(reference, dtype)
    model = wrap_policy(policy, device, world_size, distributed, dtype)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = adamw(params, learning_rate, weight_decay, device)
    buffer = RewardBuffer(buffer_window)
    traces = HintTraces()                    # the hints' answer-conditioned traces, made once per sample

    step, answers_generated, history, skipped = 0, 0, [], {}
    if resume:
        load_states(out_dir, model, optimizer, saved, sharded)
        buffer.load_state_dict(saved["buffer"])
        traces.load_state_dict(saved["hint_traces"][rank])
        set_rng_state(saved["rng"][rank], rng, gen)
        step, answers_generated, history = saved["step"], saved["answers_generated"], saved["history"]
        if master:
            print(f"resumed from {out_dir} at step {step}")
        del saved
    video = {"num_frames": num_frames, "max_pixels": max_pixels, "fps": fps}
    run = new_run(model=model, generator=model if distributed == "fsdp" else unwrap(model), reference=reference,
                  processor=processor, optimizer=optimizer, params=params, buffer=buffer, traces=traces, noise=gen,
                  world_size=world_size, synced=world_size > 1 and distributed == "fsdp", rng=rng, replay_store=[],
                  fresh_prompts=lambda: draw_prompts(records, rng, prompts_per_step, skipped, video, too_long, train_data))

    def run_eval(results=None):
        if results is None:
            with autocast(s):
                results = evaluate(run.generator, processor, val, max_new_tokens=max_new_tokens, rank=rank,
                                   world_size=world_size, sampler=sampler, decode_compile=decode_compile,
                                   decode_graph=decode_graph)
        history.append({"step": step, "answers_generated": answers_generated,
                        "val_accuracy": results["all"]["accuracy"], "val_format": results["all"]["format"],
                        "val_by_subset": {k: v["accuracy"] for k, v in results.items() if k != "all"}})
        if master:
            print(f"step {step}: val accuracy {results['all']['accuracy']:.3f} "
                  f"format {results['all']['format']:.3f}")
        return results

    def checkpoint():
        state = {"step": step, "buffer": buffer.state_dict(), "rng": all_gather_objects_or_self(rng_state(rng, gen)),
                 "hint_traces": all_gather_objects_or_self(traces.state_dict()),
                 "answers_generated": answers_generated, "history": history, "config": config,
                 "world_size": world_size}
        save_checkpoint(out_dir, model, optimizer, state, sharded)
        if finished() or export_every_checkpoint:
            export_model(out_dir, model, processor, getattr(torch, dtype), step, sharded)

    def finished():
        return step >= max_steps or bool(max_answers and answers_generated >= max_answers)

    if step == 0 and not history:
        run_eval(sft_eval_of_start(len(val)))
    log_file = open_log(out_dir, step) if master else None
    bar = tqdm(total=max_steps, initial=step, disable=not master, desc="rl", dynamic_ncols=True)
    drawing = ThreadPoolExecutor(max_workers=1)  # decodes the next step's videos while this one runs
    upcoming = drawing.submit(prompts_of_step, records, seed, step, rank, prompts_per_step, skipped, video, too_long,
                              train_data)
    while not finished():
        t0 = time.time()
        lr = lr_at(step, learning_rate, warmup_steps, max_steps, min_lr_ratio)
        for group in optimizer.param_groups:
            group["lr"] = lr
        try:
            prompts = upcoming.result()
        except SystemExit:                   # no usable training record: the message on a line of its own
            bar.close()
            raise
        video_wait = time.time() - t0
        if step + 1 < max_steps:
            upcoming = drawing.submit(prompts_of_step, records, seed, step + 1, rank, prompts_per_step, skipped,
                                      video, too_long, train_data)
        rollout, info = rl_step(s, run, prompts)
        step += 1
        answers_generated += int(mean_over_ranks(info["answers"]) * world_size)
        row = step_row(step, lr, answers_generated, rollout, info, device, step_time=time.time() - t0,
                       video_wait=video_wait)
        changes, compile_s = info["changes"], info["compile_time"]
        if master:
            if compile and step == 1:
                print(f"step 1: {compile_s:.1f} s of its {row['step_time']:.1f} s compiling the decoder layers")
            if changes["hints"]:
                row["example_hint"] = changes["hints"][0]
            log_file.write(json.dumps(row) + "\n")
            log_file.flush()
            if wandb:
                wandb.log(row, step=step)
            bar.update(1)
            bar.set_postfix(reward=f"{row['reward']:.2f}", acc=f"{row['accuracy']:.2f}",
                            za=f"{row['zero_adv_before']:.2f}->{row['zero_adv_after']:.2f}")
        if finished() or (eval_interval and step % eval_interval == 0):
            run_eval()
        if finished() or step % checkpoint_interval == 0:
            checkpoint()
    bar.close()
    drawing.shutdown(cancel_futures=True)
    train_skips = {}                                            # reason -> count, over all ranks
    for part in all_gather_objects_or_self(dict(Counter(skipped.values()))):
        for k, v in part.items():
            train_skips[k] = train_skips.get(k, 0) + v
    if master:
        log_file.close()
        summary = write_summary(out_dir, history, step, answers_generated,
                                skipped_records={"train": train_skips, "val": val_skips})
        first, final, za = summary["val_accuracy_start"], summary["val_accuracy_end"], summary
        print(f"val accuracy: {first:.3f} (start of RL) -> {final:.3f} (after {step} steps); zero-advantage ratio "
              f"sampled -> trained on: {za['zero_adv_sampled']:.2f} -> {za['zero_adv_trained']:.2f} (all steps), "
              f"{za['zero_adv_sampled_last']:.2f} -> {za['zero_adv_trained_last']:.2f} (last 20%); first 20 steps "
              f"sampled {za['zero_adv_sampled_first_20']:.2f} (flat easy {za['flat_easy_first_20']:.2f}, "
              f"flat hard {za['flat_hard_first_20']:.2f})")
    if wandb:
        wandb.finish()
    if dist.is_initialized():
        check_ranks_in_sync(model, sharded)
        leave_process_group()


if __name__ == "__main__":
    main()
