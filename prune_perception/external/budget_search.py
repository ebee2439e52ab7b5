"""Accuracy-budget search for an imported detector: the fastest pruned ONNX whose score stays within a budget.

The score is the labeled mAP50 when ``external.labeled_data`` is given (labels may drive the search), else the
agreement mAP50 with the dense model on held-out frames (no labels), taken against perfect agreement (1.0).
Budgets are in points of that score. Each candidate ratio (``prune.budget_ratios`` with the ``steps`` or
``descending`` search, or ``bisect`` below ``prune.ratio``) prunes a fresh copy of the dense model, fine-tunes
it without labels and writes it as a drop-in ONNX (``candidates/ratio_R.onnx``); then the dense model and every
candidate are timed round-robin through the runtime engine (``latency_device``, ``latency_threads``) and the
fastest within budget by measured p50 becomes ``pruned.onnx`` (the dense file, unchanged, when none is).
Raw layouts have no mAP to budget: they are refused.
"""

from __future__ import annotations

import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

from tqdm import tqdm

from prune_perception.config import ExternalPruneConfig
from prune_perception.errors import ConfigError
from prune_perception.external.pipeline import (ExternalPruneStep, ImportedRun, ModulePruneResult,
                                                prune_imported_at, start_imported, write_imported_history)
from prune_perception.pruning.budget import budget_latency_note, budget_outcome, fastest_within_budget, search_budget
from prune_perception.pruning.latency_model import RANKING_RUNS, MeasureSettings, time_models


@dataclass
class ImportedCandidate:
    """One candidate ratio of the search: its ONNX file, cost, score, measured latency."""

    ratio: float
    path: str
    params: int
    macs: int
    score: float
    agreement_mAP50: float | None
    labeled_mAP50: float | None
    within_budget: bool
    latency_p50_ms: float | None = None
    latency_p99_ms: float | None = None


def budget_markdown(candidates: list[ImportedCandidate], config: ExternalPruneConfig, chosen: float | None,
                    dense_p50_ms: float) -> str:
    """The candidates as a table (appended to summary.md)."""
    settings = config.prune
    lines = ["", f"## Accuracy budget: {settings.budget:g} points of {score_name(config)} ({settings.budget_search})",
             "", budget_outcome(chosen), "", budget_latency_note(settings, dense_p50_ms), "",
             f"| ratio | params | MACs (M) | {score_name(config)} | p50 (ms) | speed-up | within budget |",
             "|---|---|---|---|---|---|---|"]
    for c in candidates:
        lines.append(f"| {c.ratio:.3f} | {c.params:,} | {c.macs / 1e6:.1f} | {c.score:.3f} | {c.latency_p50_ms:.2f} | "
                     f"{dense_p50_ms / c.latency_p50_ms:.2f}x | {'yes' if c.within_budget else 'no'} |")
    return "\n".join(lines) + "\n"


def score_name(config: ExternalPruneConfig) -> str:
    return "labeled mAP50" if config.external.labeled_data else "agreement mAP50"


def budget_score(run: ImportedRun, step: ExternalPruneStep) -> float:
    """What an accuracy budget is taken of: the step's labeled mAP50 with labeled data, else its agreement mAP50."""
    return step.labeled_mAP50 if run.config.external.labeled_data is not None else step.mAP50


def dense_budget_score(run: ImportedRun) -> float:
    """The dense model's :func:`budget_score`: its labeled mAP50, or perfect agreement (1.0)."""
    return run.dense_labeled[0] if run.config.external.labeled_data is not None else 1.0


def require_decodable(run: ImportedRun) -> None:
    """ConfigError for a raw layout: an accuracy budget needs an mAP."""
    if not run.layout.decodable:
        raise ConfigError("an accuracy budget needs a decodable output layout (native, yolox, yolov8) for its mAP; "
                          f"this model's is raw ({run.layout.note or 'model_format raw'}): prune it at one --ratio")


def search_imported_budget(config: ExternalPruneConfig, progress: bool = True
                           ) -> tuple[Path, list[ExternalPruneStep], list[ImportedCandidate]]:
    """Run the search; (pruned.onnx, [dense row, chosen row] or [dense row], every candidate)."""
    run = start_imported(config, progress)
    require_decodable(run)
    settings = config.prune
    results: dict[float, tuple[Path, ModulePruneResult]] = {}

    def evaluate_candidate(ratio: float) -> tuple[float, float]:
        path, result = prune_imported_at(run, ratio, run.output / "candidates" / f"ratio_{ratio:.3f}.onnx", progress)
        results[ratio] = (path, result)
        if progress:
            tqdm.write(f"ratio {ratio:.3f}: MACs {result.steps[-1].macs / 1e6:.1f}M, {score_name(config)} "
                       f"{budget_score(run, result.steps[-1]):.3f}")
        return budget_score(run, result.steps[-1]), ratio

    trials, _ = search_budget(evaluate_candidate, dense_budget_score(run), settings.budget, settings.budget_search,
                              settings.budget_ratios, settings.ratio, settings.budget_tolerance)
    measure = MeasureSettings(settings.latency_device, settings.latency_threads, settings.latency_runs)
    dense_ms, *trial_ms = time_models([run.imported.path] + [results[t.ratio][0] for t in trials], measure,
                                      max(RANKING_RUNS, measure.runs), progress, "candidates' latency")
    finals = [results[t.ratio][1].steps[-1] for t in trials]
    best = fastest_within_budget(trials, [ms.p50 for ms in trial_ms], [final.macs for final in finals])
    candidates = [ImportedCandidate(t.ratio, str(results[t.ratio][0]), final.params, final.macs, t.mAP50, final.mAP50,
                                    final.labeled_mAP50, t.within_budget, round(ms.p50, 4), round(ms.p99, 4))
                  for t, final, ms in zip(trials, finals, trial_ms)]
    pruned_path = run.output / "pruned.onnx"
    if best is not None:
        shutil.copyfile(results[best.ratio][0], pruned_path)
        result = results[best.ratio][1]
    else:
        shutil.copyfile(run.imported.path, pruned_path)
        first = results[trials[0].ratio][1]
        result = ModulePruneResult(first.plan, first.steps[:1])
    write_imported_history(run, result, budget_markdown(candidates, config, best.ratio if best else None,
                                                        dense_ms.p50), budget={
        "points": settings.budget, "score": score_name(config), "search": settings.budget_search,
        "chosen_ratio": best.ratio if best else None, "kept_dense": best is None,
        "latency": {"device": measure.device, "threads": measure.threads, "dense_p50_ms": round(dense_ms.p50, 4),
                    "dense_p99_ms": round(dense_ms.p99, 4)},
        "candidates": [asdict(c) for c in candidates]})
    return pruned_path, result.steps, candidates
