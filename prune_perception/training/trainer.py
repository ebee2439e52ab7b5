"""Training loop: AdamW/SGD, warm-up + cosine (or plateau) LR, EMA, early stop on val mAP50, resume.

Under ``torchrun`` (see :mod:`prune_perception.training.distributed` and docs/scale-out.md) the same loop
runs on every rank with DistributedDataParallel: each optimizer step consumes the same global batch of
``optim.batch_size`` images as one process would (split into equal per-rank shards), the loss is
normalised by the whole global batch, gradients are averaged over ranks, and BatchNorm normalises over
the global batch (``distributed.synchronized_batchnorm``: SyncBatchNorm's computation over gloo, on
the CPU), so the ranks compute what one process computes, up to float rounding. Only rank 0 evaluates
and writes checkpoints, history, plots and progress bars; the evaluation result is broadcast so that
every rank takes the same best/plateau/early-stop decisions.
"""

from __future__ import annotations

import inspect
import json
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import BatchSampler, DataLoader, RandomSampler, Sampler
from tqdm import tqdm

from prune_perception.config import TrainConfig, to_dict
from prune_perception.data.dataset import DetectionDataset, load_dataset
from prune_perception.data.torch_dataset import TorchDetectionDataset, collate_detections
from prune_perception.errors import ConfigError, DatasetError
from prune_perception.evaluation.coco_map import MapResult
from prune_perception.models.arch import default_arch
from prune_perception.models.checkpoint import load_checkpoint, save_checkpoint
from prune_perception.models.detector import Detector
from prune_perception.models.torch_eval import LetterboxedImages, evaluate_model
from prune_perception.training import distributed
from prune_perception.training.distillation import Distiller
from prune_perception.training.ema import ModelEMA
from prune_perception.training.loss import DetectionLoss
from prune_perception.evaluation.plots import pyplot, save_figure
from prune_perception.training.regularization import SparsityRegularizer
from prune_perception.training.schedule import check_optim_choices, lr_factor, make_optimizer, plateau_scheduler


@dataclass
class EpochRecord:
    epoch: int
    lr: float
    loss: float
    loss_cls: float
    loss_box: float
    mAP50: float | None
    mAP50_95: float | None
    seconds: float
    loss_sparsity: float = 0.0     # weighted sparsity penalty (part of `loss`)
    loss_distill: float = 0.0      # weighted distillation loss (part of `loss`)


@dataclass
class TrainResult:
    best_checkpoint: Path
    best_epoch: int
    best_map: MapResult
    history: list[EpochRecord] = field(default_factory=list)
    stopped_early: bool = False


def validate_train_config(config: TrainConfig) -> None:
    """Range checks that the YAML types alone do not express."""
    optim = config.optim
    check_optim_choices(optim, "optim")
    checks = [
        (optim.epochs >= 1, f"optim.epochs must be >= 1, got {optim.epochs}"),
        (optim.batch_size >= 1, f"optim.batch_size must be >= 1, got {optim.batch_size}"),
        (optim.lr > 0, f"optim.lr must be > 0, got {optim.lr}"),
        (optim.eval_interval >= 1, f"optim.eval_interval must be >= 1, got {optim.eval_interval}"),
        (len(config.model.input_size) == 2 and all(s % 32 == 0 and s > 0 for s in config.model.input_size),
         f"model.input_size must be [H, W], multiples of 32, got {config.model.input_size}"),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)


class RankBatches(Sampler[list[int]]):
    """This rank's share of every global batch of ``batches`` (contiguous, as equal as possible).

    The global batches come from the same RandomSampler + BatchSampler (and the same seeded generator)
    as a single process's DataLoader, so the union of all ranks' step-i shards is exactly the
    single-process batch i.
    """

    def __init__(self, batches: BatchSampler, rank: int, world_size: int):
        self.batches, self.rank, self.world_size = batches, rank, world_size

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self):
        for batch in self.batches:
            n = len(batch)
            yield batch[n * self.rank // self.world_size: n * (self.rank + 1) // self.world_size]


class TrainStep(nn.Module):
    """The module DistributedDataParallel wraps: the model plus the distiller's feature adapters.

    ``forward(images)`` returns ``((cls_logits, distances), weighted distillation loss)``. Running the
    distiller's student forward inside this module's forward is what makes DDP average the student's
    (and the adapters') gradients; the frozen teacher is not a submodule (no gradients, not synchronised).
    """

    def __init__(self, model: Detector, distiller: Distiller | None = None):
        super().__init__()
        self.model = model
        self.adapters = distiller.adapters if distiller else nn.ModuleList()
        self._distiller = [distiller]  # in a list: not registered as a submodule (its teacher stays out)

    def forward(self, images: torch.Tensor) -> tuple[tuple[torch.Tensor, torch.Tensor], torch.Tensor]:
        distiller = self._distiller[0]
        if distiller:
            return distiller.student_forward(images)
        return self.model(images), images.new_zeros(())


def load_datasets(config: TrainConfig) -> tuple[DetectionDataset, DetectionDataset]:
    train = load_dataset(config.data.train, config.data.train_split, config.data.classes)
    val = load_dataset(config.data.val, config.data.val_split, train.classes)
    if not any(len(s.labels) for s in train.samples):
        raise DatasetError(f"training set {train.source} has no annotated objects")
    return train, val


class Trainer:
    """Train (or fine-tune, when `model` is given) a detector as described by a TrainConfig.

    `distiller` (built for `model`) adds knowledge distillation from its frozen teacher.
    `dist` is the torchrun job (default: the joined one, see :func:`distributed.init_distributed`;
    a single process when none was joined).
    """

    def __init__(self, config: TrainConfig, model: Detector | None = None, progress: bool = True,
                 distiller: Distiller | None = None, dist: distributed.DistContext | None = None):
        validate_train_config(config)
        self.config = config
        self.dist = dist if dist is not None else distributed.context()
        self.is_main = self.dist.is_main
        self.progress = progress and self.is_main
        self.output = Path(config.output)
        self.input_hw = tuple(config.model.input_size)
        self.train_set, self.val_set = load_datasets(config)
        self.classes = self.train_set.classes
        self.model = model if model is not None else Detector(default_arch(config.model.size, len(self.classes), config.model.act))
        if self.model.num_classes != len(self.classes):
            raise ConfigError(f"model has {self.model.num_classes} classes, dataset {len(self.classes)}")
        torch.manual_seed(config.optim.seed)
        self.loss_fn = DetectionLoss(self.model.strides)
        self.sparsity = SparsityRegularizer(self.model, config.sparsity)
        if distiller is not None and distiller.student is not self.model:
            raise ValueError("the distiller was built for another student model")
        self.distiller = distiller
        self.train_data = TorchDetectionDataset(self.train_set, self.input_hw, config.augment, config.optim.seed)
        self.val_images = LetterboxedImages(self.val_set, self.input_hw) if self.is_main else None
        self.loader = self._make_loader()
        self.step_module = TrainStep(self.model, distiller)
        if self.dist.is_distributed:
            # every rank starts from rank 0's weights (random init, adapters) before EMA copies them
            distributed.broadcast_module_state(self.step_module)
            self.loss_fn.global_normalizer = distributed.sum_over_ranks   # normalised by the global batch
            # buffers (BatchNorm statistics) are not re-broadcast from rank 0 at every forward: they are
            # computed over the global batch on every rank (synchronized_batchnorm)
            no_buffer_sync = ({"forward_sync_buffers": False}
                              if "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters
                              else {"broadcast_buffers": False})
            self.forward = DistributedDataParallel(self.step_module, **no_buffer_sync)
        else:
            self.forward = self.step_module
        self.optimizer = self._make_optimizer()
        self.ema = ModelEMA(self.model) if config.optim.ema else None
        self.plateau = plateau_scheduler(self.optimizer, config.optim)
        self.history: list[EpochRecord] = []
        self.start_epoch = 0
        self.best_map50 = -1.0
        self.best_epoch = -1
        self.evals_without_gain = 0

    def _make_loader(self) -> DataLoader:
        """Global batches of optim.batch_size images; under torchrun each rank loads its batch_size / world share."""
        o, world = self.config.optim, self.dist.world_size
        drop_last = len(self.train_data) > o.batch_size
        generator = torch.Generator().manual_seed(o.seed)
        if world == 1:
            return DataLoader(self.train_data, batch_size=o.batch_size, shuffle=True, collate_fn=collate_detections,
                              drop_last=drop_last, generator=generator)
        if o.batch_size % world:
            raise ConfigError(f"optim.batch_size {o.batch_size} must be divisible by the number of processes "
                              f"({world}): each rank trains batch_size / {world} images per step")
        if len(self.train_data) < world:
            raise ConfigError(f"{len(self.train_data)} training images cannot be shared by {world} processes")
        # Same sampler chain and generator as the single-process DataLoader (the loader draws its worker
        # base seed from `generator` first, then the sampler its permutation): identical global batches.
        batches = BatchSampler(RandomSampler(self.train_data, generator=generator), o.batch_size, drop_last)
        return DataLoader(self.train_data, batch_sampler=RankBatches(batches, self.dist.rank, world),
                          collate_fn=collate_detections, generator=generator)

    def _trainable_parameters(self) -> list[torch.nn.Parameter]:
        """The model's parameters plus the distiller's feature adapters."""
        return [*self.model.parameters(), *(self.distiller.parameters() if self.distiller else ())]

    def _make_optimizer(self) -> torch.optim.Optimizer:
        decay = [p for p in self._trainable_parameters() if p.ndim > 1]
        no_decay = [p for p in self._trainable_parameters() if p.ndim <= 1]
        groups = [{"params": decay, "weight_decay": self.config.optim.weight_decay},
                  {"params": no_decay, "weight_decay": 0.0}]
        return make_optimizer(groups, self.config.optim)

    @property
    def eval_model(self) -> Detector:
        return self.ema.model if self.ema else self.model

    def lr_at(self, step: float, steps_per_epoch: int) -> float:
        """Warm-up then cosine; with the plateau schedule only the warm-up is applied here."""
        factor = lr_factor(self.config.optim, step, steps_per_epoch)
        return self.optimizer.param_groups[0]["lr"] if factor is None else self.config.optim.lr * factor

    # -- checkpoints -------------------------------------------------------------------------
    def _meta(self) -> dict[str, Any]:
        return {"config": to_dict(self.config), "best_epoch": self.best_epoch, "best_mAP50": self.best_map50}

    def save_last(self, epoch: int) -> None:
        extra = {"epoch": epoch, "optimizer": self.optimizer.state_dict(),
                 "ema": self.ema.state_dict() if self.ema else {}, "best_map50": self.best_map50,
                 "best_epoch": self.best_epoch, "evals_without_gain": self.evals_without_gain,
                 "history": json.dumps([r.__dict__ for r in self.history])}
        save_checkpoint(self.output / "last.pt", self.model, self.classes, self.input_hw, self._meta(), extra)

    def resume(self) -> bool:
        """Continue from output/last.pt if it exists; returns whether it did.

        Under torchrun rank 0 reads the file and broadcasts its contents (the other ranks need no access to it).
        """
        state: dict[str, Any] | None = None
        if self.is_main:
            try:
                state = self._read_last()
            except ConfigError as exc:
                state = {"error": str(exc)}
        if self.dist.is_distributed:
            state = distributed.broadcast_object(state)
        if state is None:
            return False
        if "error" in state:
            raise ConfigError(state["error"])
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.ema and state["ema"]:
            self.ema.load_state_dict(state["ema"])
        self.start_epoch = int(state["epoch"]) + 1
        self.best_map50 = float(state["best_map50"])
        self.best_epoch = int(state["best_epoch"])
        self.evals_without_gain = int(state["evals_without_gain"])
        self.history = [EpochRecord(**r) for r in json.loads(state["history"])]
        return True

    def _read_last(self) -> dict[str, Any] | None:
        path = self.output / "last.pt"
        if not path.is_file():
            return None
        ckpt = load_checkpoint(path)
        if ckpt.model.arch["widths"] != self.model.arch["widths"]:
            raise ConfigError(f"cannot resume from {path}: its architecture differs from the configured model")
        extra = ckpt.extra
        return {"model": ckpt.model.state_dict(), "optimizer": extra["optimizer"], "ema": extra.get("ema") or {},
                **{key: extra[key] for key in ("epoch", "best_map50", "best_epoch", "evals_without_gain", "history")}}

    # -- loop --------------------------------------------------------------------------------
    def train_epoch(self, epoch: int) -> tuple[float, float, float, float, float]:
        """Mean (loss, loss_cls, loss_box, loss_sparsity, loss_distill) over the epoch's steps."""
        self.model.train()
        self.train_data.set_epoch(epoch)
        steps = len(self.loader)
        totals = np.zeros(5)
        bar = tqdm(self.loader, desc=f"epoch {epoch + 1}/{self.config.optim.epochs}", unit="batch",
                   disable=not self.progress, leave=False)
        with distributed.synchronized_batchnorm(self.model) if self.dist.is_distributed else nullcontext():
            totals = self._run_steps(epoch, bar, steps, totals)
        means = totals / max(steps, 1)
        if self.dist.is_distributed:
            means = distributed.all_reduce_mean(torch.from_numpy(means)).numpy()   # history: all ranks' losses
            distributed.average_buffers(self.model)   # already equal with synchronised BN; kept as a guarantee
            if self.ema:
                distributed.average_buffers(self.ema.model)
        return tuple(float(v) for v in means)

    def _run_steps(self, epoch: int, bar, steps: int, totals: np.ndarray) -> np.ndarray:
        for i, (images, targets, _) in enumerate(bar):
            lr = self.lr_at(epoch * steps + i, steps)
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            (cls_logits, distances), loss_distill = self.forward(images)   # DDP: gradients averaged over ranks
            loss, parts = self.loss_fn(cls_logits, distances, targets, self.input_hw)
            loss_sparsity = self.sparsity.penalty()
            loss = loss + loss_sparsity + loss_distill
            if not torch.isfinite(loss):
                raise FloatingPointError(f"loss became {float(loss)} at epoch {epoch + 1} step {i}; lower optim.lr")
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self._trainable_parameters(), 10.0)
            self.optimizer.step()
            if self.ema:
                self.ema.update(self.model)
            totals += (float(loss.detach()), parts["cls"], parts["box"], float(loss_sparsity.detach()), float(loss_distill.detach()))
            bar.set_postfix(loss=f"{totals[0] / (i + 1):.3f}", lr=f"{lr:.2e}")
        return totals

    def fit(self, resume: bool = False) -> TrainResult:
        if self.is_main:
            self.output.mkdir(parents=True, exist_ok=True)
        if resume and self.resume() and self.progress:
            tqdm.write(f"resumed from {self.output / 'last.pt'} at epoch {self.start_epoch + 1}")
        o = self.config.optim
        started = time.monotonic()
        stopped_early = False
        for epoch in range(self.start_epoch, o.epochs):
            epoch_start = time.monotonic()
            loss, loss_cls, loss_box, loss_sparsity, loss_distill = self.train_epoch(epoch)
            result = None
            if (epoch + 1) % o.eval_interval == 0 or epoch + 1 == o.epochs:
                result = self._evaluate(self.eval_model)
                self._after_eval(epoch, result)
            record = EpochRecord(epoch + 1, self.optimizer.param_groups[0]["lr"], loss, loss_cls, loss_box,
                                 result.map50 if result else None, result.map50_95 if result else None,
                                 round(time.monotonic() - epoch_start, 2), loss_sparsity, loss_distill)
            self.history.append(record)
            if self.is_main:
                self.save_last(epoch)
                self.write_history()
            if self.progress:
                shown = f" val mAP50 {record.mAP50:.3f} mAP50-95 {record.mAP50_95:.3f}" if result else ""
                tqdm.write(f"epoch {epoch + 1}/{o.epochs} loss {loss:.3f} (cls {loss_cls:.3f} box {loss_box:.3f})"
                           f"{shown} [{record.seconds:.0f}s]")
            if self.evals_without_gain >= o.patience:
                stopped_early = True
                break
            over_time = o.time_limit_min is not None and time.monotonic() - started > o.time_limit_min * 60
            if self.dist.is_distributed:
                over_time = distributed.broadcast_object(over_time)   # rank 0's clock decides for all
            if over_time:
                stopped_early = True
                break
        best_map = None
        if self.is_main:
            best = load_checkpoint(self.output / "best.pt")
            best_map = evaluate_model(best.model, self.val_images, self.val_set)
            (self.output / "eval_best.json").write_text(json.dumps(best_map.as_dict(), indent=2))
            self.write_plot()
        if self.dist.is_distributed:
            best_map = distributed.broadcast_object(best_map)
        return TrainResult(self.output / "best.pt", self.best_epoch, best_map, self.history, stopped_early)

    def _evaluate(self, model: Detector) -> MapResult:
        """Val mAP on rank 0, broadcast to every rank (they all take the same best / early-stop decisions)."""
        result = evaluate_model(model, self.val_images, self.val_set) if self.is_main else None
        return distributed.broadcast_object(result) if self.dist.is_distributed else result

    def _after_eval(self, epoch: int, result: MapResult) -> None:
        if self.plateau:
            self.plateau.step(result.map50)
        if result.map50 > self.best_map50:
            self.best_map50, self.best_epoch, self.evals_without_gain = result.map50, epoch + 1, 0
            if self.is_main:
                save_checkpoint(self.output / "best.pt", self.eval_model, self.classes, self.input_hw, self._meta())
        else:
            self.evals_without_gain += 1

    def write_history(self) -> None:
        (self.output / "history.json").write_text(json.dumps([r.__dict__ for r in self.history], indent=2))

    def write_plot(self) -> Path:
        plt = pyplot()
        epochs = [r.epoch for r in self.history]
        fig, (ax_loss, ax_map) = plt.subplots(1, 2, figsize=(10, 4))
        ax_loss.plot(epochs, [r.loss for r in self.history], label="total")
        ax_loss.plot(epochs, [r.loss_cls for r in self.history], label="cls")
        ax_loss.plot(epochs, [r.loss_box for r in self.history], label="box")
        ax_loss.set(xlabel="epoch", ylabel="train loss", title="Loss")
        ax_loss.legend()
        evaluated = [r for r in self.history if r.mAP50 is not None]
        ax_map.plot([r.epoch for r in evaluated], [r.mAP50 for r in evaluated], marker="o", label="mAP50")
        ax_map.plot([r.epoch for r in evaluated], [r.mAP50_95 for r in evaluated], marker="o", label="mAP50-95")
        ax_map.set(xlabel="epoch", ylabel="val mAP", title="Validation", ylim=(0, 1))
        ax_map.legend()
        return save_figure(fig, self.output / "training.png", dpi=100)
