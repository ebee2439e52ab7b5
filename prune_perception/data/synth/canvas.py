"""Sub-pixel drawing into the image and the instance-id buffer, and the sprite frame objects draw in."""

from __future__ import annotations

import cv2
import numpy as np

from prune_perception.data.synth.palette import Color


_SHIFT = 4  # OpenCV fractional-bit count: primitives are drawn with 1/16 px precision
_SUBPIXEL = 1 << _SHIFT


def fill(image: np.ndarray, polygons, color) -> None:
    """Fill non-overlapping polygons (float pixel coordinates) with sub-pixel precision."""
    if len(polygons):
        cv2.fillPoly(image, [np.round(p * _SUBPIXEL).astype(np.int32) for p in polygons], color,
                     cv2.LINE_8, _SHIFT)


class Painter:
    """Draws into the BGR image and, with the same pixels, into the instance-id buffer.

    Label 0 marks unlabelled parts (poles, clutter): they still occlude what is behind them.
    ``extent`` keeps each label's unclipped pixel extent, to tell how much of it is off-image.
    """

    def __init__(self, image: np.ndarray, ids: np.ndarray):
        self.image = image
        self.ids = ids
        self.extent: dict[int, list[float]] = {}

    def _grow(self, label: int, x1: float, y1: float, x2: float, y2: float) -> None:
        box = self.extent.setdefault(label, [x1, y1, x2, y2])
        box[0], box[1] = min(box[0], x1), min(box[1], y1)
        box[2], box[3] = max(box[2], x2), max(box[3], y2)

    def polygon(self, points: np.ndarray, color: Color, label: int) -> None:
        pts = [np.round(points * _SUBPIXEL).astype(np.int32)]
        cv2.fillPoly(self.image, pts, color, cv2.LINE_8, _SHIFT)
        cv2.fillPoly(self.ids, pts, label, cv2.LINE_8, _SHIFT)
        if label:
            (x1, y1), (x2, y2) = points.min(axis=0), points.max(axis=0)
            self._grow(label, x1, y1, x2 + 1, y2 + 1)

    def ellipse(self, cx: float, cy: float, rx: float, ry: float, color: Color, label: int,
                thickness: int = -1) -> None:
        center = (round(cx * _SUBPIXEL), round(cy * _SUBPIXEL))
        axes = (max(round(rx * _SUBPIXEL), 1), max(round(ry * _SUBPIXEL), 1))
        cv2.ellipse(self.image, center, axes, 0, 0, 360, color, thickness, cv2.LINE_8, _SHIFT)
        cv2.ellipse(self.ids, center, axes, 0, 0, 360, label, thickness, cv2.LINE_8, _SHIFT)
        if label:
            pad = max(thickness, 0) / 2 + 1
            self._grow(label, cx - rx - pad, cy - ry - pad, cx + rx + pad, cy + ry + pad)


class Sprite:
    """An object's local frame in metres: u to its front/right, v up from its ground contact.

    ``squeeze`` foreshortens u (and mirrors it when negative, for objects facing left). Colours
    are blended towards the haze colour with distance.
    """

    def __init__(self, painter: Painter, x: float, y: float, scale: float, label: int,
                 squeeze: float, haze: float, haze_color: Color):
        self.painter, self.x, self.y, self.label = painter, x, y, label
        self.scale, self.sx = scale, scale * squeeze
        self.haze, self.haze_color = haze, haze_color

    def _px(self, points) -> np.ndarray:
        pts = np.asarray(points, dtype=np.float64)
        return np.column_stack((self.x + pts[:, 0] * self.sx, self.y - pts[:, 1] * self.scale))

    def _color(self, color: Color) -> Color:
        t = self.haze
        return tuple(int(c * (1 - t) + h * t) for c, h in zip(color, self.haze_color))

    def poly(self, points, color: Color, labelled: bool = True) -> None:
        self.painter.polygon(self._px(points), self._color(color), self.label if labelled else 0)

    def rect(self, u1: float, v1: float, u2: float, v2: float, color: Color, labelled: bool = True) -> None:
        self.poly(((u1, v1), (u2, v1), (u2, v2), (u1, v2)), color, labelled)

    def segment(self, p, q, width: float, color: Color, labelled: bool = True) -> None:
        """A thick line from p to q, at least one pixel wide."""
        a, b = self._px((p, q))
        direction = b - a
        length = float(np.hypot(*direction)) or 1.0
        half = max(width * self.scale, 1.0) / 2
        normal = np.array([-direction[1], direction[0]]) / length * half
        self.painter.polygon(np.array([a + normal, b + normal, b - normal, a - normal]),
                             self._color(color), self.label if labelled else 0)

    def ellipse(self, u: float, v: float, ru: float, rv: float, color: Color, ring: float = 0.0,
                labelled: bool = True) -> None:
        """Filled ellipse, or a ring ``ring`` metres thick."""
        thickness = max(1, round(ring * self.scale)) if ring else -1
        (x, y), = self._px(((u, v),))
        self.painter.ellipse(x, y, abs(ru * self.sx), rv * self.scale, self._color(color),
                             self.label if labelled else 0, thickness)
