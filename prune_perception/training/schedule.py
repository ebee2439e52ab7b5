"""The optimizer and learning-rate schedule that training and label-free fine-tuning share (``OptimConfig``):
AdamW or SGD (Nesterov); a linear warm-up from 10 % of ``lr`` over ``warmup_epochs``, then cosine down to
``lr * min_lr_ratio``, or with ``lr_schedule: plateau`` the LR halved after 2 evaluations without gain."""

from __future__ import annotations

import math

import torch

from prune_perception.config import OptimConfig
from prune_perception.errors import ConfigError

OPTIMIZERS = ("adamw", "sgd")
LR_SCHEDULES = ("cosine", "plateau")


def check_optim_choices(optim: OptimConfig, section: str) -> None:
    """ConfigError unless ``optimizer`` and ``lr_schedule`` are known (``section`` names the YAML section)."""
    if optim.optimizer not in OPTIMIZERS:
        raise ConfigError(f"{section}.optimizer must be one of {OPTIMIZERS}, got {optim.optimizer!r}")
    if optim.lr_schedule not in LR_SCHEDULES:
        raise ConfigError(f"{section}.lr_schedule must be one of {LR_SCHEDULES}, got {optim.lr_schedule!r}")


def make_optimizer(groups: list[dict], optim: OptimConfig) -> torch.optim.Optimizer:
    """``optim.optimizer`` over parameter ``groups`` (each may carry its own ``lr`` / ``weight_decay``)."""
    if optim.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=optim.lr, momentum=optim.momentum, nesterov=True)
    return torch.optim.AdamW(groups, lr=optim.lr)


def lr_factor(optim: OptimConfig, step: float, steps_per_epoch: int) -> float | None:
    """The multiple of each group's base LR at ``step`` (batches since the start); None after the warm-up of
    the plateau schedule, where :func:`plateau_scheduler` owns the LR."""
    warmup = optim.warmup_epochs * steps_per_epoch
    if step < warmup:
        return 0.1 + 0.9 * step / warmup
    if optim.lr_schedule == "plateau":
        return None
    progress = (step - warmup) / max(1.0, optim.epochs * steps_per_epoch - warmup)
    return optim.min_lr_ratio + (1 - optim.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


def plateau_scheduler(optimizer: torch.optim.Optimizer, optim: OptimConfig):
    """ReduceLROnPlateau on a higher-is-better score when ``lr_schedule`` is plateau, else None."""
    if optim.lr_schedule != "plateau":
        return None
    return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="max", factor=0.5, patience=2)
