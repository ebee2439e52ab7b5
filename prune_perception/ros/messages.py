"""numpy / runtime results <-> ROS messages (sensor_msgs, vision_msgs), no cv_bridge."""

from __future__ import annotations

import array
from collections.abc import Sequence

import numpy as np
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import Header
from vision_msgs.msg import Detection2D, Detection2DArray, ObjectHypothesisWithPose

from prune_perception.runtime.image_msg import image_to_msg_fields
from prune_perception.runtime.postprocess import Detections


def byte_array(data: bytes) -> array.array:
    """uint8[] message field value; rclpy copies an array('B') in one go (a bytes object item by item)."""
    return array.array("B", data)


def detections_to_ros_msg(header: Header, detections: Detections, class_names: Sequence[str]) -> Detection2DArray:
    """Detection2DArray with ``header`` (copied from the image); bbox centre/size in original pixels,
    hypothesis class_id = class name, score = confidence."""
    out = Detection2DArray(header=header)
    boxes = detections.boxes.astype(np.float64)
    for (x1, y1, x2, y2), score, label in zip(boxes.tolist(), detections.scores.tolist(), detections.labels.tolist()):
        detection = Detection2D(header=header)
        detection.bbox.center.position.x = (x1 + x2) / 2.0
        detection.bbox.center.position.y = (y1 + y2) / 2.0
        detection.bbox.size_x = x2 - x1
        detection.bbox.size_y = y2 - y1
        hypothesis = ObjectHypothesisWithPose()
        hypothesis.hypothesis.class_id = class_names[label] if 0 <= label < len(class_names) else str(label)
        hypothesis.hypothesis.score = float(score)
        detection.results.append(hypothesis)
        out.detections.append(detection)
    return out


def image_to_msg(image: np.ndarray, encoding: str, header: Header) -> Image:
    """sensor_msgs/Image of an array already laid out for ``encoding`` (rgb8: HxWx3 RGB, mono8: HxW, ...)."""
    fields = image_to_msg_fields(image, encoding)
    msg = Image(header=header, height=fields["height"], width=fields["width"], encoding=encoding,
                is_bigendian=fields["is_bigendian"], step=fields["step"])
    msg.data = byte_array(fields["data"])
    return msg


def compressed_to_msg(data: bytes, image_format: str, header: Header) -> CompressedImage:
    msg = CompressedImage(header=header, format=image_format)
    msg.data = byte_array(data)
    return msg
