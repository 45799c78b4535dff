"""
Checkpoints of an RL run: model and optimizer state, the random number generators, and the run's own
state (step, reward buffer, answers generated, history), saved so that a kill leaves the last one good.
"""
import os

import numpy as np
import torch


def unwrap(model):
    return model.module if hasattr(model, "module") else model


def model_state(model, sharded):
    if sharded:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
        return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return {k: v.detach().cpu() for k, v in unwrap(model).state_dict().items()}


def optimizer_state(model, optimizer, sharded):
    if sharded:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict
        return get_optimizer_state_dict(model, optimizer,
                                        options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return optimizer.state_dict()


def load_states(model, optimizer, ckpt, sharded):
    if sharded:
        from torch.distributed.checkpoint.state_dict import (StateDictOptions, set_model_state_dict,
                                                             set_optimizer_state_dict)
        opts = StateDictOptions(full_state_dict=True)
        set_model_state_dict(model, ckpt["model"], options=opts)
        set_optimizer_state_dict(model, optimizer, ckpt["optimizer"], options=opts)
    else:
        unwrap(model).load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])


def save_checkpoint(path, ckpt):
    """Write to a temporary file, then rename: a crash mid-save leaves the last good checkpoint."""
    tmp = path + ".tmp"
    torch.save(ckpt, tmp)
    os.replace(tmp, path)


def load_checkpoint(path):
    if not os.path.exists(path):
        raise SystemExit(f"{path}: no checkpoint to resume from")
    return torch.load(path, map_location="cpu", weights_only=False)


def rng_state(rng, gen):
    return {"python": rng.getstate(), "torch": torch.get_rng_state(), "numpy": np.random.get_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
            "augment": gen.get_state()}


def set_rng_state(state, rng, gen):
    rng.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    if state["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    gen.set_state(state["augment"])
