"""Structured pruning of any traceable ``nn.Module`` (a converted ONNX graph or a user's own model).

torch-pruning's dependency graph groups coupled layers; this module decides what it may touch:

- the layers whose channels reach a model output are protected (:mod:`.output_layers`), plus the
  layers the user names (``keep_layers``, module names as ``named_modules()`` gives them);
- ``PruneSpec.layer_ratios`` name modules the same way: a group whose layers are named takes that ratio
  instead of the overall one (sensitivity analysis prunes one group alone with it);
- groups whose channels pass a reshape or a permute between layers (channel shuffle, a
  ``[N, g, C/g, H, W]`` view) are left alone: torch-pruning cannot map channel indices through them
  and would produce a graph whose shapes no longer fit; they are listed in ``skipped_groups``;
- before the model itself is touched, a copy is pruned to the final ratio and run once: a graph
  torch-pruning still cannot handle is refused with a :class:`ModelLoadError`, never a broken model.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch_pruning as tp
from torch import nn

from prune_perception.errors import ConfigError, ModelLoadError
from prune_perception.external.batchnorm_reinsertion import has_batchnorm
from prune_perception.external.layout import as_output_list
from prune_perception.external.output_layers import CHANNEL_MIXING, output_layers
from prune_perception.pruning.structured import PruneSpec, aligned_width

CHANNEL_REORDERING_GRAD_FNS = ("PermuteBackward0", "TransposeBackward0")


@dataclass
class PrunePlan:
    """What a GraphPruner will and will not prune (module names)."""

    protected: list[str]
    """Output layers (found in the graph) and user-kept layers: their channels are never removed."""
    skipped_groups: list[list[str]] = field(default_factory=list)
    """Coupled groups left unpruned because their channels pass a reshape/permute (channel shuffle)."""
    groups: list[list[str]] = field(default_factory=list)
    """The prunable coupled groups: per group, its layers whose output channels are removed together."""


def _outputs_of(model: nn.Module, example_input: torch.Tensor) -> list[torch.Tensor]:
    with torch.no_grad():
        return as_output_list(model(example_input))


def _reorders_channels(node) -> bool:
    if node.type == tp.ops.OPTYPE.RESHAPE:
        return True
    return node.type == tp.ops.OPTYPE.ELEMENTWISE and type(node.grad_fn).__name__ in CHANNEL_REORDERING_GRAD_FNS


def _group_layers(graph: tp.DependencyGraph, group) -> list[nn.Module]:
    return [dep.target.module for dep, _ in group
            if graph.is_out_channel_pruning_fn(dep.handler) and isinstance(dep.target.module, CHANNEL_MIXING)]


def dependency_graph(model: nn.Module, example_input: torch.Tensor) -> tp.DependencyGraph:
    """torch-pruning's dependency graph of ``model``; ModelLoadError when it cannot trace it."""
    try:
        return tp.DependencyGraph().build_dependency(model, example_input)
    except Exception as exc:  # torch-pruning raises plain errors for graphs it cannot trace
        raise ModelLoadError(f"torch-pruning cannot trace the model: {type(exc).__name__}: "
                             f"{str(exc).splitlines()[0] if str(exc) else ''}") from None


def _out_channels(module: nn.Module) -> int:
    return module.out_features if isinstance(module, nn.Linear) else module.out_channels


def _check_names(setting: str, requested, by_name: dict[str, nn.Module]) -> None:
    unknown = [name for name in requested if name not in by_name]
    if unknown:
        examples = [name for name, module in by_name.items() if isinstance(module, CHANNEL_MIXING)][:5]
        raise ConfigError(f"{setting}: no module named {', '.join(map(repr, unknown))} in the model "
                          f"(module names look like {', '.join(map(repr, examples))})")


def plan_pruning(graph: tp.DependencyGraph, model: nn.Module,
                 keep_layers: Sequence[str] = ()) -> tuple[PrunePlan, list[nn.Module]]:
    """(plan, modules to pass as torch-pruning's ignored_layers); ConfigError for unknown ``keep_layers``."""
    names = {module: name for name, module in model.named_modules()}
    by_name = {name: module for module, name in names.items()}
    _check_names("keep_layers", keep_layers, by_name)
    ignored = output_layers(graph) + [by_name[name] for name in keep_layers]
    plan = PrunePlan(protected=sorted({names[module] for module in ignored}))
    for group in list(graph.get_all_groups(ignored_layers=ignored, root_module_types=CHANNEL_MIXING)):
        layers = _group_layers(graph, group)
        if any(_reorders_channels(dep.target) for dep, _ in group):
            plan.skipped_groups.append(sorted(names[module] for module in layers))
            ignored.extend(layers)
        else:
            plan.groups.append(sorted(names[module] for module in layers))
    if not plan.groups:
        raise ModelLoadError(
            "nothing to prune: every conv/linear layer feeds a model output, is kept, or passes a channel "
            f"shuffle (protected: {len(plan.protected)}, shuffle groups skipped: {len(plan.skipped_groups)})")
    return plan, ignored


class GraphPruner:
    """torch-pruning's MetaPruner on a generic model with the protections above; call step() ``iterative_steps`` times.

    ``check``: prune a copy first and run it (:meth:`_check_on_copy`); off only for a copy of a model already
    checked with the same settings.
    """

    def __init__(self, model: nn.Module, example_input: torch.Tensor, importance: tp.importance.Importance,
                 spec: PruneSpec, keep_layers: Sequence[str] = (), check: bool = True):
        spec.validate()
        if isinstance(importance, tp.importance.BNScaleImportance) and not has_batchnorm(model):
            raise ConfigError("importance bn_scale needs BatchNorm layers, and this model has none (ONNX exports fold "
                              "them into the convs): use l1, l2, taylor or random")
        self.model, self.spec, self.example_input = model, spec, example_input
        self.output_shapes = [tuple(t.shape) for t in _outputs_of(model, example_input)]
        if check:
            self._check_on_copy(importance, keep_layers)
        self.pruner = self._meta_pruner(model, importance, keep_layers)
        self.steps_done = 0
        self.kept_out_channels: dict[str, list[int]] = {}
        """Per pruned conv (module name): the dense model's indices of the output channels still there."""

    def _meta_pruner(self, model: nn.Module, importance, keep_layers) -> tp.pruner.MetaPruner:
        graph = dependency_graph(model, self.example_input)
        plan, ignored = plan_pruning(graph, model, keep_layers)
        if model is self.model:
            self.plan = plan
        return tp.pruner.MetaPruner(
            model, self.example_input, importance=importance, global_pruning=self.spec.global_pruning,
            pruning_ratio=self.spec.ratio, pruning_ratio_dict=self._ratio_per_module(model, plan),
            max_pruning_ratio=self.spec.max_layer_ratio,
            iterative_steps=self.spec.iterative_steps, ignored_layers=ignored,
            round_to=None if self.aligned else self.spec.round_to)

    @property
    def aligned(self) -> bool:
        """Widths rounded to ``round_to`` per group, to the nearest multiple (not global: one ranking has no groups)."""
        return self.spec.round_to is not None and not self.spec.global_pruning

    def _ratio_per_module(self, model: nn.Module, plan: PrunePlan) -> dict[nn.Module, float] | None:
        """torch-pruning's pruning_ratio_dict: each group's ratio (``spec.layer_ratios`` by module name, else
        ``spec.ratio``) for all its layers; with :attr:`aligned`, the ratio that keeps the nearest multiple of
        ``round_to`` (``aligned_width``: torch-pruning's own rounding goes down, which halves a 16-channel layer
        at any ratio)."""
        requested = self.spec.layer_ratios or {}
        if not requested and not self.aligned:
            return None
        by_name = dict(model.named_modules())
        _check_names("layer_ratios", requested, by_name)
        ratios = {}
        for group in plan.groups:
            named = {requested[name] for name in group if name in requested}
            if len(named) > 1:
                raise ConfigError(f"layer_ratios: the coupled layers {', '.join(group)} are pruned together and "
                                  f"need one ratio, got {sorted(named)}")
            ratio = named.pop() if named else self.spec.ratio
            if self.aligned:
                channels = _out_channels(by_name[group[0]])
                kept = aligned_width(channels, ratio, self.spec.round_to, max(self.spec.max_layer_ratio, ratio))
                ratio = 0.0 if kept >= channels else 1 - (kept + 0.5) / channels   # +0.5: torch-pruning truncates
            ratios.update({by_name[name]: ratio for name in group})
        unprunable = sorted(set(requested) - {name for group in plan.groups for name in group})
        if unprunable:
            raise ConfigError(f"layer_ratios: {', '.join(unprunable)} cannot be pruned (an output layer, kept, or in "
                              "a channel-shuffle group)")
        return ratios

    def _check_on_copy(self, importance, keep_layers) -> None:
        """Prune a copy all the way and run it: ModelLoadError when the pruned graph does not run or changes outputs."""
        trial = copy.deepcopy(self.model)
        pruner = self._meta_pruner(trial, importance, keep_layers)
        try:
            for _ in range(self.spec.iterative_steps):
                _step_without_gradients(pruner, importance)
            shapes = [tuple(t.shape) for t in _outputs_of(trial, self.example_input)]
        except Exception as exc:
            raise ModelLoadError(f"pruning this graph breaks it ({type(exc).__name__}: "
                                 f"{str(exc).splitlines()[0] if str(exc) else ''}); name the layers around the "
                                 "failing op in keep_layers") from None
        if shapes != self.output_shapes:
            raise ModelLoadError(f"pruning would change the output shapes {self.output_shapes} -> {shapes}; name the "
                                 "layers feeding the outputs in keep_layers")

    def step(self) -> None:
        """Remove the next share of channels (torch-pruning reads .grad for Taylor importance)."""
        if self.steps_done >= self.spec.iterative_steps:
            raise RuntimeError("all pruning steps are done")
        names = {module: name for name, module in self.model.named_modules()}
        for group in self.pruner.step(interactive=True):
            self._record_removed_channels(group, names)
            group.prune()
        self.steps_done += 1

    def _record_removed_channels(self, group, names: dict[nn.Module, str]) -> None:
        seen = set()
        for dep, indices in group:
            module = dep.target.module
            if (isinstance(module, nn.Conv2d) and self.pruner.DG.is_out_channel_pruning_fn(dep.handler)
                    and module not in seen):
                seen.add(module)
                removed = set(tp._helpers.to_plain_idxs(indices))
                kept = self.kept_out_channels.get(names[module], range(module.out_channels))
                self.kept_out_channels[names[module]] = [k for i, k in enumerate(kept) if i not in removed]


def _step_without_gradients(pruner: tp.pruner.MetaPruner, importance) -> None:
    """One pruner step on the trial copy; gradient-based importance is swapped for magnitude (the copy has no .grad)."""
    if isinstance(importance, tp.importance.GroupTaylorImportance):
        pruner.importance = tp.importance.GroupMagnitudeImportance(p=1)
    pruner.step()
