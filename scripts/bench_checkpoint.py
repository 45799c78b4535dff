"""
Time and host memory of one checkpoint save under torchrun, sharded (torch.distributed.checkpoint, each
rank writes its shards) against the full-state save (everything gathered to rank 0, one torch.save):

    torchrun --nproc_per_node=2 scripts/bench_checkpoint.py --init_from=out/tiny-sft --how=sharded
    torchrun --nproc_per_node=2 scripts/bench_checkpoint.py --init_from=out/tiny-sft --how=full

Run each `how` in its own launch: the peak resident memory of a process only grows, so the figure
printed is this save's addition over the process's peak before it (per rank).
"""
import os
import resource
import shutil
import sys
import time

import torch
import torch.distributed as dist

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the project's modules
from machinery.checkpoint import save_checkpoint
from machinery.configurator import configure
from model import load_policy

# -----------------------------------------------------------------------------
init_from = "out/tiny-sft"
out_dir = "out/bench_checkpoint"
how = "sharded"               # sharded | full
repeats = 3
# -----------------------------------------------------------------------------


def peak_rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def full_state_save(model, optimizer, path):
    """The save train.py made before sharded checkpoints: full state on rank 0's CPU, one file."""
    from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                         get_optimizer_state_dict)
    opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
    ckpt = {"model": get_model_state_dict(model, options=opts),
            "optimizer": get_optimizer_state_dict(model, optimizer, options=opts)}
    if dist.get_rank() == 0:
        torch.save(ckpt, path + ".tmp")
        os.replace(path + ".tmp", path)
    dist.barrier()


def main():
    configure(globals(), sys.argv[1:])
    from torch.distributed.fsdp import fully_shard
    dist.init_process_group("gloo")
    policy, _ = load_policy(init_from)
    for layer in policy.model.language_model.layers:
        fully_shard(layer)
    fully_shard(policy)
    optimizer = torch.optim.AdamW(policy.parameters(), lr=1e-5)
    for p in policy.parameters():
        p.grad = torch.zeros_like(p)
    optimizer.step()                                                    # AdamW states for every parameter
    n_params = sum(p.numel() for p in policy.parameters())
    if dist.get_rank() == 0:
        shutil.rmtree(out_dir, ignore_errors=True)
        os.makedirs(out_dir)
    dist.barrier()
    before, times = peak_rss_mb(), []
    for step in range(1, repeats + 1):
        t0 = time.time()
        if how == "sharded":
            save_checkpoint(out_dir, policy, optimizer, {"step": step, "world_size": dist.get_world_size()}, True)
        else:
            full_state_save(policy, optimizer, os.path.join(out_dir, "ckpt.pt"))
        times.append(time.time() - t0)
    added = peak_rss_mb() - before
    print(f"rank {dist.get_rank()}: {how} save of {n_params / 1e6:.2f} M parameters + AdamW: "
          f"best of {repeats} {min(times) * 1000:.0f} ms, peak resident memory +{added:.1f} MB "
          f"(peak {peak_rss_mb():.0f} MB)", flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
