"""One scene, rendered: layout, background, objects far to near, tight boxes around the visible pixels."""

from __future__ import annotations

import math

import numpy as np

from prune_perception.data.synth.background import draw_background
from prune_perception.data.synth.camera import Camera
from prune_perception.data.synth.canvas import Painter, Sprite
from prune_perception.data.synth.effects import apply_camera_effects
from prune_perception.data.synth.layout import MIN_OBJECTS, Layout, place_items, sample_lighting, sample_road


MIN_VISIBLE_FRACTION = 0.4  # objects less visible than this (occluded or cut off) stay unlabelled
MIN_BOX_SIDE = 4.0  # pixels; smaller boxes stay unlabelled

Box = tuple[float, float, float, float]  # x1, y1, x2, y2 in pixel edges
Labelled = tuple[int, Box]  # (class index, box)


def _render_once(rng: np.random.Generator, width: int, height: int) -> tuple[np.ndarray, list[Labelled]]:
    """One scene: camera, road and lighting, background, items far to near, visible boxes, camera effects."""
    focal = width * rng.uniform(0.75, 0.95)
    camera = Camera(focal, rng.uniform(1.3, 1.7), height * rng.uniform(0.38, 0.52),
                    width * (0.5 + rng.uniform(-0.12, 0.12)))
    layout = Layout(camera, sample_road(rng), sample_lighting(rng), width, height)
    image = np.empty((height, width, 3), np.uint8)
    draw_background(image, rng, layout)

    ids = np.zeros((height, width), np.uint8)
    painter = Painter(image, ids)
    haze_color = layout.lighting.haze_color
    labelled: list[tuple[int, int, int]] = []  # label, class index, in-image pixels right after drawing
    for item in place_items(rng, layout):
        x, y = camera.project(item.x, 0.0, item.z)
        label = len(labelled) + 1 if item.class_index is not None else 0
        haze = 1.0 - math.exp(-item.z / layout.lighting.visibility_m)
        scale = camera.focal / item.z
        item.draw(Sprite(painter, float(x), float(y), scale, label, item.squeeze, haze, haze_color))
        if label:
            labelled.append((label, item.class_index, count_visible(painter, label)[0]))

    boxes = []
    for label, class_index, drawn in labelled:
        if drawn == 0:
            continue
        visible, box = count_visible(painter, label)
        extent = tuple(painter.extent[label])
        inside_fraction = _area(_clip_box(extent, width, height)) / max(_area(extent), 1e-6)
        if visible / drawn * inside_fraction < MIN_VISIBLE_FRACTION:
            continue
        if box[2] - box[0] < MIN_BOX_SIDE or box[3] - box[1] < MIN_BOX_SIDE:
            continue
        boxes.append((class_index, box))
    return apply_camera_effects(image, rng, layout), boxes


def _area(box: Box) -> float:
    return max(0.0, box[2] - box[0]) * max(0.0, box[3] - box[1])


def _clip_box(box: Box, width: int, height: int) -> Box:
    return (min(max(box[0], 0.0), width), min(max(box[1], 0.0), height),
            min(max(box[2], 0.0), width), min(max(box[3], 0.0), height))


def count_visible(painter: Painter, label: int) -> tuple[int, Box]:
    """Visible pixel count of ``label`` and the tight box around those pixels (pixel edges)."""
    h, w = painter.ids.shape
    x1, y1, x2, y2 = painter.extent.get(label, (0, 0, 0, 0))
    c1, r1 = max(int(x1) - 1, 0), max(int(y1) - 1, 0)
    c2, r2 = min(int(math.ceil(x2)) + 1, w), min(int(math.ceil(y2)) + 1, h)
    if c2 <= c1 or r2 <= r1:
        return 0, (0.0, 0.0, 0.0, 0.0)
    mask = painter.ids[r1:r2, c1:c2] == label
    count = int(np.count_nonzero(mask))
    if count == 0:
        return 0, (0.0, 0.0, 0.0, 0.0)
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    box = (c1 + cols[0], r1 + rows[0], c1 + cols[-1] + 1, r1 + rows[-1] + 1)
    return count, tuple(float(v) for v in box)


def render_scene(rng: np.random.Generator, width: int, height: int) -> tuple[np.ndarray, list[Labelled]]:
    """Render one road scene.

    Returns the BGR uint8 image and its visible objects as ``(class_index, (x1, y1, x2, y2))``,
    boxes in pixel edges, tight around the visible pixels. A scene with fewer than
    ``MIN_OBJECTS`` labelled objects is re-drawn from the same generator.
    """
    for _ in range(20):
        image, boxes = _render_once(rng, width, height)
        if len(boxes) >= MIN_OBJECTS:
            break
    return image, boxes
