"""Accuracy-budget search candidates on Dask: every ratio of a `steps` search pruned + fine-tuned at once.

The `steps` search tries `prune.budget_ratios` in ascending order and stops at the first ratio over
budget. Fanned out, every ratio is evaluated in parallel (one task each: prune a copy of the dense
model to that ratio, fine-tune, evaluate — :func:`~prune_perception.pruning.schedules.prune_model`, as in
the serial search), and then the same search runs over the finished results, so the chosen ratio,
`history.json` and `summary.md` are those of the serial run. Ratios past the first one over budget
are computed speculatively (their fine-tuning folders exist) but not listed, exactly as serially.
`bisect` is sequential by nature (each ratio depends on the previous outcome) and is not fanned out.

Workers read the dataset from the paths in the config (a local cluster shares this machine's files;
on a remote cluster the same paths must exist there) and write each candidate's fine-tuning outputs
under ``output/ratio_<r>`` as the serial search does.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prune_perception.config import PruneConfig
from prune_perception.models.checkpoint import Checkpoint
from prune_perception.models.detector import Detector, model_widths
from prune_perception.pruning.budget import check_search_fans_out
from prune_perception.pruning.history import PruneStep
from prune_perception.scaleout.runner import FanOutSettings, TaskFailures, map_tasks


def _candidate_task(ratio: float, shared: dict[str, Any]) -> tuple[dict, dict, PruneStep, float]:
    import torch

    from prune_perception.data.dataset import load_dataset
    from prune_perception.models.torch_eval import LetterboxedImages, evaluate_model
    from prune_perception.pruning.schedules import prune_model, prune_spec

    torch.set_num_threads(1)   # one core per worker (threads_per_worker=1)
    started = time.monotonic()
    config: PruneConfig = shared["config"]
    input_hw, classes = shared["input_hw"], shared["classes"]
    model = Detector(shared["arch"])
    model.load_state_dict(shared["state_dict"])
    model.eval()   # as the serial search's copy of the loaded checkpoint (pruning traces it)
    val_set = load_dataset(config.data.val, config.data.val_split, classes)
    images = LetterboxedImages(val_set, input_hw)
    final = prune_model(config, model, input_hw, classes, prune_spec(config.prune, ratio),
                        lambda m: evaluate_model(m, images, val_set), Path(config.output) / f"ratio_{ratio:.3f}",
                        progress=False)[-1]
    return dict(model.arch, widths=model_widths(model)), model.state_dict(), final, round(time.monotonic() - started, 2)


@dataclass
class DaskBudgetCandidates:
    """``prune(config, fan_out=settings)`` runs ``run_budget_pruning(..., fan_out=DaskBudgetCandidates(settings))``:
    candidates evaluated on Dask.

    Called with the config, the dense checkpoint and the ratios; returns ``{ratio: (model, final PruneStep,
    seconds)}``. Any failed candidate raises :class:`TaskFailures` (a search with a hole would not be the
    serial search's answer).
    """

    settings: FanOutSettings

    def __call__(self, config: PruneConfig, dense: Checkpoint,
                 ratios: Sequence[float]) -> dict[float, tuple[Detector, PruneStep, float]]:
        check_search_fans_out(config.prune.budget_search)
        shared = {"config": config, "arch": dict(dense.model.arch, widths=model_widths(dense.model)),
                  "state_dict": dense.model.state_dict(), "input_hw": tuple(dense.input_hw),
                  "classes": list(dense.classes)}
        ratios = sorted(ratios)
        results, failures = map_tasks(_candidate_task, ratios, [f"ratio {r:g}" for r in ratios], self.settings,
                                      "budget", shared)
        if failures:
            raise TaskFailures("budget candidate", failures, len(ratios))
        candidates = {}
        for ratio, (arch, state_dict, final, seconds) in zip(ratios, results):
            model = Detector(arch)
            model.load_state_dict(state_dict)
            candidates[ratio] = (model.eval(), final, seconds)
        return candidates
