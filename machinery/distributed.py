"""
Running on several ranks under torchrun: the process group, DDP or FSDP2 wrapping, the collectives
the training loop needs (means over ranks, gathers, the flag that keeps FSDP2's generate calls in
step), gradient sync on the last micro-batch only, and a clean exit.
"""
import os
import sys
from contextlib import nullcontext

import torch
import torch.distributed as dist

from machinery.checkpoint import unwrap


def setup_distributed(device):
    """(rank, local_rank, world_size); initialises the process group under torchrun (nccl for a cuda device)."""
    if "RANK" not in os.environ:
        return 0, 0, 1
    backend = "nccl" if torch.cuda.is_available() and device.startswith("cuda") else "gloo"
    dist.init_process_group(backend)
    return dist.get_rank(), int(os.environ["LOCAL_RANK"]), dist.get_world_size()


def wrap_policy(policy, device_str, world_size, distributed, dtype):
    """DDP, or FSDP2 (`fully_shard` each decoder layer, then the root), or the bare model.
    distributed: "ddp" | "fsdp"; dtype: the compute dtype's name (FSDP2 gathers the weights in it)."""
    if world_size == 1:
        return policy
    if distributed == "ddp":
        from torch.nn.parallel import DistributedDataParallel
        return DistributedDataParallel(policy, device_ids=[torch.device(device_str).index]
                                       if device_str.startswith("cuda") else None)
    if distributed == "fsdp":
        return shard(policy, dtype)
    raise SystemExit(f"distributed must be 'ddp' or 'fsdp', got {distributed!r}")


def shard(model, dtype):
    """FSDP2: each decoder layer is one all-gather unit, the rest (embeddings, vision, head) the root.

    Parameters stay in `master_dtype` and are gathered in the compute `dtype`; gradients are reduced
    in float32.
    """
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
    mp = MixedPrecisionPolicy(param_dtype=getattr(torch, dtype), reduce_dtype=torch.float32)
    for layer in decoder_layers(model):
        fully_shard(layer, mp_policy=mp)
    fully_shard(model, mp_policy=mp)
    return model


def decoder_layers(policy):
    return policy.model.language_model.layers


def all_gather_floats(values):
    """Concatenate a list of floats from every rank (same order on all ranks)."""
    return [v for part in all_gather_objects_or_self(list(values)) for v in part]


def means_over_ranks(values):
    """{key: mean over ranks} of a dict of floats with the same keys on every rank (one all-reduce)."""
    if not dist.is_initialized():
        return values
    t = torch.tensor([float(v) for v in values.values()], dtype=torch.float64, device=collective_device())
    dist.all_reduce(t)
    return dict(zip(values, (t / dist.get_world_size()).tolist()))


def collective_device():
    """Where a tensor for a collective must live: this rank's GPU under nccl, the CPU under gloo."""
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"


def mean_over_ranks(value):
    if not dist.is_initialized():
        return value
    t = torch.tensor([value], dtype=torch.float64, device=collective_device())
    dist.all_reduce(t)
    return t.item() / dist.get_world_size()


def all_reduce_sum(t):
    """The sum of a tensor over ranks (itself in one process), detached: autograd does not flow through it."""
    if not dist.is_initialized():
        return t.detach()
    t = t.detach().to(collective_device()).clone()
    dist.all_reduce(t)
    return t


def any_rank(flag):
    """True if `flag` is true on any rank (keeps the ranks' generate calls in step under FSDP2)."""
    if not dist.is_initialized():
        return bool(flag)
    t = torch.tensor([int(bool(flag))], device=collective_device())
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def gradient_sync(model, last, world_size):
    """Reduce gradients across ranks only on the last micro-batch of a pass."""
    if world_size == 1:
        return nullcontext()
    if hasattr(model, "no_sync"):                                   # DDP
        return nullcontext() if last else model.no_sync()
    model.set_requires_gradient_sync(last)                          # FSDP2
    return nullcontext()


def leave_process_group():
    """Wait for every rank, destroy the process group, and end the process here.

    gloo's worker threads (pt_gloo_runloop, gloo_tcp_loop) are still running after destroy_process_group
    and a gc (DDP and FSDP2 alike; under FSDP2 DTensor's sharding caches keep the DeviceMesh that holds
    the group), so the interpreter's finalisation and exit() tear them down, in no fixed order with the
    objects they use. The abort "terminate called without an active exception" after a finished run
    happened there. Every file is closed by now: the process ends at once, exit code 0.
    """
    dist.barrier()
    dist.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def check_ranks_in_sync(model, sharded):
    """Every rank must end with the same parameters; a silent divergence would waste a whole run."""
    if sharded:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
        state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True))
    else:
        state = unwrap(model).state_dict()
    fingerprint = sum(float(v.double().pow(2).sum() + v.double().sum()) for v in state.values())
    prints = [None] * dist.get_world_size()
    dist.all_gather_object(prints, fingerprint)
    if len(set(prints)) != 1:
        raise RuntimeError(f"ranks diverged: parameter fingerprints {prints}")
    if dist.get_rank() == 0:
        print(f"ranks in sync: parameter fingerprint {fingerprint:.10e} on all {len(prints)} ranks")


def all_gather_objects_or_self(obj):
    if not dist.is_initialized():
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def autocast(s):
    """Compute in `dtype` while the weights stay in `master_dtype` (FSDP2 does this on its own)."""
    if s.dtype == s.master_dtype or (s.distributed == "fsdp" and dist.is_initialized() and dist.get_world_size() > 1):
        return nullcontext()
    return torch.autocast(device_type=torch.device(s.device).type, dtype=getattr(torch, s.dtype))
