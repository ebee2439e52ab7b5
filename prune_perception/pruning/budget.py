"""Accuracy-budget search ("joint pruning"): the fastest pruned model whose fine-tuned mAP50 drop stays within a budget.

`search_budget` is the search alone, over any `evaluate_candidate(ratio) -> (mAP50, extra)`;
`run_budget_pruning` drives it with the real thing: prune the dense model to the ratio, fine-tune, evaluate,
then time every candidate and the dense model round-robin on the target (ONNX Runtime, `latency_device`,
`latency_threads`) and keep the fastest within budget by measured p50 (MACs decide within
`LATENCY_TIE` of each other: that close is measurement noise). Budgets are in mAP50 points
(1.0 = one point = 0.01 of mAP50).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from prune_perception.config import PruneConfig, PruneSettings, to_dict
from prune_perception.errors import ConfigError
from prune_perception.models.detector import Detector
from prune_perception.pruning.choices import BUDGET_SEARCHES, LISTED_BUDGET_SEARCHES
from prune_perception.pruning.dense import save_pruned, start_run
from prune_perception.pruning.history import PruneResult, PruneStep
from prune_perception.pruning.latency_model import RANKING_RUNS, MeasureSettings, time_detectors
from prune_perception.pruning.schedules import prune_model, prune_spec

LATENCY_TIE = 0.03   # a candidate with fewer MACs is kept unless another is measured this much (p50) faster


@dataclass
class BudgetTrial:
    """One evaluated ratio of the search; `extra` is whatever evaluate_candidate returned with its mAP50."""

    ratio: float
    mAP50: float
    drop_points: float        # (dense mAP50 - mAP50) x 100
    within_budget: bool
    extra: Any = None


@dataclass
class BudgetCandidate:
    """One row of a budget run's history (a trial with its cost and time)."""

    ratio: float
    params: int
    macs: int
    mAP50: float
    mAP50_95: float
    seconds: float
    within_budget: bool
    latency_p50_ms: float | None = None   # inference through ONNX Runtime on the target, round-robin with dense
    latency_p99_ms: float | None = None


def fastest_within_budget(trials: Sequence[BudgetTrial], p50_ms: Sequence[float],
                          macs: Sequence[int]) -> BudgetTrial | None:
    """The within-budget trial with the lowest measured p50; the fewest MACs unless beaten by > LATENCY_TIE."""
    passed = [i for i, t in enumerate(trials) if t.within_budget]
    if not passed:
        return None
    fewest_macs = min(passed, key=lambda i: (macs[i], -trials[i].ratio))
    fastest = min(passed, key=lambda i: p50_ms[i])
    return trials[fastest if p50_ms[fastest] < p50_ms[fewest_macs] * (1 - LATENCY_TIE) else fewest_macs]


def check_search_fans_out(budget_search: str) -> None:
    """ConfigError unless ``budget_search`` lists its candidates up front (steps, descending), so they can fan out."""
    if budget_search not in LISTED_BUDGET_SEARCHES:
        raise ConfigError(f"only the steps and descending budget searches fan out their candidates (bisect is "
                          f"sequential): prune.budget_search is {budget_search!r}")


def validate_budget_settings(settings: PruneSettings) -> None:
    if settings.budget is None or settings.budget < 0:
        raise ConfigError(f"prune.budget must be >= 0 mAP50 points, got {settings.budget}")
    if settings.budget_search not in BUDGET_SEARCHES:
        raise ConfigError(f"prune.budget_search must be one of {', '.join(BUDGET_SEARCHES)}, "
                          f"got {settings.budget_search!r}")
    listed = settings.budget_search in LISTED_BUDGET_SEARCHES
    if listed and not settings.budget_ratios:
        raise ConfigError("prune.budget_ratios is empty")
    for ratio in settings.budget_ratios if listed else [settings.ratio]:
        if not 0.0 <= ratio < 1.0:
            raise ConfigError(f"budget search ratio must be in [0, 1), got {ratio}")
    if not 0.0 < settings.budget_tolerance < 1.0:
        raise ConfigError(f"prune.budget_tolerance must be in (0, 1), got {settings.budget_tolerance}")


def search_budget(evaluate_candidate: Callable[[float], tuple[float, Any]], dense_map50: float, budget: float,
                  search: str = "steps", ratios: Sequence[float] = (), max_ratio: float = 0.5,
                  tolerance: float = 0.05) -> tuple[list[BudgetTrial], BudgetTrial | None]:
    """Every trial in evaluation order, and the largest-ratio trial within `budget` (None when none is).

    steps: evaluate `ratios` in ascending order, stop at the first one over budget.
    descending: evaluate `ratios` from the largest down, stop at the first one within budget (fewer
    fine-tunings than `steps` when the hard cuts pass, which is what distillation and longer fine-tuning aim at).
    bisect: evaluate `max_ratio`; if over budget, halve the interval [within, over] (starting at
    [0, max_ratio]) until it is narrower than `tolerance`.
    """
    trials: list[BudgetTrial] = []

    def trial(ratio: float) -> BudgetTrial:
        map50, extra = evaluate_candidate(ratio)
        drop = (dense_map50 - map50) * 100
        trials.append(BudgetTrial(ratio, map50, drop, drop <= budget, extra))
        return trials[-1]

    if search == "steps":
        for ratio in sorted(ratios):
            if not trial(ratio).within_budget:
                break
    elif search == "descending":
        for ratio in sorted(ratios, reverse=True):
            if trial(ratio).within_budget:
                break
    elif search == "bisect":
        within, over = 0.0, max_ratio
        if trial(max_ratio).within_budget:
            within = over
        while over - within > tolerance:
            middle = round((within + over) / 2, 6)
            if trial(middle).within_budget:
                within = middle
            else:
                over = middle
    else:
        raise ConfigError(f"budget search must be one of {', '.join(BUDGET_SEARCHES)}, got {search!r}")
    passed = [t for t in trials if t.within_budget]
    return trials, max(passed, key=lambda t: t.ratio) if passed else None


def run_budget_pruning(config: PruneConfig, progress: bool = True, fan_out: Callable | None = None) -> PruneResult:
    """Search the ratio for `prune.budget`; writes pruned.pt (dense when no ratio fits), history.json, summary.md.

    The result's `candidates` are BudgetCandidate rows, `chosen_ratio` None when the dense model was kept.
    `fan_out(config, dense_checkpoint, ratios) -> {ratio: (model, final PruneStep, seconds)}` evaluates the
    candidates of a `steps` / `descending` search elsewhere, all at once (scaleout/budget_candidates.py: DaskBudgetCandidates); the
    search then runs over those results. Validation is `pruning.api.validate_prune_config`'s.
    """
    settings = config.prune
    baseline = start_run(config)
    checkpoint, evaluate, output = baseline.checkpoint, baseline.evaluate, baseline.output
    dense, input_hw = checkpoint.model, checkpoint.input_hw
    dense_cost, dense_map = baseline.cost, baseline.map

    done = fan_out(config, checkpoint, settings.budget_ratios) if fan_out is not None else {}

    def evaluate_candidate(ratio: float) -> tuple[float, tuple[Detector, PruneStep, float]]:
        candidate_start = time.monotonic()
        if ratio in done:
            model, final, seconds = done[ratio]
        else:
            model = copy.deepcopy(dense)
            final = prune_model(config, model, input_hw, checkpoint.classes, prune_spec(settings, ratio), evaluate,
                                output / f"ratio_{ratio:.3f}", progress)[-1]
            seconds = round(time.monotonic() - candidate_start, 2)
        if progress:
            print(f"ratio {ratio:.3f}: MACs {final.macs / 1e6:.1f}M mAP50 {final.mAP50:.3f} "
                  f"({(final.mAP50 - dense_map.map50) * 100:+.2f} points)")
        return final.mAP50, (model, final, seconds)

    trials, _ = search_budget(evaluate_candidate, dense_map.map50, settings.budget, settings.budget_search,
                              settings.budget_ratios, settings.ratio, settings.budget_tolerance)
    measure = MeasureSettings(settings.latency_device, settings.latency_threads, settings.latency_runs)
    dense_ms, *trial_ms = time_detectors([dense] + [t.extra[0] for t in trials], checkpoint.classes, input_hw,
                                         measure, progress=progress, desc="candidates' latency")
    best = fastest_within_budget(trials, [ms.p50 for ms in trial_ms], [t.extra[1].macs for t in trials])
    candidates = [BudgetCandidate(t.ratio, step.params, step.macs, t.mAP50, step.mAP50_95, seconds, t.within_budget,
                                  round(ms.p50, 4), round(ms.p99, 4))
                  for t, ms in zip(trials, trial_ms) for _, step, seconds in [t.extra]]
    chosen_ratio = best.ratio if best else None
    best_ms = trial_ms[trials.index(best)] if best else dense_ms
    model = best.extra[0] if best else dense
    pruned_path = save_pruned(config, baseline, model, best.mAP50 if best else dense_map.map50, {
        "method": settings.method, "budget": settings.budget, "budget_search": settings.budget_search,
        "ratio": chosen_ratio or 0.0, "within_budget": best is not None, "kept_dense": best is None,
        "latency_device": measure.device, "latency_threads": measure.threads,
        "dense_latency_p50_ms": round(dense_ms.p50, 4), "latency_p50_ms": round(best_ms.p50, 4)})
    (output / "history.json").write_text(json.dumps({
        "config": to_dict(config), "dense": {"params": dense_cost.params, "macs": dense_cost.macs,
                                             "mAP50": dense_map.map50, "mAP50_95": dense_map.map50_95,
                                             "latency_p50_ms": round(dense_ms.p50, 4),
                                             "latency_p99_ms": round(dense_ms.p99, 4)},
        "latency": {"device": measure.device, "threads": measure.threads,
                    "runs": max(RANKING_RUNS, measure.runs)},
        "candidates": [asdict(c) for c in candidates], "chosen_ratio": chosen_ratio,
        "seconds": baseline.seconds()}, indent=2))
    (output / "summary.md").write_text(budget_markdown(candidates, dense_map.map50, dense_cost.macs, settings,
                                                       chosen_ratio, dense_ms.p50))
    history = [baseline.step(latency_p50_ms=round(dense_ms.p50, 4), latency_p99_ms=round(dense_ms.p99, 4))]
    if best:
        history.append(dataclasses.replace(best.extra[1], latency_p50_ms=round(best_ms.p50, 4),
                                           latency_p99_ms=round(best_ms.p99, 4)))
    return PruneResult("budget", pruned_path, output, history,
                       _budget_summary(pruned_path, candidates, settings, chosen_ratio), candidates, chosen_ratio,
                       kept_dense=best is None)


def _budget_summary(path: Path, candidates: list[BudgetCandidate], settings: PruneSettings,
                    chosen_ratio: float | None) -> list[str]:
    if chosen_ratio is None:
        return [f"no ratio kept val mAP50 within {settings.budget:g} points: dense model written unchanged to {path}"]
    chosen = next(c for c in candidates if c.ratio == chosen_ratio)
    return [f"pruned checkpoint: {path} (ratio {chosen_ratio:g}, the fastest within {settings.budget:g} mAP50 "
            f"points; {len(candidates)} candidates): params {chosen.params:,}, MACs {chosen.macs / 1e6:.1f}M, "
            f"inference p50 {chosen.latency_p50_ms:.2f} ms ({settings.latency_device}), val mAP50 {chosen.mAP50:.3f}"]


def budget_outcome(chosen_ratio: float | None) -> str:
    """The verdict of an accuracy-budget search, as its summary states it."""
    return (f"Chosen ratio: **{chosen_ratio:g}** (the fastest within budget, by measured latency)."
            if chosen_ratio is not None else "**No ratio met the budget: the dense model was kept unchanged.**")


def budget_latency_note(settings: PruneSettings, dense_p50_ms: float) -> str:
    """How the candidates of an accuracy-budget search were timed, as its summary states it."""
    return (f"Latency: inference p50 through ONNX Runtime ({settings.latency_device}, "
            f"{settings.latency_threads or 'default'} thread(s)), all candidates and the dense model timed "
            f"round-robin; dense {dense_p50_ms:.2f} ms.")


def budget_markdown(candidates: list[BudgetCandidate], dense_map50: float, dense_macs: int, settings: PruneSettings,
                    chosen_ratio: float | None, dense_p50_ms: float) -> str:
    lines = [f"# Accuracy-budget pruning ({settings.method}, {settings.budget_search})", "",
             f"Budget: {settings.budget:g} mAP50 points; dense mAP50 {dense_map50:.3f}. {budget_outcome(chosen_ratio)}",
             "", budget_latency_note(settings, dense_p50_ms), "",
             "| ratio | params | MACs (M) | MACs cut | p50 (ms) | speed-up | mAP50 | mAP50-95 | Δ mAP50 (points) | "
             "within budget | s |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for c in candidates:
        lines.append(f"| {c.ratio:.3f} | {c.params:,} | {c.macs / 1e6:.1f} | {1 - c.macs / dense_macs:.1%} | "
                     f"{c.latency_p50_ms:.2f} | {dense_p50_ms / c.latency_p50_ms:.2f}x | "
                     f"{c.mAP50:.3f} | {c.mAP50_95:.3f} | {(c.mAP50 - dense_map50) * 100:+.2f} | "
                     f"{'yes' if c.within_budget else 'no'} | {c.seconds:.1f} |")
    return "\n".join(lines) + "\n"
