"""Decode Image / CompressedImage messages (rosbags or rclpy) to numpy arrays; problems raise InputImageError."""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np

from prune_perception.errors import InputImageError
from prune_perception.runtime.image_msg import (DEFAULT_MAX_PIXELS, check_encoded_image_size, check_image_size,
                                                compressed_data, image_from_msg)


def is_compressed(msg: Any) -> bool:
    """True for a sensor_msgs/CompressedImage (it has ``format``, not ``encoding``)."""
    return hasattr(msg, "format") and not hasattr(msg, "encoding")


def compressed_kind(msg: Any) -> str:
    """'jpeg', 'png' or '' from the data's magic bytes (the ``format`` string varies between publishers)."""
    head = bytes(memoryview(compressed_data(msg)).cast("B")[:8])
    if head.startswith(b"\xff\xd8"):
        return "jpeg"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    return ""


def decode_image(msg: Any, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[np.ndarray, str]:
    """``(array, color_order)`` of an Image or CompressedImage (compressed ones decode to BGR order)."""
    if not is_compressed(msg):
        return image_from_msg(msg, max_pixels)
    data = compressed_data(msg)
    check_encoded_image_size(data, max_pixels)   # before decoding: a small file can declare gigapixels
    buffer = np.frombuffer(data, dtype=np.uint8)
    image = cv2.imdecode(buffer, cv2.IMREAD_UNCHANGED)
    if image is None:
        raise InputImageError(f"compressed image ({msg.format or 'no format'}, {buffer.size} bytes) cannot be "
                              "decoded (corrupt or unsupported format)")
    check_image_size(image.shape[1], image.shape[0], max_pixels)
    return image, "bgr"


def decode_rgb(msg: Any, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """uint8 ``HxWx3`` RGB of an 8-bit colour or mono image message (alpha dropped, mono replicated)."""
    image, order = decode_image(msg, max_pixels)
    if image.dtype != np.uint8:
        raise InputImageError(f"image is {image.dtype}, expected 8-bit for an RGB conversion")
    if image.ndim == 2:
        return np.repeat(image[:, :, None], 3, axis=2)
    rgb = image[:, :, :3] if order == "rgb" else image[:, :, 2::-1]
    return np.ascontiguousarray(rgb)
