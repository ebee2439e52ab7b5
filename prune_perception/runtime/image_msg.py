"""sensor_msgs/Image and CompressedImage <-> numpy, without ROS (no cv_bridge, no rclpy).

Works on anything with the message's fields: rclpy messages, rosbags messages, plain objects.
A raw image is checked against its own header (encoding known, size > 0, ``step`` large enough,
``len(data) == step * height``, pixel count within a limit) and returned as a view on the
message's buffer where possible. Every problem raises :class:`InputImageError` naming it.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any

import numpy as np

from prune_perception.errors import InputImageError

DEFAULT_MAX_PIXELS = 7680 * 4320
"""8K UHD: larger frames are refused before any copy or decode."""


@dataclass(frozen=True)
class RawEncoding:
    channels: int
    dtype: np.dtype
    color_order: str
    """'rgb' or 'bgr' (mono images: 'rgb', the order is irrelevant)."""


RAW_ENCODINGS: dict[str, RawEncoding] = {
    "rgb8": RawEncoding(3, np.dtype(np.uint8), "rgb"),
    "bgr8": RawEncoding(3, np.dtype(np.uint8), "bgr"),
    "rgba8": RawEncoding(4, np.dtype(np.uint8), "rgb"),
    "bgra8": RawEncoding(4, np.dtype(np.uint8), "bgr"),
    "mono8": RawEncoding(1, np.dtype(np.uint8), "rgb"),
    "mono16": RawEncoding(1, np.dtype(np.uint16), "rgb"),
    "8UC1": RawEncoding(1, np.dtype(np.uint8), "rgb"),
    "8UC3": RawEncoding(3, np.dtype(np.uint8), "bgr"),    # OpenCV's channel order
    "16UC1": RawEncoding(1, np.dtype(np.uint16), "rgb"),
}


def _byte_count(data: Any) -> int:
    return memoryview(data).nbytes if not isinstance(data, np.ndarray) else data.nbytes


def check_image_size(width: int, height: int, max_pixels: int = DEFAULT_MAX_PIXELS) -> None:
    """InputImageError for a 0-sized image or one with more than ``max_pixels`` pixels."""
    if width <= 0 or height <= 0:
        raise InputImageError(f"image is {width}x{height}: width and height must be > 0")
    if width * height > max_pixels:
        raise InputImageError(f"image is {width}x{height} = {width * height} pixels, over the limit of "
                              f"{max_pixels} (max_image_pixels)")


def image_from_msg(msg: Any, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[np.ndarray, str]:
    """``(array, color_order)`` of a sensor_msgs/Image: ``HxW`` (mono) or ``HxWxC``, uint8/uint16.

    ``color_order`` is 'rgb' or 'bgr', as :meth:`DetectorEngine.detect` takes it.
    """
    encoding = str(msg.encoding)
    spec = RAW_ENCODINGS.get(encoding)
    if spec is None:
        raise InputImageError(f"unsupported image encoding {encoding!r} (supported: {', '.join(RAW_ENCODINGS)})")
    height, width, step = int(msg.height), int(msg.width), int(msg.step)
    check_image_size(width, height, max_pixels)
    row_bytes = width * spec.channels * spec.dtype.itemsize
    if step < row_bytes:
        raise InputImageError(f"{encoding} image {width}x{height}: step {step} is smaller than one row "
                              f"({width} px x {spec.channels * spec.dtype.itemsize} bytes = {row_bytes})")
    if step % spec.dtype.itemsize:
        raise InputImageError(f"{encoding} image: step {step} is not a multiple of the {spec.dtype.itemsize}-byte "
                              "pixel component")
    size = _byte_count(msg.data)
    if size != step * height:
        problem = "truncated" if size < step * height else "too long"
        raise InputImageError(f"{encoding} image {width}x{height}, step {step}: data has {size} bytes, expected "
                              f"step x height = {step * height} ({problem})")
    buffer = np.frombuffer(msg.data, dtype=np.uint8)
    rows = buffer.reshape(height, step)[:, :row_bytes]
    dtype = spec.dtype
    if dtype.itemsize > 1:
        big_endian = bool(msg.is_bigendian)
        dtype = dtype.newbyteorder(">" if big_endian else "<")
        rows = np.ascontiguousarray(rows).view(dtype)
        if big_endian != (sys.byteorder == "big"):
            rows = rows.astype(spec.dtype)
    else:
        rows = rows.view(dtype)
    shape = (height, width) if spec.channels == 1 else (height, width, spec.channels)
    return rows.reshape(shape), spec.color_order


def image_to_msg_fields(image: np.ndarray, encoding: str) -> dict[str, Any]:
    """Fields of a sensor_msgs/Image for ``image`` already in ``encoding``'s layout (data as bytes)."""
    spec = RAW_ENCODINGS.get(encoding)
    if spec is None:
        raise InputImageError(f"unsupported image encoding {encoding!r} (supported: {', '.join(RAW_ENCODINGS)})")
    expected_ndim = 2 if spec.channels == 1 else 3
    if image.dtype != spec.dtype or image.ndim != expected_ndim or (expected_ndim == 3
                                                                   and image.shape[2] != spec.channels):
        raise InputImageError(f"{encoding} needs a {spec.dtype} array with {spec.channels} channel(s), got "
                              f"{image.dtype} {list(image.shape)}")
    height, width = image.shape[:2]
    data = np.ascontiguousarray(image)
    return {"height": height, "width": width, "encoding": encoding, "is_bigendian": int(sys.byteorder == "big"),
            "step": width * spec.channels * spec.dtype.itemsize, "data": data.tobytes()}


def convert_color(image: np.ndarray, source_order: str, encoding: str) -> np.ndarray:
    """An 8-bit RGB/BGR ``HxWx3`` image (``source_order``) rearranged for ``encoding``."""
    spec = RAW_ENCODINGS.get(encoding)
    if spec is None:
        raise InputImageError(f"unsupported image encoding {encoding!r} (supported: {', '.join(RAW_ENCODINGS)})")
    rgb = image if source_order == "rgb" else image[..., ::-1]
    if spec.channels == 1:
        gray = (rgb.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)).round()
        return gray.astype(np.uint16) * 257 if spec.dtype == np.uint16 else gray.astype(np.uint8)
    ordered = rgb if spec.color_order == "rgb" else rgb[..., ::-1]
    if spec.channels == 4:
        alpha = np.full((*ordered.shape[:2], 1), 255, np.uint8)
        ordered = np.concatenate([ordered, alpha], axis=2)
    return np.ascontiguousarray(ordered)


_JPEG_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
"""Start-of-frame markers (baseline, progressive, lossless, arithmetic); C4/C8/CC are other segments."""
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def encoded_image_size(data: bytes | memoryview) -> tuple[int, int] | None:
    """``(width, height)`` a JPEG (SOF segment) or PNG (IHDR chunk) declares, read from the header without
    decoding; None for other formats or an unreadable header.

    Lets a caller refuse a decompression bomb (a few hundred bytes declaring 30000x30000 pixels decode
    to gigabytes, for seconds) before handing it to the decoder."""
    view = memoryview(data).cast("B") if not isinstance(data, bytes) else data
    size = len(view)
    if size >= 24 and bytes(view[:8]) == _PNG_SIGNATURE and bytes(view[12:16]) == b"IHDR":
        return int.from_bytes(view[16:20], "big"), int.from_bytes(view[20:24], "big")
    if size < 4 or view[0] != 0xFF or view[1] != 0xD8:
        return None
    index = 2
    while index + 4 <= size:
        if view[index] != 0xFF:
            return None
        marker = view[index + 1]
        if marker == 0xFF:                                   # fill byte
            index += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD8:         # segments without a length
            index += 2
            continue
        if marker in (0xD9, 0xDA):                           # end of image / scan data before any frame header
            return None
        if marker in _JPEG_SOF_MARKERS:
            if index + 9 > size:
                return None
            return int.from_bytes(view[index + 7:index + 9], "big"), int.from_bytes(view[index + 5:index + 7], "big")
        index += 2 + int.from_bytes(view[index + 2:index + 4], "big")
    return None


def check_encoded_image_size(data: bytes | memoryview, max_pixels: int = DEFAULT_MAX_PIXELS) -> None:
    """InputImageError when a JPEG/PNG header declares a 0-sized image or more than ``max_pixels`` pixels
    (checked before decoding; other formats pass and are checked after decoding)."""
    declared = encoded_image_size(data)
    if declared is not None:
        try:
            check_image_size(*declared, max_pixels)
        except InputImageError as exc:
            raise InputImageError(f"encoded image header: {exc}") from None


def compressed_data(msg: Any) -> bytes | memoryview:
    """The encoded bytes of a sensor_msgs/CompressedImage; InputImageError when empty."""
    data = msg.data
    if _byte_count(data) == 0:
        raise InputImageError(f"compressed image ({msg.format or 'no format'}) has no data")
    return data if isinstance(data, bytes) else memoryview(data).cast("B")
