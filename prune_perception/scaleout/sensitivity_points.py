"""Sensitivity analysis on Dask: one task per (layer group, ratio).

The dense weights, the letterboxed val images and the val annotations are scattered to every worker
once; each task rebuilds the model from its arch spec and runs
:func:`~prune_perception.pruning.sensitivity.sensitivity_point`, exactly what the serial loop runs.
Points come back in the serial order, so ``sensitivity.json``/``.md``/``.png`` are written by the same
code from the same list.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from prune_perception.data.dataset import DetectionDataset
from prune_perception.models.detector import Detector, model_widths
from prune_perception.models.torch_eval import LetterboxedImages
from prune_perception.pruning.sensitivity import SensitivityPoint, group_name, sensitivity_point
from prune_perception.scaleout.runner import FanOutSettings, TaskFailure, TaskFailures, map_tasks


def _sensitivity_task(job: tuple[tuple[str, ...], float, str], shared: dict[str, Any]) -> SensitivityPoint:
    import torch

    torch.set_num_threads(1)   # one core per worker (threads_per_worker=1)
    layers, ratio, method = job
    model = Detector(shared["arch"])
    model.load_state_dict(shared["state_dict"])
    model.eval()
    return sensitivity_point(model, shared["input_hw"], layers, ratio, method, shared["images"], shared["val_set"])


@dataclass
class DaskSensitivity:
    """``run_sensitivity(..., fan_out=DaskSensitivity(settings))``: the (group, ratio) points on Dask.

    Failed points (after retries) raise :class:`TaskFailures` unless ``settings.allow_failures``; then
    they are left out of the table and listed in ``failures`` (and in sensitivity.json's ``failed``).
    """

    settings: FanOutSettings
    failures: list[TaskFailure] = field(default_factory=list)

    def __call__(self, model: Detector, input_hw: tuple[int, int], jobs: Sequence[tuple[tuple[str, ...], float]],
                 method: str, images: LetterboxedImages, val_set: DetectionDataset) -> list[SensitivityPoint]:
        shared = {"arch": dict(model.arch, widths=model_widths(model)), "state_dict": model.state_dict(),
                  "input_hw": tuple(input_hw), "images": images, "val_set": val_set}
        items = [(tuple(group), float(ratio), method) for group, ratio in jobs]
        names = [f"{group_name(group)} @ {ratio:g}" for group, ratio, _ in items]
        results, self.failures = map_tasks(_sensitivity_task, items, names, self.settings, "sensitivity", shared)
        if self.failures and not self.settings.allow_failures:
            raise TaskFailures("sensitivity", self.failures, len(items))
        return [point for point in results if point is not None]
