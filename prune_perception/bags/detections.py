"""vision_msgs/Detection2DArray (rosbags messages) <-> xyxy boxes + class names + scores.

Convention (docs/design.md §8): bbox centre/size in image pixels, axis-aligned (theta 0);
``results[0].hypothesis.class_id`` is the class *name*, its score the confidence (1.0 for ground
truth). Reading takes each detection's best-scoring hypothesis.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from prune_perception.bags.messages import header_msg
from prune_perception.bags.typestore import DETECTION2D_ARRAY, message_class
from prune_perception.errors import BagError
from prune_perception.runtime.postprocess import Detections


@dataclass
class LabelledBoxes:
    """Boxes of one image: float32 ``[M,4]`` xyxy pixels, ``M`` class names, float32 ``[M]`` scores."""

    boxes: np.ndarray
    class_names: list[str]
    scores: np.ndarray

    def __len__(self) -> int:
        return len(self.class_names)

    def to_detections(self, classes: Sequence[str]) -> Detections:
        """Runtime :class:`Detections` with labels indexing ``classes``; boxes of other names are left out."""
        index = {name: i for i, name in enumerate(classes)}
        keep = [i for i, name in enumerate(self.class_names) if name in index]
        return Detections(self.boxes[keep].reshape(-1, 4), self.scores[keep],
                          np.asarray([index[self.class_names[i]] for i in keep], np.int64))


def _pose_with_covariance() -> Any:
    """An identity geometry_msgs/PoseWithCovariance (rosbags dataclasses have no field defaults)."""
    point = message_class("geometry_msgs/msg/Point")(x=0.0, y=0.0, z=0.0)
    orientation = message_class("geometry_msgs/msg/Quaternion")(x=0.0, y=0.0, z=0.0, w=1.0)
    pose = message_class("geometry_msgs/msg/Pose")(position=point, orientation=orientation)
    return message_class("geometry_msgs/msg/PoseWithCovariance")(pose=pose, covariance=np.zeros(36, np.float64))


def detections_to_bag_msg(stamp_ns: int, frame_id: str, boxes: np.ndarray, class_names: Sequence[str],
                      scores: Sequence[float] | np.ndarray | None = None) -> Any:
    """Detection2DArray (rosbags) of ``boxes`` (``[M,4]`` xyxy) named ``class_names``; scores default 1.0."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    values = np.ones(len(boxes)) if scores is None else np.asarray(scores, dtype=np.float64).reshape(-1)
    if not len(boxes) == len(class_names) == len(values):
        raise BagError(f"detections: {len(boxes)} boxes, {len(class_names)} class names and {len(values)} scores "
                       "must have the same length")
    header = header_msg(stamp_ns, frame_id)
    hypothesis_cls = message_class("vision_msgs/msg/ObjectHypothesis")
    with_pose_cls = message_class("vision_msgs/msg/ObjectHypothesisWithPose")
    point_cls, pose2d_cls = message_class("vision_msgs/msg/Point2D"), message_class("vision_msgs/msg/Pose2D")
    bbox_cls = message_class("vision_msgs/msg/BoundingBox2D")
    detection_cls = message_class("vision_msgs/msg/Detection2D")
    detections = []
    for (x1, y1, x2, y2), name, score in zip(boxes.tolist(), class_names, values.tolist()):
        result = with_pose_cls(hypothesis=hypothesis_cls(class_id=str(name), score=float(score)),
                               pose=_pose_with_covariance())
        center = pose2d_cls(position=point_cls(x=(x1 + x2) / 2.0, y=(y1 + y2) / 2.0), theta=0.0)
        bbox = bbox_cls(center=center, size_x=x2 - x1, size_y=y2 - y1)
        detections.append(detection_cls(header=header, results=[result], bbox=bbox, id=""))
    return message_class(DETECTION2D_ARRAY)(header=header, detections=detections)


def detections_from_bag_msg(msg: Any) -> LabelledBoxes:
    """Boxes, class names and scores of a Detection2DArray (rosbags or rclpy message).

    A detection without any hypothesis gets class name ``""`` and score 0.
    """
    boxes, names, scores = [], [], []
    for detection in msg.detections:
        cx, cy = detection.bbox.center.position.x, detection.bbox.center.position.y
        half_w, half_h = detection.bbox.size_x / 2.0, detection.bbox.size_y / 2.0
        boxes.append((cx - half_w, cy - half_h, cx + half_w, cy + half_h))
        best = max(detection.results, key=lambda r: r.hypothesis.score) if len(detection.results) else None
        names.append(str(best.hypothesis.class_id) if best is not None else "")
        scores.append(float(best.hypothesis.score) if best is not None else 0.0)
    return LabelledBoxes(np.asarray(boxes, np.float32).reshape(-1, 4), names, np.asarray(scores, np.float32))
