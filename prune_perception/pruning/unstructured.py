"""Unstructured (single weights) and kernel (whole k×k kernels) pruning: the baseline that does not pay.

Masks zero weights inside the convs but every layer keeps its shape, so the exported graph is the
same dense network and a dense runtime (ONNX Runtime, TensorRT without sparse kernels) runs it just
as fast. It is here to show that: `prune.granularity: weight | kernel` next to the structured
`channel` path. The head's final convs are never masked, like in the structured path.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from prune_perception.errors import ConfigError
from prune_perception.models.detector import Detector, spec_layers
from prune_perception.pruning.structured import PruneSpec
from prune_perception.pruning.choices import GRANULARITIES

UNSTRUCTURED_RULES = ("l1", "fixed_l1")
SCOPES = ("global", "local")
FIXED_L1_FRACTION = 0.1   # fixed_l1 prunes |w| < FIXED_L1_FRACTION × max|w| of the layer


def check_granularity(granularity: str, rule: str) -> None:
    """ConfigError unless the pruning rule (`prune.method`) fits the granularity."""
    if granularity not in GRANULARITIES:
        raise ConfigError(f"prune.granularity must be one of {', '.join(GRANULARITIES)}, got {granularity!r}")
    if rule == "fixed_l1" and granularity != "weight":
        raise ConfigError(f"prune.method fixed_l1 is a per-weight threshold: it needs granularity weight, "
                          f"not {granularity}")
    if granularity != "channel" and rule not in UNSTRUCTURED_RULES:
        raise ConfigError(f"granularity {granularity} supports the methods {', '.join(UNSTRUCTURED_RULES)}, "
                          f"got {rule!r}")


@dataclass
class Sparsity:
    """Fraction of zero weights per masked layer (arch-spec names) and over all of them."""

    layers: dict[str, float]
    overall: float


class WeightMasks:
    """Binary masks on conv weights. Applied permanently (the weights are zeroed, the model stays a plain
    module with a plain state_dict); `keep_applied` re-zeroes them after every optimizer step."""

    def __init__(self, convs: dict[str, nn.Conv2d], masks: dict[str, torch.Tensor]):
        self.convs, self.masks = convs, masks

    @torch.no_grad()
    def apply(self) -> None:
        for name, conv in self.convs.items():
            conv.weight.mul_(self.masks[name])

    def keep_applied(self, optimizer: torch.optim.Optimizer):
        """Re-apply after each `optimizer.step()` (fine-tuning); returns the hook handle."""
        return optimizer.register_step_post_hook(lambda *_: self.apply())

    def sparsity(self) -> Sparsity:
        return weight_sparsity(self.convs)


def weight_sparsity(convs: dict[str, nn.Conv2d]) -> Sparsity:
    """Zero fraction measured on the weights themselves (zeros the training put there count too)."""
    zeros = {name: int((conv.weight == 0).sum()) for name, conv in convs.items()}
    sizes = {name: conv.weight.numel() for name, conv in convs.items()}
    return Sparsity({name: round(zeros[name] / sizes[name], 6) for name in convs},
                    round(sum(zeros.values()) / sum(sizes.values()), 6))


def masked_convs(model: Detector) -> dict[str, nn.Conv2d]:
    """The convs that may be masked: every arch-spec layer (the head's final convs are not among them)."""
    return {name: layer.conv for name, layer in spec_layers(model).items()}


def _unit_scores(weight: torch.Tensor, granularity: str) -> torch.Tensor:
    """Score per pruning unit, shaped to broadcast over the weight: |w|, or the mean |w| of each k×k kernel
    (mean rather than sum so 1×1 and 3×3 kernels rank on one scale in a global ranking)."""
    magnitude = weight.detach().abs()
    return magnitude if granularity == "weight" else magnitude.mean(dim=(2, 3), keepdim=True)


def _smallest_units(scores: torch.Tensor, unit_sizes: torch.Tensor, ratio: float) -> torch.Tensor:
    """Boolean over units: the lowest-scored ones whose weights add up to at most `ratio` of all weights."""
    order = torch.argsort(scores, stable=True)
    within = torch.cumsum(unit_sizes[order], 0) <= ratio * float(unit_sizes.sum()) + 0.5
    pruned = torch.zeros_like(scores, dtype=torch.bool)
    pruned[order[within]] = True
    return pruned


def _ratio_masks(convs: dict[str, nn.Conv2d], ratio: float, granularity: str, scope: str) -> dict[str, torch.Tensor]:
    scores = {name: _unit_scores(conv.weight, granularity) for name, conv in convs.items()}
    unit_size = {name: conv.weight[0, 0].numel() if granularity == "kernel" else 1 for name, conv in convs.items()}
    groups = [list(convs)] if scope == "global" else [[name] for name in convs]
    masks = {}
    for names in groups:
        flat = torch.cat([scores[n].flatten() for n in names])
        sizes = torch.cat([torch.full((scores[n].numel(),), float(unit_size[n])) for n in names])
        pruned = _smallest_units(flat, sizes, ratio).split([scores[n].numel() for n in names])
        for name, layer_pruned in zip(names, pruned):
            keep = (~layer_pruned).reshape(scores[name].shape).to(convs[name].weight.dtype)
            masks[name] = keep.expand_as(convs[name].weight).clone()
    return masks


def _fixed_l1_masks(convs: dict[str, nn.Conv2d]) -> dict[str, torch.Tensor]:
    masks = {}
    for name, conv in convs.items():
        magnitude = conv.weight.detach().abs()
        masks[name] = (magnitude >= FIXED_L1_FRACTION * magnitude.max()).to(conv.weight.dtype)
    return masks


def prune_unstructured(model: Detector, ratio: float, granularity: str = "weight", rule: str = "l1",
                       scope: str = "global") -> tuple[WeightMasks, Sparsity]:
    """Zero the smallest weights (`weight`) or k×k kernels (`kernel`, by L1 norm) of every arch-spec conv.

    `ratio` is the fraction of weights to zero: over all layers at once (`global`) or in each layer
    (`local`). `fixed_l1` ignores ratio and scope: it zeroes |w| < 0.1 × max|w| in each layer.
    Already-zero weights rank lowest, so calling this again with a larger ratio grows the masks.
    Returns the masks (to keep them applied while fine-tuning) and the sparsity reached.
    """
    check_granularity(granularity, rule)
    if granularity == "channel":
        raise ConfigError("channel granularity is structured pruning: use StructuredPruner")
    if scope not in SCOPES:
        raise ConfigError(f"pruning scope must be one of {', '.join(SCOPES)}, got {scope!r}")
    if not 0.0 <= ratio < 1.0:
        raise ConfigError(f"prune ratio must be in [0, 1), got {ratio}")
    convs = masked_convs(model)
    masks = _fixed_l1_masks(convs) if rule == "fixed_l1" else _ratio_masks(convs, ratio, granularity, scope)
    weight_masks = WeightMasks(convs, masks)
    weight_masks.apply()
    return weight_masks, weight_masks.sparsity()


class UnstructuredPruner:
    """The masking counterpart of StructuredPruner for run_pruning: step k of N grows the masks to ratio·k/N."""

    def __init__(self, model: Detector, granularity: str, rule: str, spec: PruneSpec):
        spec.validate()
        check_granularity(granularity, rule)
        if spec.layer_ratios:
            raise ConfigError("prune.layer_ratios apply to channel granularity only")
        self.model, self.granularity, self.rule, self.spec = model, granularity, rule, spec
        self.masks: WeightMasks | None = None
        self.steps_done = 0

    def step(self) -> Sparsity:
        if self.steps_done >= self.spec.iterative_steps:
            raise RuntimeError("all pruning steps are done")
        self.steps_done += 1
        self.masks, sparsity = prune_unstructured(
            self.model, self.spec.ratio * self.steps_done / self.spec.iterative_steps, self.granularity, self.rule,
            "global" if self.spec.global_pruning else "local")
        return sparsity
