"""Fleet bag evaluation: many bags (x models) through the runtime engine offline, one task per (bag, model).

Each task is :func:`~prune_perception.evaluation.bag_eval.evaluate_bag_offline` — what ``replay --offline``
and ``compare --offline`` run for one bag — on a Dask worker (or in this process with ``workers=0``).
Results are merged in input order into one report: ``fleet.json``, ``fleet.md`` and a self-contained
``fleet.html`` (per bag and model: frames, missed, failed, mAP50, mAP50-95, latency; a pooled row per
model; the bags that failed, with the error). A bag that cannot be evaluated is listed as failed,
never dropped. Torch-free: workers only need the runtime engine and the bag reader.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from prune_perception.evaluation.bag_eval import BagEvaluation, evaluate_bag_offline
from prune_perception.runtime.latency_stats import LatencyStats
from prune_perception.scaleout.runner import FanOutSettings, TaskFailure, map_tasks


def _bag_task(job: tuple[str, str, str | None, dict[str, Any]]) -> BagEvaluation:
    bag, model, image_topic, engine_options = job
    return evaluate_bag_offline(bag, model, image_topic, engine_options, progress=False)


def _task_name(bag: str, model: str) -> str:
    return f"bag {bag} (model {Path(model).name})"


@dataclass
class FleetResult:
    """Every (bag, model) evaluation that succeeded, in input order, and every one that failed."""

    bags: list[str]
    models: list[str]
    evaluations: list[BagEvaluation] = field(default_factory=list)
    failures: list[TaskFailure] = field(default_factory=list)


def fleet_evaluate(bags: Sequence[str | Path], models: Sequence[str | Path], image_topic: str | None = None,
                   engine_options: dict[str, Any] | None = None,
                   settings: FanOutSettings | None = None) -> FleetResult:
    """Evaluate every model on every bag (``settings.workers == 0``: here, one after the other)."""
    settings = settings or FanOutSettings()
    bags, models = [str(b) for b in bags], [str(m) for m in models]
    jobs = [(bag, model, image_topic, dict(engine_options or {})) for model in models for bag in bags]
    names = [_task_name(bag, model) for bag, model, _, _ in jobs]
    results, failures = map_tasks(_bag_task, jobs, names, settings, "fleet-eval")
    return FleetResult(bags, models, [r for r in results if r is not None], failures)


# ------------------------------------------------------------------------------------------ report
def _fmt(value: float | None, digits: int = 3) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def pooled(evaluations: Sequence[BagEvaluation]) -> dict[str, Any]:
    """One model over all its bags: summed frame counts, mean of the per-bag mAPs, pooled latency samples."""
    scored = [e.map for e in evaluations if e.map]
    latency = LatencyStats.of([ms for e in evaluations for ms in e.latency_samples_ms])
    return {"bags": len(evaluations), "frames": sum(e.frames for e in evaluations),
            "answered": sum(e.answered for e in evaluations), "missed": sum(e.missed for e in evaluations),
            "failed": sum(e.failed for e in evaluations),
            "mean_mAP50": sum(m.map50 for m in scored) / len(scored) if scored else None,
            "mean_mAP50_95": sum(m.map50_95 for m in scored) / len(scored) if scored else None,
            "latency_ms": latency.as_dict()}


def fleet_tables(result: FleetResult) -> list[tuple[list[str], list[list[str]]]]:
    header = ["bag", "model", "frames", "answered", "missed", "failed", "mAP50", "mAP50-95", "latency p50 ms",
              "p90 ms", "p99 ms"]
    rows = []
    for e in result.evaluations:
        rows.append([e.bag, Path(e.model).name, str(e.frames), str(e.answered), str(e.missed), str(e.failed),
                     _fmt(e.map.map50 if e.map else None), _fmt(e.map.map50_95 if e.map else None),
                     _fmt(e.latency.p50, 2), _fmt(e.latency.p90, 2), _fmt(e.latency.p99, 2)])
    for model in result.models:
        mine = [e for e in result.evaluations if e.model == model]
        if not mine:
            continue
        p = pooled(mine)
        lat = p["latency_ms"]
        rows.append([f"all {p['bags']} bag(s) (mAP: mean of bags)", Path(model).name, str(p["frames"]),
                     str(p["answered"]), str(p["missed"]), str(p["failed"]), _fmt(p["mean_mAP50"]),
                     _fmt(p["mean_mAP50_95"]), _fmt(lat["p50"], 2), _fmt(lat["p90"], 2), _fmt(lat["p99"], 2)])
    tables = [(header, rows)]
    if result.failures:
        tables.append((["failed task", "error", "attempts"],
                       [[f.task, f.error, str(f.attempts)] for f in result.failures]))
    return tables


def write_fleet_report(result: FleetResult, output: Path) -> list[Path]:
    """fleet.md / fleet.html (self-contained) / fleet.json under ``output``."""
    from prune_perception.evaluation.html_report import write_report_pages

    output.mkdir(parents=True, exist_ok=True)
    intro = (f"{len(result.models)} model(s) on {len(result.bags)} bag(s), offline (runtime engine, no ROS), one "
             f"task per bag and model. Frames without output count as misses in the mAP. "
             + (f"{len(result.failures)} task(s) FAILED (listed below): their bags are not in the numbers."
                if result.failures else "Every task succeeded."))
    md_path, html_path = write_report_pages(output, "fleet", "Fleet bag evaluation", intro, fleet_tables(result), [])
    json_path = output / "fleet.json"
    json_path.write_text(json.dumps({
        "bags": result.bags, "models": result.models,
        "evaluations": [e.as_dict() for e in result.evaluations],
        "pooled": {model: pooled([e for e in result.evaluations if e.model == model]) for model in result.models},
        "failed": [asdict(f) for f in result.failures]}, indent=2) + "\n")
    return [md_path, html_path, json_path]
