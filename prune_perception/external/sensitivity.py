"""Sensitivity of an imported model, without labels: each prunable group pruned alone at several ratios.

The groups are the coupled layers torch-pruning removes together (:class:`~.graph_pruning.PrunePlan`);
each point is a copy of the dense model with one group pruned (``PruneSpec.layer_ratios`` by module
name), its BatchNorm re-inserted and calibrated when ``distill.batchnorm`` is on (the point label-free
fine-tuning starts from), and scored by agreement with the dense model on the held-out frames
(agreement mAP50; ``1 - raw error`` for undecodable layouts). The tables and plot are those of our own
detector's sensitivity (:func:`prune_perception.pruning.sensitivity.write_sensitivity`);
:mod:`.sensitivity_ratios` turns them into per-group ratios.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Sequence

from tqdm import tqdm

from prune_perception.config import ExternalPruneConfig
from prune_perception.errors import ConfigError
from prune_perception.external.agreement import Agreement, AgreementScorer
from prune_perception.external.batchnorm_reinsertion import conv_statistics, insert_batchnorm
from prune_perception.external.graph_pruning import GraphPruner
from prune_perception.external.pipeline import ImportedRun, TeacherStatistics, start_imported
from prune_perception.models.cost import model_cost
from prune_perception.pruning.choices import GRADIENT_FREE_CRITERIA
from prune_perception.pruning.importance import make_importance
from prune_perception.pruning.sensitivity import SensitivityPoint, group_name, select_groups, write_sensitivity
from prune_perception.pruning.structured import PruneSpec

CALIBRATION_FRAMES = 128
"""Fine-tuning frames the BatchNorm of each point is calibrated on (the dense statistics use the same ones)."""


def agreement_score(agreement: Agreement) -> float:
    """The sensitivity score: agreement mAP50, or ``1 - raw error`` when the layout cannot be decoded."""
    return agreement.mAP50 if agreement.mAP50 is not None else 1.0 - agreement.raw_error


def imported_sensitivity_point(run: ImportedRun, layers: Sequence[str], ratio: float, scorer: AgreementScorer,
                               statistics: TeacherStatistics | None) -> SensitivityPoint:
    """The dense model with only ``layers`` (one coupled group) pruned at ``ratio``, calibrated, scored."""
    started = time.monotonic()
    settings, batch_size = run.config.prune, run.config.finetune.batch_size
    student = copy.deepcopy(run.imported.module)
    spec = PruneSpec(0.0, max_layer_ratio=max(ratio, settings.max_layer_ratio),
                     layer_ratios={name: ratio for name in layers}, round_to=settings.round_to)
    pruner = GraphPruner(student, run.imported.example_input(), make_importance(settings.method), spec,
                         run.config.external.keep_layers)
    pruner.step()
    cost = model_cost(student, run.imported.input_hw)
    if statistics is not None:
        insert_batchnorm(student, statistics, run.frames.train[:CALIBRATION_FRAMES], pruner.kept_out_channels,
                         pruner.plan.protected, batch_size)
    agreement = scorer.score(student)
    return SensitivityPoint(group_name(layers), ratio, cost.params, cost.macs, agreement_score(agreement),
                            agreement.mAP50_95 or 0.0, round(time.monotonic() - started, 2))


def run_imported_sensitivity(config: ExternalPruneConfig, ratios: Sequence[float] = (0.25, 0.5, 0.75),
                             layers: Sequence[str] | None = None, progress: bool = True
                             ) -> tuple[SensitivityPoint, list[SensitivityPoint]]:
    """Every (group, ratio) point of ``config.external.model``; writes sensitivity.json, .md and .png to
    ``config.output``. ``layers``: only the groups containing these module names."""
    if config.prune.method not in GRADIENT_FREE_CRITERIA:
        raise ConfigError(f"sensitivity method must be one of {', '.join(GRADIENT_FREE_CRITERIA)}, "
                          f"got {config.prune.method!r}")
    if not ratios or any(not 0.0 < r < 1.0 for r in ratios):
        raise ConfigError(f"sensitivity ratios must be in (0, 1), got {list(ratios)}")
    run = start_imported(config, progress)
    teacher = run.imported.module.eval()
    plan = GraphPruner(copy.deepcopy(teacher), run.imported.example_input(), make_importance(config.prune.method),
                       PruneSpec(0.0), config.external.keep_layers).plan
    groups = select_groups(plan.groups, layers)
    scorer = AgreementScorer(teacher, run.frames.holdout, run.layout, config.finetune.batch_size)
    statistics = (conv_statistics(teacher, run.frames.train[:CALIBRATION_FRAMES], config.finetune.batch_size)
                  if config.distill.batchnorm else None)
    dense_cost = model_cost(teacher, run.imported.input_hw)
    dense_agreement = scorer.score(teacher)
    dense = SensitivityPoint("dense", 0.0, dense_cost.params, dense_cost.macs, agreement_score(dense_agreement),
                             dense_agreement.mAP50_95 or 0.0, 0.0)
    jobs = [(group, ratio) for group in groups for ratio in sorted(ratios)]
    points = [imported_sensitivity_point(run, group, ratio, scorer, statistics)
              for group, ratio in tqdm(jobs, desc="sensitivity", unit="point", disable=not progress)]
    scored_as = ("agreement mAP50 with the dense model" if run.layout.decodable else "1 - raw error vs the dense model"
                 ) + f" on {len(run.frames.holdout)} held-out frames" + (
                     ", BatchNorm re-calibrated" if statistics is not None else "")
    write_sensitivity(run.output, {"model": str(run.imported.path), "model_sha256": run.imported.sha256,
                                   "method": config.prune.method, "ratios": sorted(ratios),
                                   "frames": run.frames.describe(), "output_format": run.layout.output_format},
                      groups, dense, points, scored_as)
    return dense, points

