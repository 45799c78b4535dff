"""The optimiser both trainers use: AdamW (torch's fused kernel on CUDA), and its learning-rate schedule."""
import math

import torch


def adamw(params, lr, weight_decay, device):
    """AdamW over `params`; on CUDA the fused kernel (one launch for every tensor, not a loop)."""
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=torch.device(device).type == "cuda")


def lr_at(step, learning_rate, warmup_steps, max_steps, min_lr_ratio):
    """Linear warmup over `warmup_steps`, then a cosine from learning_rate down to min_lr_ratio * learning_rate
    at max_steps (min_lr_ratio 1: constant after warmup)."""
    if step < warmup_steps:
        return learning_rate * (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, max_steps - warmup_steps)
    return learning_rate * (min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))
