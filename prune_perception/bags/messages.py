"""Build rosbags messages (Header, Image, CompressedImage) and read header stamps, without ROS."""

from __future__ import annotations

from typing import Any

import numpy as np

from prune_perception.bags.typestore import COMPRESSED_IMAGE, IMAGE, message_class
from prune_perception.runtime.image_msg import image_to_msg_fields

NS_PER_S = 1_000_000_000


def time_msg(stamp_ns: int) -> Any:
    """builtin_interfaces/Time of a nanosecond stamp (must be >= 0)."""
    sec, nanosec = divmod(int(stamp_ns), NS_PER_S)
    return message_class("builtin_interfaces/msg/Time")(sec=sec, nanosec=nanosec)


def stamp_ns(header: Any) -> int:
    """Nanoseconds of a std_msgs/Header's stamp."""
    return int(header.stamp.sec) * NS_PER_S + int(header.stamp.nanosec)


def header_msg(stamp: int, frame_id: str) -> Any:
    """std_msgs/Header with a nanosecond stamp."""
    return message_class("std_msgs/msg/Header")(stamp=time_msg(stamp), frame_id=frame_id)


def image_msg(image: np.ndarray, encoding: str, header: Any) -> Any:
    """sensor_msgs/Image of an array already laid out for ``encoding`` (see runtime.image_msg)."""
    fields = image_to_msg_fields(image, encoding)
    fields["data"] = np.frombuffer(fields["data"], dtype=np.uint8)
    return message_class(IMAGE)(header=header, **fields)


def compressed_image_msg(data: bytes, image_format: str, header: Any) -> Any:
    """sensor_msgs/CompressedImage holding already encoded bytes (``image_format`` e.g. ``jpeg``)."""
    return message_class(COMPRESSED_IMAGE)(header=header, format=image_format,
                                           data=np.frombuffer(data, dtype=np.uint8))
