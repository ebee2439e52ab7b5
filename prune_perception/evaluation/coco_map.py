"""COCO mAP (faster-coco-eval) of detections against a DetectionDataset's ground truth, or of a COCO
results file against a COCO annotation file (no image files needed)."""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass, field
from numbers import Real
from pathlib import Path

import numpy as np
from faster_coco_eval import COCO, COCOeval_faster

from prune_perception.data.dataset import DetectionDataset, load_coco, read_json_file
from prune_perception.errors import DatasetError
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
    return _coco_map(ground_truth_coco(dataset), results)


def evaluate_results_file(detections_path: Path, annotations_path: Path) -> MapResult:
    """mAP of a COCO results file (``[{image_id, category_id, bbox [x, y, w, h], score}, ...]``) against a
    COCO annotation file, as pycocotools scores it (crowd regions ignored); the image files are not needed.

    DatasetError naming the file and entry for a malformed file, a detection of an image id the
    annotations do not have, or a category id they do not define.
    """
    detections_path, annotations_path = Path(detections_path), Path(annotations_path)
    load_coco(annotations_path, require_images=False)  # validates the annotation file, with clear errors
    document = read_json_file(annotations_path, "annotation file")
    categories = {int(c["id"]): str(c["name"]) for c in document["categories"]}
    annotations = document.get("annotations", [])
    ground_truth = {
        "images": [{"id": int(image["id"]), "width": int(image["width"]), "height": int(image["height"])}
                   for image in document["images"]],
        "annotations": [_ground_truth_annotation(number, a) for number, a in enumerate(annotations)],
        "categories": [{"id": i, "name": categories[i]} for i in sorted(categories)]}
    image_ids = {image["id"] for image in ground_truth["images"]}
    results = _read_results(detections_path, image_ids, categories, annotations_path)
    return _coco_map(ground_truth, results)


def _ground_truth_annotation(number: int, annotation: dict) -> dict:
    """A COCO annotation with the fields the evaluator reads (area = box area where the file has none)."""
    x, y, w, h = (float(v) for v in annotation["bbox"])
    return {"id": number + 1, "image_id": int(annotation["image_id"]), "category_id": int(annotation["category_id"]),
            "bbox": [x, y, w, h], "area": float(annotation.get("area", w * h)),
            "iscrowd": int(bool(annotation.get("iscrowd", 0)))}


def _read_results(path: Path, image_ids: set[int], categories: dict[int, str], annotations_path: Path) -> list[dict]:
    """The checked detections of a COCO results file."""
    document = read_json_file(path, "detections file")
    if not isinstance(document, list):
        raise DatasetError(f"{path}: expected a COCO results list [{{image_id, category_id, bbox, score}}, ...], "
                           f"got a JSON {type(document).__name__}")
    known = ", ".join(f"{i} ({name})" for i, name in sorted(categories.items()))
    results = []
    for number, entry in enumerate(document):
        where = f"{path}: detection [{number}]"
        if not isinstance(entry, dict):
            raise DatasetError(f"{where} is not an object but {type(entry).__name__}")
        missing = [key for key in ("image_id", "category_id", "bbox", "score") if key not in entry]
        if missing:
            raise DatasetError(f"{where} has no {', '.join(repr(k) for k in missing)} field{'s' * (len(missing) > 1)}")
        image_id, category_id, bbox, score = entry["image_id"], entry["category_id"], entry["bbox"], entry["score"]
        if not _is_integer(image_id) or image_id not in image_ids:
            raise DatasetError(f"{where} refers to image id {image_id!r}, which {annotations_path} does not have")
        if not _is_integer(category_id) or category_id not in categories:
            raise DatasetError(f"{where} has category id {category_id!r}, not one of {annotations_path}'s "
                               f"categories: {known}")
        if not (isinstance(bbox, list) and len(bbox) == 4 and all(_is_finite(v) for v in bbox)
                and bbox[2] >= 0 and bbox[3] >= 0):
            raise DatasetError(f"{where} has bbox {bbox!r}: expected [x, y, width, height], 4 finite numbers, "
                               "width and height >= 0")
        if not _is_finite(score):
            raise DatasetError(f"{where} has score {score!r}: expected a number")
        results.append({"image_id": int(image_id), "category_id": int(category_id),
                        "bbox": [float(v) for v in bbox], "score": float(score)})
    return results


def _is_integer(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_finite(value) -> bool:
    return isinstance(value, Real) and not isinstance(value, bool) and bool(np.isfinite(value))


def _coco_map(ground_truth: dict, results: list[dict]) -> MapResult:
    """mAP of COCO ``results`` against a COCO ``ground_truth`` dict; per-class AP keyed by category name."""
    categories = sorted(ground_truth["categories"], key=lambda c: c["id"])  # the evaluator's class order
    counted = [a["category_id"] for a in ground_truth["annotations"] if not a.get("iscrowd", 0)]
    per_class = {}
    for category in categories:
        num_gt = counted.count(category["id"])
        per_class[category["name"]] = {"AP50": None if num_gt == 0 else 0.0,
                                       "AP50_95": None if num_gt == 0 else 0.0, "num_gt": num_gt}
    num_images = len(ground_truth["images"])
    if not results or not counted:
        return MapResult(0.0, 0.0, per_class, num_images, len(results))
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO(ground_truth)
        coco_dt = coco_gt.loadRes(results)
        evaluator = COCOeval_faster(coco_gt, coco_dt, iouType="bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    precision = evaluator.eval["precision"]  # [iou thresholds, recall, class, area, max dets]
    for i, category in enumerate(categories):
        if per_class[category["name"]]["num_gt"] == 0:
            continue
        all_area = precision[:, :, i, 0, -1]
        per_class[category["name"]]["AP50"] = _mean_valid(all_area[0])
        per_class[category["name"]]["AP50_95"] = _mean_valid(all_area)
    return MapResult(float(evaluator.stats[1]), float(evaluator.stats[0]), per_class, num_images, len(results))


def _mean_valid(values: np.ndarray) -> float:
    valid = values[values > -1]
    return float(valid.mean()) if valid.size else 0.0
