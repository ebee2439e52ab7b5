"""The `prune` command: evaluate -> prune (one-shot or iterative) -> fine-tune -> save, with a history."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from prune_perception.config import ModelConfig, PruneConfig, PruneSettings, TrainConfig, to_dict
from prune_perception.data.dataset import load_dataset
from prune_perception.data.torch_dataset import TorchDetectionDataset, collate_detections
from prune_perception.errors import ConfigError
from prune_perception.evaluation.coco_map import MapResult
from prune_perception.models.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from prune_perception.models.detector import Detector
from prune_perception.models.inference import LetterboxedImages, evaluate_model
from prune_perception.runtime.model_metadata import file_sha256
from prune_perception.pruning.importance import accumulate_gradients, make_importance
from prune_perception.models.cost import ModelCost, model_cost
from prune_perception.pruning.latency_model import vector_block
from prune_perception.pruning.structured import PruneSpec, StructuredPruner
from prune_perception.pruning.unstructured import (UnstructuredPruner, WeightMasks, check_granularity, masked_convs,
                                                   weight_sparsity)
from prune_perception.training import distributed
from prune_perception.training.distillation import Distiller, validate_distill_settings
from prune_perception.training.loss import DetectionLoss
from prune_perception.training.trainer import Trainer


@dataclass
class PruneStep:
    """One row of the pruning history."""

    step: int
    ratio: float
    params: int
    macs: int
    mAP50_pruned: float       # right after removing channels
    mAP50_95_pruned: float
    mAP50: float              # after fine-tuning (= pruned values when not fine-tuned)
    mAP50_95: float
    seconds: float
    sparsity: float = 0.0     # fraction of zero conv weights (what weight/kernel granularity produces)
    latency_p50_ms: float | None = None   # measured inference latency (latency-budget runs; ONNX Runtime engine)
    latency_p99_ms: float | None = None
    elastic: list[dict] | None = None     # elastic schedule: one record per fine-tune epoch (see pruning/elastic.py)


SCHEDULES = ("oneshot", "iterative", "elastic")


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


@dataclass
class DenseBaseline:
    """The dense model a pruning run starts from: checkpoint, cost, val mAP and an evaluation function."""

    checkpoint: Checkpoint
    evaluate: Callable[[Detector], MapResult]
    cost: ModelCost
    map: MapResult
    output: Path
    started: float


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


def run_pruning(config: PruneConfig, progress: bool = True) -> tuple[Path, list[PruneStep]]:
    """Prune `config.checkpoint` as configured; writes pruned.pt, history.json and summary.md."""
    settings = config.prune
    validate_distill_settings(config.distill)
    check_granularity(settings.granularity, settings.method)
    schedule = resolve_schedule(settings)
    if schedule == "elastic":
        from prune_perception.pruning.elastic import validate_elastic

        validate_elastic(config)
    dense = start_run(config)
    model, input_hw = dense.checkpoint.model, dense.checkpoint.input_hw
    history = [PruneStep(0, 0.0, dense.cost.params, dense.cost.macs, dense.map.map50, dense.map.map50_95,
                         dense.map.map50, dense.map.map50_95, 0.0)]
    spec = prune_spec(settings)
    history += prune_model(config, model, input_hw, dense.checkpoint.classes, spec, dense.evaluate, dense.output,
                           progress)
    final = history[-1]
    pruned_path = save_pruned(config, dense, model, final.mAP50, {
        "method": settings.method, "ratio": settings.ratio, "scope": "global" if settings.global_pruning else "local",
        "iterative_steps": settings.iterative_steps, "schedule": schedule, "granularity": settings.granularity,
        "sparsity": final.sparsity, "round_to": spec.round_to, "aligned_to": spec.align_to})
    (dense.output / "history.json").write_text(json.dumps({
        "config": to_dict(config), "steps": [asdict(h) for h in history],
        "seconds": round(time.monotonic() - dense.started, 1)}, indent=2))
    (dense.output / "summary.md").write_text(prune_markdown(history, settings.method, schedule))
    return pruned_path, history


def prune_spec(settings: PruneSettings, ratio: float | None = None) -> PruneSpec:
    """The PruneSpec of the `prune:` settings, optionally at another overall ratio; without `round_to`, widths
    are aligned to the vector block of `latency_device` (latency_model.vector_block)."""
    return PruneSpec(settings.ratio if ratio is None else ratio, settings.global_pruning, settings.max_layer_ratio,
                     settings.layer_ratios, settings.iterative_steps, settings.round_to,
                     None if settings.round_to is not None else vector_block(settings.latency_device))


def load_dense(config: PruneConfig) -> tuple[Checkpoint, Callable[[Detector], MapResult]]:
    """The dense checkpoint and a function giving a model's mAP on the configured val split."""
    checkpoint = load_checkpoint(Path(config.checkpoint))
    val_set = load_dataset(config.data.val, config.data.val_split, checkpoint.classes)
    val_images = LetterboxedImages(val_set, checkpoint.input_hw)
    return checkpoint, lambda model: evaluate_model(model, val_images, val_set)


def prune_model(config: PruneConfig, model: Detector, input_hw: tuple[int, int], classes: list[str], spec: PruneSpec,
                evaluate: Callable[[Detector], MapResult], output: Path, progress: bool) -> list[PruneStep]:
    """Prune `model` in place as `spec` says, fine-tuning after each step; one PruneStep per step."""
    settings = config.prune
    if resolve_schedule(settings) == "elastic":
        from prune_perception.pruning.elastic import elastic_prune

        return [elastic_prune(config, model, input_hw, spec, evaluate, output, progress)]
    pruner = (StructuredPruner(model, input_hw, make_importance(settings.method), spec)
              if settings.granularity == "channel"
              else UnstructuredPruner(model, settings.granularity, settings.method, spec))
    gradient_batches = _gradient_batches(config, classes, input_hw) if settings.method == "taylor" else None
    loss_fn = DetectionLoss(model.strides)
    steps = []
    for step in tqdm(range(1, spec.iterative_steps + 1), desc="prune", unit="step", disable=not progress):
        step_start = time.monotonic()
        if gradient_batches is not None:
            accumulate_gradients(model, gradient_batches,
                                 lambda batch: loss_fn(*model(batch[0]), batch[1], input_hw)[0],
                                 settings.taylor_batches)
        pruner.step()
        model.zero_grad(set_to_none=True)
        cost, pruned_map = model_cost(model, input_hw), evaluate(model)
        tuned_map = pruned_map
        if config.finetune.epochs > 0:
            tuned_map = _finetune(config, model, input_hw, output / f"finetune_step{step}", progress,
                                  getattr(pruner, "masks", None))
        steps.append(PruneStep(step, round(spec.ratio * step / spec.iterative_steps, 6), cost.params, cost.macs,
                               pruned_map.map50, pruned_map.map50_95, tuned_map.map50, tuned_map.map50_95,
                               round(time.monotonic() - step_start, 2),
                               weight_sparsity(masked_convs(model)).overall))
        if progress:
            tqdm.write(f"step {step}: params {cost.params:,} MACs {cost.macs / 1e6:.1f}M "
                       f"mAP50 {pruned_map.map50:.3f} after pruning, {tuned_map.map50:.3f} after fine-tuning")
    return steps


def _gradient_batches(config: PruneConfig, classes: list[str], input_hw: tuple[int, int]) -> DataLoader:
    train_set = load_dataset(config.data.train, config.data.train_split, classes)
    data = TorchDetectionDataset(train_set, input_hw, None, config.finetune.seed)
    return DataLoader(data, batch_size=config.finetune.batch_size, shuffle=True, collate_fn=collate_detections,
                      generator=torch.Generator().manual_seed(config.finetune.seed))


def _finetune(config: PruneConfig, model, input_hw, output: Path, progress: bool,
              masks: WeightMasks | None = None) -> MapResult:
    """Fine-tune in place; the best (EMA) weights end up in `model`. `masks` stay applied throughout."""
    train_config = TrainConfig(data=config.data, model=ModelConfig(input_size=list(input_hw)), augment=config.augment,
                               optim=config.finetune, output=str(output))
    if distributed.context().is_distributed:   # under torchrun: every rank fine-tunes (pruning/ddp_finetune.py)
        from prune_perception.pruning.ddp_finetune import finetune_on_all_ranks

        result = finetune_on_all_ranks(train_config, model, config, masks, progress)
    else:
        trainer = Trainer(train_config, model=model, progress=progress, distiller=_distiller(config, model))
        if masks is not None:
            masks.keep_applied(trainer.optimizer)
        result = trainer.fit()
    model.load_state_dict(load_checkpoint(result.best_checkpoint).model.state_dict())
    return result.best_map


def _distiller(config: PruneConfig, student: Detector) -> Distiller | None:
    """Distillation from the dense checkpoint (the teacher) when `distill.enabled`."""
    if not config.distill.enabled:
        return None
    return Distiller(load_checkpoint(Path(config.checkpoint)).model, student, config.distill)


def prune_markdown(history: list[PruneStep], method: str, schedule: str = "oneshot") -> str:
    dense = history[0]
    lines = [f"# Pruning ({method}, {schedule})", "",
             "| step | ratio | params | MACs (M) | MACs cut | mAP50 pruned | mAP50 fine-tuned | mAP50-95 | Δ mAP50 |",
             "|---|---|---|---|---|---|---|---|---|"]
    for h in history:
        lines.append(f"| {h.step} | {h.ratio:.2f} | {h.params:,} | {h.macs / 1e6:.1f} | {1 - h.macs / dense.macs:.1%} | "
                     f"{h.mAP50_pruned:.3f} | {h.mAP50:.3f} | {h.mAP50_95:.3f} | {h.mAP50 - dense.mAP50:+.3f} |")
    return "\n".join(lines) + "\n"
