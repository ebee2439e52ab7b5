"""Sensitivity-guided ratios for an imported model: the MACs a uniform ratio cuts, taken where it hurts least.

With ``external.sensitivity`` (the ``sensitivity --model`` output of the same model), pruning an imported
model "at ratio R" no longer removes R of every group's channels. Each group's curve (score drop against
its ratio, from :mod:`.sensitivity`; made non-decreasing, linear between the measured ratios) gives, for a
tolerance t, the largest ratio whose drop stays within t; t is bisected for the smallest one whose
per-group ratios cut at least the MACs of the uniform ratio R (both measured by pruning a copy). Insensitive
groups are then pruned further than R and sensitive ones less, at the same MACs. Budget and latency
searches use it too: their candidate ratios become MACs targets.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path

from prune_perception.errors import ConfigError
from prune_perception.external.graph_pruning import GraphPruner, PrunePlan
from prune_perception.models.cost import model_cost
from prune_perception.pruning.importance import make_importance
from prune_perception.pruning.structured import PruneSpec

BISECTION_STEPS = 12


@dataclass
class SensitivityCurves:
    """Per prunable group of one model: its layers and its (ratio, score drop) curve, starting at (0, 0)."""

    path: Path
    model_sha256: str
    groups: list[list[str]]
    curves: list[list[tuple[float, float]]]

    def check_model(self, sha256: str) -> None:
        """ConfigError unless the curves were measured on the model file with this sha256."""
        if sha256 != self.model_sha256:
            raise ConfigError(f"external.sensitivity: {self.path} was measured on another model "
                              f"(sha256 {self.model_sha256[:12]}, this one {sha256[:12]})")

    def ratio_at(self, curve: list[tuple[float, float]], tolerance: float) -> float:
        """The largest ratio whose (non-decreasing, interpolated) drop is at most ``tolerance``."""
        envelope, worst = [], 0.0
        for ratio, drop in curve:
            worst = max(worst, drop)
            envelope.append((ratio, worst))
        chosen = 0.0
        for (r0, d0), (r1, d1) in zip(envelope, envelope[1:]):
            if d1 <= tolerance:
                chosen = r1
            else:
                if d1 > d0 and d0 <= tolerance:
                    chosen = r0 + (r1 - r0) * (tolerance - d0) / (d1 - d0)
                break
        return chosen

    def layer_ratios(self, tolerance: float) -> dict[str, float]:
        """``PruneSpec.layer_ratios`` at ``tolerance``: every layer of every group, with its group's ratio."""
        return {name: round(self.ratio_at(curve, tolerance), 4)
                for group, curve in zip(self.groups, self.curves) for name in group}

    @property
    def max_drop(self) -> float:
        return max((drop for curve in self.curves for _, drop in curve), default=0.0)


def load_curves(path: str | Path) -> SensitivityCurves:
    """The curves of a ``sensitivity --model`` output (sensitivity.json or its folder); ConfigError otherwise."""
    path = Path(path)
    path = path / "sensitivity.json" if path.is_dir() else path
    if not path.is_file():
        raise ConfigError(f"external.sensitivity: no sensitivity.json at {path} (run `sensitivity --model` first)")
    data = json.loads(path.read_text())
    if "model_sha256" not in data or "groups" not in data:
        raise ConfigError(f"external.sensitivity: {path} is not the sensitivity of an imported model "
                          "(`sensitivity --model DET.onnx`)")
    dense = data["dense"]["mAP50"]
    by_group: dict[str, list[tuple[float, float]]] = {}
    for point in data["points"]:
        by_group.setdefault(point["group"], []).append((point["ratio"], dense - point["mAP50"]))
    groups = [group for group in data["groups"] if "+".join(group) in by_group]
    curves = [[(0.0, 0.0)] + sorted(by_group["+".join(group)]) for group in groups]
    return SensitivityCurves(path, data["model_sha256"], groups, curves)


@dataclass
class RatioAllocation:
    """Per-layer ratios found for one overall ratio, and the MACs both cut."""

    ratio: float
    tolerance: float
    layer_ratios: dict[str, float]
    macs: int
    uniform_macs: int
    dense_macs: int

    def as_record(self) -> dict:
        """For history.json: the tolerance, the ratio per layer and the MACs."""
        return {"ratio": self.ratio, "tolerance": self.tolerance, "macs": self.macs, "uniform_macs": self.uniform_macs,
                "dense_macs": self.dense_macs, "layer_ratios": self.layer_ratios}


def covering_max_layer_ratio(max_layer_ratio: float, layer_ratios: dict[str, float]) -> float:
    """``max_layer_ratio`` raised to the largest of ``layer_ratios`` (torch-pruning caps every layer at it)."""
    return max([max_layer_ratio, *layer_ratios.values()])


def allocate_ratios(curves: SensitivityCurves, model, example_input, method: str, ratio: float,
                    round_to: int | None, max_layer_ratio: float, keep_layers=()) -> RatioAllocation:
    """Per-group ratios (module doc) that cut at least the MACs of ``ratio`` applied uniformly; groups the
    sensitivity did not measure keep ``ratio``."""
    input_hw = tuple(example_input.shape[-2:])

    def pruned(spec: PruneSpec) -> tuple[int, PrunePlan]:
        student = copy.deepcopy(model)
        pruner = GraphPruner(student, example_input, make_importance(method), spec, keep_layers)
        pruner.step()
        return model_cost(student, input_hw).macs, pruner.plan

    def spec_at(tolerance: float) -> PruneSpec:
        layer_ratios = curves.layer_ratios(tolerance)
        return PruneSpec(ratio, max_layer_ratio=covering_max_layer_ratio(max_layer_ratio, layer_ratios),
                         layer_ratios=layer_ratios, round_to=round_to)

    dense_macs = model_cost(model, input_hw).macs
    uniform, plan = pruned(PruneSpec(ratio, max_layer_ratio=max_layer_ratio, round_to=round_to))
    planned = {name for group in plan.groups for name in group}
    measured = {name for group in curves.groups for name in group}
    if not measured or not measured <= planned:
        raise ConfigError(f"external.sensitivity: {curves.path} was measured on another model (or other keep_layers): "
                          f"{len(measured - planned)} of its layers are not prunable groups here")
    low, high = 0.0, curves.max_drop
    high_macs, _ = pruned(spec_at(high))
    if high_macs > uniform:
        raise ConfigError(f"external.sensitivity: pruning every group at its largest measured ratio cuts "
                          f"{1 - high_macs / dense_macs:.1%} of the MACs, less than ratio {ratio:g} uniformly "
                          f"({1 - uniform / dense_macs:.1%}): measure larger --ratios or lower the ratio")
    best = (high, high_macs)
    for _ in range(BISECTION_STEPS):
        middle = (low + high) / 2
        middle_macs, _ = pruned(spec_at(middle))
        if middle_macs <= uniform:
            high, best = middle, (middle, middle_macs)
        else:
            low = middle
    return RatioAllocation(ratio, round(best[0], 6), curves.layer_ratios(best[0]), best[1], uniform, dense_macs)
