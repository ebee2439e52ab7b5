"""The elastic (soft) schedule for imported models: filters zeroed at every epoch while distilling, removed at the end.

The same soft filter pruning as our own detector's (:mod:`prune_perception.pruning.elastic`), label-free: the
student is the dense model with BatchNorm re-inserted (:mod:`.batchnorm_reinsertion`, calibrated to the dense
statistics, nothing removed yet). At the start of each distillation epoch the channels torch-pruning would remove
now (importance on the current weights, protections of :class:`~.graph_pruning.GraphPruner`) have their filters
zeroed and are masked after their BatchNorm with a straight-through gradient
(:class:`~prune_perception.pruning.channel_masks.StraightThroughMask`), so they keep learning and can win their
place back. Every evaluation scores the what-if network (a copy with that moment's selection zeroed, BatchNorm
included: exactly the smaller network), and the best one is removed for real, then fine-tuned for
``prune.elastic_hard_epochs`` more epochs when asked. The masks sit on the BatchNorm output, before the
activation: exact for activations with f(0) = 0 (ReLU, SiLU, LeakyReLU); a masked ReLU channel gets no gradient
back (YOLOX and YOLOv8 use SiLU).
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from prune_perception.config import LabelFreeDistillSettings, OptimConfig, PruneSettings
from prune_perception.errors import ConfigError
from prune_perception.external.agreement import Agreement, AgreementScorer
from prune_perception.external.batchnorm_reinsertion import ConvWithBatchNorm, has_batchnorm, insert_batchnorm
from prune_perception.external.distill_finetune import FinetuneResult, distill_finetune
from prune_perception.external.frame_augment import FrameAugment
from prune_perception.external.graph_pruning import GraphPruner, dependency_graph, plan_pruning
from prune_perception.external.label_free_loss import DistillationLoss
from prune_perception.pruning.channel_masks import (SoftSelector, StraightThroughMask, regrown_filters,
                                                    remove_zeroed, selection_filters, zero_selection)
from prune_perception.pruning.elastic import validate_elastic_settings
from prune_perception.pruning.importance import make_importance
from prune_perception.pruning.structured import PruneSpec


@dataclass
class ImportedElasticEpoch:
    """One epoch boundary: filters zeroed at its start; of those zeroed one epoch earlier, how many had non-zero
    weights again and how many were not zeroed again (came back)."""

    epoch: int
    zeroed: int
    regrown: int
    revived: int


LossFactory = Callable[[nn.Module, Sequence[str]], DistillationLoss]


@dataclass
class ElasticResult:
    """The student (BatchNorm still in), the what-if agreement of the first selection, the fine-tuning history
    (soft epochs, then hard ones when they helped), the epoch boundaries and the protected layers."""

    student: nn.Module
    first: Agreement
    tuned: FinetuneResult
    epochs: list[ImportedElasticEpoch]
    protected: list[str]


def check_elastic(settings: PruneSettings, finetune: OptimConfig, distill: LabelFreeDistillSettings) -> None:
    """ConfigError for an elastic run this path cannot do."""
    validate_elastic_settings(settings, finetune.epochs)
    if not distill.batchnorm:
        raise ConfigError("the elastic schedule on imported models masks channels after re-inserted BatchNorm: "
                          "distill.batchnorm must be on")


def check_elastic_model(model: nn.Module) -> None:
    """ConfigError for a module with BatchNorm of its own (the masks sit after BatchNorm this path re-inserts)."""
    if has_batchnorm(model):
        raise ConfigError("the elastic schedule on imported models needs a BatchNorm-folded export (this module has "
                          "BatchNorm of its own): use oneshot or iterative")


def elastic_distill(teacher: nn.Module, example_input: torch.Tensor, loss_of: LossFactory, scorer: AgreementScorer,
                    frames: torch.Tensor, statistics, spec: PruneSpec, settings: PruneSettings, finetune: OptimConfig,
                    views: FrameAugment = FrameAugment(), keep_layers: Sequence[str] = (),
                    progress: bool = True) -> ElasticResult:
    """Soft-prune a copy of ``teacher`` while distilling (module doc), remove the best selection for real.

    ``loss_of(student, protected layers)`` builds the distillation loss; ``statistics``: the dense model's
    :func:`~.batchnorm_reinsertion.conv_statistics` on ``frames``. The student comes back with its BatchNorm
    still in (the caller folds it). ``teacher`` is BatchNorm-folded (the caller checks: :func:`check_elastic_model`).
    """
    student = copy.deepcopy(teacher).requires_grad_(True)
    protected = plan_pruning(dependency_graph(student, example_input), student, keep_layers)[0].protected
    insert_batchnorm(student, statistics, frames, None, protected, finetune.batch_size)
    probe = copy.deepcopy(student)
    selector, probe_selector = (
        SoftSelector(GraphPruner(model, example_input, make_importance(settings.method), spec, keep_layers,
                                 check=model is student).pruner, model)   # the probe is a copy of the checked student
        for model in (student, probe))
    mask = StraightThroughMask(student, {f"{name}.0": (module[0], module[1]) for name, module in student.named_modules()
                                         if isinstance(module, ConvWithBatchNorm)})
    records: list[ImportedElasticEpoch] = []
    previous: set = set()

    def what_if() -> nn.Module:
        probe.load_state_dict(student.state_dict())
        zero_selection(probe, probe_selector.select(), full=True)
        return probe

    def before_epoch(epoch: int) -> None:
        nonlocal previous
        selection = selector.select()
        filters = selection_filters(selection, student)
        records.append(ImportedElasticEpoch(epoch, len(filters), regrown_filters(student, previous),
                                            len(previous - filters)))
        zero_selection(student, selection, full=False)
        mask.set(selection)
        previous = filters

    first = scorer.score(what_if())
    try:
        # no weight average here: the selection zeroes the student's weights anew every epoch
        tuned = distill_finetune(loss_of(student, protected), frames, scorer,
                                 dataclasses.replace(finetune, epochs=finetune.epochs - settings.elastic_hard_epochs,
                                                     ema=False),
                                 progress, views, before_epoch, what_if)
    finally:
        mask.remove()
    _, ignored = plan_pruning(dependency_graph(student, example_input), student, keep_layers)
    remove_zeroed(student, example_input, ignored)   # exact: the best weights are the what-if network
    if settings.elastic_hard_epochs > 0:
        removed = copy.deepcopy(student.state_dict())
        hard = distill_finetune(loss_of(student, protected), frames, scorer,
                                dataclasses.replace(finetune, epochs=settings.elastic_hard_epochs), progress, views)
        if hard.best.score() >= tuned.best.score():
            tuned = dataclasses.replace(hard, epochs=tuned.epochs + hard.epochs[1:])
        else:   # like early stopping: the network as the soft phase left it was better
            student.load_state_dict(removed)
    return ElasticResult(student, first, tuned, records, protected)
