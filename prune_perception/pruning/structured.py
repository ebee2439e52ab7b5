"""Structured channel pruning: whole filters are removed, so the network really gets smaller.

torch-pruning's dependency graph (DepGraph) groups layers whose channels are coupled (residual
adds, concatenations, BatchNorm, the next layer's input) and removes them together. The head's
final convs are never pruned (their widths are the class count and the four box distances).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch_pruning as tp

from prune_perception.errors import ConfigError
from prune_perception.models.detector import Detector, model_widths, spec_layers


@dataclass
class PruneSpec:
    """What to prune: channel ratio, scope and limits."""

    ratio: float = 0.5                 # fraction of channels removed (per layer, or overall when global)
    global_pruning: bool = False       # one importance ranking across all layers instead of the same ratio each
    max_layer_ratio: float = 0.9       # never remove more than this fraction of one layer's channels
    layer_ratios: dict[str, float] | None = None   # per-layer overrides, arch-spec names (e.g. "neck.td3")
    iterative_steps: int = 1           # reach `ratio` in this many equal steps (fine-tune in between)
    round_to: int | None = None        # keep channel counts multiples of this (torch-pruning rounds down)
    align_to: int | None = None        # per-layer ratios (not global, no round_to): round each kept width to the
                                       # nearest multiple of this hardware block (aligned_width)

    def validate(self) -> None:
        if not 0.0 <= self.ratio < 1.0:
            raise ConfigError(f"prune ratio must be in [0, 1), got {self.ratio}")
        if not 0.0 < self.max_layer_ratio < 1.0:
            raise ConfigError(f"max_layer_ratio must be in (0, 1), got {self.max_layer_ratio}")
        if self.iterative_steps < 1:
            raise ConfigError(f"iterative_steps must be >= 1, got {self.iterative_steps}")
        for name, ratio in (self.layer_ratios or {}).items():
            if not 0.0 <= ratio < 1.0:
                raise ConfigError(f"layer ratio for {name} must be in [0, 1), got {ratio}")


def coupled_layer_groups(graph: tp.DependencyGraph, model: Detector) -> list[tuple[str, ...]]:
    """Arch-spec layers whose output channels are pruned together, one tuple per dependency group."""
    names = {layer.conv: name for name, layer in spec_layers(model).items()}
    build_order = list(names.values())
    groups = []
    for group in graph.get_all_groups(ignored_layers=model.prunable_output_layers(), root_module_types=[torch.nn.Conv2d]):
        members = {names[dep.target.module] for dep, _ in group
                   if dep.target.module in names and graph.is_out_channel_pruning_fn(dep.handler)}
        if members:
            groups.append(tuple(sorted(members, key=build_order.index)))
    return sorted(groups, key=lambda members: build_order.index(members[0]))


def prunable_groups(model: Detector, input_hw: tuple[int, int]) -> list[tuple[str, ...]]:
    """The coupled layer groups of `model` (build order), e.g. ("stage1.down", "stage1.block0.cv2")."""
    graph = tp.DependencyGraph().build_dependency(model, torch.zeros(1, 3, *input_hw))
    return coupled_layer_groups(graph, model)


def aligned_width(channels: int, ratio: float, block: int, max_layer_ratio: float) -> int:
    """The width a group of `channels` keeps at `ratio`, rounded to the nearest multiple of `block`.

    Never below one block nor below what `max_layer_ratio` keeps, never above `channels`; a group narrower
    than two blocks, or not pruned at all, keeps what the plain ratio gives (it cannot be aligned usefully).
    """
    kept = max(1, int(channels * (1 - ratio)))
    if ratio <= 0 or channels < 2 * block:
        return min(channels, kept)
    floor = max(1, int(channels * (1 - max_layer_ratio)))
    width = max(block, int(kept / block + 0.5) * block, -(-floor // block) * block)   # the last: first block >= floor
    return min(channels, width)


def aligned_layer_ratios(model: Detector, groups: list[tuple[str, ...]], spec: PruneSpec) -> dict[str, float]:
    """Per-group ratios (every group listed, by its first layer) that keep `aligned_width` channels each."""
    overrides, layers = spec.layer_ratios or {}, spec_layers(model)
    ratios = {}
    for group in groups:
        ratio = next((overrides[name] for name in group if name in overrides), spec.ratio)
        channels = layers[group[0]].conv.out_channels
        width = aligned_width(channels, min(ratio, spec.max_layer_ratio), spec.align_to, spec.max_layer_ratio)
        ratios[group[0]] = ratio_keeping(width, channels)
    return ratios


def ratio_keeping(width: int, channels: int) -> float:
    """The layer ratio at which torch-pruning keeps exactly `width` of `channels` (it keeps int(channels * (1 - r)):
    the half channel absorbs rounding)."""
    return 0.0 if width >= channels else round(1.0 - (int(width) + 0.5) / int(channels), 6)


class StructuredPruner:
    """Wraps torch-pruning's MetaPruner for one Detector; call step() `spec.iterative_steps` times."""

    def __init__(self, model: Detector, input_hw: tuple[int, int], importance: tp.importance.Importance,
                 spec: PruneSpec):
        spec.validate()
        self.model, self.spec = model, spec
        convs = {name: layer.conv for name, layer in spec_layers(model).items()}
        unknown = sorted(set(spec.layer_ratios or {}) - set(convs))
        if unknown:
            raise ConfigError(f"unknown layer(s) in layer_ratios: {', '.join(unknown)}")
        layer_ratios = spec.layer_ratios or {}
        if spec.align_to and spec.align_to > 1 and spec.round_to is None and not spec.global_pruning:
            layer_ratios = aligned_layer_ratios(model, prunable_groups(model, input_hw), spec)
        self.pruner = tp.pruner.MetaPruner(
            model, torch.zeros(1, 3, *input_hw), importance=importance, global_pruning=spec.global_pruning,
            pruning_ratio=spec.ratio, max_pruning_ratio=spec.max_layer_ratio, iterative_steps=spec.iterative_steps,
            pruning_ratio_dict={convs[name]: r for name, r in layer_ratios.items()} or None,
            ignored_layers=model.prunable_output_layers(), round_to=spec.round_to)
        self.groups = coupled_layer_groups(self.pruner.DG, model)
        self._check_no_layer_emptied()
        self.steps_done = 0

    def _check_no_layer_emptied(self) -> None:
        """ConfigError naming the layer(s) when the final ratio would leave a group with no channels."""
        overrides = self.spec.layer_ratios or {}
        for group in self.groups:
            override = next((overrides[name] for name in group if name in overrides), None)
            if override is None and self.spec.global_pruning:
                continue  # the global ranking decides the share; torch-pruning caps it at max_layer_ratio
            ratio = min(self.spec.ratio if override is None else override, self.spec.max_layer_ratio)
            channels = spec_layers(self.model)[group[0]].conv.out_channels
            kept = int(channels * (1 - ratio))
            if self.spec.round_to:
                kept -= kept % self.spec.round_to
            if ratio > 0 and kept < 1:
                raise ConfigError(f"pruning {'+'.join(group)} ({channels} channels) at ratio {ratio:g}"
                                  f"{f' with round_to {self.spec.round_to}' if self.spec.round_to else ''} "
                                  f"would remove every channel; lower its ratio or max_layer_ratio")

    def step(self) -> dict[str, int]:
        """Remove the next share of channels; returns the new widths (also written into model.arch)."""
        if self.steps_done >= self.spec.iterative_steps:
            raise RuntimeError("all pruning steps are done")
        self.pruner.step()
        self.steps_done += 1
        widths = model_widths(self.model)
        self.model.arch = dict(self.model.arch, widths=widths)
        return widths
