"""Several models on the same bag, side by side: Markdown + self-contained HTML + JSON.

Columns: mAP50, mAP50-95, latency p50/p90/p99, frames missed (dropped or failed), fps, MACs and
parameters (from the ONNX graph); per-class AP50 in a second table. Plots: latency histograms and
mAP50 against p50 latency.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from prune_perception.evaluation.bag_eval import BagEvaluation
from prune_perception.evaluation.html_report import write_report_pages
from prune_perception.evaluation.plots import pyplot, save_figure
from prune_perception.evaluation.onnx_cost import onnx_graph_cost


def _fmt(value: float | None, digits: int = 3) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:.{digits}f}"


def _name(result: BagEvaluation) -> str:
    return Path(result.model).name


def summary_table(results: list[BagEvaluation]) -> tuple[list[str], list[list[str]]]:
    header = ["model", "mode", "mAP50", "mAP50-95", "latency p50 ms", "p90 ms", "p99 ms", "frames",
              "missed", "fps", "MACs (M)", "params (M)"]
    rows = []
    for result in results:
        cost = onnx_graph_cost(Path(result.model))
        rows.append([_name(result), result.mode, _fmt(result.map.map50 if result.map else None),
                     _fmt(result.map.map50_95 if result.map else None), _fmt(result.latency.p50, 2),
                     _fmt(result.latency.p90, 2), _fmt(result.latency.p99, 2), str(result.frames),
                     str(result.missed), f"{result.fps:.1f}", f"{cost.macs / 1e6:.1f}", f"{cost.params / 1e6:.3f}"])
    return header, rows


def per_class_table(results: list[BagEvaluation]) -> tuple[list[str], list[list[str]]] | None:
    scored = [r for r in results if r.map]
    if not scored:
        return None
    classes = list(scored[0].map.per_class)
    rows = [[name] + [_fmt(r.map.per_class.get(name, {}).get("AP50")) for r in scored] for name in classes]
    return ["class (AP50)"] + [_name(r) for r in scored], rows


def latency_histogram(results: list[BagEvaluation], path: Path) -> Path:
    plt = pyplot()
    figure, axis = plt.subplots(figsize=(8, 4.5))
    for result in results:
        if result.latency_samples_ms:
            axis.hist(result.latency_samples_ms, bins=40, alpha=0.55, label=f"{_name(result)} ({result.mode})")
    axis.set(xlabel="latency per frame (ms)", ylabel="frames", title="Latency per frame")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    save_figure(figure, path)
    return path


def map_vs_latency(results: list[BagEvaluation], path: Path) -> Path:
    plt = pyplot()
    figure, axis = plt.subplots(figsize=(7, 4.5))
    for result in results:
        if result.map:
            axis.scatter([result.latency.p50], [result.map.map50], s=80)
            axis.annotate(_name(result), (result.latency.p50, result.map.map50), fontsize=8,
                          xytext=(5, 5), textcoords="offset points")
    axis.set(xlabel="latency p50 (ms)", ylabel="mAP50", title="mAP50 vs latency")
    axis.grid(alpha=0.3)
    save_figure(figure, path)
    return path


def write_compare_report(results: list[BagEvaluation], output: Path) -> list[Path]:
    """compare.md / compare.html / compare.json (+ PNGs) under ``output``."""
    output.mkdir(parents=True, exist_ok=True)
    tables = [summary_table(results)]
    classes = per_class_table(results)
    if classes:
        tables.append(classes)
    figures = [("Latency per frame", latency_histogram(results, output / "latency_hist.png"),
                "Replay: output received - input published (transport + node). Offline: engine decode + "
                "pre-process + inference + post-process.")]
    if any(r.map for r in results):
        figures.append(("mAP50 vs latency", map_vs_latency(results, output / "map_vs_latency.png"),
                        "Up and to the left is better."))
    bag = results[0].bag
    intro = (f"{len(results)} model(s) on {bag}. Frames without output count as misses in the mAP. "
             + " ".join(f"{_name(r)}: {note}." for r in results for note in r.notes))
    md_path, html_path = write_report_pages(output, "compare", "Model comparison on a bag", intro, tables, figures)
    json_path = output / "compare.json"
    json_path.write_text(json.dumps([r.as_dict() for r in results], indent=2) + "\n")
    return [md_path, html_path, json_path]
