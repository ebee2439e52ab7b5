"""Evaluation bag -> COCO dataset (``images/<split>/NNNNNN.<ext>`` + ``annotations/instances_<split>.json``).

Frames are paired with ground truth by header stamp. ``image_format='auto'`` keeps compressed
frames' bytes as they are (no re-encoding) and writes raw frames as lossless PNG, so a
dataset -> bag -> dataset round trip keeps the pixels. Frames that cannot be decoded, frames
without ground truth and ground truth without a frame are left out, counted and logged.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from prune_perception.bags.detections import LabelledBoxes
from prune_perception.bags.images import compressed_kind, is_compressed
from prune_perception.bags.reader import BagFrame, EvalBag, open_bag
from prune_perception.data.dataset import DetectionDataset, Sample, write_coco
from prune_perception.errors import BagError, InputImageError

log = logging.getLogger(__name__)

IMAGE_FORMATS = ("auto", "png", "jpg")
JPEG_QUALITY = 95
_SUFFIX = {"jpeg": ".jpg", "png": ".png"}


@dataclass(frozen=True)
class DatasetExport:
    """What :func:`bag_to_dataset` wrote and left out."""

    output: Path
    annotations: Path
    images: int
    boxes: int
    classes: list[str]
    broken_frames: int
    frames_without_ground_truth: int
    ground_truth_without_frame: int


def _encode(frame: BagFrame, image_format: str) -> tuple[bytes, str, int, int]:
    """``(file bytes, suffix, width, height)`` of a frame; InputImageError when it cannot be decoded."""
    image, order = frame.image()
    height, width = image.shape[:2]
    if frame.msg is not None and is_compressed(frame.msg):
        kind = compressed_kind(frame.msg)
        if kind and (image_format == "auto" or _SUFFIX[kind] == f".{image_format}"):
            return bytes(memoryview(frame.msg.data).cast("B")), _SUFFIX[kind], width, height
    if image.ndim == 3 and order == "rgb":
        image = image[:, :, [2, 1, 0, 3][: image.shape[2]]]  # cv2 writes BGR(A)
    suffix = ".jpg" if image_format == "jpg" else ".png"
    params = [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY] if suffix == ".jpg" else []
    ok, encoded = cv2.imencode(suffix, np.ascontiguousarray(image), params)
    if not ok:
        raise InputImageError(f"cannot encode a {image.dtype} {list(image.shape)} image as {suffix}")
    return encoded.tobytes(), suffix, width, height


def _class_names(bag: EvalBag, ground_truth: dict[int, LabelledBoxes], classes: Sequence[str] | None) -> list[str]:
    seen = {name for boxes in ground_truth.values() for name in boxes.class_names}
    names = [str(n) for n in classes] if classes is not None else bag.classes or sorted(seen)
    unknown = sorted(seen - set(names))
    if unknown:
        raise BagError(f"{bag.path}: ground truth on {bag.gt_topic} names classes {unknown} that are not among "
                       f"{names}")
    return names


def _check_output(output: Path, split: str) -> tuple[Path, Path]:
    images_dir, annotations = output / "images" / split, output / "annotations" / f"instances_{split}.json"
    for existing in (images_dir, annotations):
        if existing.exists():
            raise BagError(f"{existing} already exists; choose another output or split (datasets are never "
                           "overwritten)")
    return images_dir, annotations


def _export(bag: EvalBag, output: Path, split: str, image_format: str, classes: Sequence[str] | None,
            require_ground_truth: bool, progress: bool) -> DatasetExport:
    if bag.gt_topic is None and require_ground_truth:
        raise BagError(f"{bag.path}: no ground-truth topic (expected /ground_truth/detections, Detection2DArray); "
                       "pass require_ground_truth=False to export the images without boxes")
    images_dir, annotations = _check_output(output, split)
    ground_truth = bag.ground_truth()
    names = _class_names(bag, ground_truth, classes)
    index = {name: i for i, name in enumerate(names)}
    images_dir.mkdir(parents=True)
    samples, matched, broken, unlabelled = [], set(), 0, 0
    for frame in tqdm(bag.frames(), total=bag.frame_count, desc=f"export {bag.path.name}", unit="frame",
                      disable=not progress):
        boxes = ground_truth.get(frame.stamp_ns)
        if boxes is None and bag.gt_topic is not None:
            unlabelled += 1
            log.warning("%s: frame %d (stamp %d ns) has no ground truth on %s: left out", bag.path, frame.index,
                        frame.stamp_ns, bag.gt_topic)
            continue
        matched.add(frame.stamp_ns)
        try:
            data, suffix, width, height = _encode(frame, image_format)
        except InputImageError as exc:
            broken += 1
            log.warning("%s: frame %d (stamp %d ns) left out: %s", bag.path, frame.index, frame.stamp_ns, exc)
            continue
        path = images_dir / f"{frame.index:06d}{suffix}"
        path.write_bytes(data)
        boxes = boxes or LabelledBoxes(np.zeros((0, 4), np.float32), [], np.zeros(0, np.float32))
        labels = np.array([index[name] for name in boxes.class_names], np.int64)
        samples.append(Sample(path, frame.index + 1, width, height, boxes.boxes.astype(np.float32), labels))
    orphans = len(set(ground_truth) - matched)
    if orphans:
        log.warning("%s: %d ground-truth messages on %s match no image stamp: left out", bag.path, orphans,
                    bag.gt_topic)
    write_coco(DetectionDataset(names, samples, bag.path), annotations, output / "images")
    return DatasetExport(output, annotations, len(samples), sum(len(s.boxes) for s in samples), names, broken,
                         unlabelled, orphans)


def bag_to_dataset(bag: str | Path | EvalBag, output: str | Path, split: str = "val", image_format: str = "auto",
                   image_topic: str | None = None, gt_topic: str | None = None,
                   classes: Sequence[str] | None = None, require_ground_truth: bool = True,
                   progress: bool = True) -> DatasetExport:
    """Export ``bag`` (a path or an open :class:`EvalBag`) as the ``split`` of a COCO dataset at ``output``.

    Class order: ``classes``, else the one recorded by write_dataset_bag, else sorted names.
    ``load_dataset(output, split)`` reads the result.
    """
    if image_format not in IMAGE_FORMATS:
        raise BagError(f"unknown image format {image_format!r} (choose one of {', '.join(IMAGE_FORMATS)})")
    output = Path(output)
    if isinstance(bag, EvalBag):
        return _export(bag, output, split, image_format, classes, require_ground_truth, progress)
    with open_bag(bag, image_topic=image_topic, gt_topic=gt_topic) as opened:
        return _export(opened, output, split, image_format, classes, require_ground_truth, progress)
