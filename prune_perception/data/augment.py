"""Training augmentation on (image RGB uint8 HxWx3, boxes float32 [M,4] xyxy pixels, labels int64 [M]).

numpy + OpenCV only. Every random draw comes from the ``np.random.Generator`` passed in, so a
seed reproduces the result exactly. Geometric transforms move the boxes with the pixels, clip
them to the image and drop boxes that became too small or mostly left the image.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import cv2
import numpy as np

from prune_perception.config import AugmentSettings
from prune_perception.runtime.letterbox import DEFAULT_PAD_VALUE

MIN_BOX_SIDE_PX = 2.0  # boxes narrower or lower than this after a transform are dropped
MIN_VISIBLE_AREA_FRACTION = 0.3  # ... as are boxes that lost more than 70 % of their area to clipping

Detections = tuple[np.ndarray, np.ndarray, np.ndarray]  # (image, boxes, labels)


def clip_and_filter_boxes(
    boxes: np.ndarray, labels: np.ndarray, region_xyxy: tuple[float, float, float, float]
) -> tuple[np.ndarray, np.ndarray]:
    """Clip boxes to a region; drop those under MIN_BOX_SIDE_PX or with < MIN_VISIBLE_AREA_FRACTION left."""
    x1, y1, x2, y2 = region_xyxy
    clipped = np.empty((len(boxes), 4), dtype=np.float32)
    np.clip(boxes[:, 0::2], x1, x2, out=clipped[:, 0::2])
    np.clip(boxes[:, 1::2], y1, y2, out=clipped[:, 1::2])
    widths, heights = clipped[:, 2] - clipped[:, 0], clipped[:, 3] - clipped[:, 1]
    full_areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    keep = (
        (widths >= MIN_BOX_SIDE_PX)
        & (heights >= MIN_BOX_SIDE_PX)
        & (widths * heights >= MIN_VISIBLE_AREA_FRACTION * full_areas)
    )
    return clipped[keep], labels[keep]


def hflip(image: np.ndarray, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mirror the image left-right and its boxes with it."""
    width = image.shape[1]
    flipped = boxes.copy()
    flipped[:, 0] = width - boxes[:, 2]
    flipped[:, 2] = width - boxes[:, 0]
    return cv2.flip(image, 1), flipped


def hsv_jitter(
    image: np.ndarray,
    rng: np.random.Generator,
    h_gain: float = 0.015,
    s_gain: float = 0.5,
    v_gain: float = 0.4,
) -> np.ndarray:
    """Random hue shift and saturation/value scaling, each by up to its gain (lookup tables in HSV)."""
    if not (h_gain or s_gain or v_gain):
        return image
    hue_factor, sat_factor, val_factor = rng.uniform(-1.0, 1.0, 3) * (h_gain, s_gain, v_gain) + 1.0
    hue, sat, val = cv2.split(cv2.cvtColor(image, cv2.COLOR_RGB2HSV))
    levels = np.arange(256, dtype=np.float32)
    hue_table = ((levels * hue_factor) % 180).astype(np.uint8)  # OpenCV's 8-bit hue spans 0..179
    sat_table = np.clip(levels * sat_factor, 0, 255).astype(np.uint8)
    val_table = np.clip(levels * val_factor, 0, 255).astype(np.uint8)
    hsv = cv2.merge((cv2.LUT(hue, hue_table), cv2.LUT(sat, sat_table), cv2.LUT(val, val_table)))
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)


def _paste(canvas: np.ndarray, image: np.ndarray, left: int, top: int) -> tuple[int, int, int, int]:
    """Copy ``image`` onto ``canvas`` with its top-left corner at (left, top), cropping what falls
    outside; returns the canvas region it covers, xyxy (empty if none)."""
    canvas_h, canvas_w = canvas.shape[:2]
    x1, y1 = max(left, 0), max(top, 0)
    x2 = max(x1, min(left + image.shape[1], canvas_w))
    y2 = max(y1, min(top + image.shape[0], canvas_h))
    canvas[y1:y2, x1:x2] = image[y1 - top : y2 - top, x1 - left : x2 - left]
    return x1, y1, x2, y2


def random_affine(
    image: np.ndarray,
    boxes: np.ndarray,
    labels: np.ndarray,
    rng: np.random.Generator,
    scale: tuple[float, float] = (0.6, 1.4),
    translate: float = 0.1,
) -> Detections:
    """Random zoom about the image centre plus a shift of up to ``translate`` of the size; same output size.

    Zoom and whole-pixel shift only (no rotation/shear), done as a resize plus paste, which is 3x
    faster than cv2.warpAffine; boxes are mapped exactly, then clipped and filtered by
    :func:`clip_and_filter_boxes`.
    """
    height, width = image.shape[:2]
    zoom = rng.uniform(*scale)
    shift_x, shift_y = rng.uniform(-translate, translate, 2) * (width, height)
    zoomed_w, zoomed_h = max(1, round(width * zoom)), max(1, round(height * zoom))
    zoomed = cv2.resize(image, (zoomed_w, zoomed_h), interpolation=cv2.INTER_LINEAR)
    left = round((width - zoomed_w) / 2 + shift_x)
    top = round((height - zoomed_h) / 2 + shift_y)
    output = np.full_like(image, DEFAULT_PAD_VALUE)
    _paste(output, zoomed, left, top)
    scale_x, scale_y = zoomed_w / width, zoomed_h / height
    moved = boxes * np.array([scale_x, scale_y, scale_x, scale_y], dtype=np.float32) + np.array(
        [left, top, left, top], dtype=np.float32
    )
    kept_boxes, kept_labels = clip_and_filter_boxes(moved, labels, (0, 0, width, height))
    return output, kept_boxes, kept_labels


def mosaic4(items: Sequence[Detections], rng: np.random.Generator) -> Detections:
    """Tile four (image, boxes, labels) around a random centre on a canvas the size of the first image.

    Each image keeps its scale and shows the corner that touches the centre (top-left image its
    bottom-right corner, ...); boxes are cut to their tile and filtered like any transform.
    """
    if len(items) != 4:
        raise ValueError(f"mosaic4 needs 4 images, got {len(items)}")
    canvas = np.full_like(items[0][0], DEFAULT_PAD_VALUE)
    height, width = canvas.shape[:2]
    centre_x = int(rng.uniform(0.25, 0.75) * width)
    centre_y = int(rng.uniform(0.25, 0.75) * height)
    all_boxes, all_labels = [], []
    for tile, (image, boxes, labels) in enumerate(items):
        tile_h, tile_w = image.shape[:2]
        left = centre_x - tile_w if tile in (0, 2) else centre_x
        top = centre_y - tile_h if tile in (0, 1) else centre_y
        region = _paste(canvas, image, left, top)
        shift = np.array([left, top, left, top], dtype=np.float32)
        tile_boxes, tile_labels = clip_and_filter_boxes(boxes + shift, labels, region)
        all_boxes.append(tile_boxes)
        all_labels.append(tile_labels)
    return canvas, np.concatenate(all_boxes), np.concatenate(all_labels)


def augment(
    image: np.ndarray,
    boxes: np.ndarray,
    labels: np.ndarray,
    cfg: AugmentSettings,
    rng: np.random.Generator,
    mosaic_source: Callable[[], Detections] | None = None,
) -> Detections:
    """Full training augmentation: mosaic (needs ``mosaic_source``, which returns another random
    (image, boxes, labels)), random affine, HSV jitter, horizontal flip."""
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    if mosaic_source is not None and cfg.mosaic_prob > 0 and rng.random() < cfg.mosaic_prob:
        image, boxes, labels = mosaic4([(image, boxes, labels)] + [mosaic_source() for _ in range(3)], rng)
    image, boxes, labels = random_affine(image, boxes, labels, rng, (cfg.scale_min, cfg.scale_max), cfg.translate)
    image = hsv_jitter(image, rng, cfg.hsv_h, cfg.hsv_s, cfg.hsv_v)
    if rng.random() < cfg.flip_prob:
        image, boxes = hflip(image, boxes)
    return image, boxes, labels
