"""Markdown rendering of evaluation results."""

from __future__ import annotations

from prune_perception.evaluation.coco_map import MapResult


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def map_markdown(result: MapResult, title: str, source: str = "") -> str:
    """A Markdown section: overall mAP then a per-class AP table."""
    lines = [f"# {title}", ""]
    if source:
        lines += [source, ""]
    lines += ["| metric | value |", "|---|---|",
              f"| mAP50 | {result.map50:.3f} |", f"| mAP50-95 | {result.map50_95:.3f} |",
              f"| images | {result.num_images} |", f"| detections | {result.num_detections} |", "",
              "| class | AP50 | AP50-95 | ground-truth boxes |", "|---|---|---|---|"]
    for name, row in result.per_class.items():
        lines.append(f"| {name} | {_fmt(row['AP50'])} | {_fmt(row['AP50_95'])} | {row['num_gt']} |")
    return "\n".join(lines) + "\n"
