"""
Checkpoints of an RL run and the export of its policy as a model folder.

What lies in out_dir:

    ckpt.pt                  single process and DDP: one file {"model", "optimizer", **run state}
    ckpt -> ckpt-000040/     FSDP2: a link to the newest complete torch.distributed.checkpoint folder
                             (each rank's shards of the model and AdamW tensors, and state.pt)
    model -> model-000040/   the policy as a save_pretrained folder (compute dtype, safetensors, config,
                             processor, chat template): from_pretrained and eval.py --model load it

The run state is a dict of tensors and plain Python types (step, reward buffer, per-rank RNG states,
answers generated, eval history, config, ...; more entries can be added freely). Every save writes a
new file or folder and only then switches the name to it (`os.replace` of a file or of a symlink is
atomic), and removes the older one after: a kill at any moment leaves the last complete checkpoint.

Nothing is unpickled beyond tensors and plain types: files are read with `torch.load(weights_only=True)`
and the sharded checkpoint's metadata (a pickle, in torch.distributed.checkpoint) through an unpickler
that admits only the checkpoint library's own metadata classes.
"""
import os
import pickle
import shutil
import signal

import numpy as np
import torch
import torch.distributed as dist

KILL_BEFORE_COMMIT = "CKPT_KILL_BEFORE_COMMIT"   # test hook: a step; every rank SIGKILLs itself
                                                 # after writing that step's shards, before the switch


def unwrap(model):
    return model.module if hasattr(model, "module") else model


def rank():
    return dist.get_rank() if dist.is_initialized() else 0


def barrier():
    if dist.is_initialized():
        dist.barrier()


# ----------------------------------------------------------------------------- save

def save_checkpoint(out_dir, model, optimizer, state, sharded):
    """Save model, optimizer and the run `state`; every rank calls this (collective under FSDP2)."""
    if not sharded:
        if rank() == 0:
            ckpt = {"model": {k: v.detach().cpu() for k, v in unwrap(model).state_dict().items()},
                    "optimizer": optimizer.state_dict(), **state}
            torch.save(ckpt, os.path.join(out_dir, "ckpt.pt.tmp"))
            kill_if_asked(state["step"])
            os.replace(os.path.join(out_dir, "ckpt.pt.tmp"), os.path.join(out_dir, "ckpt.pt"))
        return
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict
    model_sd, optim_sd = get_state_dict(model, optimizer)          # this rank's shards, no gather
    name = f"ckpt-{state['step']:06d}"
    folder = os.path.join(out_dir, name)
    if rank() == 0 and os.path.exists(folder):                    # left by a save that was killed
        shutil.rmtree(folder)
    barrier()
    dcp.save({"model": model_sd, "optimizer": optim_sd["state"]}, checkpoint_id=folder)
    if rank() == 0:
        write_file(os.path.join(folder, "state.pt"), {**state, "optimizer_groups": optim_sd["param_groups"]})
    barrier()
    kill_if_asked(state["step"])
    if rank() == 0:
        switch_link(out_dir, "ckpt", name)
    barrier()


def remove_checkpoint(out_dir):
    """Delete out_dir's checkpoint (either kind); rank 0 deletes, every rank calls this."""
    if rank() == 0:
        for entry in os.listdir(out_dir):
            path = os.path.join(out_dir, entry)
            if entry in ("ckpt.pt", "ckpt.pt.tmp", "ckpt", "ckpt.tmp") or entry.startswith("ckpt-"):
                if os.path.isdir(path) and not os.path.islink(path):
                    shutil.rmtree(path)
                else:
                    os.remove(path)
    barrier()


def kill_if_asked(step):
    if os.environ.get(KILL_BEFORE_COMMIT) == str(step):
        os.kill(os.getpid(), signal.SIGKILL)


def write_file(path, obj):
    """torch.save to a temporary name, then rename over `path`."""
    torch.save(obj, path + ".tmp")
    os.replace(path + ".tmp", path)


def switch_link(out_dir, link, target):
    """Point out_dir/link at out_dir/target atomically, then remove the link's older targets."""
    tmp = os.path.join(out_dir, link + ".tmp")
    if os.path.lexists(tmp):
        os.remove(tmp)
    os.symlink(target, tmp)
    path = os.path.join(out_dir, link)
    if os.path.isdir(path) and not os.path.islink(path):   # a copy of the run folder that followed the links:
        shutil.rmtree(path)                                 # an older export or checkpoint, replaced as its link
    os.replace(tmp, path)
    for entry in os.listdir(out_dir):
        if entry.startswith(link + "-") and entry != target:
            shutil.rmtree(os.path.join(out_dir, entry))


def export_model(out_dir, model, processor, dtype, step, sharded):
    """out_dir/model: the policy as a save_pretrained folder (out_dir/model-<step>) with weights in `dtype`."""
    name = f"model-{step:06d}"
    folder = os.path.join(out_dir, name)
    if rank() == 0 and os.path.exists(folder):
        shutil.rmtree(folder)
    save_full_model(folder, model, processor, dtype, sharded)
    if rank() == 0:
        switch_link(out_dir, "model", name)
    barrier()


def save_full_model(folder, model, processor, dtype, sharded):
    """The policy and processor as a save_pretrained folder, weights in `dtype`; every rank calls this.

    Under FSDP2 the full weights are gathered once, onto rank 0's CPU memory; rank 0 writes.
    """
    if sharded:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
        weights = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    elif rank() == 0:
        weights = unwrap(model).state_dict()
    if rank() == 0:
        policy = unwrap(model)
        weights = {k: v.detach().to("cpu", dtype if v.is_floating_point() else v.dtype) for k, v in weights.items()}
        master_dtype, policy.config.dtype = policy.config.dtype, dtype
        try:
            policy.save_pretrained(folder, state_dict=weights)
        finally:
            policy.config.dtype = master_dtype
        processor.save_pretrained(folder)
    barrier()


# ----------------------------------------------------------------------------- load

def checkpoint_path(out_dir, sharded):
    """Where this run's kind of checkpoint lies (ckpt.pt, or the sharded folder's state.pt)."""
    return os.path.join(out_dir, "ckpt", "state.pt") if sharded else os.path.join(out_dir, "ckpt.pt")


def load_run_state(out_dir, sharded, world_size, prompts_per_step):
    """The checkpoint to resume from, checked against this run before any model is loaded.

    Single file: the whole checkpoint; sharded: the run state only (the tensors follow in load_states).
    """
    path = checkpoint_path(out_dir, sharded)
    if not os.path.exists(path):
        other = checkpoint_path(out_dir, not sharded)
        if os.path.exists(other):
            kind = "a single-file (single process / DDP)" if sharded else "a sharded (FSDP2)"
            raise SystemExit(f"{out_dir}: holds {kind} checkpoint ({other}), not the kind this run writes; "
                             "resume with the --distributed setting and number of ranks that wrote it")
        raise SystemExit(f"{path}: no checkpoint to resume from")
    state = safe_load(path)
    saved = state.get("world_size", len(state["rng"]))
    if saved != world_size:
        raise SystemExit(f"{path}: written by {saved} ranks, this run has {world_size}; the per-rank "
                         f"random streams and the global batch (prompts_per_step={prompts_per_step} per rank: "
                         f"{prompts_per_step * saved} vs {prompts_per_step * world_size} prompts per step) "
                         f"would differ. Resume with {saved} ranks")
    return state


def check_resume_settings(out_dir, saved_config, config, may_change, resume_changes=""):
    """Exit naming every setting that differs from the checkpoint's run, other than those in `may_change`
    and those `resume_changes` names ("all": any); settings the checkpoint does not know are new ones."""
    allowed = set(may_change) | {k.strip() for k in resume_changes.split(",")}
    if "all" in allowed:
        return
    differ = [k for k in config if k in saved_config and k not in allowed and saved_config[k] != config[k]]
    if differ:
        changes = ", ".join(f"{k} {saved_config[k]!r} -> {config[k]!r}" for k in differ)
        raise SystemExit(f"{out_dir}: resuming would change what the checkpoint's run was: {changes}. Resume with "
                         f"the checkpoint's values, or accept the change with --resume_changes={','.join(differ)} "
                         "(or all)")


def load_weights(model, weights, source):
    """model.load_state_dict(weights), or SystemExit naming `source` and how its tensors do not fit the model."""
    own = model.state_dict()
    missing = [k for k in own if k not in weights]
    unexpected = [k for k in weights if k not in own]
    shapes = [k for k in own if k in weights and tuple(own[k].shape) != tuple(weights[k].shape)]
    if missing or unexpected or shapes:
        first = (f" (first: {shapes[0]} is {tuple(weights[shapes[0]].shape)} there, {tuple(own[shapes[0]].shape)} "
                 "in the model)") if shapes else f" (first: {(missing + unexpected)[0]})"
        raise SystemExit(f"{source}: its weights do not fit this model: {len(shapes)} tensors of another shape, "
                         f"{len(missing)} missing, {len(unexpected)} unexpected{first}. Was it written from another "
                         "init_from (model size)?")
    model.load_state_dict(weights)


def load_states(out_dir, model, optimizer, state, sharded):
    """Put the checkpoint's model and optimizer tensors into `model` and `optimizer`."""
    if not sharded:
        path = checkpoint_path(out_dir, False)
        load_weights(unwrap(model), state["model"], path)
        try:
            optimizer.load_state_dict(state["optimizer"])
        except (ValueError, KeyError) as e:
            raise SystemExit(f"{path}: its optimizer state does not fit this run's trained parameters ({e}); "
                             "was freeze_vision or the model different?")
        return
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict
    model_sd, optim_sd = get_state_dict(model, optimizer)
    target = {"model": model_sd, "optimizer": optim_sd["state"]}
    folder = os.path.realpath(os.path.join(out_dir, "ckpt"))
    dcp.load(target, storage_reader=safe_reader(folder), planner=safe_planner())
    set_state_dict(model, optimizer, model_state_dict=target["model"],
                   optim_state_dict={"state": target["optimizer"], "param_groups": state["optimizer_groups"]})


def safe_load(path):
    """torch.load that refuses pickled objects (only tensors and plain types), with a one-line message
    naming the file and what is wrong: not a torch.save file, truncated, or holding pickled objects."""
    problem = torch_file_problem(path)
    if problem:
        raise SystemExit(f"{path}: {problem}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        reason = next((line.strip() for line in str(e).splitlines() if "Unsupported" in line), None)
        if reason is None:
            raise SystemExit(f"{path}: corrupt: not a checkpoint torch.save wrote ({str(e).splitlines()[-1]})")
        raise SystemExit(f"{path}: refused: it holds pickled Python objects, not only tensors and plain "
                         f"types, and loading them could run code ({reason})")
    except (RuntimeError, OSError, EOFError, ValueError) as e:
        raise SystemExit(f"{path}: truncated or corrupt ({type(e).__name__}: {str(e).splitlines()[0]})")


def torch_file_problem(path):
    """Why `path` is not a file torch.save wrote (a zip archive, or the older pickle format), or None.
    A zip archive whose directory (at its end) is missing was cut short."""
    import zipfile
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError as e:
        return f"cannot read ({e.strerror})"
    if not head:
        return "empty file (0 bytes)"
    if head == b"PK\x03\x04":
        return None if zipfile.is_zipfile(path) else ("truncated: the zip archive torch.save writes has no "
                                                     "directory at its end (a save cut short?)")
    if head[:1] == b"\x80":                        # the pre-zip torch.save format starts with a pickle
        return None
    return f"not a checkpoint torch.save wrote (it starts with bytes {head.hex()}, not a zip archive)"


SAFE_GLOBALS = {("collections", "OrderedDict"), ("torch.serialization", "_get_layout"),  # a layout by name
                ("pathlib", "PosixPath"), ("pathlib", "WindowsPath"), ("pathlib", "PurePosixPath")}


class MetadataUnpickler(pickle.Unpickler):
    """Admits the classes of torch.distributed.checkpoint's metadata and torch's dtypes, nothing else."""

    def find_class(self, module, name):
        found = super().find_class(module, name)
        allowed = (module.startswith("torch.distributed.checkpoint.") and isinstance(found, type)
                   or module == "torch" and (found is torch.Size or isinstance(found, (torch.dtype, torch.layout,
                                                                                          torch.memory_format)))
                   or (module, name) in SAFE_GLOBALS)
        if not allowed:
            raise pickle.UnpicklingError(f"Unsupported global: {module}.{name}")
        return found


def read_metadata(folder):
    """The sharded checkpoint's metadata (a pickle), read by MetadataUnpickler."""
    path = os.path.join(folder, ".metadata")
    try:
        with open(path, "rb") as f:
            return MetadataUnpickler(f).load()
    except pickle.UnpicklingError as e:
        raise SystemExit(f"{path}: refused: the metadata holds a pickled object outside the checkpoint "
                         f"library's own classes, and loading it could run code ({e})")
    except OSError as e:
        raise SystemExit(f"{path}: cannot read the checkpoint's metadata ({e.strerror})")


def safe_reader(folder):
    """torch.distributed.checkpoint's file reader, with the metadata read by read_metadata."""
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.metadata import StorageMeta
    metadata = read_metadata(folder)

    class SafeReader(FileSystemReader):
        def read_metadata(self, *args, **kwargs):
            if getattr(metadata, "storage_meta", None) is None:
                metadata.storage_meta = StorageMeta()
            metadata.storage_meta.load_id = self.load_id
            return metadata
    return SafeReader(folder)


def safe_planner():
    from torch.distributed.checkpoint import DefaultLoadPlanner

    class SafePlanner(DefaultLoadPlanner):
        def load_bytes(self, read_item, value):                 # non-tensor entries: plain types only
            raise SystemExit(f"checkpoint entry {read_item.dest_index.fqn}: refused: only tensors are read "
                             "from a sharded checkpoint")
    return SafePlanner()


# ----------------------------------------------------------------------------- random number generators

def rng_state(rng, gen):
    """Every generator a step draws from, as tensors and plain types (loadable with weights_only)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, gauss_next = rng.getstate()
    return {"python": [version, list(internal), gauss_next], "torch": torch.get_rng_state(),
            "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss)],
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
            "augment": gen.get_state()}


def set_rng_state(state, rng, gen):
    version, internal, gauss_next = state["python"]
    rng.setstate((version, tuple(internal), gauss_next))
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    if state["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    gen.set_state(state["augment"])
