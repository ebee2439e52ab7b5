"""Label-free fine-tuning of a pruned student by distillation from its dense teacher on unlabeled frames.

The ``finetune`` section as training reads it (:mod:`prune_perception.training.schedule`): AdamW or SGD (on
a student without any BatchNorm, e.g. with ``distill.batchnorm`` off, per-tensor learning rates relative to
each tensor's scale: :func:`relative_lr_groups`), warm-up then cosine (or plateau) LR, and with ``ema`` an
exponential moving average of the student's weights that is scored and kept instead of the raw weights.
Augmented views of the frames (:mod:`.frame_augment`: flips, zoom-in crops), agreement on the
held-out frames after every ``eval_interval`` epochs, early stop after ``patience`` evaluations without gain,
and the best weights restored at the end. ``time_limit_min`` stops between epochs.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn
from tqdm import tqdm

from prune_perception.config import OptimConfig
from prune_perception.errors import ConfigError
from prune_perception.external.agreement import Agreement, AgreementScorer
from prune_perception.external.batchnorm_reinsertion import has_batchnorm
from prune_perception.external.frame_augment import FrameAugment
from prune_perception.external.label_free_loss import DistillationLoss
from prune_perception.training.ema import ModelEMA
from prune_perception.training.schedule import check_optim_choices, lr_factor, make_optimizer, plateau_scheduler

MIN_RMS = 1e-4
"""Floor of a tensor's RMS in :func:`relative_lr_groups` (a zero-initialised bias still moves)."""

@dataclass
class FinetuneResult:
    """Per-evaluation records and the best agreement reached (its weights are in the student)."""

    best: Agreement
    epochs: list[dict] = field(default_factory=list)
    stopped_early: bool = False


def relative_lr_groups(parameters, lr: float) -> list[dict]:
    """One AdamW group per tensor with ``lr x RMS(tensor)``: steps relative to each tensor's scale.

    Exported graphs fold BatchNorm into the convs, so weight scales differ by orders of magnitude
    between layers (a first conv on 0..255 pixels has weights ~1e-3); AdamW's steps are ~lr in
    absolute size whatever the scale, so one lr either destroys small tensors or never moves large ones.
    With BatchNorm after the convs (re-inserted, or the model's own) a conv's scale no longer matters and
    one plain lr is better (measured: docs/external-models.md).
    """
    groups = []
    for parameter in parameters:
        if parameter.requires_grad:
            rms = float(parameter.detach().pow(2).mean().sqrt())
            groups.append({"params": [parameter], "lr": lr * max(rms, MIN_RMS)})
    return groups


def distill_finetune(loss: DistillationLoss, frames: torch.Tensor, scorer: AgreementScorer, optim: OptimConfig,
                     progress: bool = True, views: FrameAugment = FrameAugment(),
                     before_epoch: Callable[[int], None] | None = None,
                     scored_model: Callable[[], nn.Module] | None = None) -> FinetuneResult:
    """Fine-tune ``loss.student`` in place on ``frames`` (float16/32 ``[N,3,H,W]``, augmented by ``views``);
    returns the history. ``before_epoch(epoch)`` runs at the start of each epoch; ``scored_model()`` is what
    is scored, and whose weights are kept as the best (default: the student, or its weight average with
    ``optim.ema``; the elastic schedule scores its what-if network, of the student's structure, and turns
    ``ema`` off)."""
    if optim.epochs < 1 or optim.batch_size < 1 or optim.lr <= 0 or optim.eval_interval < 1:
        raise ConfigError(f"fine-tuning needs epochs >= 1, batch_size >= 1, lr > 0 and eval_interval >= 1, got "
                          f"{optim.epochs}, {optim.batch_size}, {optim.lr}, {optim.eval_interval}")
    check_optim_choices(optim, "finetune")
    if optim.ema and scored_model is not None:
        raise ValueError("finetune.ema averages the student, scored_model scores another network: pass ema off")
    student = loss.student
    generator = torch.Generator().manual_seed(optim.seed)
    parameters = [p for p in loss.student_parameters() if p.requires_grad]
    groups = ([{"params": parameters}] if has_batchnorm(student) else relative_lr_groups(parameters, optim.lr))
    optimizer = make_optimizer([{"weight_decay": optim.weight_decay, **group} for group in groups], optim)
    base_lrs = [group["lr"] for group in optimizer.param_groups]
    plateau = plateau_scheduler(optimizer, optim)
    batches_per_epoch = math.ceil(len(frames) / optim.batch_size)
    ema = ModelEMA(student) if optim.ema else None   # the decay and ramp training uses
    scored_model = scored_model or (lambda: ema.model if ema else student)
    scored = scored_model()
    best = scorer.score(scored)
    result = FinetuneResult(best, [dict(epoch=0, loss=None, **best.as_dict())])
    best_state, waited, started = copy.deepcopy(scored.state_dict()), 0, time.monotonic()
    for epoch in range(1, optim.epochs + 1):
        if before_epoch is not None:
            before_epoch(epoch)
        student.train()
        order = torch.randperm(len(frames), generator=generator)
        total = 0.0
        bar = tqdm(range(batches_per_epoch), desc=f"distill {epoch}/{optim.epochs}", unit="batch",
                   disable=not progress, leave=False)
        for index in bar:
            factor = lr_factor(optim, (epoch - 1) * batches_per_epoch + index, batches_per_epoch)
            if factor is not None:
                for group, base_lr in zip(optimizer.param_groups, base_lrs):
                    group["lr"] = base_lr * factor
            images = views(frames[order[index * optim.batch_size:(index + 1) * optim.batch_size]].float(), generator)
            value, _ = loss(images)
            optimizer.zero_grad(set_to_none=True)
            value.backward()
            optimizer.step()
            if ema:
                ema.update(student)
            total += value.item()
            bar.set_postfix(loss=f"{total / (index + 1):.4f}")
        record = {"epoch": epoch, "loss": total / batches_per_epoch}
        if epoch % optim.eval_interval == 0 or epoch == optim.epochs:
            scored = scored_model()
            agreement = scorer.score(scored)
            record.update(agreement.as_dict())
            if plateau:
                plateau.step(agreement.score())
            if agreement.score() > best.score():
                best, best_state, waited = agreement, copy.deepcopy(scored.state_dict()), 0
            else:
                waited += 1
            if progress:
                tqdm.write(f"distill epoch {epoch}: loss {record['loss']:.4f}, agreement "
                           + (f"mAP50 {agreement.mAP50:.3f}" if agreement.mAP50 is not None else
                              f"raw error {agreement.raw_error:.4f}"))
        result.epochs.append(record)
        over_time = optim.time_limit_min is not None and time.monotonic() - started > optim.time_limit_min * 60
        if waited >= optim.patience or over_time:
            result.stopped_early = epoch < optim.epochs
            break
    student.load_state_dict(best_state)
    student.eval()
    result.best = best
    return result
