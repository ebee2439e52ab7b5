"""The `prune` command: evaluate -> prune (one-shot or iterative) -> fine-tune -> save, with a history."""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from prune_perception.config import ModelConfig, PruneConfig, TrainConfig, to_dict
from prune_perception.data.dataset import load_dataset
from prune_perception.data.torch_dataset import TorchDetectionDataset, collate_detections
from prune_perception.evaluation.coco_map import MapResult
from prune_perception.models.checkpoint import load_checkpoint, save_checkpoint
from prune_perception.models.inference import LetterboxedImages
from prune_perception.runtime.model_metadata import file_sha256
from prune_perception.pruning.importance import accumulate_gradients, make_importance
from prune_perception.models.cost import model_cost
from prune_perception.pruning.structured import PruneSpec, StructuredPruner
from prune_perception.training.loss import DetectionLoss
from prune_perception.training.trainer import Trainer, evaluate_model


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


def run_pruning(config: PruneConfig, progress: bool = True) -> tuple[Path, list[PruneStep]]:
    """Prune `config.checkpoint` as configured; writes pruned.pt, history.json and summary.md."""
    settings = config.prune
    spec = PruneSpec(settings.ratio, settings.global_pruning, settings.max_layer_ratio, settings.layer_ratios,
                     settings.iterative_steps, settings.round_to)
    importance = make_importance(settings.method)
    output = Path(config.output)
    output.mkdir(parents=True, exist_ok=True)
    checkpoint = load_checkpoint(Path(config.checkpoint))
    model, input_hw, classes = checkpoint.model, checkpoint.input_hw, checkpoint.classes
    val_set = load_dataset(config.data.val, config.data.val_split, classes)
    val_images = LetterboxedImages(val_set, input_hw)

    def evaluate() -> MapResult:
        return evaluate_model(model, val_images, val_set)

    started = time.monotonic()
    dense_cost, dense_map = model_cost(model, input_hw), evaluate()
    history = [PruneStep(0, 0.0, dense_cost.params, dense_cost.macs, dense_map.map50, dense_map.map50_95,
                         dense_map.map50, dense_map.map50_95, 0.0)]
    pruner = StructuredPruner(model, input_hw, importance, spec)
    gradient_batches = _gradient_batches(config, classes, input_hw) if settings.method == "taylor" else None
    loss_fn = DetectionLoss(model.strides)
    for step in tqdm(range(1, spec.iterative_steps + 1), desc="prune", unit="step", disable=not progress):
        step_start = time.monotonic()
        if gradient_batches is not None:
            accumulate_gradients(model, gradient_batches,
                                 lambda batch: loss_fn(*model(batch[0]), batch[1], input_hw)[0],
                                 settings.taylor_batches)
        pruner.step()
        model.zero_grad(set_to_none=True)
        cost, pruned_map = model_cost(model, input_hw), evaluate()
        tuned_map = pruned_map
        if config.finetune.epochs > 0:
            tuned_map = _finetune(config, model, input_hw, output / f"finetune_step{step}", progress)
        history.append(PruneStep(step, round(spec.ratio * step / spec.iterative_steps, 6), cost.params, cost.macs,
                                 pruned_map.map50, pruned_map.map50_95, tuned_map.map50, tuned_map.map50_95,
                                 round(time.monotonic() - step_start, 2)))
        if progress:
            tqdm.write(f"step {step}: params {cost.params:,} MACs {cost.macs / 1e6:.1f}M "
                       f"mAP50 {pruned_map.map50:.3f} after pruning, {tuned_map.map50:.3f} after fine-tuning")
    final = history[-1]
    pruning_meta = {"method": settings.method, "ratio": settings.ratio, "scope": "global" if spec.global_pruning else "local",
                    "iterative_steps": spec.iterative_steps, "params": final.params, "macs": final.macs,
                    "dense_params": dense_cost.params, "dense_macs": dense_cost.macs,
                    "source_checkpoint": str(config.checkpoint), "source_sha256": file_sha256(Path(config.checkpoint)),
                    "mAP50": final.mAP50, "dense_mAP50": dense_map.map50}
    pruned_path = output / "pruned.pt"
    save_checkpoint(pruned_path, model, classes, input_hw, dict(checkpoint.meta, pruning=pruning_meta))
    (output / "history.json").write_text(json.dumps({"config": to_dict(config), "steps": [asdict(h) for h in history],
                                                     "seconds": round(time.monotonic() - started, 1)}, indent=2))
    (output / "summary.md").write_text(prune_markdown(history, settings.method))
    return pruned_path, history


def _gradient_batches(config: PruneConfig, classes: list[str], input_hw: tuple[int, int]) -> DataLoader:
    train_set = load_dataset(config.data.train, config.data.train_split, classes)
    data = TorchDetectionDataset(train_set, input_hw, None, config.finetune.seed)
    return DataLoader(data, batch_size=config.finetune.batch_size, shuffle=True, collate_fn=collate_detections,
                      generator=torch.Generator().manual_seed(config.finetune.seed))


def _finetune(config: PruneConfig, model, input_hw, output: Path, progress: bool) -> MapResult:
    """Fine-tune in place; the best (EMA) weights end up in `model`."""
    train_config = TrainConfig(data=config.data, model=ModelConfig(input_size=list(input_hw)), augment=config.augment,
                               optim=config.finetune, output=str(output))
    result = Trainer(train_config, model=model, progress=progress).fit()
    model.load_state_dict(load_checkpoint(result.best_checkpoint).model.state_dict())
    return result.best_map


def prune_markdown(history: list[PruneStep], method: str) -> str:
    dense = history[0]
    lines = [f"# Pruning ({method})", "",
             "| step | ratio | params | MACs (M) | MACs cut | mAP50 pruned | mAP50 fine-tuned | mAP50-95 | Δ mAP50 |",
             "|---|---|---|---|---|---|---|---|---|"]
    for h in history:
        lines.append(f"| {h.step} | {h.ratio:.2f} | {h.params:,} | {h.macs / 1e6:.1f} | {1 - h.macs / dense.macs:.1%} | "
                     f"{h.mAP50_pruned:.3f} | {h.mAP50:.3f} | {h.mAP50_95:.3f} | {h.mAP50 - dense.mAP50:+.3f} |")
    return "\n".join(lines) + "\n"
