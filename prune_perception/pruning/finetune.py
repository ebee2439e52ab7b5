"""Fine-tuning a pruned detector in place (single process or every torchrun rank), with optional distillation."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

from prune_perception.config import ModelConfig, PruneConfig, TrainConfig
from prune_perception.evaluation.coco_map import MapResult
from prune_perception.models.checkpoint import load_checkpoint
from prune_perception.models.detector import Detector
from prune_perception.pruning.unstructured import WeightMasks
from prune_perception.training import distributed
from prune_perception.training.distillation import Distiller, distillation_teacher
from prune_perception.training.trainer import Trainer


def finetune_config(config: PruneConfig, input_hw: tuple[int, int], output: Path,
                    epochs: int | None = None) -> TrainConfig:
    """The training config of one fine-tuning: the prune config's data, augmentation and `finetune` optimiser."""
    optim = config.finetune if epochs is None else dataclasses.replace(config.finetune, epochs=epochs)
    return TrainConfig(data=config.data, model=ModelConfig(input_size=list(input_hw)), augment=config.augment,
                       optim=optim, output=str(output))


def make_distiller(config: PruneConfig, student: Detector, input_hw: tuple[int, int],
                   macs_cut: Callable[[], float] | None = None) -> Distiller | None:
    """A Distiller from the dense checkpoint when `distill` says to distil this student (distillation_teacher)."""
    teacher = distillation_teacher(Path(config.checkpoint), config.distill, student, input_hw, macs_cut)
    return Distiller(teacher, student, config.distill) if teacher is not None else None


def finetune(config: PruneConfig, model: Detector, input_hw: tuple[int, int], output: Path, progress: bool,
             masks: WeightMasks | None = None, epochs: int | None = None) -> MapResult:
    """Fine-tune in place; the best (EMA) weights end up in `model`. `masks` stay applied throughout."""
    train_config = finetune_config(config, input_hw, output, epochs)
    if distributed.context().is_distributed:   # under torchrun: every rank fine-tunes (pruning/ddp_finetune.py)
        from prune_perception.pruning.ddp_finetune import finetune_on_all_ranks

        result = finetune_on_all_ranks(train_config, model, config, masks, progress)
    else:
        trainer = Trainer(train_config, model=model, progress=progress, distiller=make_distiller(config, model, input_hw))
        if masks is not None:
            masks.keep_applied(trainer.optimizer)
        result = trainer.fit()
    model.load_state_dict(load_checkpoint(result.best_checkpoint).model.state_dict())
    return result.best_map
