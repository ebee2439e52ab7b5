"""Image validation and pre-processing for the ONNX Runtime engine (numpy + OpenCV only).

Accepted images: ``HxW`` or ``HxWx1`` mono (replicated to 3 channels), ``HxWx3`` colour and
``HxWx4`` colour + alpha (alpha dropped), ``uint8`` or ``uint16`` (16-bit values are scaled to
8 bits as ``round(v / 257)``, so 65535 -> 255), any strides (non-contiguous views are fine).
Anything else raises :class:`InputImageError` naming the problem.

Pre-processing of a batch: letterbox each image to the network input (aspect ratio kept,
``cv2.INTER_LINEAR``, padded with ``pad_value``, centred or top-left aligned), reorder the
channels to the order the model expects, then ``x = (pixel * scale - mean) / std`` per channel,
written straight into one float32 ``[N,3,H,W]`` tensor.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from prune_perception.errors import ConfigError, InputImageError
from prune_perception.runtime.letterbox import (DEFAULT_PAD_VALUE, LetterboxTransform, letterbox_transform,
                                                resize_to_fit)

COLOR_ORDERS = ("RGB", "BGR")


@dataclass(frozen=True)
class Normalization:
    """``x = (pixel * scale - mean[c]) / std[c]`` for channel ``c`` in the model's colour order."""

    scale: float
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)


@dataclass(frozen=True)
class PreprocessSpec:
    """Everything needed to turn an image into the model's input tensor."""

    input_hw: tuple[int, int]
    color_order: str
    normalization: Normalization
    pad_value: int = DEFAULT_PAD_VALUE
    centered: bool = True


def color_order_name(value: str, what: str = "color order") -> str:
    """``'rgb'``/``'BGR'``/... -> ``'RGB'`` or ``'BGR'``; ConfigError for anything else."""
    name = str(value).upper()
    if name not in COLOR_ORDERS:
        raise ConfigError(f"{what} must be one of {', '.join(COLOR_ORDERS)} (any case), got {value!r}")
    return name


def as_uint8_color(image: np.ndarray) -> np.ndarray:
    """Validate one image and return it as ``uint8 HxWx3`` (channel order unchanged, mono replicated)."""
    if not isinstance(image, np.ndarray):
        raise InputImageError(f"image must be a numpy array, got {type(image).__name__}")
    if image.size == 0:
        raise InputImageError(f"image is empty (shape {image.shape})")
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim == 3 and image.shape[2] == 4:
        image = image[:, :, :3]
    if not (image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 3)):
        raise InputImageError(f"image shape {image.shape} not supported: expected HxW or HxWx1 (mono), "
                              "HxWx3 (colour) or HxWx4 (colour + alpha)")
    if image.dtype == np.uint16:
        image = ((image.astype(np.uint32) + 128) // 257).astype(np.uint8)
    elif image.dtype != np.uint8:
        raise InputImageError(f"image dtype {image.dtype} not supported: expected uint8 (or uint16, scaled to 8 bits)")
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    return image


def preprocess_batch(images: list[np.ndarray], image_color_order: str,
                     spec: PreprocessSpec) -> tuple[np.ndarray, list[LetterboxTransform]]:
    """Images (any accepted layout, all in ``image_color_order``) -> (float32 ``[N,3,H,W]``, per-image transforms)."""
    source_order = color_order_name(image_color_order, "image color order")
    height, width = spec.input_hw
    canvas = np.full((len(images), height, width, 3), spec.pad_value, dtype=np.uint8)
    transforms = []
    for index, image in enumerate(images):
        image = as_uint8_color(image)
        fitted, scale = resize_to_fit(image, spec.input_hw)
        transform = (letterbox_transform(image.shape[:2], spec.input_hw) if spec.centered
                     else LetterboxTransform(scale=scale, pad_x=0.0, pad_y=0.0))
        top, left = int(transform.pad_y), int(transform.pad_x)
        canvas[index, top:top + fitted.shape[0], left:left + fitted.shape[1]] = fitted
        transforms.append(transform)
    channels = (0, 1, 2) if source_order == spec.color_order else (2, 1, 0)
    norm = spec.normalization
    tensor = np.empty((len(images), 3, height, width), dtype=np.float32)
    for target, source in enumerate(channels):
        np.multiply(canvas[..., source], np.float32(norm.scale / norm.std[target]), out=tensor[:, target])
        tensor[:, target] -= np.float32(norm.mean[target] / norm.std[target])
    return tensor, transforms
