"""The dense model a pruning run starts from (checkpoint, cost, val mAP) and the saving of its pruned result."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from prune_perception.config import PruneConfig
from prune_perception.data.dataset import load_dataset
from prune_perception.evaluation.coco_map import MapResult
from prune_perception.models.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from prune_perception.models.cost import ModelCost, model_cost
from prune_perception.models.detector import Detector
from prune_perception.models.torch_eval import LetterboxedImages, evaluate_model
from prune_perception.pruning.history import PruneStep, dense_step
from prune_perception.runtime.model_metadata import file_sha256


@dataclass
class DenseBaseline:
    """The dense model a pruning run starts from: checkpoint, cost, val mAP and an evaluation function."""

    checkpoint: Checkpoint
    evaluate: Callable[[Detector], MapResult]
    cost: ModelCost
    map: MapResult
    output: Path
    started: float

    def step(self, **extra) -> PruneStep:
        """Row 0 of the run's history."""
        return dense_step(self.cost.params, self.cost.macs, self.map.map50, self.map.map50_95, **extra)

    def seconds(self) -> float:
        return round(time.monotonic() - self.started, 1)


def load_dense(config: PruneConfig) -> tuple[Checkpoint, Callable[[Detector], MapResult]]:
    """The dense checkpoint and a function giving a model's mAP on the configured val split."""
    checkpoint = load_checkpoint(Path(config.checkpoint))
    val_set = load_dataset(config.data.val, config.data.val_split, checkpoint.classes)
    val_images = LetterboxedImages(val_set, checkpoint.input_hw)
    return checkpoint, lambda model: evaluate_model(model, val_images, val_set)


def start_run(config: PruneConfig) -> DenseBaseline:
    """Create the output folder, load the dense checkpoint and measure its cost and val mAP."""
    output = Path(config.output)
    output.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    checkpoint, evaluate = load_dense(config)
    return DenseBaseline(checkpoint, evaluate, model_cost(checkpoint.model, checkpoint.input_hw),
                         evaluate(checkpoint.model), output, started)


def save_pruned(config: PruneConfig, dense: DenseBaseline, model: Detector, mAP50: float, run_meta: dict) -> Path:
    """Write pruned.pt with a `pruning` summary (run_meta + cost, dense reference and source) in its meta."""
    cost = model_cost(model, dense.checkpoint.input_hw)
    pruning_meta = dict(run_meta, params=cost.params, macs=cost.macs, dense_params=dense.cost.params,
                        dense_macs=dense.cost.macs, source_checkpoint=str(config.checkpoint),
                        source_sha256=file_sha256(Path(config.checkpoint)), mAP50=mAP50, dense_mAP50=dense.map.map50)
    path = dense.output / "pruned.pt"
    save_checkpoint(path, model, dense.checkpoint.classes, dense.checkpoint.input_hw,
                    dict(dense.checkpoint.meta, pruning=pruning_meta))
    return path
