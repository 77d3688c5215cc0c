"""The optimizer and learning-rate schedule of the Trainer: AdamW without decay on biases and norms, warm-up then
linear / cosine decay, constant, or warmup-stable-decay."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from pretune.training.config import WSD_DECAY, TrainConfig


def param_groups(model: nn.Module, weight_decay: float, lr: float, hold_steps: int = 0,
                 hold_prefix: str = "body.") -> list[dict]:
    """AdamW groups: no weight decay on biases and LayerNorm weights (every 1-D parameter). With `hold_steps`, the
    parameters named `hold_prefix`* get groups of their own that hold still for that many steps (`group_lambdas`)."""
    groups: dict[tuple[bool, bool], list] = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            held = hold_steps > 0 and name.startswith(hold_prefix)
            groups.setdefault((held, p.ndim >= 2), []).append(p)
    order = [(False, True), (False, False), (True, True), (True, False)]
    return [{"params": groups[key], "weight_decay": weight_decay if key[1] else 0.0, "lr": lr,
             **({"hold_steps": hold_steps} if key[0] else {})} for key in order if key in groups]


def adamw(groups: list[dict], cfg: TrainConfig, device: torch.device, fused: bool = True) -> torch.optim.AdamW:
    """The Trainer's AdamW. The fused kernel (CPU and CUDA) makes one pass over each tensor: on a CPU about 3x faster
    than foreach and 6x faster than the per-tensor loop, which matters most for the large embedding matrix."""
    fast = {"fused": True} if fused and device.type in ("cpu", "cuda") else {"foreach": True}
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.adam_beta1, cfg.adam_beta2), eps=cfg.adam_eps, **fast)


def lr_lambda(cfg: TrainConfig) -> Callable[[int], float]:
    warm, total = cfg.warmup(), cfg.max_steps

    def f(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        if cfg.schedule == "constant":
            return 1.0
        if cfg.schedule == "wsd":  # stable, then the last WSD_DECAY of the steps fall linearly to 0
            return min(1.0, (total - step) / max(1.0, WSD_DECAY * total))
        progress = min(1.0, (step - warm) / max(1, total - warm))
        if cfg.schedule == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * progress))
        return 1.0 - progress

    return f


def group_lambdas(cfg: TrainConfig, groups: list[dict]) -> list[Callable[[int], float]]:
    """One lr multiplier per param group: the schedule, held at 0 for the group's first `hold_steps` steps (a group
    with hold_steps waits while the others train, e.g. a pretrained body while its new head warms up)."""
    base = lr_lambda(cfg)

    def held(hold: int) -> Callable[[int], float]:
        return base if hold <= 0 else (lambda step: 0.0 if step < hold else base(step))

    return [held(int(g.get("hold_steps", 0))) for g in groups]
