"""Sensitivity analysis: prune one layer group alone at several ratios and record val mAP50.

Layers whose channels are coupled by the dependency graph (a stage's down conv and its residual
blocks' cv2) are one group, pruned together and named by their layers joined with "+".
`sensitivity_point` is one (group, ratio) evaluation with plain arguments, so it can be fanned out
(`run_sensitivity(..., fan_out=...)`, e.g. on Dask: prune_perception/scaleout/sensitivity_points.py).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from prune_perception.data.dataset import DetectionDataset, load_dataset
from prune_perception.errors import ConfigError
from prune_perception.models.checkpoint import load_checkpoint
from prune_perception.models.cost import model_cost
from prune_perception.models.detector import Detector
from prune_perception.models.torch_eval import LetterboxedImages, evaluate_model
from prune_perception.pruning.importance import make_importance
from prune_perception.evaluation.plots import pyplot, save_figure
from prune_perception.pruning.structured import PruneSpec, StructuredPruner, prunable_groups
from prune_perception.pruning.choices import GRADIENT_FREE_CRITERIA

SENSITIVITY_METHODS = GRADIENT_FREE_CRITERIA   # taylor needs loss gradients


@dataclass
class SensitivityPoint:
    """mAP and cost of the model with one layer group pruned at one ratio (ratio 0: the dense model)."""

    group: str          # layer names joined with "+", e.g. "stage1.down+stage1.block0.cv2"
    ratio: float
    params: int
    macs: int
    mAP50: float
    mAP50_95: float
    seconds: float


def group_name(layers: Sequence[str]) -> str:
    return "+".join(layers)


def sensitivity_point(model: Detector, input_hw: tuple[int, int], layers: Sequence[str], ratio: float, method: str,
                      val_images: LetterboxedImages, val_set: DetectionDataset) -> SensitivityPoint:
    """Prune a copy of `model` at `ratio` in `layers` (one coupled group) only, and evaluate it.

    Seeded by (group, ratio), so `random` gives the same point wherever and in whatever order it runs.
    """
    started = time.monotonic()
    pruned = copy.deepcopy(model)
    spec = PruneSpec(ratio=0.0, max_layer_ratio=max(ratio, 0.9), layer_ratios={layers[0]: ratio})
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(zlib.crc32(f"{group_name(layers)}@{ratio}".encode()))
        StructuredPruner(pruned, input_hw, make_importance(method), spec).step()
    cost, result = model_cost(pruned, input_hw), evaluate_model(pruned, val_images, val_set)
    return SensitivityPoint(group_name(layers), ratio, cost.params, cost.macs, result.map50, result.map50_95,
                            round(time.monotonic() - started, 2))


def select_groups(groups: list[tuple[str, ...]], layers: Sequence[str] | None) -> list[tuple[str, ...]]:
    """The groups containing any of `layers` (all groups when None); unknown names raise ConfigError."""
    if not layers:
        return groups
    known = {name for group in groups for name in group}
    unknown = [name for name in layers if name not in known]
    if unknown:
        raise ConfigError(f"unknown or unprunable layer(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    return [group for group in groups if set(group) & set(layers)]


def run_sensitivity(checkpoint_path: Path, data: str, output: Path, ratios: Sequence[float] = (0.25, 0.5, 0.75),
                    method: str = "l1", layers: Sequence[str] | None = None, split: str = "val",
                    val_images: int | None = None, progress: bool = True,
                    fan_out: Callable[..., list[SensitivityPoint]] | None = None,
                    ) -> tuple[SensitivityPoint, list[SensitivityPoint]]:
    """Every (group, ratio) point; writes sensitivity.json, .md and .png to `output`. Returns (dense, points).

    `fan_out(model, input_hw, jobs, method, images, val_set)` evaluates the (group, ratio) jobs elsewhere
    (scaleout.sensitivity_points.DaskSensitivity) and returns their points in job order; its `failures`, if any,
    are listed in sensitivity.json.
    """
    if method not in SENSITIVITY_METHODS:
        raise ConfigError(f"sensitivity method must be one of {', '.join(SENSITIVITY_METHODS)}, got {method!r}")
    if not ratios or any(not 0.0 < r < 1.0 for r in ratios):
        raise ConfigError(f"sensitivity ratios must be in (0, 1), got {list(ratios)}")
    if val_images is not None and val_images < 1:
        raise ConfigError(f"--val-images must be >= 1, got {val_images}")
    checkpoint = load_checkpoint(checkpoint_path)
    model, input_hw = checkpoint.model.eval(), checkpoint.input_hw
    groups = select_groups(prunable_groups(model, input_hw), layers)
    val_set = load_dataset(data, split, checkpoint.classes)
    val_set = dataclasses.replace(val_set, samples=val_set.samples[:val_images])
    images = LetterboxedImages(val_set, input_hw)
    dense_cost, dense_map = model_cost(model, input_hw), evaluate_model(model, images, val_set)
    dense = SensitivityPoint("dense", 0.0, dense_cost.params, dense_cost.macs, dense_map.map50, dense_map.map50_95, 0.0)
    jobs = [(group, ratio) for group in groups for ratio in sorted(ratios)]
    if fan_out is None:
        points = [sensitivity_point(model, input_hw, group, ratio, method, images, val_set)
                  for group, ratio in tqdm(jobs, desc="sensitivity", unit="eval", disable=not progress)]
    else:
        points = fan_out(model, input_hw, jobs, method, images, val_set)
    failed = [asdict(f) for f in getattr(fan_out, "failures", [])]
    write_sensitivity(output, {"checkpoint": str(checkpoint_path), "data": str(data), "split": split,
                               "val_images": len(val_set), "method": method, "ratios": sorted(ratios),
                               **({"failed": failed} if failed else {})},
                      groups, dense, points, f"val mAP50 on {len(val_set)} images")
    return dense, points


def write_sensitivity(output: Path, header: dict, groups: Sequence[Sequence[str]], dense: SensitivityPoint,
                      points: list[SensitivityPoint], scored_as: str) -> None:
    """sensitivity.json (``header``, dense, groups, points), .md and .png in ``output``; ``scored_as`` names the
    score in the ``mAP50`` fields (e.g. "val mAP50 on 200 images")."""
    output.mkdir(parents=True, exist_ok=True)
    (output / "sensitivity.json").write_text(json.dumps({
        **header, "scored_as": scored_as, "dense": asdict(dense), "groups": [list(group) for group in groups],
        "points": [asdict(p) for p in points]}, indent=2))
    (output / "sensitivity.md").write_text(sensitivity_markdown(dense, points, header["method"], scored_as))
    sensitivity_plot(dense, points, output / "sensitivity.png", scored_as)


def sensitivity_markdown(dense: SensitivityPoint, points: list[SensitivityPoint], method: str, scored_as: str) -> str:
    ratios = sorted({p.ratio for p in points})
    by_group: dict[str, dict[float, SensitivityPoint]] = {}
    for p in points:
        by_group.setdefault(p.group, {})[p.ratio] = p
    lines = [f"# Sensitivity ({method})", "",
             f"Each layer group pruned alone; {scored_as} (dense {dense.mAP50:.3f}), "
             "Δ in points, MACs cut of the whole model.", "",
             "| layer group | " + " | ".join(f"{r:g}: score (Δ, MACs cut)" for r in ratios) + " |",
             "|---|" + "---|" * len(ratios)]
    for group, row in by_group.items():
        cells = [f"{row[r].mAP50:.3f} ({(row[r].mAP50 - dense.mAP50) * 100:+.1f}, {1 - row[r].macs / dense.macs:.1%})"
                 if r in row else "failed" for r in ratios]
        lines.append(f"| {group} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


LABELLED_GROUPS = 12


def _short(group: str, width: int = 60) -> str:
    """A group's name for a legend: its first layer, the number of others, cut to ``width`` from the left."""
    layers = group.split("+")
    name = layers[0] + (f" +{len(layers) - 1}" if len(layers) > 1 else "")
    return name if len(name) <= width else "…" + name[-width + 1:]


def sensitivity_plot(dense: SensitivityPoint, points: list[SensitivityPoint], path: Path,
                     scored_as: str = "val mAP50") -> Path:
    """One curve per layer group: the score against ratio, starting from the dense model at 0. With more than
    :data:`LABELLED_GROUPS` groups (an imported graph has dozens), the most sensitive are drawn in colour and
    named, the others in grey."""
    plt = pyplot()

    by_group: dict[str, list[SensitivityPoint]] = {}
    for p in points:
        by_group.setdefault(p.group, []).append(p)
    worst_first = sorted(by_group, key=lambda group: min(p.mAP50 for p in by_group[group]))
    named = set(worst_first[:LABELLED_GROUPS])
    figure, axis = plt.subplots(figsize=(9, 6))
    for group in sorted(by_group, key=lambda group: group in named):   # the named ones drawn on top
        curve = sorted(by_group[group], key=lambda p: p.ratio)
        style = {"marker": "o", "label": _short(group)} if group in named else {"color": "0.8", "linewidth": 0.8}
        axis.plot([0.0] + [p.ratio for p in curve], [dense.mAP50] + [p.mAP50 for p in curve], **style)
    axis.set_xlabel("channels removed from the group (ratio)")
    axis.set_ylabel(scored_as.split(" on ")[0])
    axis.set_title("Sensitivity: one layer group pruned at a time"
                   + (f" ({LABELLED_GROUPS} most sensitive of {len(by_group)} named)" if len(by_group) > len(named)
                      else ""), fontsize=10)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=6, loc="lower left")
    save_figure(figure, path, dpi=120)
    return path
