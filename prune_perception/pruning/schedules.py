"""How a model is pruned to a spec: one-shot, iterative (fine-tune between steps) or elastic (soft, then removed)."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from prune_perception.config import PruneConfig, PruneSettings
from prune_perception.data.dataset import load_dataset
from prune_perception.data.torch_dataset import TorchDetectionDataset, collate_detections
from prune_perception.errors import ConfigError
from prune_perception.evaluation.coco_map import MapResult
from prune_perception.models.cost import model_cost
from prune_perception.models.detector import Detector
from prune_perception.pruning.choices import SCHEDULES
from prune_perception.pruning.elastic import elastic_prune
from prune_perception.pruning.finetune import finetune
from prune_perception.pruning.history import PruneStep
from prune_perception.pruning.importance import accumulate_gradients, make_importance
from prune_perception.pruning.latency_model import vector_block
from prune_perception.pruning.structured import PruneSpec, StructuredPruner
from prune_perception.pruning.unstructured import UnstructuredPruner, masked_convs, weight_sparsity
from prune_perception.training.loss import DetectionLoss


def resolve_schedule(settings: PruneSettings) -> str:
    """The schedule a `prune:` section asks for; ConfigError when it contradicts `iterative_steps`.

    `oneshot` with `iterative_steps` > 1 is read as `iterative` (configs older than `schedule` said so this way).
    """
    schedule, steps = settings.schedule, settings.iterative_steps
    if schedule not in SCHEDULES:
        raise ConfigError(f"prune.schedule must be one of {', '.join(SCHEDULES)}, got {schedule!r}")
    if schedule == "iterative" and steps < 2:
        raise ConfigError(f"prune.schedule iterative needs prune.iterative_steps >= 2 (--steps N), got {steps}")
    if schedule == "elastic":
        if steps != 1:
            raise ConfigError(f"prune.schedule elastic zeroes and revives filters while fine-tuning and removes them "
                              f"once at the end: prune.iterative_steps must be 1, got {steps}")
        if settings.granularity != "channel":
            raise ConfigError(f"prune.schedule elastic is structured (channel granularity), got granularity "
                              f"{settings.granularity!r}")
        return "elastic"
    return "iterative" if steps > 1 else "oneshot"


def prune_spec(settings: PruneSettings, ratio: float | None = None) -> PruneSpec:
    """The PruneSpec of the `prune:` settings, optionally at another overall ratio; without `round_to`, widths
    are aligned to the vector block of `latency_device` (latency_model.vector_block)."""
    return PruneSpec(settings.ratio if ratio is None else ratio, settings.global_pruning, settings.max_layer_ratio,
                     settings.layer_ratios, settings.iterative_steps, settings.round_to,
                     None if settings.round_to is not None else vector_block(settings.latency_device))


def prune_model(config: PruneConfig, model: Detector, input_hw: tuple[int, int], classes: list[str], spec: PruneSpec,
                evaluate: Callable[[Detector], MapResult], output: Path, progress: bool) -> list[PruneStep]:
    """Prune `model` in place as `spec` says, fine-tuning after each step; one PruneStep per step."""
    settings = config.prune
    if resolve_schedule(settings) == "elastic":
        return [elastic_prune(config, model, input_hw, spec, evaluate, output, progress)]
    pruner = (StructuredPruner(model, input_hw, make_importance(settings.method), spec)
              if settings.granularity == "channel"
              else UnstructuredPruner(model, settings.granularity, settings.method, spec))
    batches = gradient_batches(config, classes, input_hw) if settings.method == "taylor" else None
    loss_fn = DetectionLoss(model.strides)
    steps = []
    for step in tqdm(range(1, spec.iterative_steps + 1), desc="prune", unit="step", disable=not progress):
        step_start = time.monotonic()
        if batches is not None:
            accumulate_gradients(model, batches, lambda batch: loss_fn(*model(batch[0]), batch[1], input_hw)[0],
                                 settings.taylor_batches)
        pruner.step()
        model.zero_grad(set_to_none=True)
        cost, pruned_map = model_cost(model, input_hw), evaluate(model)
        tuned_map = pruned_map
        if config.finetune.epochs > 0:
            tuned_map = finetune(config, model, input_hw, output / f"finetune_step{step}", progress,
                                 getattr(pruner, "masks", None))
        steps.append(PruneStep(step, round(spec.ratio * step / spec.iterative_steps, 6), cost.params, cost.macs,
                               pruned_map.map50, pruned_map.map50_95, tuned_map.map50, tuned_map.map50_95,
                               round(time.monotonic() - step_start, 2),
                               weight_sparsity(masked_convs(model)).overall))
        if progress:
            tqdm.write(f"step {step}: params {cost.params:,} MACs {cost.macs / 1e6:.1f}M "
                       f"mAP50 {pruned_map.map50:.3f} after pruning, {tuned_map.map50:.3f} after fine-tuning")
    return steps


def gradient_batches(config: PruneConfig, classes: list[str], input_hw: tuple[int, int]) -> DataLoader:
    """Training batches whose detection-loss gradients the `taylor` criterion ranks channels by."""
    train_set = load_dataset(config.data.train, config.data.train_split, classes)
    data = TorchDetectionDataset(train_set, input_hw, None, config.finetune.seed)
    return DataLoader(data, batch_size=config.finetune.batch_size, shuffle=True, collate_fn=collate_detections,
                      generator=torch.Generator().manual_seed(config.finetune.seed))
