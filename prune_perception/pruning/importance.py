"""Channel importance criteria, selectable by name."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
import torch_pruning as tp

from prune_perception.errors import ConfigError

from prune_perception.pruning.choices import IMPORTANCE_CRITERIA


def make_importance(name: str) -> tp.importance.Importance:
    """torch-pruning importance for a criterion name (group-level: coupled layers are scored together)."""
    if name == "l1":
        return tp.importance.GroupMagnitudeImportance(p=1)
    if name == "l2":
        return tp.importance.GroupMagnitudeImportance(p=2)
    if name == "taylor":
        return tp.importance.GroupTaylorImportance()
    if name == "bn_scale":
        return tp.importance.BNScaleImportance()
    if name == "random":
        return tp.importance.RandomImportance()
    raise ConfigError(f"unknown importance criterion {name!r}; known: {', '.join(IMPORTANCE_CRITERIA)}")


def accumulate_gradients(model: torch.nn.Module, batches: Iterable, loss_of_batch: Callable[[object], torch.Tensor],
                         max_batches: int) -> int:
    """Sum the detection-loss gradients of a few batches into .grad (what Taylor importance reads)."""
    model.zero_grad(set_to_none=True)
    model.train()
    used = 0
    for batch in batches:
        if used >= max_batches:
            break
        loss_of_batch(batch).backward()
        used += 1
    return used
