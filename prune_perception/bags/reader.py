"""Evaluation bags: camera frames plus (optional) ground truth, as real rosbag2 recorders write them.

``open_bag(path)`` finds the image topic (the only Image/CompressedImage topic, or ``image_topic``)
and the ground truth (``/ground_truth/detections`` when present, or ``gt_topic`` — then required).
Frames come in log-time order with their header stamp; ground truth is looked up by header stamp.
A message that cannot be deserialized is still yielded, as a frame with ``msg=None`` and ``error``
set: it fails later, like any broken image, instead of vanishing.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from prune_perception.bags.detections import LabelledBoxes, detections_from_bag_msg
from prune_perception.bags.images import decode_image
from prune_perception.bags.messages import stamp_ns
from prune_perception.bags.raw_bag import RawBag, TopicMeta, first_line
from prune_perception.bags.topics import CLASSES_KEY, GT_TOPIC
from prune_perception.bags.typestore import COMPRESSED_IMAGE, DETECTION2D_ARRAY, IMAGE_TYPES, deserialize, typestore
from prune_perception.errors import BagError, InputImageError


@dataclass(frozen=True)
class BagFrame:
    """One image message of the bag."""

    index: int
    """Position on the image topic (0-based)."""
    stamp_ns: int
    """Header stamp; the log time when the message could not be deserialized."""
    log_time_ns: int
    msg: Any | None
    """The deserialized Image/CompressedImage (rosbags message), None when ``error`` is set."""
    error: str | None = None
    data: bytes = b""
    """The serialized (CDR) message as stored: what a player publishes."""

    def image(self) -> tuple[Any, str]:
        """``(array, color_order)`` of the frame; InputImageError for broken messages."""
        if self.msg is None:
            raise InputImageError(self.error or "frame has no message")
        return decode_image(self.msg)


def _check_type_hash(bag: RawBag, topic: TopicMeta) -> None:
    """BagError when the bag's recorded type hash says its definition differs from ours."""
    ours = typestore().hash_rihs01(topic.msgtype)
    if topic.type_hash and topic.type_hash != ours:
        raise BagError(f"{bag.path}: topic {topic.name}: the bag's {topic.msgtype} definition (hash "
                       f"{topic.type_hash}) differs from the one this package reads ({ours}); cannot decode it")


class EvalBag:
    """An open evaluation bag; use as a context manager or call :meth:`close`."""

    def __init__(self, raw: RawBag, image_topic: str, gt_topic: str | None) -> None:
        self.raw = raw
        self.path = raw.path
        self.image_topic = image_topic
        self.image_type = raw.topics[image_topic].msgtype
        self.gt_topic = gt_topic

    @property
    def transport(self) -> str:
        """'compressed' or 'raw'."""
        return "compressed" if self.image_type == COMPRESSED_IMAGE else "raw"

    @property
    def frame_count(self) -> int:
        return self.raw.topics[self.image_topic].stored_count

    @property
    def classes(self) -> list[str] | None:
        """Class names recorded by :func:`write_dataset_bag` (custom_data), else None."""
        text = self.raw.custom_data.get(CLASSES_KEY)
        try:
            names = json.loads(text) if text else None
        except ValueError:
            return None
        return [str(n) for n in names] if isinstance(names, list) else None

    def frames(self) -> Iterator[BagFrame]:
        """Every image message in log-time order."""
        for index, (_, msgtype, log_time, data) in enumerate(self.raw.messages([self.image_topic])):
            try:
                msg = deserialize(data, msgtype)
            except Exception as exc:  # a broken message: yielded, fails later as a frame
                yield BagFrame(index, log_time, log_time, None,
                               f"{self.path}: {self.image_topic} message {index} at {log_time} ns cannot be "
                               f"deserialized ({type(exc).__name__}: {first_line(exc)})", bytes(data))
                continue
            yield BagFrame(index, stamp_ns(msg.header), log_time, msg, data=bytes(data))

    def iter_ground_truth(self) -> Iterator[tuple[int, int, LabelledBoxes]]:
        """``(stamp_ns, log_time_ns, boxes)`` of every ground-truth message (none without a GT topic)."""
        if self.gt_topic is None:
            return
        for index, (_, msgtype, log_time, data) in enumerate(self.raw.messages([self.gt_topic])):
            try:
                msg = deserialize(data, msgtype)
            except Exception as exc:
                raise BagError(f"{self.path}: ground-truth message {index} on {self.gt_topic} at {log_time} ns "
                               f"cannot be deserialized ({type(exc).__name__}: {first_line(exc)})") from None
            yield stamp_ns(msg.header), log_time, detections_from_bag_msg(msg)

    def ground_truth(self) -> dict[int, LabelledBoxes]:
        """Ground truth by header stamp; BagError if two messages share a stamp."""
        by_stamp: dict[int, LabelledBoxes] = {}
        for stamp, _, boxes in self.iter_ground_truth():
            if stamp in by_stamp:
                raise BagError(f"{self.path}: two ground-truth messages on {self.gt_topic} share the stamp {stamp} "
                               "ns: cannot tell which image they belong to")
            by_stamp[stamp] = boxes
        return by_stamp

    def close(self) -> None:
        self.raw.close()

    def __enter__(self) -> EvalBag:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()


def _image_topic(raw: RawBag, image_topic: str | None) -> str:
    candidates = raw.topics_of_type(*IMAGE_TYPES)
    if image_topic is None:
        if len(candidates) != 1:
            found = f"several: {', '.join(candidates)}" if candidates else f"none among {raw.describe_topics()}"
            raise BagError(f"{raw.path}: cannot pick the image topic: expected exactly one Image/CompressedImage "
                           f"topic, found {found}; name one with image_topic")
        image_topic = candidates[0]
    topic = raw.topics.get(image_topic)
    if topic is None:
        raise BagError(f"{raw.path}: image topic {image_topic} is not in the bag (image topics: "
                       f"{', '.join(candidates) or 'none'}; all topics: {raw.describe_topics()})")
    if topic.msgtype not in IMAGE_TYPES:
        raise BagError(f"{raw.path}: image topic {image_topic} holds {topic.msgtype}, expected "
                       f"{' or '.join(IMAGE_TYPES)}")
    if topic.stored_count == 0:
        raise BagError(f"{raw.path}: image topic {image_topic} has no messages")
    _check_type_hash(raw, topic)
    return image_topic


def _gt_topic(raw: RawBag, gt_topic: str | None) -> str | None:
    name = gt_topic or GT_TOPIC
    topic = raw.topics.get(name)
    if topic is None:
        if gt_topic is None:
            return None
        raise BagError(f"{raw.path}: ground-truth topic {gt_topic} is not in the bag (topics: "
                       f"{raw.describe_topics()})")
    if topic.msgtype != DETECTION2D_ARRAY:
        raise BagError(f"{raw.path}: ground-truth topic {name} holds {topic.msgtype}, expected {DETECTION2D_ARRAY}")
    _check_type_hash(raw, topic)
    return name


def open_bag(path: str | Path, image_topic: str | None = None, gt_topic: str | None = None) -> EvalBag:
    """Open an evaluation bag; BagError for anything that makes it unusable (see module doc)."""
    raw = RawBag(path)
    try:
        if raw.message_count == 0:
            raise BagError(f"{raw.path}: the bag is empty (no messages; topics: {raw.describe_topics()})")
        return EvalBag(raw, _image_topic(raw, image_topic), _gt_topic(raw, gt_topic))
    except BaseException:
        raw.close()
        raise
