"""COCO mAP (faster-coco-eval) of detections against a DetectionDataset's ground truth."""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass, field

import numpy as np
from faster_coco_eval import COCO, COCOeval_faster

from prune_perception.data.dataset import DetectionDataset
from prune_perception.runtime.postprocess import Detections


@dataclass
class MapResult:
    """mAP over IoU 0.50 and 0.50:0.95 (COCO), per-class AP (None where a class has no ground truth)."""

    map50: float
    map50_95: float
    per_class: dict[str, dict] = field(default_factory=dict)
    num_images: int = 0
    num_detections: int = 0

    def as_dict(self) -> dict:
        return {"mAP50": self.map50, "mAP50_95": self.map50_95, "num_images": self.num_images,
                "num_detections": self.num_detections, "per_class": self.per_class}


def _xywh(boxes: np.ndarray) -> np.ndarray:
    out = np.asarray(boxes, dtype=np.float64).reshape(-1, 4).copy()
    out[:, 2:] -= out[:, :2]
    return out


def ground_truth_coco(dataset: DetectionDataset) -> dict:
    """The dataset's ground truth as a COCO dict (category id = class index + 1)."""
    images, annotations = [], []
    for sample in dataset.samples:
        images.append({"id": sample.image_id, "width": sample.width, "height": sample.height})
        for box, label in zip(_xywh(sample.boxes), sample.labels):
            annotations.append({"id": len(annotations) + 1, "image_id": sample.image_id, "category_id": int(label) + 1,
                                "bbox": box.tolist(), "area": float(box[2] * box[3]), "iscrowd": 0})
    categories = [{"id": i + 1, "name": name} for i, name in enumerate(dataset.classes)]
    return {"images": images, "annotations": annotations, "categories": categories}


def evaluate_detections(dataset: DetectionDataset, detections: list[Detections]) -> MapResult:
    """mAP of per-image detections (in original image pixels, same order as dataset.samples)."""
    if len(detections) != len(dataset.samples):
        raise ValueError(f"{len(detections)} detection sets for {len(dataset.samples)} images")
    results = []
    for sample, dets in zip(dataset.samples, detections):
        for box, score, label in zip(_xywh(dets.boxes), dets.scores, dets.labels):
            results.append({"image_id": sample.image_id, "category_id": int(label) + 1,
                            "bbox": box.tolist(), "score": float(score)})
    gt_counts = np.bincount(np.concatenate([s.labels for s in dataset.samples] + [np.zeros(0, np.int64)]),
                            minlength=len(dataset.classes))
    per_class = {name: {"AP50": None if gt_counts[i] == 0 else 0.0, "AP50_95": None if gt_counts[i] == 0 else 0.0,
                        "num_gt": int(gt_counts[i])} for i, name in enumerate(dataset.classes)}
    if not results or gt_counts.sum() == 0:
        return MapResult(0.0, 0.0, per_class, len(dataset.samples), len(results))
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO(ground_truth_coco(dataset))
        coco_dt = coco_gt.loadRes(results)
        evaluator = COCOeval_faster(coco_gt, coco_dt, iouType="bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    precision = evaluator.eval["precision"]  # [iou thresholds, recall, class, area, max dets]
    for i, name in enumerate(dataset.classes):
        if gt_counts[i] == 0:
            continue
        all_area = precision[:, :, i, 0, -1]
        per_class[name]["AP50"] = _mean_valid(all_area[0])
        per_class[name]["AP50_95"] = _mean_valid(all_area)
    return MapResult(float(evaluator.stats[1]), float(evaluator.stats[0]), per_class, len(dataset.samples), len(results))


def _mean_valid(values: np.ndarray) -> float:
    valid = values[values > -1]
    return float(valid.mean()) if valid.size else 0.0
