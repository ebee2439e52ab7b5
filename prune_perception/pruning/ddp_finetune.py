"""`prune` under torchrun: rank 0 prunes, every rank fine-tunes.

Rank 0 runs the whole `prune` command as a single process would (load the dense checkpoint, evaluate,
prune, write every output). Each fine-tuning it starts becomes a job for all ranks: rank 0 broadcasts
the pruned architecture and weights (plus the teacher for distillation and the weight masks of the
unstructured baseline), the other ranks rebuild the model (``Detector(arch).load_state_dict``) and all
of them fit it together with DistributedDataParallel (:class:`~prune_perception.training.trainer.Trainer`).
When rank 0 is done it sends a stop message. The other ranks never touch the output folder, so the
dense checkpoint and the dataset are the only files they read (the dataset, for training).

Not distributed: the elastic schedule (its soft pruning runs inside the training loop) and the
latency-budget search; under torchrun they are a ConfigError (run them as one process).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from prune_perception.config import DistillSettings, PruneConfig, TrainConfig
from prune_perception.errors import ConfigError
from prune_perception.models.detector import Detector, model_widths
from prune_perception.pruning.unstructured import WeightMasks, masked_convs
from prune_perception.training import distributed
from prune_perception.training.distillation import Distiller, distillation_teacher
from prune_perception.training.trainer import Trainer, TrainResult

T = TypeVar("T")
STOP, FINETUNE = "stop", "finetune"
_in_job = False   # rank 0 is inside a collective fine-tuning (a failure there must not send STOP)


def check_distributable(config: PruneConfig) -> None:
    if config.prune.schedule == "elastic":
        raise ConfigError("prune.schedule elastic is not distributed: run it as one process (without torchrun)")
    if config.prune.latency_ms is not None:
        raise ConfigError("the latency-budget search (--latency-ms) is not distributed: run it as one process "
                          "(without torchrun)")


def run_on_ranks(config: PruneConfig, command: Callable[[], T]) -> T | None:
    """Run `command` (the prune command's body) on rank 0 and serve its fine-tuning jobs on the other ranks.

    Without torchrun this is just ``command()``. Returns None on ranks other than 0.
    """
    global _in_job
    ctx = distributed.init_distributed()
    if not ctx.is_distributed:
        return command()
    _in_job = False
    completed = False
    try:
        check_distributable(config)
        if not ctx.is_main:
            serve_finetune_jobs()
            completed = True
            return None
        try:
            result = command()
            completed = True
            return result
        finally:
            if not _in_job:   # inside a job the others wait in a collective: exiting lets torchrun stop them
                distributed.broadcast_object({"op": STOP})
    finally:
        distributed.shutdown_distributed(synchronize=completed)


def _arch(model: Detector) -> dict[str, Any]:
    return dict(model.arch, widths=model_widths(model))


def _rebuild(arch: dict[str, Any], state_dict: dict) -> Detector:
    model = Detector(arch)
    model.load_state_dict(state_dict)
    return model


def fit_finetune(train_config: TrainConfig, model: Detector, teacher: Detector | None, distill: DistillSettings,
                 masks: WeightMasks | None, progress: bool) -> TrainResult:
    """What every rank runs for one fine-tuning job (the same as single-process `_finetune`)."""
    distiller = Distiller(teacher, model, distill) if teacher is not None else None
    trainer = Trainer(train_config, model=model, progress=progress, distiller=distiller)
    if masks is not None:
        masks.keep_applied(trainer.optimizer)
    return trainer.fit()


def finetune_on_all_ranks(train_config: TrainConfig, model: Detector, config: PruneConfig,
                          masks: WeightMasks | None, progress: bool) -> TrainResult:
    """Rank 0: broadcast the job (pruned arch + weights, teacher, masks), then fine-tune with every rank."""
    global _in_job
    teacher = distillation_teacher(Path(config.checkpoint), config.distill, model, tuple(train_config.model.input_size))
    distributed.broadcast_object({
        "op": FINETUNE, "train_config": train_config, "arch": _arch(model), "state_dict": model.state_dict(),
        "distill": config.distill, "teacher": (_arch(teacher), teacher.state_dict()) if teacher is not None else None,
        "masks": masks.masks if masks is not None else None})
    _in_job = True
    result = fit_finetune(train_config, model, teacher, config.distill, masks, progress)
    _in_job = False
    return result


def serve_finetune_jobs() -> int:
    """Ranks > 0: rebuild each broadcast model and fine-tune it with rank 0 until it says stop; returns the jobs."""
    jobs = 0
    while True:
        job = distributed.broadcast_object(None)
        if job["op"] == STOP:
            return jobs
        model = _rebuild(job["arch"], job["state_dict"])
        teacher = _rebuild(*job["teacher"]) if job["teacher"] is not None else None
        masks = WeightMasks(masked_convs(model), job["masks"]) if job["masks"] is not None else None
        fit_finetune(job["train_config"], model, teacher, job["distill"], masks, progress=False)
        jobs += 1
