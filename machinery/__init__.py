"""
The machinery that makes the method fast and robust; the method itself is at the top level.

    sampler       our decode loop: prefill by transformers, a static-cache step, CUDA graphs on GPUs
    logprobs      log pi(y|x) of completions, chunked; a group's prompt packed once before its answers
    speedups      faster forwards for the vision tower, each named and switchable
    video         reading clips by presentation time (PyAV), writing the synthetic ones
    dataset       JSONL records, their checks, decoded samples
    configurator  settings: defaults as globals, presets, --key=value, typed and checked
    checkpoint    kill-safe checkpoints (one file, or FSDP2 shards), exported models
    distributed   torchrun: process group, DDP / FSDP2, collectives, autocast, clean exit
    runlog        log.jsonl, summary.json, curves.png, Weights & Biases

Nothing here imports the top-level files.
"""
