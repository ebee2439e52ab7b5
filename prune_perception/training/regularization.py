"""Sparsity training: a penalty added to the detection loss so that pruning later removes little.

Penalties (summed, then multiplied by ``sparsity.weight``):

- ``l1``: Σ|w| over conv weights; ``l2``: Σw² over conv weights (elementwise, unstructured).
- ``group_lasso``: Σ over output filters of ‖W_f‖₂ (drives whole filters, i.e. channels, to zero:
  what structured pruning removes).
- ``bn_l1``: Σ|γ| over BatchNorm scales (network slimming, Liu et al. 2017). Added as a loss term,
  so autograd adds λ·sign(γ) to γ.grad: the paper's subgradient update.

The head's final convs (``model.prunable_output_layers()``) are never penalised: their widths are
the class count and the four box distances.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from prune_perception.config import SparsitySettings
from prune_perception.errors import ConfigError
from prune_perception.models.detector import Detector

PENALTIES: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "l1": lambda weight: weight.abs().sum(),
    "l2": lambda weight: weight.pow(2).sum(),
    "group_lasso": lambda weight: weight.flatten(1).norm(dim=1).sum(),
    "bn_l1": lambda scale: scale.abs().sum(),
}
SPARSITY_TYPES = ("none", *PENALTIES)


def validate_sparsity_settings(settings: SparsitySettings) -> None:
    if settings.type not in SPARSITY_TYPES:
        raise ConfigError(f"sparsity.type must be one of {SPARSITY_TYPES}, got {settings.type!r}")
    if settings.weight < 0:
        raise ConfigError(f"sparsity.weight must be >= 0, got {settings.weight}")


def penalized_parameters(model: Detector, sparsity_type: str) -> list[torch.Tensor]:
    """BN scales for ``bn_l1``, otherwise the conv weights outside the head's output convs."""
    if sparsity_type == "none":
        return []
    if sparsity_type == "bn_l1":
        return [m.weight for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    output_layers = set(model.prunable_output_layers())
    return [m.weight for m in model.modules() if isinstance(m, nn.Conv2d) and m not in output_layers]


class SparsityRegularizer:
    """``penalty()`` = weight × the configured sparsity penalty of the model (0 for ``none``)."""

    def __init__(self, model: Detector, settings: SparsitySettings):
        validate_sparsity_settings(settings)
        self.weight = settings.weight
        self.parameters = penalized_parameters(model, settings.type)
        self.penalty_fn = PENALTIES.get(settings.type)

    def penalty(self) -> torch.Tensor:
        if not self.parameters:
            return torch.zeros(())
        return self.weight * sum(self.penalty_fn(p) for p in self.parameters)
