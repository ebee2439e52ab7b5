"""Elastic (soft) pruning: filters are zeroed at every fine-tune epoch boundary but stay in the network.

Soft filter pruning (He et al., IJCAI 2018) with a straight-through mask. At the start of each
fine-tune epoch the currently least important filters (the same importance, ratio, scope, per-layer
overrides and caps as hard pruning, coupled layers together) are zeroed. They stay in the network and
keep receiving gradient updates during the epoch, so a filter pruned early can grow back and win its
place back at the next boundary, while one that stays useless is zeroed again.

During the epoch the zeroed channels are also masked at their layer's output (channel_masks.
StraightThroughMask): the forward pass is exactly the pruned network (in BatchNorm networks a
regrown filter would otherwise be rescaled to full strength by BatchNorm at once, and a zeroed one
still emits ReLU(β)), and the backward pass hands the masked channels' gradient straight to their
BatchNorm output. Plain zeroing is not enough for "keeps receiving updates": a zeroed filter's
pre-activation is its BatchNorm shift β, and where β < 0 ReLU passes no gradient, so the filter could
never return (about 60 % of the low-importance filters of the trained demo model).

Every evaluation scores the network *with the selection of that moment removed* (filters and
BatchNorm zeroed, which computes exactly what the smaller network computes, see channel_masks.py),
so early stopping and the best checkpoint judge the network that will be deployed. The best one is
then removed for real (torch-pruning, structured: a genuinely smaller network) and, with
`prune.elastic_hard_epochs` N > 0, fine-tuned for the last N of the `finetune.epochs` epochs, so the
total fine-tuning budget equals one-shot pruning's.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

from prune_perception.config import PruneConfig, PruneSettings, TrainConfig
from prune_perception.errors import ConfigError
from prune_perception.evaluation.coco_map import MapResult
from prune_perception.models.checkpoint import load_checkpoint
from prune_perception.models.cost import model_cost
from prune_perception.models.detector import Detector
from prune_perception.pruning.channel_masks import (Selection, SoftSelector, StraightThroughMask,
                                                    regrown_filters, remove_zeroed_channels, selection_filters,
                                                    zero_selection)
from prune_perception.pruning.finetune import finetune, finetune_config, make_distiller
from prune_perception.pruning.history import PruneStep
from prune_perception.pruning.importance import make_importance
from prune_perception.pruning.structured import PruneSpec
from prune_perception.training.distillation import Distiller
from prune_perception.training.trainer import Trainer
from prune_perception.pruning.choices import GRADIENT_FREE_CRITERIA

ELASTIC_METHODS = GRADIENT_FREE_CRITERIA   # taylor needs loss gradients at every boundary


@dataclass
class ElasticEpoch:
    """What happened at the start of one elastic epoch, and the what-if val mAP50 at its end."""

    epoch: int
    zeroed: int               # conv filters zeroed at the start of this epoch (coupled layers counted each)
    regrown: int              # of those zeroed one epoch earlier: how many had non-zero weights again by now
    revived: int              # of those zeroed one epoch earlier: how many were not zeroed again (came back)
    mAP50: float | None       # val mAP50 at the end of the epoch with the selection of that moment removed


def validate_elastic(config: PruneConfig) -> None:
    validate_elastic_settings(config.prune, config.finetune.epochs)


def validate_elastic_settings(settings: PruneSettings, finetune_epochs: int) -> None:
    """ConfigError unless the importance is gradient-free and some of the fine-tuning epochs are soft ones."""
    if settings.method not in ELASTIC_METHODS:
        raise ConfigError(f"the elastic schedule ranks filters again at every epoch without loss gradients: "
                          f"prune.method must be one of {', '.join(ELASTIC_METHODS)}, got {settings.method!r}")
    if settings.elastic_hard_epochs < 0:
        raise ConfigError(f"prune.elastic_hard_epochs must be >= 0, got {settings.elastic_hard_epochs}")
    if finetune_epochs <= settings.elastic_hard_epochs:
        raise ConfigError(f"the elastic schedule needs fine-tuning epochs for its soft phase: finetune.epochs "
                          f"({finetune_epochs}) must exceed prune.elastic_hard_epochs "
                          f"({settings.elastic_hard_epochs})")


class ElasticTrainer(Trainer):
    """The fine-tuning loop with soft pruning at every epoch boundary and what-if evaluation."""

    def __init__(self, config: TrainConfig, model: Detector, input_hw: tuple[int, int], method: str,
                 spec: PruneSpec, progress: bool = True, distiller: Distiller | None = None):
        super().__init__(config, model=model, progress=progress, distiller=distiller)
        self.selector = SoftSelector.for_detector(model, input_hw, make_importance(method), spec)
        # evaluations rank and zero a copy (of the EMA weights when EMA is on) with its own dependency graph
        self.probe = copy.deepcopy(model)
        self.probe_selector = SoftSelector.for_detector(self.probe, input_hw, make_importance(method), spec)
        self.mask = StraightThroughMask(model)    # after the EMA and probe copies: they carry no hooks
        self.records: list[ElasticEpoch] = []
        self.previous: set[tuple[str, int]] = set()
        self._epochs_started = 0
        self._probe_epoch = -1

    def _regrown(self) -> int:
        return regrown_filters(self.model, self.previous)

    def train_epoch(self, epoch: int):
        selection = self.selector.select()
        filters = selection_filters(selection, self.model)
        self.records.append(ElasticEpoch(epoch + 1, len(filters), self._regrown(), len(self.previous - filters), None))
        zero_selection(self.model, selection, full=False)
        self.mask.set(selection)
        self.previous = filters
        self._epochs_started += 1
        return super().train_epoch(epoch)

    def final_selection(self) -> Selection:
        """After the last epoch: how many of the last zeroed filters regrew or came back (a last record)."""
        selection = self.selector.select()
        filters = selection_filters(selection, self.model)
        self.records.append(ElasticEpoch(len(self.records) + 1, 0, self._regrown(), len(self.previous - filters),
                                         None))
        return selection

    @property
    def eval_model(self) -> Detector:
        """The current weights (EMA when on) with the selection of this moment removed (zeroed with BatchNorm)."""
        if self._probe_epoch != self._epochs_started:
            source = self.ema.model if self.ema else self.model
            self.probe.load_state_dict(source.state_dict())
            zero_selection(self.probe, self.probe_selector.select(), full=True)
            self._probe_epoch = self._epochs_started
        return self.probe


def selection_macs_cut(model: Detector, input_hw: tuple[int, int], method: str, spec: PruneSpec) -> float:
    """Share of `model`'s MACs that removing the spec's first selection cuts (measured on a copy)."""
    planned = copy.deepcopy(model)
    selector = SoftSelector.for_detector(planned, input_hw, make_importance(method), spec)
    zero_selection(planned, selector.select(), full=True)
    remove_zeroed_channels(planned, input_hw)
    return 1 - model_cost(planned, input_hw).macs / model_cost(model, input_hw).macs


def elastic_prune(config: PruneConfig, model: Detector, input_hw: tuple[int, int], spec: PruneSpec,
                  evaluate: Callable[[Detector], MapResult], output: Path, progress: bool = True) -> PruneStep:
    """Soft-prune `model` while fine-tuning, then remove the final selection for real (in place).

    `finetune.epochs` epochs in all: the first E - N soft, the last N = `prune.elastic_hard_epochs`
    on the hard-pruned network. Returns the history row (`elastic`: one ElasticEpoch per epoch boundary).
    """
    validate_elastic(config)
    started = time.monotonic()
    settings = config.prune
    soft_epochs = config.finetune.epochs - settings.elastic_hard_epochs
    trainer = ElasticTrainer(finetune_config(config, input_hw, output / "finetune_elastic", soft_epochs), model,
                             input_hw, settings.method, spec, progress,
                             make_distiller(config, model, input_hw,
                                            lambda: selection_macs_cut(model, input_hw, settings.method, spec)))
    pruned_map = evaluate(trainer.eval_model)   # before any fine-tuning: the one-shot selection removed
    try:
        result = trainer.fit()
    finally:
        trainer.mask.remove()
    trainer.final_selection()
    model.load_state_dict(load_checkpoint(result.best_checkpoint).model.state_dict())
    remove_zeroed_channels(model, input_hw)   # exact: the best checkpoint is the zeroed network
    tuned_map = result.best_map
    if settings.elastic_hard_epochs > 0:
        removed = copy.deepcopy(model.state_dict())
        hard_map = finetune(config, model, input_hw, output / "finetune_hard", progress,
                            epochs=settings.elastic_hard_epochs)
        if hard_map.map50 >= tuned_map.map50:
            tuned_map = hard_map
        else:   # like early stopping: the removed network as it came out of the soft phase was better
            model.load_state_dict(removed)
            if progress:
                print(f"elastic: hard fine-tuning reached mAP50 {hard_map.map50:.3f} < {tuned_map.map50:.3f} of the "
                      "network as removed: keeping that one")
    evaluated = {r.epoch: r.mAP50 for r in trainer.history}
    records = [dataclasses.replace(r, mAP50=evaluated.get(r.epoch)) for r in trainer.records]
    cost = model_cost(model, input_hw)
    if progress:
        revived = sum(r.revived for r in records)
        print(f"elastic: {soft_epochs} soft epoch(s), {revived} filter(s) came back after being zeroed; "
              f"{settings.elastic_hard_epochs} hard epoch(s); MACs {cost.macs / 1e6:.1f}M, mAP50 "
              f"{pruned_map.map50:.3f} at the first selection -> {tuned_map.map50:.3f}")
    return PruneStep(1, spec.ratio, cost.params, cost.macs, pruned_map.map50, pruned_map.map50_95, tuned_map.map50,
                     tuned_map.map50_95, round(time.monotonic() - started, 2), elastic=[asdict(r) for r in records])
