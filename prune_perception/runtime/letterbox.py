"""Letterbox resizing: keep the aspect ratio, pad centred to the network input size.

Shared by training (data/torch_dataset.py) and the ONNX runtime so both see identical pixels.
numpy + OpenCV only.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

DEFAULT_PAD_VALUE = 114
"""Grey used for padding (letterbox borders, augmentation borders); the YOLO convention."""


@dataclass(frozen=True)
class LetterboxTransform:
    """Maps boxes between original image pixels and network input pixels.

    ``input = original * scale + pad`` on x and y.
    """

    scale: float
    pad_x: float
    pad_y: float

    def to_input(self, boxes_xyxy: np.ndarray) -> np.ndarray:
        """Original-image xyxy boxes ``[..., 4]`` -> network-input pixels."""
        boxes = _as_float_boxes(boxes_xyxy)
        return boxes * self.scale + self._offset(boxes.dtype)

    def to_original(
        self, boxes_xyxy: np.ndarray, original_hw: tuple[int, int] | None = None
    ) -> np.ndarray:
        """Network-input xyxy boxes ``[..., 4]`` -> original-image pixels, clipped to ``original_hw`` if given."""
        boxes = _as_float_boxes(boxes_xyxy)
        boxes = (boxes - self._offset(boxes.dtype)) / self.scale
        if original_hw is not None:
            height, width = original_hw
            np.clip(boxes[..., 0::2], 0, width, out=boxes[..., 0::2])
            np.clip(boxes[..., 1::2], 0, height, out=boxes[..., 1::2])
        return boxes

    def _offset(self, dtype) -> np.ndarray:
        return np.array([self.pad_x, self.pad_y, self.pad_x, self.pad_y], dtype=dtype)


def _as_float_boxes(boxes: np.ndarray) -> np.ndarray:
    """Boxes as a float array: float32/float64 kept, integers become float64."""
    boxes = np.asarray(boxes)
    return boxes.astype(np.result_type(boxes.dtype, np.float32), copy=False)


def fitted_size(original_hw: tuple[int, int], input_hw: tuple[int, int]) -> tuple[float, int, int]:
    """Scale and (height, width) of an image resized, aspect ratio kept, to fit inside ``input_hw``."""
    height, width = original_hw
    input_h, input_w = input_hw
    if min(height, width, input_h, input_w) <= 0:
        raise ValueError(f"image and input sizes must be positive, got {original_hw} and {input_hw}")
    scale = min(input_h / height, input_w / width)
    fitted_h = min(input_h, max(1, round(height * scale)))
    fitted_w = min(input_w, max(1, round(width * scale)))
    return scale, fitted_h, fitted_w


def letterbox_transform(original_hw: tuple[int, int], input_hw: tuple[int, int]) -> LetterboxTransform:
    """The transform :func:`letterbox` applies to an image of size ``original_hw`` (no pixels needed)."""
    scale, fitted_h, fitted_w = fitted_size(original_hw, input_hw)
    return LetterboxTransform(
        scale=scale,
        pad_x=float((input_hw[1] - fitted_w) // 2),
        pad_y=float((input_hw[0] - fitted_h) // 2),
    )


def resize_to_fit(image: np.ndarray, input_hw: tuple[int, int]) -> tuple[np.ndarray, float]:
    """Resize (cv2.INTER_LINEAR), aspect ratio kept, to fit inside ``input_hw``; returns (image, scale)."""
    scale, fitted_h, fitted_w = fitted_size(image.shape[:2], input_hw)
    if (fitted_h, fitted_w) != image.shape[:2]:
        image = cv2.resize(image, (fitted_w, fitted_h), interpolation=cv2.INTER_LINEAR)
    return image, scale


def letterbox(
    image: np.ndarray, input_hw: tuple[int, int], pad_value: int = DEFAULT_PAD_VALUE
) -> tuple[np.ndarray, LetterboxTransform]:
    """Resize keeping aspect ratio (cv2.INTER_LINEAR) and pad centered to input_hw (H, W)."""
    transform = letterbox_transform(image.shape[:2], input_hw)
    fitted, _ = resize_to_fit(image, input_hw)
    if fitted.shape[:2] == tuple(input_hw):
        return fitted, transform
    output = np.full((*input_hw, *image.shape[2:]), pad_value, dtype=image.dtype)
    top, left = int(transform.pad_y), int(transform.pad_x)
    output[top : top + fitted.shape[0], left : left + fitted.shape[1]] = fitted
    return output, transform
