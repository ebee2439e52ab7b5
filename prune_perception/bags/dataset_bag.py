"""Dataset -> evaluation bag: every image of a split as a camera frame plus its ground truth.

Frame ``i`` is stamped ``start_stamp_ns + i / fps`` (header stamp = log time) and its
Detection2DArray carries the same header. ``transport='compressed'`` stores JPEG: JPEG source files
are embedded byte for byte (no re-encoding), others are encoded at ``jpeg_quality``. The class
names go into metadata.yaml's custom_data so :func:`bag_to_dataset` restores their order.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from prune_perception.bags.serialized_writer import STORAGES, BagWriter
from prune_perception.bags.detections import detections_to_bag_msg
from prune_perception.bags.messages import NS_PER_S, compressed_image_msg, header_msg, image_msg
from prune_perception.bags.topics import CLASSES_KEY, COMPRESSED_TOPIC, FRAME_ID, GT_TOPIC, IMAGE_TOPIC
from prune_perception.data.dataset import Sample, load_dataset, read_image_rgb
from prune_perception.errors import BagError, DatasetError
from prune_perception.runtime.image_msg import RAW_ENCODINGS, convert_color

DEFAULT_START_STAMP_NS = 1_700_000_000 * NS_PER_S
"""2023-11-14T22:13:20Z: a fixed, plausible epoch so written bags are reproducible."""
TRANSPORTS = ("raw", "compressed")
JPEG_SUFFIXES = (".jpg", ".jpeg")
COMPRESSED_FORMAT = "rgb8; jpeg compressed bgr8"
"""``format`` string of image_transport's compressed publisher for an rgb8 source."""


@dataclass(frozen=True)
class BagSummary:
    """What :func:`write_dataset_bag` wrote."""

    path: Path
    storage: str
    transport: str
    image_topic: str
    gt_topic: str
    frames: int
    boxes: int
    classes: list[str]
    start_ns: int
    end_ns: int
    counts: dict[str, int] = field(default_factory=dict)


def frame_stamp_ns(index: int, fps: float, start_stamp_ns: int) -> int:
    """Header stamp of frame ``index``: ``start + index / fps`` rounded to the nanosecond."""
    return int(start_stamp_ns) + round(index * NS_PER_S / fps)


def _check_options(fps: float, transport: str, storage: str, encoding: str, start_stamp_ns: int,
                   jpeg_quality: int) -> None:
    if not (isinstance(fps, (int, float)) and math.isfinite(fps) and fps > 0):
        raise BagError(f"fps must be a positive number, got {fps!r}")
    if transport not in TRANSPORTS:
        raise BagError(f"unknown image transport {transport!r} (choose one of {', '.join(TRANSPORTS)})")
    if storage not in STORAGES:
        raise BagError(f"unknown bag storage {storage!r} (choose one of {', '.join(STORAGES)})")
    if encoding not in RAW_ENCODINGS:
        raise BagError(f"unknown image encoding {encoding!r} (choose one of {', '.join(RAW_ENCODINGS)})")
    if int(start_stamp_ns) < 0:
        raise BagError(f"start_stamp_ns must be >= 0, got {start_stamp_ns}")
    if not 1 <= jpeg_quality <= 100:
        raise BagError(f"jpeg_quality must be in 1..100, got {jpeg_quality}")


def _jpeg_bytes(sample: Sample, rgb: np.ndarray, quality: int) -> bytes:
    if sample.image_path.suffix.lower() in JPEG_SUFFIXES:
        return sample.image_path.read_bytes()
    ok, encoded = cv2.imencode(".jpg", np.ascontiguousarray(rgb[:, :, ::-1]), [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise DatasetError(f"{sample.image_path}: JPEG encoding failed")
    return encoded.tobytes()


def _write_frame(writer: BagWriter, sample: Sample, classes: list[str], stamp: int, transport: str, encoding: str,
                 jpeg_quality: int) -> None:
    rgb = read_image_rgb(sample.image_path)
    if rgb.shape[:2] != (sample.height, sample.width):
        raise DatasetError(f"{sample.image_path}: image is {rgb.shape[1]}x{rgb.shape[0]} but the annotations say "
                           f"{sample.width}x{sample.height}")
    header = header_msg(stamp, FRAME_ID)
    if transport == "raw":
        writer.write_message(IMAGE_TOPIC, image_msg(convert_color(rgb, "rgb", encoding), encoding, header), stamp)
    else:
        data = _jpeg_bytes(sample, rgb, jpeg_quality)
        writer.write_message(COMPRESSED_TOPIC, compressed_image_msg(data, COMPRESSED_FORMAT, header), stamp)
    names = [classes[label] for label in sample.labels.tolist()]
    writer.write_message(GT_TOPIC, detections_to_bag_msg(stamp, FRAME_ID, sample.boxes, names), stamp)


def write_dataset_bag(dataset_path: str | Path, split: str, output: str | Path, fps: float = 10.0,
                      transport: str = "raw", storage: str = "mcap", encoding: str = "rgb8",
                      start_stamp_ns: int = DEFAULT_START_STAMP_NS, jpeg_quality: int = 95,
                      progress: bool = True) -> BagSummary:
    """Write ``split`` of the COCO/YOLO dataset at ``dataset_path`` as a new bag ``output``.

    ``encoding`` is the raw Image encoding (raw transport only). Refuses an existing ``output``;
    on any failure the half-written bag is deleted.
    """
    _check_options(fps, transport, storage, encoding, start_stamp_ns, jpeg_quality)
    output = Path(output)
    dataset = load_dataset(dataset_path, split)
    custom = {CLASSES_KEY: json.dumps(list(dataset.classes)), "prune_perception.source": str(dataset.source),
              "prune_perception.split": split}
    writer = BagWriter(output, storage=storage, custom_data=custom)
    stamps = [frame_stamp_ns(i, fps, start_stamp_ns) for i in range(len(dataset))]
    try:
        for sample, stamp in tqdm(list(zip(dataset.samples, stamps)), desc=f"bag {output.name}", unit="frame",
                                  disable=not progress):
            _write_frame(writer, sample, list(dataset.classes), stamp, transport, encoding, jpeg_quality)
        writer.close()
    except BaseException:
        writer.discard()
        raise
    return BagSummary(path=output, storage=storage, transport=transport,
                      image_topic=IMAGE_TOPIC if transport == "raw" else COMPRESSED_TOPIC, gt_topic=GT_TOPIC,
                      frames=len(dataset), boxes=sum(len(s.boxes) for s in dataset.samples),
                      classes=list(dataset.classes), start_ns=stamps[0], end_ns=stamps[-1], counts=writer.counts)
