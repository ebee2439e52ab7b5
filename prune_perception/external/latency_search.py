"""Latency-target search for an imported detector: the smallest channel ratio whose pruned ONNX meets a measured
latency, then fine-tuned without labels.

Latency depends on the pruned structure, not on the weights, so candidates are pruned from the dense model and
exported without fine-tuning or BatchNorm calibration, each timed round-robin with the dense model through
the runtime engine (``latency_device``, ``latency_threads``, ``latency_runs``). The ratio is bisected between 0
and ``max_search_ratio`` on the measured p50 against target x (1 - ``latency_margin``), down to
``budget_tolerance``. The chosen ratio is then pruned again and fine-tuned like any ``--ratio`` run, and dense
and pruned are timed once more (>= 200 runs) for the achieved p50/p99. A dense model that already meets the
target is written unchanged; a target the largest ratio does not meet is an error naming both latencies.

With ``prune.budget`` as well, the fine-tuned model at the chosen ratio must also stay within the accuracy budget
(labeled mAP50 with ``external.labeled_data``, else agreement mAP50 against 1.0, as in :mod:`.budget_search`):
when it does not, no model meets both and the dense file is written unchanged, with the measured drop in the
history. (Fewer channels never make the model faster to miss the budget by less, so a smaller ratio cannot help.)
"""

from __future__ import annotations

import dataclasses
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from tqdm import tqdm

from prune_perception.config import ExternalPruneConfig
from prune_perception.errors import ConfigError
from prune_perception.external.agreement import AgreementScorer
from prune_perception.external.budget_search import budget_score, dense_budget_score, require_decodable, score_name
from prune_perception.external.graph_pruning import PrunePlan
from prune_perception.external.pipeline import (ExternalPruneStep, ImportedRun, ModulePruneResult, prune_imported_at,
                                                start_imported, write_imported_history)
from prune_perception.models.cost import model_cost
from prune_perception.pruning.budget import validate_budget_settings
from prune_perception.pruning.latency_model import RANKING_RUNS, MeasureSettings, time_models

MAX_SEARCH_RATIO = 0.7
"""The largest channel ratio the search tries (beyond it detectors rarely recover without labels)."""


@dataclass
class LatencyCandidate:
    """One measured ratio: MACs of the pruned structure and its p50 next to the dense model's."""

    ratio: float
    macs: int
    p50_ms: float
    dense_p50_ms: float
    meets_target: bool


def _structure_only(run: ImportedRun) -> ImportedRun:
    """The same run one-shot, without fine-tuning, BatchNorm calibration or labeled scoring (and pruned with
    scored=False): candidates for timing only (latency depends on the pruned structure, not on the weights)."""
    config = run.config
    return dataclasses.replace(run, config=dataclasses.replace(
        config, finetune=dataclasses.replace(config.finetune, epochs=0),
        prune=dataclasses.replace(config.prune, schedule="oneshot", iterative_steps=1),
        distill=dataclasses.replace(config.distill, batchnorm=False),
        external=dataclasses.replace(config.external, labeled_data=None)), dense_labeled=None)


def _budget_check(run: ImportedRun, result: ModulePruneResult) -> dict:
    """The chosen, fine-tuned model against ``prune.budget`` (the budget search's score)."""
    dense_score, score = dense_budget_score(run), budget_score(run, result.steps[-1])
    drop = (dense_score - score) * 100
    return {"points": run.config.prune.budget, "score": score_name(run.config), "dense": dense_score, "pruned": score,
            "drop_points": round(drop, 3), "within_budget": drop <= run.config.prune.budget}


def latency_markdown(candidates: list[LatencyCandidate], config: ExternalPruneConfig, chosen: float | None,
                     achieved: dict, budget: dict | None = None) -> str:
    """The measured candidates and the achieved latency (appended to summary.md)."""
    settings = config.prune
    lines = ["", f"## Latency target {settings.latency_ms:g} ms (p50, ONNX Runtime {settings.latency_device}, "
                 f"{settings.latency_threads or 'default'} thread(s))", ""]
    if chosen is None:
        lines.append(f"The dense model already meets it ({achieved['dense_p50_ms']:.2f} ms): written unchanged.")
        return "\n".join(lines) + "\n"
    lines += [f"Chosen ratio **{chosen:g}**: p50 {achieved['dense_p50_ms']:.2f} → {achieved['p50_ms']:.2f} ms, "
              f"p99 {achieved['dense_p99_ms']:.2f} → {achieved['p99_ms']:.2f} ms after fine-tuning "
              f"({achieved['runs']} runs each, round-robin); target {'met' if achieved['met'] else 'MISSED'}.",
              *([] if budget is None else [
                  "", f"Accuracy budget {budget['points']:g} points of {budget['score']}: {budget['dense']:.3f} → "
                      f"{budget['pruned']:.3f} ({budget['drop_points']:+.2f} points dropped) — " + (
                      "within budget." if budget["within_budget"] else
                      "**over budget: no model meets both, the dense model was written unchanged** (the fine-tuned "
                      "one is in candidates/).")]),
              "", "| ratio (not fine-tuned) | MACs (M) | p50 (ms) | dense p50 (ms) | meets target |",
              "|---|---|---|---|---|"]
    for c in candidates:
        lines.append(f"| {c.ratio:.3f} | {c.macs / 1e6:.1f} | {c.p50_ms:.2f} | {c.dense_p50_ms:.2f} | "
                     f"{'yes' if c.meets_target else 'no'} |")
    return "\n".join(lines) + "\n"


def smallest_meeting_ratio(meets_target: Callable[[float], bool], largest: float, tolerance: float) -> float:
    """Bisection on (0, ``largest``] for the smallest ratio that meets the target (``largest`` is known to), to
    within ``tolerance``; latency falls as the ratio grows, so the answer errs towards the faster side."""
    low, high = 0.0, largest
    while high - low > tolerance:
        middle = round((low + high) / 2, 4)
        if meets_target(middle):
            high = middle
        else:
            low = middle
    return high


def search_imported_latency(config: ExternalPruneConfig, progress: bool = True
                            ) -> tuple[Path, list[ExternalPruneStep], list[LatencyCandidate]]:
    """Run the search (module doc); (pruned.onnx, steps, measured candidates)."""
    settings = config.prune
    if settings.budget is not None:
        validate_budget_settings(settings)
    if settings.latency_ms is None or settings.latency_ms <= 0:
        raise ConfigError(f"prune.latency_ms must be a positive number of milliseconds, got {settings.latency_ms}")
    measure = MeasureSettings(settings.latency_device, settings.latency_threads, settings.latency_runs)
    measure.validate()
    run = start_imported(config, progress)
    if settings.budget is not None:
        require_decodable(run)
    aim = settings.latency_ms * (1 - settings.latency_margin)
    timing_run = _structure_only(run)
    candidates: list[LatencyCandidate] = []

    def measure_ratio(ratio: float) -> LatencyCandidate:
        path, result = prune_imported_at(timing_run, ratio, run.output / "candidates" / f"latency_{ratio:.3f}.onnx",
                                         progress, scored=False)
        dense_ms, pruned_ms = time_models([run.imported.path, path], measure, progress=progress,
                                          desc=f"latency of ratio {ratio:.3f}")
        candidate = LatencyCandidate(ratio, result.steps[-1].macs, round(pruned_ms.p50, 4), round(dense_ms.p50, 4),
                                     pruned_ms.p50 <= aim)
        candidates.append(candidate)
        if progress:
            tqdm.write(f"ratio {ratio:.3f}: p50 {pruned_ms.p50:.2f} ms (dense {dense_ms.p50:.2f} ms), target "
                       f"{'met' if candidate.meets_target else 'not met'}")
        return candidate

    dense_ms, = time_models([run.imported.path], measure, progress=progress, desc="dense latency")
    if dense_ms.p50 <= aim:
        shutil.copyfile(run.imported.path, run.output / "pruned.onnx")
        cost = model_cost(run.imported.module, run.imported.input_hw)
        scorer = AgreementScorer(run.imported.module, run.frames.holdout, run.layout, config.finetune.batch_size)
        score = scorer.score(run.imported.module)
        dense_row = ExternalPruneStep(0, 0.0, cost.params, cost.macs, score.mAP50, score.mAP50_95, score.mAP50,
                                      score.mAP50_95, 0.0, score.raw_error, score.raw_error)
        achieved = {"dense_p50_ms": round(dense_ms.p50, 4), "dense_p99_ms": round(dense_ms.p99, 4),
                    "p50_ms": round(dense_ms.p50, 4), "p99_ms": round(dense_ms.p99, 4), "runs": measure.runs,
                    "met": True, "bound": "dense"}
        write_imported_history(run, ModulePruneResult(PrunePlan(protected=[]), [dense_row]),
                               latency_markdown([], config, None, achieved), latency={
                                   "target_ms": settings.latency_ms, "device": measure.device,
                                   "threads": measure.threads, "chosen_ratio": None, **achieved})
        return run.output / "pruned.onnx", [dense_row], []
    largest = measure_ratio(MAX_SEARCH_RATIO)
    if not largest.meets_target:
        raise ConfigError(f"latency target {settings.latency_ms:g} ms is below what pruning reaches here: ratio "
                          f"{MAX_SEARCH_RATIO:g} runs at {largest.p50_ms:.2f} ms (dense {largest.dense_p50_ms:.2f} ms, "
                          f"{settings.latency_device}, {settings.latency_threads} thread(s))")
    chosen = smallest_meeting_ratio(lambda ratio: measure_ratio(ratio).meets_target, MAX_SEARCH_RATIO,
                                    settings.budget_tolerance)
    path, result = prune_imported_at(run, chosen, run.output / "pruned.onnx", progress)
    budget = _budget_check(run, result) if settings.budget is not None else None
    if budget is not None and not budget["within_budget"]:
        shutil.copyfile(path, run.output / "candidates" / f"latency_{chosen:.3f}_finetuned.onnx")
        shutil.copyfile(run.imported.path, path)
        if progress:
            tqdm.write(f"ratio {chosen:g} meets the latency target but drops {budget['drop_points']:.2f} points of "
                       f"{budget['score']} (budget {settings.budget:g}): the dense model is kept")
        result = ModulePruneResult(result.plan, result.steps[:1])
    final_dense, final = time_models([run.imported.path, path], measure, max(RANKING_RUNS, measure.runs), progress,
                                     "final latency")
    achieved = {"dense_p50_ms": round(final_dense.p50, 4), "dense_p99_ms": round(final_dense.p99, 4),
                "p50_ms": round(final.p50, 4), "p99_ms": round(final.p99, 4),
                "runs": max(RANKING_RUNS, measure.runs), "met": final.p50 <= settings.latency_ms, "bound": "latency"}
    write_imported_history(run, result, latency_markdown(candidates, config, chosen, achieved, budget), latency={
        "target_ms": settings.latency_ms, "margin": settings.latency_margin, "device": measure.device,
        "threads": measure.threads, "chosen_ratio": chosen, **achieved,
        "candidates": [asdict(c) for c in candidates]}, **({"budget": budget} if budget else {}))
    return path, result.steps, candidates
