"""Accuracy and latency of a model on an evaluation bag (ROS-free): the numbers of ``replay`` and ``compare``.

Every image frame of the bag is one row (:class:`FrameRecord`): its detections, or none when the
model gave no output for it (dropped by the node, lost, or a broken message). Frames without
output count as misses in the mAP (all their ground truth is missed) and as dropped. Frames are
matched to outputs by header stamp. ``evaluate_bag_offline`` runs the runtime engine straight over
the bag (no ROS): the reference a replay should reproduce when nothing is dropped.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from prune_perception.bags.reader import EvalBag, open_bag
from prune_perception.data.dataset import DetectionDataset, Sample
from prune_perception.errors import BagError, PrunePerceptionError
from prune_perception.evaluation.coco_map import MapResult, evaluate_detections
from prune_perception.runtime.engine import DetectorEngine
from prune_perception.runtime.latency_stats import LatencyStats
from prune_perception.runtime.postprocess import Detections


@dataclass
class FrameRecord:
    """One image frame of the bag and what the model made of it."""

    stamp_ns: int
    width: int = 0
    height: int = 0
    detections: Detections | None = None
    """None: no output for this frame."""
    latency_ms: float | None = None
    error: str | None = None
    """Why the frame could not be used (broken message), if known."""


@dataclass
class BagEvaluation:
    """Accuracy + latency of one model on one bag."""

    model: str
    bag: str
    mode: str
    """'offline', 'replay x<rate>' or 'replay max-rate'."""
    frames: int
    answered: int
    """Frames with an output."""
    failed: int
    """Frames that could not be used at all (broken messages)."""
    map: MapResult | None
    """None for a bag without ground truth."""
    latency: LatencyStats
    """Per answered frame: replay = output received - input published; offline = engine total."""
    wall_seconds: float
    node: dict[str, str] = field(default_factory=dict)
    """The node's last /diagnostics values (replay only)."""
    records: list[FrameRecord] = field(default_factory=list, repr=False)
    """Every frame with its detections (not in the JSON)."""

    @property
    def latency_samples_ms(self) -> list[float]:
        return [r.latency_ms for r in self.records if r.latency_ms is not None]
    notes: list[str] = field(default_factory=list)

    @property
    def missed(self) -> int:
        """Frames without output (dropped or failed)."""
        return self.frames - self.answered

    @property
    def fps(self) -> float:
        return self.answered / self.wall_seconds if self.wall_seconds > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {"model": self.model, "bag": self.bag, "mode": self.mode, "frames": self.frames,
                "answered": self.answered, "missed": self.missed, "failed": self.failed,
                "map": self.map.as_dict() if self.map else None, "latency_ms": self.latency.as_dict(),
                "wall_seconds": round(self.wall_seconds, 3), "fps": round(self.fps, 3), "node": self.node,
                "notes": self.notes}


def _fmt(value: float | None, digits: int = 3) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def evaluation_markdown(result: BagEvaluation) -> str:
    """One model's bag evaluation as Markdown."""
    lines = [f"# {result.mode}: {Path(result.model).name} on {Path(result.bag).name}", "",
             "| frames | answered | missed | failed | mAP50 | mAP50-95 | latency p50 / p90 / p99 ms | fps |",
             "|---|---|---|---|---|---|---|---|",
             f"| {result.frames} | {result.answered} | {result.missed} | {result.failed} | "
             f"{_fmt(result.map.map50 if result.map else None)} | "
             f"{_fmt(result.map.map50_95 if result.map else None)} | {_fmt(result.latency.p50, 2)} / "
             f"{_fmt(result.latency.p90, 2)} / {_fmt(result.latency.p99, 2)} | {result.fps:.1f} |"]
    if result.map and result.map.per_class:
        lines += ["", "| class | AP50 | AP50-95 |", "|---|---|---|"]
        lines += [f"| {name} | {_fmt(ap['AP50'])} | {_fmt(ap['AP50_95'])} |" for name, ap in result.map.per_class.items()]
    if result.node:
        keys = ("frames_received", "frames_processed", "frames_dropped", "frames_failed", "latency_inference_ms_p50",
                "pipeline_latency_ms_p50", "pipeline_latency_ms_p99", "active_provider", "model_sha256")
        lines += ["", "Node diagnostics: " + ", ".join(f"{k} {result.node[k]}" for k in keys if k in result.node)]
    lines += [f"- {note}" for note in result.notes]
    return "\n".join(lines) + "\n"


def write_evaluation(result: BagEvaluation, output: Path, stem: str) -> list[Path]:
    """``<stem>.json`` and ``<stem>.md`` under ``output``."""
    output.mkdir(parents=True, exist_ok=True)
    json_path, md_path = output / f"{stem}.json", output / f"{stem}.md"
    json_path.write_text(json.dumps(result.as_dict(), indent=2) + "\n")
    md_path.write_text(evaluation_markdown(result))
    return [json_path, md_path]


def ground_truth_dataset(bag: EvalBag, frames: Sequence[FrameRecord],
                         classes: Sequence[str]) -> tuple[DetectionDataset, list[Detections]] | None:
    """The bag's ground truth as a dataset (one sample per frame, by stamp) + detections in the same order.

    None when the bag has no ground truth. Frames without output get empty detections (misses).
    """
    if bag.gt_topic is None:
        return None
    truth = bag.ground_truth()
    samples, detections = [], []
    empty = Detections(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64))
    for index, frame in enumerate(frames):
        gt = truth.get(frame.stamp_ns)
        labelled = gt.to_detections(classes) if gt is not None else empty
        samples.append(Sample(Path(f"frame_{index:06d}"), index + 1, frame.width, frame.height, labelled.boxes,
                              labelled.labels))
        detections.append(frame.detections if frame.detections is not None else empty)
    return DetectionDataset(list(classes), samples, Path(bag.path)), detections


def bag_classes(bag: EvalBag, model_classes: Sequence[str]) -> list[str]:
    """Class list of the evaluation: the bag's recorded classes, else the model's plus unknown GT names."""
    classes = list(bag.classes or model_classes)
    if bag.gt_topic is not None:
        for _, _, gt in bag.iter_ground_truth():
            classes += [name for name in gt.class_names if name not in classes]
    return classes


def summarize(bag: EvalBag, model: str, mode: str, frames: list[FrameRecord], model_classes: Sequence[str],
              wall_seconds: float, node: dict[str, str] | None = None) -> BagEvaluation:
    """mAP (frames without output = misses) and latency of a finished pass over ``bag``."""
    classes = bag_classes(bag, model_classes)
    gt = ground_truth_dataset(bag, frames, classes)
    notes = []
    if gt is None:
        notes.append("the bag has no ground truth: latency only")
    else:
        unknown = sorted(set(model_classes) - set(classes))
        if unknown:
            notes.append(f"model classes not in the bag's ground truth (not scored): {', '.join(unknown)}")
    return BagEvaluation(
        model=str(model), bag=str(bag.path), mode=mode, frames=len(frames),
        answered=sum(f.detections is not None for f in frames), failed=sum(f.error is not None for f in frames),
        map=evaluate_detections(*gt) if gt else None,
        latency=LatencyStats.of([f.latency_ms for f in frames if f.latency_ms is not None]),
        wall_seconds=wall_seconds, node=dict(node or {}), notes=notes, records=frames)


def evaluate_bag_offline(bag_path: str | Path, model: str | Path, image_topic: str | None = None,
                         engine_options: dict[str, Any] | None = None, progress: bool = True) -> BagEvaluation:
    """Run the runtime engine over every frame of the bag (no ROS) and score it."""
    options = {"providers": ("cpu",), **(engine_options or {})}
    engine = DetectorEngine(model, **options)
    frames: list[FrameRecord] = []
    with open_bag(bag_path, image_topic) as bag:
        started = time.perf_counter()
        for frame in tqdm(bag.frames(), total=bag.frame_count, desc=f"offline {Path(model).name}",
                          disable=not progress, unit="frame"):
            record = FrameRecord(frame.stamp_ns)
            try:
                decode_start = time.perf_counter()
                image, color_order = frame.image()
                decode_ms = (time.perf_counter() - decode_start) * 1e3
                record.height, record.width = image.shape[:2]
                record.detections, times = engine.detect(image, color_order)
                record.latency_ms = decode_ms + times.total_ms
            except PrunePerceptionError as exc:
                record.error = str(exc)
            frames.append(record)
        wall = time.perf_counter() - started
        if not frames:
            raise BagError(f"{bag_path}: no image frames")
        return summarize(bag, str(model), "offline", frames, engine.info.classes, wall)
