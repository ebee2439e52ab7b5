"""Pruning report across runs: a Markdown file with PNG plots, and one self-contained HTML file.

The HTML carries its CSS inline and its plots as base64 PNG data URIs, so it can be mailed or
archived alone (no CDN, no side files). Inputs are `prune` output folders (history.json and
pruned.pt) and optionally a `sensitivity` output (sensitivity.json).
"""

from __future__ import annotations

import base64
import html
import json
from dataclasses import dataclass
from pathlib import Path

from prune_perception.errors import ConfigError
from prune_perception.models.arch import default_arch
from prune_perception.models.checkpoint import load_checkpoint
from prune_perception.evaluation.plots import pyplot, save_figure
from prune_perception.pruning.sensitivity import SensitivityPoint, sensitivity_plot

CSS = """body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1100px;color:#222}
table{border-collapse:collapse;margin:1em 0;font-size:14px}th,td{border:1px solid #ccc;padding:4px 8px;text-align:right}
th{background:#f0f0f0}td:first-child,th:first-child{text-align:left}img{max-width:100%}
.note{color:#555;font-size:14px}"""


@dataclass
class PruningRun:
    """What the report needs from one `prune` output folder."""

    name: str
    steps: list[dict]            # history.json rows, step 0 = the dense model
    settings: dict               # the run's `prune:` config section
    widths: dict[str, int]       # pruned widths per arch-spec layer (empty for an imported model's run)
    dense_widths: dict[str, int]
    latency: dict | None = None  # latency-budget runs: target, device, measured p50/p99 (history.json "latency")
    budget: float | None = None  # accuracy-budget runs: the budget in mAP50 points

    @property
    def label(self) -> str:
        scope = "global" if self.settings.get("global_pruning") else "local"
        label = f"{self.settings.get('method', '?')} {self.settings.get('granularity', 'channel')} {scope}"
        if self.latency:
            label = f"{self.settings.get('method', '?')} latency ≤ {self.latency['target_ms']:g} ms"
        elif self.budget is not None:
            label = f"{self.settings.get('method', '?')} budget ≤ {self.budget:g} mAP50 points"
        if self.settings.get("schedule") == "elastic":
            return f"{label} elastic"
        steps = self.settings.get("iterative_steps", 1)
        return f"{label} iterative×{steps}" if steps > 1 else label


def load_run(folder: Path) -> PruningRun:
    """Read history.json and pruned.pt of a `prune` output folder (any schedule, accuracy budget, latency target)."""
    history_path = folder / "history.json"
    if not history_path.is_file():
        raise ConfigError(f"{folder} is not a pruning run: no history.json")
    try:
        history = json.loads(history_path.read_text())
        settings = history["config"]["prune"]
        budget, latency = None, history.get("latency")
        if history.get("score") == "agreement":   # an imported ONNX model (external/): agreement mAP, no arch
            return imported_run(folder, history, settings)
        if "steps" in history:
            steps = history["steps"]
        else:   # accuracy-budget run (pruning/budget.py): the dense model and the candidates tried
            steps = budget_steps(history)
            budget, latency = float(settings["budget"]), None   # its "latency" is how candidates were timed
    except (ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"{history_path} is not a history.json of `prune` ({type(exc).__name__}: {exc})") from None
    arch = load_checkpoint(folder / "pruned.pt").model.arch
    dense = default_arch(arch["size"], arch["num_classes"], arch["act"])["widths"]
    return PruningRun(folder.name, steps, settings, arch["widths"], dense, latency, budget)


def imported_run(folder: Path, history: dict, settings: dict) -> PruningRun:
    """An imported model's run (pruned.onnx): its steps score agreement mAP50 with the dense model (there is no
    arch-spec, so no widths); a raw layout has no mAP to report."""
    steps = history["steps"]
    if any(step["mAP50"] is None for step in steps):
        raise ConfigError(f"{folder}: an imported model with a raw output layout has no mAP to report "
                          "(history.json lists its raw-output error)")
    budget = history.get("budget", {}).get("points")
    return PruningRun(folder.name, steps, settings, {}, {}, history.get("latency"),
                      float(budget) if budget is not None else None)


def budget_steps(history: dict) -> list[dict]:
    """An accuracy-budget history as step rows: the dense model, the candidates in the order tried, and last the
    chosen candidate (a copy of the dense row when no ratio met the budget and the dense model was kept)."""
    dense = dict(history["dense"], step=0, ratio=0.0)
    candidates = [dict(row, step=index) for index, row in enumerate(history["candidates"], start=1)]
    chosen = [row for row in candidates if row["ratio"] == history["chosen_ratio"]]
    final = chosen[-1] if chosen else dict(dense, step=len(candidates) + 1)
    return [dense, *(row for row in candidates if row is not final), final]


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the (MACs, mAP50) points no other point beats: none has fewer-or-equal MACs and a higher
    mAP50, or fewer MACs and an equal one. Ordered by MACs."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
    front, best_map = [], float("-inf")
    for i in order:
        if points[i][1] > best_map:
            front.append(i)
            best_map = points[i][1]
    return front


def load_sensitivity(path: Path) -> tuple[SensitivityPoint, list[SensitivityPoint], str]:
    """(dense, points, what the score is) from sensitivity.json (or its folder); also accepts
    {"layers": {name: [rows]}}."""
    path = path / "sensitivity.json" if path.is_dir() else path
    if not path.is_file():
        raise ConfigError(f"no sensitivity results at {path}")
    data = json.loads(path.read_text())

    def point(group: str, row: dict) -> SensitivityPoint:
        return SensitivityPoint(group, float(row.get("ratio", 0.0)), int(row.get("params", 0)), int(row.get("macs", 0)),
                                float(row["mAP50"]), float(row.get("mAP50_95", 0.0)), float(row.get("seconds", 0.0)))

    rows = data.get("points") or [dict(row, group=name) for name, curve in data.get("layers", {}).items()
                                  for row in curve]
    return (point("dense", data["dense"]), [point(row.get("group", row.get("layer", "?")), row) for row in rows],
            data.get("scored_as", "val mAP50"))


def summary_rows(runs: list[PruningRun]) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the summary table: the dense model, then the final step of each run."""
    header = ["run", "method", "ratio", "params", "MACs (M)", "MACs cut", "zero weights", "mAP50", "mAP50-95",
              "Δ mAP50 vs dense"]
    dense = runs[0].steps[0]
    rows = [["dense", "-", "0", f"{dense['params']:,}", f"{dense['macs'] / 1e6:.1f}", "0.0%", "0.0%",
             f"{dense['mAP50']:.3f}", f"{dense['mAP50_95']:.3f}", "+0.000"]]
    for run in runs:
        final, own_dense = run.steps[-1], run.steps[0]
        ratio = final["ratio"] if run.latency or run.budget is not None else run.settings.get("ratio", final["ratio"])
        rows.append([run.name, run.label, f"{ratio:g}", f"{final['params']:,}",
                     f"{final['macs'] / 1e6:.1f}", f"{1 - final['macs'] / own_dense['macs']:.1%}",
                     f"{final.get('sparsity', 0.0):.1%}", f"{final['mAP50']:.3f}", f"{final['mAP50_95']:.3f}",
                     f"{final['mAP50'] - own_dense['mAP50']:+.3f}"])
    if any(run.latency for run in runs):   # measured latency (ms, inference p50 / p99) where runs measured it
        header += ["p50 / p99 (ms)", "latency target"]

        def measured(step: dict) -> str:
            p50, p99 = step.get("latency_p50_ms"), step.get("latency_p99_ms")
            return f"{p50:.2f} / {p99:.2f}" if p50 is not None and p99 is not None else "-"
        latency_dense = next((run.steps[0] for run in runs if run.latency), dense)
        rows[0] += [measured(latency_dense), "-"]
        for row, run in zip(rows[1:], runs):
            target = "-"
            if run.latency:
                target = (f"{run.latency['target_ms']:g} ms ({run.latency['device']}): "
                          f"{'met' if run.latency.get('met') else 'not met'}, {run.latency['bound']}")
            row += [measured(run.steps[-1]), target]
    return header, rows


def pareto_plot(runs: list[PruningRun], path: Path) -> Path:
    """Every step of every run as a point in (MACs, mAP50); the Pareto front as a line; dense starred."""
    plt = pyplot()
    figure, axis = plt.subplots(figsize=(8, 5))
    points = []
    for run in runs:
        pruned = run.steps[1:]
        axis.scatter([s["macs"] / 1e6 for s in pruned], [s["mAP50"] for s in pruned], label=run.name, alpha=0.8)
        points += [(s["macs"], s["mAP50"]) for s in pruned]
    dense = runs[0].steps[0]
    points.append((dense["macs"], dense["mAP50"]))
    front = [points[i] for i in pareto_front(points)]
    axis.plot([m / 1e6 for m, _ in front], [a for _, a in front], color="black", linewidth=1, label="Pareto front")
    axis.scatter([dense["macs"] / 1e6], [dense["mAP50"]], marker="*", s=250, color="gold", edgecolor="black",
                 zorder=3, label="dense")
    for run in runs:   # a latency target, in the MACs it took to meet it on the measured device
        if run.latency:
            final = run.steps[-1]
            axis.axvline(final["macs"] / 1e6, color="crimson", linestyle="--", linewidth=1,
                         label=f"{run.name}: {run.latency['target_ms']:g} ms target ({run.latency['device']}), "
                               f"p50 {run.latency['p50_ms']:.2f} ms at {final['macs'] / 1e6:.0f}M MACs")
    axis.set(xlabel="MACs (M)", ylabel="val mAP50", title="mAP50 vs MACs, all steps of all runs")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    save_figure(figure, path)
    return path


def latency_plot(runs: list[PruningRun], path: Path) -> Path:
    """mAP50 against measured inference p50 for every step that measured it; each latency target as a line."""
    plt = pyplot()
    figure, axis = plt.subplots(figsize=(8, 5))
    for run in runs:
        measured = [s for s in run.steps if s.get("latency_p50_ms") is not None]
        if measured:
            axis.scatter([s["latency_p50_ms"] for s in measured], [s["mAP50"] for s in measured], label=run.name)
        if run.latency:
            axis.axvline(run.latency["target_ms"], color="crimson", linestyle="--", linewidth=1,
                         label=f"target {run.latency['target_ms']:g} ms ({run.latency['device']}, "
                               f"{run.latency.get('threads') or 'default'} thread(s))")
    axis.set(xlabel="inference p50 (ms, ONNX Runtime engine)", ylabel="val mAP50",
             title="mAP50 vs measured latency")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    save_figure(figure, path)
    return path


def widths_plot(runs: list[PruningRun], path: Path) -> Path:
    """Per arch-spec layer: dense width as a grey bar, each run's kept channels beside it."""
    plt = pyplot()
    layers = list(runs[0].dense_widths)
    figure, axis = plt.subplots(figsize=(max(10, len(layers) * 0.45), 5))
    bar = 0.8 / (len(runs) + 1)
    positions = range(len(layers))
    axis.bar(list(positions), [runs[0].dense_widths[n] for n in layers], bar, color="lightgrey", label="dense")
    for k, run in enumerate(runs, start=1):
        axis.bar([x + k * bar for x in positions], [run.widths.get(n, 0) for n in layers], bar, label=run.name)
    axis.set_xticks([x + bar * len(runs) / 2 for x in positions], layers, rotation=90, fontsize=7)
    axis.set(ylabel="output channels", title="Kept channels per layer")
    axis.legend(fontsize=8)
    save_figure(figure, path)
    return path


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def html_table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def embedded_png(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def write_pruning_report(runs: list[Path], output: Path, sensitivity: Path | None = None) -> tuple[Path, Path]:
    """Write report.md (+ its PNGs) and the self-contained report.html to `output`; returns both paths."""
    if not runs:
        raise ConfigError("the report needs at least one pruning run folder")
    loaded = [load_run(Path(run)) for run in runs]
    output.mkdir(parents=True, exist_ok=True)
    header, rows = summary_rows(loaded)
    figures = [("mAP50 vs MACs (Pareto front)", pareto_plot(loaded, output / "pareto.png"),
                "Every step of every run; the line joins the points no other point beats (fewer MACs and "
                "higher mAP50). Weight/kernel pruning keeps the dense MACs: zeros are still multiplied.")]
    if any(run.latency for run in loaded):
        figures.append(("mAP50 vs measured latency", latency_plot(loaded, output / "latency.png"),
                        "Inference p50 measured through the runtime engine on the target device (latency-budget runs: "
                        "dense and pruned); the dashed line is the latency target. In the MACs plot the target "
                        "appears as the MACs the run needed to meet it."))
    if sensitivity is not None:
        dense, points, scored_as = load_sensitivity(Path(sensitivity))
        figures.append(("Sensitivity", sensitivity_plot(dense, points, output / "sensitivity.png", scored_as),
                        "Each layer group pruned alone at several ratios, no fine-tuning."))
    if all(run.widths for run in loaded):
        figures.append(("Kept channels per layer", widths_plot(loaded, output / "widths.png"),
                        "Dense width against the width each run kept, per arch-spec layer."))
    intro = "Final step of each run; MACs cut and Δ mAP50 against the run's own dense model."
    if not all(run.widths for run in loaded):
        intro += (" Imported models' runs (ONNX) score agreement mAP50 with their dense model on held-out frames, "
                  "not labeled mAP50.")
    return write_report_pages(output, "report", "Pruning report", intro, [(header, rows)], figures)


def write_report_pages(output: Path, stem: str, title: str, intro: str,
                       tables: list[tuple[list[str], list[list[str]]]],
                       figures: list[tuple[str, Path, str]]) -> tuple[Path, Path]:
    """``<stem>.md`` (linking the figures' PNGs) and a self-contained ``<stem>.html`` (PNGs embedded)."""
    markdown = [f"# {title}", "", intro, ""]
    body = [f"<h1>{html.escape(title)}</h1><p class='note'>{html.escape(intro)}</p>"]
    for header, rows in tables:
        markdown += [markdown_table(header, rows), ""]
        body.append(html_table(header, rows))
    for name, path, note in figures:
        markdown += [f"## {name}", "", note, "", f"![{name}]({path.name})", ""]
        body.append(f"<h2>{html.escape(name)}</h2><p class='note'>{html.escape(note)}</p>{embedded_png(path, name)}")
    md_path, html_path = output / f"{stem}.md", output / f"{stem}.html"
    md_path.write_text("\n".join(markdown))
    html_path.write_text(f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
                         f"<style>{CSS}</style></head><body>{''.join(body)}</body></html>\n")
    return md_path, html_path
