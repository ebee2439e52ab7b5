"""Procedural synthetic driving scenes: the built-in detection benchmark.

Every image is a pinhole-camera view down a straight road: sky, skyline, road with perspective
lane markings, sidewalks, building facades or grass, and street furniture (trees, lamp posts,
bins, cabinets, cones) as unlabelled clutter and hard negatives. Objects of the six
``SYNTH_CLASSES`` stand on the ground plane, scaled by their distance. Everything that stands is
drawn far to near (painter's order) into the image and into an instance-id buffer, so each box is
tight around the object's *visible* pixels, and objects that are mostly hidden or cut off by the
image border stay unlabelled.

Image ``i`` is rendered from its own generator ``np.random.default_rng([seed, i])``: a dataset is
deterministic and identical whatever the number of worker processes.
"""

from __future__ import annotations

import colorsys
import functools
import json
import logging
import math
import multiprocessing
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import cv2
import numpy as np
from tqdm import tqdm

from prune_perception.data.classes import SYNTH_CLASSES
from prune_perception.errors import ConfigError, DatasetError

log = logging.getLogger(__name__)

#: Bumped whenever the renderer changes, so stored datasets of an older renderer are regenerated.
GENERATOR_VERSION = 1
GENERATOR_NAME = "prune_perception.synth"  # marks dataset.json as written by this generator

MIN_VISIBLE_FRACTION = 0.4  # objects less visible than this (occluded or cut off) stay unlabelled
MIN_BOX_SIDE = 4.0  # pixels; smaller boxes stay unlabelled
MIN_OBJECTS, MAX_OBJECTS = 3, 15  # labelled objects per image

CAR, TRUCK, PEDESTRIAN, CYCLIST, TRAFFIC_LIGHT, TRAFFIC_SIGN = (
    SYNTH_CLASSES.index(name)
    for name in ("car", "truck", "pedestrian", "cyclist", "traffic_light", "traffic_sign"))
_CLASS_SHARE = {  # expected share of placed objects per class
    CAR: 0.30, TRUCK: 0.13, PEDESTRIAN: 0.20, CYCLIST: 0.12, TRAFFIC_LIGHT: 0.12, TRAFFIC_SIGN: 0.13}

_SHIFT = 4  # OpenCV fractional-bit count: primitives are drawn with 1/16 px precision
_SUBPIXEL = 1 << _SHIFT

Color = tuple[int, int, int]
Box = tuple[float, float, float, float]  # x1, y1, x2, y2 in pixel edges
Labelled = tuple[int, Box]  # (class index, box)
Footprint = tuple[float, float, float, float]  # x1, x2, z1, z2 on the ground plane, metres


@dataclass(frozen=True)
class SynthConfig:
    """What to generate; every field but ``workers`` is part of the dataset's identity."""

    num_images: int = 1000
    width: int = 640
    height: int = 360
    val_fraction: float = 0.2
    seed: int = 0
    workers: int = 2  # multiprocessing processes; output is identical regardless of workers
    jpeg_quality: int = 90

    def __post_init__(self) -> None:
        if self.num_images < 1:
            raise ConfigError(f"synth num_images must be >= 1, got {self.num_images}")
        if self.width < 64 or self.height < 64:
            raise ConfigError(f"synth width and height must be >= 64, got {self.width}x{self.height}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ConfigError(f"synth val_fraction must be in [0, 1), got {self.val_fraction}")
        if self.workers < 1:
            raise ConfigError(f"synth workers must be >= 1, got {self.workers}")
        if not 1 <= self.jpeg_quality <= 100:
            raise ConfigError(f"synth jpeg_quality must be in [1, 100], got {self.jpeg_quality}")

    def identity(self) -> dict:
        """The fields that determine the output (``workers`` does not), plus the renderer version."""
        fields = asdict(self)
        del fields["workers"]
        return {"generator_version": GENERATOR_VERSION, **fields}


# --- colours ------------------------------------------------------------------------------------

_CAR_PAINTS: tuple[Color, ...] = (
    (235, 235, 235), (195, 195, 200), (125, 125, 130), (35, 35, 38), (120, 50, 25), (35, 35, 180),
    (170, 100, 40), (55, 110, 45), (40, 190, 225), (165, 195, 210), (40, 65, 100), (30, 110, 220),
)
_SKIN_TONES: tuple[Color, ...] = (
    (150, 180, 225), (120, 155, 205), (90, 120, 170), (60, 85, 125), (45, 60, 90))
_TIRE: Color = (28, 28, 30)
_GLASS: Color = (70, 55, 45)


def _hsv(hue: float, saturation: float, value: float) -> Color:
    r, g, b = colorsys.hsv_to_rgb(hue, saturation, value)
    return int(b * 255), int(g * 255), int(r * 255)


def _random_color(rng: np.random.Generator, value: tuple[float, float] = (0.15, 0.95)) -> Color:
    """Any hue: colour alone must never identify a class."""
    return _hsv(rng.random(), rng.uniform(0.1, 0.9), rng.uniform(*value))


def _jitter(rng: np.random.Generator, color: Color, amount: int = 14) -> Color:
    offsets = rng.integers(-amount, amount + 1, size=3).tolist()
    return tuple(min(255, max(0, c + d)) for c, d in zip(color, offsets))


def _gray(rng: np.random.Generator, level: float, spread: float, tint: int = 6) -> Color:
    """A near-neutral grey (asphalt, concrete) with a slight random tint."""
    base = int(level + rng.uniform(-spread, spread))
    return _jitter(rng, (base, base, base), tint)


def _shade(color: Color, factor: float) -> Color:
    return tuple(int(min(255.0, c * factor)) for c in color)


def _paint(rng: np.random.Generator) -> Color:
    """Vehicle paint: mostly common car colours, often any hue."""
    if rng.random() < 0.6:
        return _jitter(rng, _CAR_PAINTS[rng.integers(len(_CAR_PAINTS))])
    return _random_color(rng)


# --- geometry -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Camera:
    """Pinhole camera looking along the road; world X right, Y up from the ground, Z forward."""

    focal: float
    height_m: float
    horizon_y: float
    center_x: float  # x of the vanishing point

    def project(self, x_m, y_m, z_m) -> tuple[np.ndarray, np.ndarray]:
        """Image coordinates of world points (arrays broadcast)."""
        return (self.center_x + self.focal * np.asarray(x_m) / z_m,
                self.horizon_y + self.focal * (self.height_m - np.asarray(y_m)) / z_m)

    def ground_quads(self, x0, x1, z0, z1, y_m: float = 0.0) -> np.ndarray:
        """[N, 4, 2] image polygons of ground rectangles X in [x0, x1], Z in [z0, z1] at height y_m."""
        x0, x1, z0, z1 = np.broadcast_arrays(x0, x1, z0, z1)
        xs = np.stack(np.broadcast_arrays(x0, x1, x1, x0), axis=-1)
        zs = np.stack(np.broadcast_arrays(z0, z0, z1, z1), axis=-1)
        u, v = self.project(xs, y_m, zs)
        return np.stack([u, v], axis=-1).reshape(-1, 4, 2)

    def wall_quads(self, x_m: float, y0, y1, z0, z1) -> np.ndarray:
        """[N, 4, 2] image polygons of vertical rectangles in the plane X = x_m."""
        y0, y1, z0, z1 = np.broadcast_arrays(y0, y1, z0, z1)
        ys = np.stack(np.broadcast_arrays(y0, y1, y1, y0), axis=-1)
        zs = np.stack(np.broadcast_arrays(z0, z0, z1, z1), axis=-1)
        u, v = self.project(x_m, ys, zs)
        return np.stack([u, v], axis=-1).reshape(-1, 4, 2)


def _fill(image: np.ndarray, polygons, color) -> None:
    """Fill non-overlapping polygons (float pixel coordinates) with sub-pixel precision."""
    if len(polygons):
        cv2.fillPoly(image, [np.round(p * _SUBPIXEL).astype(np.int32) for p in polygons], color,
                     cv2.LINE_8, _SHIFT)


class _Painter:
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


class _Sprite:
    """An object's local frame in metres: u to its front/right, v up from its ground contact.

    ``squeeze`` foreshortens u (and mirrors it when negative, for objects facing left). Colours
    are blended towards the haze colour with distance.
    """

    def __init__(self, painter: _Painter, x: float, y: float, scale: float, label: int,
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


# --- objects (drawn in sprite-local metres) -----------------------------------------------------


def _draw_car_end(s: _Sprite, rng: np.random.Generator, width: float, height: float, front: bool,
                  lamps_on: bool) -> None:
    """Car seen from behind or from the front: wheels, body, cabin with window, lamps, plate."""
    paint = _paint(rng)
    half = width / 2
    belt = height * rng.uniform(0.5, 0.6)
    s.rect(-half + 0.08, 0, -half + 0.34, 0.45, _TIRE)
    s.rect(half - 0.34, 0, half - 0.08, 0.45, _TIRE)
    s.rect(-half - 0.1, belt - 0.02, half + 0.1, belt + 0.1, _shade(paint, 0.7))  # mirrors
    s.poly(((-half, 0.2), (half, 0.2), (half, belt - 0.06), (half - 0.06, belt),
            (-half + 0.06, belt), (-half, belt - 0.06)), paint)
    top_half = half * rng.uniform(0.6, 0.78)
    s.poly(((-half * 0.94, belt), (half * 0.94, belt), (top_half, height), (-top_half, height)),
           _shade(paint, 0.9))
    glass = _jitter(rng, _GLASS, 20)
    s.poly(((-half * 0.84, belt + 0.05), (half * 0.84, belt + 0.05), (top_half - 0.08, height - 0.07),
            (-top_half + 0.08, height - 0.07)), glass)
    s.rect(-half, 0.2, half, 0.36, _shade(paint, 0.55) if rng.random() < 0.5 else (40, 40, 42))
    s.rect(-0.2, 0.25, 0.2, 0.36, (230, 230, 230) if rng.random() < 0.8 else (60, 200, 230))
    lamp_low, lamp_high = belt - 0.22, belt - 0.06
    if front:
        lamp = (235, 245, 250) if lamps_on else (200, 205, 205)
        s.rect(-half * 0.5, 0.42, half * 0.5, lamp_high - 0.02, (45, 45, 48))  # grille
    else:
        lamp = (60, 60, 255) if lamps_on else (40, 40, 170)
    s.rect(-half + 0.05, lamp_low, -half + 0.38, lamp_high, lamp)
    s.rect(half - 0.38, lamp_low, half - 0.05, lamp_high, lamp)


def _draw_car_side(s: _Sprite, rng: np.random.Generator, length: float, height: float,
                   lamps_on: bool) -> None:
    """Car in side view, front towards +u: body, cabin with two windows, two wheels."""
    paint = _paint(rng)
    half = length / 2
    belt = height * rng.uniform(0.5, 0.58)
    s.poly(((-half, 0.28), (half, 0.28), (half, belt - 0.15), (half - 0.15, belt),
            (-half + 0.08, belt), (-half, belt - 0.08)), paint)
    hood = rng.uniform(1.0, 1.3)
    trunk = rng.uniform(0.3, 0.8)
    s.poly(((-half + trunk, belt), (half - hood, belt), (half - hood - 0.55, height),
            (-half + trunk + 0.35, height)), _shade(paint, 0.9))
    glass = _jitter(rng, _GLASS, 20)
    pillar = (half - hood - 0.55 + -half + trunk + 0.35) / 2
    s.poly(((-half + trunk + 0.12, belt + 0.05), (pillar - 0.06, belt + 0.05), (pillar - 0.06, height - 0.06),
            (-half + trunk + 0.4, height - 0.06)), glass)
    s.poly(((pillar + 0.06, belt + 0.05), (half - hood - 0.1, belt + 0.05),
            (half - hood - 0.55, height - 0.06), (pillar + 0.06, height - 0.06)), glass)
    s.rect(half - 0.12, belt - 0.25, half, belt - 0.12, (230, 240, 245) if lamps_on else (170, 190, 200))
    s.rect(-half, belt - 0.25, -half + 0.08, belt - 0.1, (50, 50, 200))
    radius = rng.uniform(0.3, 0.34)
    for axle in (-half + 0.75, half - 0.85):
        s.ellipse(axle, radius, radius, radius, _TIRE)
        s.ellipse(axle, radius, radius * 0.55, radius * 0.55, (150, 150, 155))


def _draw_truck_rear(s: _Sprite, rng: np.random.Generator, width: float, height: float,
                     lamps_on: bool) -> None:
    """Box truck from behind: dual wheels, dark chassis, tall cargo box with doors and ribs."""
    half = width / 2
    cargo = _jitter(rng, (225, 225, 225)) if rng.random() < 0.4 else _paint(rng)
    s.rect(-half + 0.05, 0, -half + 0.7, 0.6, _TIRE)
    s.rect(half - 0.7, 0, half - 0.05, 0.6, _TIRE)
    s.rect(-half + 0.1, 0.45, half - 0.1, 1.05, (38, 38, 40))
    s.rect(-half, 1.0, half, height, cargo)
    line = _shade(cargo, 0.6)
    s.segment((0, 1.05), (0, height - 0.08), 0.05, line)
    for rib in np.linspace(1.0, height, int(rng.integers(2, 5)) + 2)[1:-1]:
        s.segment((-half, rib), (half, rib), 0.03, _shade(cargo, 0.8))
    for handle in (-0.25, 0.25):
        s.segment((handle, 1.6), (handle, 2.3), 0.04, line)
    lamp = (60, 60, 255) if lamps_on else (40, 40, 170)
    s.rect(-half + 0.1, 0.6, -half + 0.45, 0.8, lamp)
    s.rect(half - 0.45, 0.6, half - 0.1, 0.8, lamp)
    s.rect(-0.25, 0.5, 0.25, 0.65, (60, 200, 230))


def _draw_truck_front(s: _Sprite, rng: np.random.Generator, width: float, height: float,
                      lamps_on: bool) -> None:
    """Truck from the front: cargo box above/behind the cab, big windshield, grille, mirrors."""
    half = width / 2
    cab_height = min(height, rng.uniform(2.6, 3.0))
    if height > cab_height + 0.2:
        cargo = _jitter(rng, (225, 225, 225)) if rng.random() < 0.4 else _paint(rng)
        s.rect(-half - 0.03, 1.2, half + 0.03, height, cargo)
    paint = _paint(rng)
    s.rect(-half + 0.05, 0, -half + 0.45, 0.6, _TIRE)
    s.rect(half - 0.45, 0, half - 0.05, 0.6, _TIRE)
    s.rect(-half, 0.4, half, cab_height, paint)
    s.segment((-half - 0.2, cab_height - 0.95), (-half - 0.2, cab_height - 0.25), 0.09, (35, 35, 35))
    s.segment((half + 0.2, cab_height - 0.95), (half + 0.2, cab_height - 0.25), 0.09, (35, 35, 35))
    s.rect(-half, cab_height - 0.95, -half - 0.2, cab_height - 0.85, (35, 35, 35))
    s.rect(half, cab_height - 0.95, half + 0.2, cab_height - 0.85, (35, 35, 35))
    s.rect(-half + 0.12, cab_height - 1.05, half - 0.12, cab_height - 0.15, _jitter(rng, _GLASS, 20))
    s.rect(-0.6, 0.75, 0.6, cab_height - 1.3, (45, 45, 48))
    for slat in np.linspace(0.85, cab_height - 1.4, 4):
        s.segment((-0.55, slat), (0.55, slat), 0.04, (110, 110, 115))
    s.rect(-half, 0.4, half, 0.68, (70, 70, 72))
    lamp = (235, 245, 250) if lamps_on else (200, 205, 205)
    s.rect(-half + 0.1, 0.75, -half + 0.5, 0.95, lamp)
    s.rect(half - 0.5, 0.75, half - 0.1, 0.95, lamp)


def _draw_truck_side(s: _Sprite, rng: np.random.Generator, length: float, height: float,
                     lamps_on: bool) -> None:
    """Truck in side view, cab towards +u: long cargo box, cab with windshield, three axles."""
    half = length / 2
    cab_length = rng.uniform(2.0, 2.4)
    cab_height = min(height, rng.uniform(2.6, 3.0))
    cargo = _jitter(rng, (225, 225, 225)) if rng.random() < 0.4 else _paint(rng)
    paint = _paint(rng)
    s.rect(-half, 0.5, half - 0.1, 1.05, (38, 38, 40))
    s.rect(-half, 1.0, half - cab_length - 0.15, height, cargo)
    front = half
    s.poly(((front - cab_length, 0.5), (front, 0.5), (front, cab_height - 0.9),
            (front - 0.35, cab_height), (front - cab_length, cab_height)), paint)
    s.poly(((front - 0.9, cab_height - 0.95), (front - 0.05, cab_height - 0.95),
            (front - 0.38, cab_height - 0.12), (front - 0.9, cab_height - 0.12)), _jitter(rng, _GLASS, 20))
    s.rect(front - 0.12, 0.6, front, 0.8, (230, 240, 245) if lamps_on else (170, 190, 200))
    radius = 0.5
    for axle in (front - 1.1, -half + 2.2, -half + 1.1):
        s.ellipse(axle, radius, radius, radius, _TIRE)
        s.ellipse(axle, radius, radius * 0.5, radius * 0.5, (140, 140, 145))


def _draw_pedestrian(s: _Sprite, rng: np.random.Generator, height: float, side_view: bool) -> None:
    """Walking person: legs, torso, arms, head (facing the camera, away, or sideways)."""
    h = height
    skin = _jitter(rng, _SKIN_TONES[rng.integers(len(_SKIN_TONES))], 10)
    shirt, pants = _random_color(rng), _random_color(rng, (0.1, 0.7))
    hair = _jitter(rng, (25, 35, 45), 20) if rng.random() < 0.8 else _jitter(rng, (80, 160, 200), 30)
    hip, shoulder = 0.5 * h, 0.8 * h
    if side_view:
        stride, shoulder_half, hip_half = rng.uniform(0.08, 0.2) * h, 0.06 * h, 0.05 * h
        feet, hips = (-stride, stride), (0.0, 0.0)
    else:
        stride, shoulder_half, hip_half = rng.uniform(0.0, 0.04) * h, 0.12 * h, 0.085 * h
        feet, hips = (-0.05 * h - stride, 0.05 * h + stride), (-0.045 * h, 0.045 * h)
    for hip_u, foot_u in zip(hips, feet):
        s.segment((hip_u, hip), (foot_u, 0.035 * h), 0.075 * h, pants)
        s.rect(foot_u - 0.04 * h, 0, foot_u + 0.04 * h, 0.035 * h, (30, 30, 30))
    coat = rng.random() < 0.25
    s.poly(((-shoulder_half, shoulder), (shoulder_half, shoulder),
            (hip_half * (1.6 if coat else 1.0), 0.32 * h if coat else hip - 0.04 * h),
            (-hip_half * (1.6 if coat else 1.0), 0.32 * h if coat else hip - 0.04 * h)), shirt)
    if side_view and rng.random() < 0.4:
        s.rect(-shoulder_half - 0.06 * h, 0.55 * h, -shoulder_half + 0.01 * h, 0.77 * h, _random_color(rng))
    sleeve = shirt if rng.random() < 0.6 else skin
    swing = stride * 0.6
    arms = ((0.0, swing),) if side_view else ((-shoulder_half, -0.02 * h), (shoulder_half, 0.02 * h))
    for shoulder_u, hand_du in arms:
        hand = (shoulder_u * 1.15 + hand_du, 0.47 * h)
        s.segment((shoulder_u, shoulder - 0.02 * h), hand, 0.05 * h, sleeve)
        s.ellipse(hand[0], hand[1], 0.022 * h, 0.022 * h, skin)
    s.rect(-0.02 * h, shoulder, 0.02 * h, shoulder + 0.05 * h, skin)
    head_v = h - 0.065 * h
    s.ellipse(0, head_v + 0.006 * h, 0.056 * h, 0.06 * h, hair)
    if rng.random() < 0.7:
        s.ellipse(0.012 * h if side_view else 0.0, head_v - 0.008 * h, 0.048 * h, 0.054 * h, skin)


def _draw_cyclist(s: _Sprite, rng: np.random.Generator) -> None:
    """Rider on a bicycle in side view, heading towards +u: two wheels, frame, pedalling legs."""
    radius = rng.uniform(0.32, 0.36)
    wheelbase = rng.uniform(1.0, 1.1)
    rear, front = (-wheelbase / 2, radius), (wheelbase / 2, radius)
    crank = (-0.04, 0.3)
    seat = (-wheelbase / 2 + 0.32, radius + 0.55)
    bar = (wheelbase / 2 - 0.15, radius + 0.62)
    frame = _random_color(rng, (0.3, 0.95))
    clothes, pants = _random_color(rng), _random_color(rng, (0.1, 0.6))
    skin = _jitter(rng, _SKIN_TONES[rng.integers(len(_SKIN_TONES))], 10)
    hip = (seat[0], seat[1] + 0.06)
    lean = rng.uniform(0.2, 0.45)
    shoulder = (hip[0] + lean, hip[1] + math.sqrt(0.58 ** 2 - lean ** 2))
    angle = rng.uniform(0, 2 * math.pi)

    def leg(pedal_angle: float, color: Color) -> None:
        pedal = (crank[0] + 0.17 * math.cos(pedal_angle), crank[1] + 0.17 * math.sin(pedal_angle))
        dx, dy = pedal[0] - hip[0], pedal[1] - hip[1]
        dist = math.hypot(dx, dy)
        bend = math.sqrt(max(0.0, 0.46 ** 2 - (dist / 2) ** 2))
        nx, ny = -dy / dist, dx / dist
        if nx < 0:  # the knee bends forwards
            nx, ny = -nx, -ny
        knee = (hip[0] + dx / 2 + nx * bend, hip[1] + dy / 2 + ny * bend)
        s.segment(hip, knee, 0.13, color)
        s.segment(knee, pedal, 0.11, color)
        s.rect(pedal[0] - 0.06, pedal[1] - 0.03, pedal[0] + 0.08, pedal[1] + 0.03, (30, 30, 30))

    leg(angle + math.pi, _shade(pants, 0.7))
    for hub in (rear, front):
        s.ellipse(hub[0], hub[1], radius, radius, _TIRE, ring=0.06)
        s.ellipse(hub[0], hub[1], 0.04, 0.04, (150, 150, 150))
    for a, b in ((rear, crank), (rear, seat), (crank, seat), (crank, bar), (seat, bar), (bar, front)):
        s.segment(a, b, 0.045, frame)
    s.segment(bar, (bar[0] - 0.05, bar[1] + 0.12), 0.04, (40, 40, 40))
    s.segment(hip, shoulder, 0.3, clothes)
    leg(angle, pants)
    s.segment(shoulder, (bar[0] - 0.05, bar[1] + 0.12), 0.08, clothes)
    head = (shoulder[0] + 0.08, shoulder[1] + 0.17)
    s.ellipse(head[0], head[1], 0.11, 0.12, skin)
    if rng.random() < 0.7:  # helmet
        s.ellipse(head[0] - 0.01, head[1] + 0.05, 0.125, 0.085, _random_color(rng, (0.4, 0.95)))


def _draw_traffic_light(s: _Sprite, rng: np.random.Generator, bottom: float, offset: float,
                        arm_height: float | None) -> None:
    """Three-lamp signal head on a side pole or hanging from a mast arm; only the head is labelled."""
    pole = _jitter(rng, (95, 95, 95), 25)
    width, height = rng.uniform(0.32, 0.42), rng.uniform(0.9, 1.1)
    if arm_height is None:
        s.segment((0, 0), (0, bottom + 0.2), 0.13, pole, labelled=False)
    else:
        s.segment((0, 0), (0, arm_height + 0.1), 0.18, pole, labelled=False)
        s.segment((0, arm_height), (offset + 0.3 * np.sign(offset), arm_height), 0.12, pole, labelled=False)
        s.segment((offset, arm_height), (offset, bottom + height), 0.06, pole, labelled=False)
    housing = _jitter(rng, (30, 30, 30), 12) if rng.random() < 0.75 else _jitter(rng, (30, 150, 190), 20)
    if rng.random() < 0.5:  # back plate
        border = 0.06
        plate = (235, 235, 235) if rng.random() < 0.5 else (25, 25, 25)
        s.rect(offset - width / 2 - border, bottom - border, offset + width / 2 + border,
               bottom + height + border, plate)
    s.rect(offset - width / 2, bottom, offset + width / 2, bottom + height, housing)
    lit = int(rng.integers(3))
    lamps = ((60, 50, 255), (0, 190, 255), (130, 255, 60))  # red, amber, green, top to bottom
    for k, lamp in enumerate(lamps):
        v = bottom + height * (5 - 2 * k) / 6
        color = lamp if k == lit else _shade(lamp, 0.22)
        s.ellipse(offset, v, width * 0.34, width * 0.34, color)


def _draw_traffic_sign(s: _Sprite, rng: np.random.Generator, center: float, size: float) -> None:
    """Sign plate on a pole: circle, triangle, octagon, diamond or rectangle with border."""
    s.segment((0, 0), (0, center), 0.07, _jitter(rng, (150, 150, 150), 20), labelled=False)
    r = size / 2
    white, red, blue, black = (240, 240, 240), (40, 30, 200), (170, 80, 20), (25, 25, 25)
    white, red, blue = _jitter(rng, white, 10), _jitter(rng, red, 15), _jitter(rng, blue, 15)
    kind = rng.integers(7)
    if kind == 0:  # prohibitory / speed limit
        s.ellipse(0, center, r, r, red)
        s.ellipse(0, center, r * 0.75, r * 0.75, white)
        s.rect(-r * 0.35, center - r * 0.3, -r * 0.05, center + r * 0.3, black)
        s.rect(r * 0.05, center - r * 0.3, r * 0.35, center + r * 0.3, black)
    elif kind == 1:  # mandatory: white arrow on blue
        s.ellipse(0, center, r, r, blue)
        s.poly(((-r * 0.15, center - r * 0.6), (r * 0.15, center - r * 0.6), (r * 0.15, center + r * 0.1),
                (r * 0.4, center + r * 0.1), (0, center + r * 0.6), (-r * 0.4, center + r * 0.1),
                (-r * 0.15, center + r * 0.1)), white)
    elif kind in (2, 3):  # warning (point up) or yield (point down)
        sign = 1 if kind == 2 else -1
        corners = ((-r, center - sign * r * 0.8), (r, center - sign * r * 0.8), (0, center + sign * r * 0.95))
        s.poly(corners, red)
        s.poly([(0.62 * u, center + 0.62 * (v - center) - sign * 0.05 * r) for u, v in corners],
               white if rng.random() < 0.7 else (40, 200, 240))
        if kind == 2:
            s.rect(-r * 0.07, center - r * 0.35, r * 0.07, center + r * 0.25, black)
    elif kind == 4:  # stop
        angles = np.pi / 8 + np.arange(8) * np.pi / 4
        s.poly(np.column_stack((r * np.cos(angles), center + r * np.sin(angles))), white)
        s.poly(np.column_stack((0.88 * r * np.cos(angles), center + 0.88 * r * np.sin(angles))), red)
        s.rect(-r * 0.6, center - r * 0.15, r * 0.6, center + r * 0.15, white)
    elif kind == 5:  # priority road
        s.poly(((0, center + r), (r, center), (0, center - r), (-r, center)), white)
        s.poly(((0, center + r * 0.7), (r * 0.7, center), (0, center - r * 0.7), (-r * 0.7, center)),
               (20, 200, 245))
    else:  # information plate
        half_w, half_h = r * rng.uniform(0.9, 1.5), r * rng.uniform(0.6, 0.9)
        background = (blue, _jitter(rng, (60, 120, 20), 15), white)[rng.integers(3)]
        s.rect(-half_w, center - half_h, half_w, center + half_h, black if background == white else white)
        s.rect(-half_w * 0.9, center - half_h + 0.1 * half_w, half_w * 0.9, center + half_h - 0.1 * half_w,
               background)
        ink = black if background == white else white
        for line in np.linspace(center - half_h * 0.45, center + half_h * 0.45, int(rng.integers(1, 4))):
            s.rect(-half_w * 0.6, line - 0.04 * half_h, half_w * 0.6 * rng.uniform(0.4, 1),
                   line + 0.04 * half_h, ink)


# --- clutter (unlabelled; hard negatives) -------------------------------------------------------


def _draw_lamp_post(s: _Sprite, rng: np.random.Generator, reach: float) -> None:
    color = _jitter(rng, (90, 95, 90), 25)
    top = rng.uniform(6.5, 9)
    s.segment((0, 0), (0, top), 0.16, color, labelled=False)
    s.segment((0, top), (reach, top + 0.3), 0.1, color, labelled=False)
    s.rect(reach - 0.35, top + 0.05, reach + 0.35, top + 0.35, (200, 230, 240), labelled=False)


def _draw_pole(s: _Sprite, rng: np.random.Generator) -> None:
    color = _jitter(rng, (60, 80, 100), 30) if rng.random() < 0.5 else _jitter(rng, (140, 140, 140), 25)
    s.segment((0, 0), (0, rng.uniform(2.5, 9)), rng.uniform(0.08, 0.25), color, labelled=False)


def _draw_box(s: _Sprite, rng: np.random.Generator) -> None:
    """Bin, utility cabinet or parking meter: boxy things that are not traffic lights."""
    kind = rng.integers(3)
    color = _random_color(rng, (0.2, 0.7))
    if kind == 0:
        w, h = rng.uniform(0.5, 0.7), rng.uniform(0.8, 1.1)
        s.rect(-w / 2, 0, w / 2, h, color, labelled=False)
        s.rect(-w / 2 - 0.03, h, w / 2 + 0.03, h + 0.08, _shade(color, 0.7), labelled=False)
    elif kind == 1:
        w, h = rng.uniform(0.6, 1.2), rng.uniform(1.0, 1.6)
        s.rect(-w / 2, 0, w / 2, h, _jitter(rng, (110, 125, 115), 20), labelled=False)
        s.segment((0, 0.1), (0, h - 0.1), 0.03, (70, 80, 75), labelled=False)
    else:
        s.segment((0, 0), (0, 1.1), 0.08, (90, 90, 90), labelled=False)
        s.rect(-0.15, 1.0, 0.15, 1.5, _jitter(rng, (45, 45, 45), 20), labelled=False)
        s.rect(-0.1, 1.3, 0.1, 1.42, (150, 170, 160), labelled=False)


def _draw_cone(s: _Sprite, rng: np.random.Generator) -> None:
    orange = _jitter(rng, (20, 110, 240), 20)
    s.poly(((-0.2, 0), (0.2, 0), (0.04, 0.72), (-0.04, 0.72)), orange, labelled=False)
    s.poly(((-0.12, 0.3), (0.12, 0.3), (0.09, 0.45), (-0.09, 0.45)), (235, 235, 235), labelled=False)
    s.rect(-0.28, 0, 0.28, 0.05, (30, 30, 30), labelled=False)


def _draw_tree(s: _Sprite, rng: np.random.Generator) -> None:
    height = rng.uniform(4, 9)
    trunk = _jitter(rng, (40, 60, 80), 15)
    s.segment((0, 0), (0, height * 0.6), rng.uniform(0.2, 0.4), trunk, labelled=False)
    green = _hsv(rng.uniform(0.2, 0.36), rng.uniform(0.4, 0.8), rng.uniform(0.25, 0.55))
    crown = height * rng.uniform(0.25, 0.4)
    for _ in range(int(rng.integers(3, 6))):
        du, dv = rng.uniform(-0.6, 0.6, 2) * crown
        size = crown * rng.uniform(0.6, 1.0)
        s.ellipse(du, height - crown + dv, size, size * rng.uniform(0.8, 1.1), _jitter(rng, green, 15),
                  labelled=False)


def _draw_bush(s: _Sprite, rng: np.random.Generator) -> None:
    green = _hsv(rng.uniform(0.2, 0.36), rng.uniform(0.4, 0.8), rng.uniform(0.2, 0.5))
    for _ in range(int(rng.integers(2, 5))):
        size = rng.uniform(0.4, 0.9)
        s.ellipse(rng.uniform(-0.8, 0.8), size * 0.8, size, size * 0.8, _jitter(rng, green, 15),
                  labelled=False)


# --- scene layout -------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Lighting:
    sky_top: Color
    sky_horizon: Color
    haze_color: Color
    visibility_m: float
    gain: float
    contrast: float
    lamps_on: bool
    shadows: bool


def _sample_lighting(rng: np.random.Generator) -> _Lighting:
    """Day (sunny, with shadows), dusk (dark, warm horizon, lamps on) or overcast (grey, hazy)."""
    kind = rng.choice(3, p=(0.55, 0.2, 0.25))
    if kind == 0:
        horizon = _jitter(rng, (235, 215, 195), 15)
        return _Lighting(_jitter(rng, (205, 135, 70), 25), horizon, horizon, rng.uniform(400, 1200),
                         rng.uniform(0.95, 1.15), rng.uniform(0.95, 1.15), False, rng.random() < 0.6)
    if kind == 1:
        horizon = _jitter(rng, (90, 150, 235), 25)
        return _Lighting(_jitter(rng, (90, 45, 45), 20), horizon, _shade(horizon, 0.7), rng.uniform(300, 800),
                         rng.uniform(0.55, 0.8), rng.uniform(0.9, 1.1), True, False)
    horizon = _jitter(rng, (210, 208, 205), 12)
    return _Lighting(_jitter(rng, (175, 170, 165), 15), horizon, horizon, rng.uniform(150, 400),
                     rng.uniform(0.85, 1.0), rng.uniform(0.8, 0.95), rng.random() < 0.3, False)


@dataclass(frozen=True)
class _Road:
    left: float  # X of the road edges
    right: float
    lane_centers: tuple[float, ...]
    lane_heading: tuple[int, ...]  # +1 same direction as the camera (seen from behind), -1 oncoming
    ego_lane: int
    sidewalk: float  # width
    urban: bool
    cross_z: float | None  # near edge of a crossing street
    cross_width: float
    crosswalk_z: float | None  # near edge of a zebra crossing


def _sample_road(rng: np.random.Generator) -> _Road:
    lanes = int(rng.choice((2, 3, 4), p=(0.45, 0.35, 0.2)))
    lane_width = rng.uniform(3.0, 3.7)
    oncoming = lanes // 2 if rng.random() < 0.75 else 0
    ego = lanes - 1 if rng.random() < 0.6 else int(rng.integers(oncoming, lanes))  # mostly the kerb lane
    offset = rng.uniform(-0.4, 0.4)
    centers = tuple((k - ego) * lane_width + offset for k in range(lanes))
    cross_z = rng.uniform(14, 45) if rng.random() < 0.4 else None
    crosswalk = None
    if cross_z is not None and rng.random() < 0.7:
        crosswalk = cross_z - 4.0
    elif rng.random() < 0.15:
        crosswalk = rng.uniform(12, 35)
    return _Road(centers[0] - lane_width / 2, centers[-1] + lane_width / 2, centers,
                 tuple(-1 if k < oncoming else 1 for k in range(lanes)), ego, rng.uniform(2.0, 4.0),
                 bool(rng.random() < 0.6), cross_z, rng.uniform(8, 12), crosswalk)


@dataclass(frozen=True)
class _Layout:
    camera: _Camera
    road: _Road
    lighting: _Lighting
    width: int
    height: int


@dataclass(frozen=True)
class _Item:
    """Something standing on the ground plane, drawn in far-to-near order."""

    x: float
    z: float
    class_index: int | None  # None: unlabelled clutter
    draw: Callable[[_Sprite], None]
    footprint: Footprint  # for collisions
    squeeze: float = 1.0


# Farthest placement per class (metres): keeps the smallest instances a few pixels wide at 640 px.
_MAX_DEPTH = {
    CAR: 65.0, TRUCK: 80.0, PEDESTRIAN: 28.0, CYCLIST: 36.0, TRAFFIC_LIGHT: 30.0, TRAFFIC_SIGN: 30.0}
_DEPTH_POWER = 2.0  # > 1 favours near placements


def _depth_range(layout: _Layout, x: float, top: float) -> float:
    """Nearest depth at which an object at lateral X, ``top`` metres tall, has its bottom, top and
    centre line in view."""
    cam = layout.camera
    nearest = cam.focal * cam.height_m / (layout.height - cam.horizon_y) * 0.95
    if top > cam.height_m:
        nearest = max(nearest, cam.focal * (top - cam.height_m) / cam.horizon_y)
    if x > 0:
        nearest = max(nearest, cam.focal * x / (layout.width - cam.center_x))
    elif x < 0:
        nearest = max(nearest, cam.focal * -x / cam.center_x)
    return max(nearest, 3.0)


def _sample_depth(rng: np.random.Generator, near: float, far: float) -> float | None:
    if near >= far:
        return None
    return near + (far - near) * rng.random() ** _DEPTH_POWER


def _sidewalk_x(rng: np.random.Generator, road: _Road, inset: tuple[float, float]) -> float:
    if rng.random() < 0.5:
        return road.right + rng.uniform(*inset)
    return road.left - rng.uniform(*inset)


def _place_vehicle(rng: np.random.Generator, layout: _Layout, class_index: int) -> _Item | None:
    road, lamps = layout.road, layout.lighting.lamps_on
    truck = class_index == TRUCK
    width = rng.uniform(2.3, 2.55) if truck else rng.uniform(1.65, 1.95)
    height = rng.uniform(2.9, 3.9) if truck else rng.uniform(1.38, 1.85)
    length = rng.uniform(6.5, 10) if truck else rng.uniform(3.9, 4.8)
    if road.cross_z is not None and rng.random() < 0.3:  # crossing traffic, side view
        x = rng.uniform(road.left - 10, road.right + 10)
        z = road.cross_z + rng.uniform(0.5, road.cross_width - width - 0.5)
        if z < _depth_range(layout, x, height):
            return None
        draw = functools.partial(_draw_truck_side if truck else _draw_car_side, rng=rng, length=length,
                                 height=height, lamps_on=lamps)
        return _Item(x, z, class_index, draw, (x - length / 2, x + length / 2, z, z + width),
                     1.0 if rng.random() < 0.5 else -1.0)
    lane = int(rng.integers(len(road.lane_centers)))
    x = road.lane_centers[lane] + rng.uniform(-0.3, 0.3)
    near = _depth_range(layout, x, height)
    if lane == road.ego_lane:
        near = max(near, 8.0)
    z = _sample_depth(rng, near, _MAX_DEPTH[class_index])
    if z is None:
        return None
    front = road.lane_heading[lane] < 0
    if truck:
        draw = functools.partial(_draw_truck_front if front else _draw_truck_rear, rng=rng, width=width,
                                 height=height, lamps_on=lamps)
    else:
        draw = functools.partial(_draw_car_end, rng=rng, width=width, height=height, front=front,
                                 lamps_on=lamps)
    return _Item(x, z, class_index, draw, (x - width / 2, x + width / 2, z, z + length))


def _place_pedestrian(rng: np.random.Generator, layout: _Layout) -> _Item | None:
    road = layout.road
    height = rng.uniform(1.5, 1.95)
    if road.crosswalk_z is not None and rng.random() < 0.35:
        x = rng.uniform(road.left, road.right)
        z = road.crosswalk_z + rng.uniform(0.3, 2.7)
        side_view = True
    else:
        x = _sidewalk_x(rng, road, (0.4, road.sidewalk - 0.3))
        z = _sample_depth(rng, _depth_range(layout, x, height), _MAX_DEPTH[PEDESTRIAN])
        side_view = rng.random() < 0.4
    if z is None or z < _depth_range(layout, x, height):
        return None
    draw = functools.partial(_draw_pedestrian, rng=rng, height=height, side_view=side_view)
    return _Item(x, z, PEDESTRIAN, draw, (x - 0.3, x + 0.3, z, z + 0.5), 1.0 if rng.random() < 0.5 else -1.0)


def _place_cyclist(rng: np.random.Generator, layout: _Layout) -> _Item | None:
    road = layout.road
    if road.cross_z is not None and rng.random() < 0.3:
        x = rng.uniform(road.left - 6, road.right + 6)
        z = road.cross_z + rng.uniform(1, road.cross_width - 1)
        squeeze = rng.uniform(0.8, 1.0)
    else:
        x = road.right - rng.uniform(0.6, 1.2) if rng.random() < 0.6 else road.left + rng.uniform(0.6, 1.2)
        z = _sample_depth(rng, _depth_range(layout, x, 1.8), _MAX_DEPTH[CYCLIST])
        squeeze = rng.uniform(0.45, 1.0)
    if z is None or z < _depth_range(layout, x, 1.8):
        return None
    squeeze *= 1.0 if rng.random() < 0.5 else -1.0
    draw = functools.partial(_draw_cyclist, rng=rng)
    return _Item(x, z, CYCLIST, draw, (x - 0.9, x + 0.9, z, z + 1.0), squeeze)


def _place_traffic_light(rng: np.random.Generator, layout: _Layout) -> _Item | None:
    road = layout.road
    on_right = rng.random() < 0.6
    x = road.right + rng.uniform(0.3, 1.0) if on_right else road.left - rng.uniform(0.3, 1.0)
    if rng.random() < 0.4:  # hanging from a mast arm over the road
        arm = rng.uniform(5.5, 6.5)
        offset = -rng.uniform(2.0, 0.8 * (road.right - road.left)) * (1 if on_right else -1)
        bottom = arm - rng.uniform(1.0, 1.3)
    else:
        arm, offset, bottom = None, 0.0, rng.uniform(2.4, 3.5)
    near = _depth_range(layout, x + offset, bottom + 1.1)
    if road.cross_z is not None and rng.random() < 0.7:
        z = road.cross_z - rng.uniform(0.5, 2.0) if rng.random() < 0.6 else road.cross_z + road.cross_width
        z = z if z >= near else None
    else:
        z = _sample_depth(rng, near, _MAX_DEPTH[TRAFFIC_LIGHT])
    if z is None:
        return None
    draw = functools.partial(_draw_traffic_light, rng=rng, bottom=bottom, offset=offset, arm_height=arm)
    return _Item(x, z, TRAFFIC_LIGHT, draw, (x - 0.3, x + 0.3, z, z + 0.3))


def _place_traffic_sign(rng: np.random.Generator, layout: _Layout) -> _Item | None:
    road = layout.road
    x = _sidewalk_x(rng, road, (0.3, 1.5))
    center, size = rng.uniform(1.8, 2.8), rng.uniform(0.6, 1.0)
    z = _sample_depth(rng, _depth_range(layout, x, center + size / 2), _MAX_DEPTH[TRAFFIC_SIGN])
    if z is None:
        return None
    draw = functools.partial(_draw_traffic_sign, rng=rng, center=center, size=size)
    return _Item(x, z, TRAFFIC_SIGN, draw, (x - 0.25, x + 0.25, z, z + 0.2))


def _place_clutter(rng: np.random.Generator, layout: _Layout) -> _Item | None:
    """Unlabelled street furniture or vegetation; None when it does not fit in view."""
    road = layout.road
    kind = rng.choice(6, p=(0.2, 0.15, 0.2, 0.1, 0.25, 0.1))
    if kind == 0:
        x = _sidewalk_x(rng, road, (0.3, road.sidewalk - 0.3))
        draw = functools.partial(_draw_lamp_post, reach=-1.5 if x > 0 else 1.5)  # arm over the road
    elif kind in (1, 2):
        x, draw = _sidewalk_x(rng, road, (0.3, road.sidewalk - 0.3)), (_draw_pole, _draw_box)[kind - 1]
    elif kind == 3:  # cone on the road
        x, draw = rng.uniform(road.left + 0.5, road.right - 0.5), _draw_cone
    elif kind == 4:  # tree: on the sidewalk in town, beside it in the open
        inset = (0.5, road.sidewalk - 0.5) if road.urban else (road.sidewalk + 1, road.sidewalk + 12)
        x, draw = _sidewalk_x(rng, road, inset), _draw_tree
    else:  # bush: in front of the facades in town
        inset = (0.3, road.sidewalk - 0.3) if road.urban else (road.sidewalk + 0.5, road.sidewalk + 6)
        x, draw = _sidewalk_x(rng, road, inset), _draw_bush
    z = _sample_depth(rng, _depth_range(layout, x, 1.0), 120.0)
    if z is None:
        return None
    return _Item(x, z, None, functools.partial(draw, rng=rng), (x - 0.4, x + 0.4, z, z + 0.4))


_PLACERS: dict[int | None, Callable[[np.random.Generator, _Layout], _Item | None]] = {
    CAR: functools.partial(_place_vehicle, class_index=CAR),
    TRUCK: functools.partial(_place_vehicle, class_index=TRUCK),
    PEDESTRIAN: _place_pedestrian,
    CYCLIST: _place_cyclist,
    TRAFFIC_LIGHT: _place_traffic_light,
    TRAFFIC_SIGN: _place_traffic_sign,
    None: _place_clutter,
}


def _collides(footprint: Footprint, taken: list[Footprint]) -> bool:
    x1, x2, z1, z2 = footprint
    return any(x1 < b2 and b1 < x2 and z1 < d2 and d1 < z2 for b1, b2, d1, d2 in taken)


def _place_items(rng: np.random.Generator, layout: _Layout) -> list[_Item]:
    """Objects and clutter at non-overlapping ground positions, sorted far to near."""
    items: list[_Item] = []
    taken: list[Footprint] = []
    classes = list(_CLASS_SHARE)
    count = int(rng.integers(MIN_OBJECTS, MAX_OBJECTS + 1))
    picks = rng.choice(len(classes), size=count, p=list(_CLASS_SHARE.values()))
    wanted: list[int | None] = [classes[k] for k in picks]
    wanted += [None] * int(rng.integers(3, 12))
    for kind in wanted:
        for _ in range(12):  # retries when out of view or colliding
            item = _PLACERS[kind](rng, layout)
            if item is not None and not _collides(item.footprint, taken):
                items.append(item)
                taken.append(item.footprint)
                break
    items.sort(key=lambda item: -item.z)
    return items


# --- background ---------------------------------------------------------------------------------


def _draw_background(image: np.ndarray, rng: np.random.Generator, layout: _Layout) -> None:
    """Sky, skyline, ground, road with markings, sidewalks, facades; then a mottled texture."""
    cam, road, light = layout.camera, layout.road, layout.lighting
    h, w = image.shape[:2]
    horizon_row = int(math.ceil(cam.horizon_y))
    t = np.linspace(0.0, 1.0, horizon_row, dtype=np.float32)[:, None] ** 0.7
    sky = np.asarray(light.sky_top, np.float32) * (1 - t) + np.asarray(light.sky_horizon, np.float32) * t
    image[:horizon_row] = sky.astype(np.uint8)[:, None, :]

    for _ in range(int(rng.integers(4, 16))):  # distant skyline / tree line
        x0 = rng.uniform(-0.1, 1.0) * w
        top = cam.horizon_y - rng.uniform(0.02, 0.25 if road.urban else 0.08) * h
        color = _jitter(rng, tuple(int(0.6 * c) for c in light.haze_color), 20)
        if road.urban:
            x1 = x0 + rng.uniform(0.03, 0.12) * w
            bottom = cam.horizon_y + 1
            _fill(image, [np.array([[x0, top], [x1, top], [x1, bottom], [x0, bottom]])], color)
        else:
            radius = cam.horizon_y - top
            axes = (int(radius * rng.uniform(1.5, 4)), int(radius))
            cv2.ellipse(image, (int(x0), int(cam.horizon_y)), axes, 0, 180, 360, _shade(color, 0.8), -1)

    ground = _gray(rng, 125, 20) if road.urban else _jitter(rng, (60, 125, 90), 20)
    image[horizon_row:] = ground
    near, far = max(1.0, 0.5 * cam.focal * cam.height_m / (h - cam.horizon_y)), 3000.0
    asphalt = _gray(rng, 95, 25)
    curb = _gray(rng, 175, 20)
    paving = _gray(rng, 155, 25, tint=12)
    for edge, sign in ((road.right, 1), (road.left, -1)):
        _fill(image, cam.ground_quads(edge, edge + sign * road.sidewalk, near, far), paving)
        _fill(image, cam.ground_quads(edge, edge + sign * 0.2, near, far), curb)
    if road.cross_z is not None:  # side street: its sidewalks end at the main road
        _fill(image, cam.ground_quads(-200.0, 200.0, road.cross_z - road.sidewalk,
                                      road.cross_z + road.cross_width + road.sidewalk), paving)
    _fill(image, cam.ground_quads(road.left, road.right, near, far), asphalt)
    if road.cross_z is not None:
        _fill(image, cam.ground_quads(-200.0, 200.0, road.cross_z, road.cross_z + road.cross_width), asphalt)
    _draw_markings(image, rng, layout, near)

    if road.urban:
        for x_face in (road.right + road.sidewalk, road.left - road.sidewalk):
            _draw_facades(image, rng, layout, x_face, near)

    texture = rng.standard_normal((h // 8 + 2, w // 8 + 2), dtype=np.float32)
    texture = cv2.resize(texture, (w, h), interpolation=cv2.INTER_LINEAR)
    amplitude = np.where(np.arange(h) < cam.horizon_y, 0.015, 0.05).astype(np.float32)[:, None]
    mottle = cv2.cvtColor(1.0 + amplitude * texture, cv2.COLOR_GRAY2BGR)
    cv2.multiply(image, mottle, dst=image, dtype=cv2.CV_8U)


def _draw_markings(image: np.ndarray, rng: np.random.Generator, layout: _Layout, near: float) -> None:
    """Edge lines, lane dashes (or a solid divider between directions) and zebra crossings."""
    cam, road = layout.camera, layout.road
    paint = _jitter(rng, (225, 225, 225), 20)
    line_width = rng.uniform(0.12, 0.18)
    far = 400.0
    stops = [(near, far)]
    if road.cross_z is not None:
        stops = [(near, road.cross_z - 0.5), (road.cross_z + road.cross_width + 0.5, far)]
    dash, gap = rng.uniform(2.5, 4.0), rng.uniform(5.0, 9.0)
    phase = rng.uniform(0, dash + gap)
    centers = road.lane_centers
    boundaries = [(centers[k] + centers[k + 1]) / 2 for k in range(len(centers) - 1)]
    for z0, z1 in stops:
        for edge in (road.left + 0.3, road.right - 0.3 - line_width):
            _fill(image, cam.ground_quads(edge, edge + line_width, z0, z1), paint)
        for k, x in enumerate(boundaries):
            if road.lane_heading[k] != road.lane_heading[k + 1]:
                color = paint if rng.random() < 0.5 else (40, 190, 230)
                _fill(image, cam.ground_quads(x - line_width / 2, x + line_width / 2, z0, z1), color)
                continue
            starts = np.arange(z0 - phase, z1, dash + gap)
            starts = starts[starts + dash > z0]
            _fill(image, cam.ground_quads(x - line_width / 2, x + line_width / 2, np.maximum(starts, z0),
                                          np.minimum(starts + dash, z1)), paint)
    if road.crosswalk_z is not None:
        stripes = np.arange(road.left + 0.3, road.right - 0.3, 1.0)
        zebra = cam.ground_quads(stripes, stripes + 0.5, road.crosswalk_z, road.crosswalk_z + 3.0)
        _fill(image, zebra, paint)


def _draw_facades(image: np.ndarray, rng: np.random.Generator, layout: _Layout, x_face: float,
                  near: float) -> None:
    """Building blocks along one side of the street, with a grid of windows in perspective."""
    cam, road = layout.camera, layout.road
    street_gap = None
    if road.cross_z is not None:
        street_gap = (road.cross_z - road.sidewalk, road.cross_z + road.cross_width + road.sidewalk)
    z = near
    while z < 160:
        if street_gap and street_gap[0] <= z < street_gap[1]:
            z = street_gap[1]
            continue
        length, height = rng.uniform(8, 35), rng.uniform(6, 28)
        z_end = z + length
        if street_gap and z < street_gap[0] < z_end:
            z_end = street_gap[0]
        if z_end - z > 2:
            wall = _jitter(rng, _gray(rng, 160, 30), 35)
            _fill(image, cam.wall_quads(x_face, 0.0, height, z, z_end), wall)
            rows = np.arange(1.0, height - 1.5, rng.uniform(2.8, 3.5))
            cols = np.arange(z + 0.6, z_end - 1.5, rng.uniform(2.2, 3.5))
            if len(rows) and len(cols):
                y0, z0 = (grid.ravel() for grid in np.meshgrid(rows, cols))
                windows = cam.wall_quads(x_face, y0, y0 + 1.4, z0, z0 + 1.2)
                wide = np.ptp(windows[:, :, 0], axis=1) > 1.0
                glass = _jitter(rng, (90, 80, 70), 25) if rng.random() < 0.7 else _shade(wall, 0.6)
                _fill(image, windows[wide], glass)
        z = z_end + rng.uniform(0.0, 4.0)


# --- rendering ----------------------------------------------------------------------------------


@functools.lru_cache(maxsize=4)
def _noise_bank(height: int, width: int) -> np.ndarray:
    """Fixed standard-normal noise, a margin larger than the image: each image takes a random
    window of it (drawing fresh Gaussian noise per pixel would dominate the render time)."""
    return np.random.default_rng(0x5EED).standard_normal((height + 64, width + 64, 3), dtype=np.float32)


def _apply_camera_effects(image: np.ndarray, rng: np.random.Generator, layout: _Layout) -> np.ndarray:
    """Cast shadows, exposure/contrast, white balance, optical or motion blur, then sensor noise."""
    cam, light = layout.camera, layout.lighting
    h, w = image.shape[:2]
    if light.shadows:
        lit = np.full((h, w), 255, np.uint8)
        road = layout.road
        for _ in range(int(rng.integers(1, 4))):
            z0 = rng.uniform(6, 40)
            x0 = road.left - rng.uniform(0, 5) if rng.random() < 0.5 else rng.uniform(road.left, road.right)
            quad = cam.ground_quads(x0, road.right + rng.uniform(0, 5), z0, z0 + rng.uniform(2, 15))
            _fill(lit, quad, int(255 * rng.uniform(0.55, 0.75)))
        lit = cv2.GaussianBlur(lit, (0, 0), 2.0)
        image = cv2.multiply(image, cv2.cvtColor(lit, cv2.COLOR_GRAY2BGR), scale=1 / 255)
    levels = np.arange(256, dtype=np.float32)[:, None]
    white_balance = rng.uniform(0.95, 1.05, 3).astype(np.float32)
    table = ((levels - 128.0) * light.contrast + 128.0) * (light.gain * white_balance)
    image = cv2.LUT(image, np.clip(table, 0, 255).astype(np.uint8).reshape(256, 1, 3))
    blur = rng.random()
    if blur < 0.15:
        length = int(rng.integers(3, 8))
        kernel = np.zeros((length, length), np.float32)
        kernel[length // 2] = 1.0
        rotation = cv2.getRotationMatrix2D((length / 2 - 0.5, length / 2 - 0.5), rng.uniform(-30, 30), 1.0)
        kernel = cv2.warpAffine(kernel, rotation, (length, length))
        image = cv2.filter2D(image, -1, kernel / kernel.sum())
    else:
        sigma = rng.uniform(0.9, 1.6) if blur < 0.35 else rng.uniform(0.35, 0.7)
        image = cv2.GaussianBlur(image, (0, 0), sigma)
    dy, dx = rng.integers(0, 65, size=2)
    noise = _noise_bank(h, w)[dy:dy + h, dx:dx + w]
    return cv2.addWeighted(image, 1.0, noise, rng.uniform(1.0, 6.0), 0.0, dtype=cv2.CV_8U)


def _render_once(rng: np.random.Generator, width: int, height: int) -> tuple[np.ndarray, list[Labelled]]:
    """One scene: camera, road and lighting, background, items far to near, visible boxes, camera effects."""
    focal = width * rng.uniform(0.75, 0.95)
    camera = _Camera(focal, rng.uniform(1.3, 1.7), height * rng.uniform(0.38, 0.52),
                     width * (0.5 + rng.uniform(-0.12, 0.12)))
    layout = _Layout(camera, _sample_road(rng), _sample_lighting(rng), width, height)
    image = np.empty((height, width, 3), np.uint8)
    _draw_background(image, rng, layout)

    ids = np.zeros((height, width), np.uint8)
    painter = _Painter(image, ids)
    haze_color = layout.lighting.haze_color
    labelled: list[tuple[int, int, int]] = []  # label, class index, in-image pixels right after drawing
    for item in _place_items(rng, layout):
        x, y = camera.project(item.x, 0.0, item.z)
        label = len(labelled) + 1 if item.class_index is not None else 0
        haze = 1.0 - math.exp(-item.z / layout.lighting.visibility_m)
        scale = camera.focal / item.z
        item.draw(_Sprite(painter, float(x), float(y), scale, label, item.squeeze, haze, haze_color))
        if label:
            labelled.append((label, item.class_index, _count_visible(painter, label)[0]))

    boxes = []
    for label, class_index, drawn in labelled:
        if drawn == 0:
            continue
        visible, box = _count_visible(painter, label)
        extent = tuple(painter.extent[label])
        inside_fraction = _area(_clip_box(extent, width, height)) / max(_area(extent), 1e-6)
        if visible / drawn * inside_fraction < MIN_VISIBLE_FRACTION:
            continue
        if box[2] - box[0] < MIN_BOX_SIDE or box[3] - box[1] < MIN_BOX_SIDE:
            continue
        boxes.append((class_index, box))
    return _apply_camera_effects(image, rng, layout), boxes


def _area(box: Box) -> float:
    return max(0.0, box[2] - box[0]) * max(0.0, box[3] - box[1])


def _clip_box(box: Box, width: int, height: int) -> Box:
    return (min(max(box[0], 0.0), width), min(max(box[1], 0.0), height),
            min(max(box[2], 0.0), width), min(max(box[3], 0.0), height))


def _count_visible(painter: _Painter, label: int) -> tuple[int, Box]:
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


# --- dataset ------------------------------------------------------------------------------------


def _render_and_write(task: tuple[int, str], config: SynthConfig, images_dir: Path) -> list[Labelled]:
    """Render image ``task = (index, file name)``, write it as JPEG under ``images_dir``, return its boxes."""
    index, file_name = task
    image, boxes = render_scene(np.random.default_rng([config.seed, index]), config.width, config.height)
    ok, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, config.jpeg_quality])
    if not ok:
        raise RuntimeError(f"JPEG encoding failed for synthetic image {index}")
    (images_dir / file_name).write_bytes(data.tobytes())
    return boxes


def _init_worker() -> None:
    cv2.setNumThreads(1)  # one process per core already


def _split_sizes(config: SynthConfig) -> tuple[int, int]:
    val = min(int(round(config.num_images * config.val_fraction)), config.num_images - 1)
    return config.num_images - val, val


def _is_complete(out_dir: Path, stats: dict) -> bool:
    """All annotation files and the recorded number of images of each split are present."""
    for split, count in stats["images_per_split"].items():
        if not (out_dir / "annotations" / f"instances_{split}.json").is_file():
            return False
        split_dir = out_dir / "images" / split
        if not split_dir.is_dir() or sum(1 for _ in os.scandir(split_dir)) != count:
            return False
    return True


def _read_marker(out_dir: Path) -> dict | None:
    """Our ``dataset.json`` in ``out_dir``, or None when there is none (or someone else's)."""
    try:
        marker = json.loads((out_dir / "dataset.json").read_text())
    except (OSError, ValueError):
        return None
    return marker if isinstance(marker, dict) and marker.get("generator") == GENERATOR_NAME else None


def _prepare_output(out_dir: Path, config: SynthConfig) -> None:
    """Claim ``out_dir`` with an in-progress marker and clear what an earlier run left there.

    Refuses a directory that already holds images or annotations this generator did not write.
    """
    owned = [out_dir / "images" / split for split in ("train", "val")]
    owned += [out_dir / "annotations" / f"instances_{split}.json" for split in ("train", "val")]
    if _read_marker(out_dir) is None and any(path.exists() for path in owned):
        raise DatasetError(f"{out_dir} already holds images or annotations that the synthetic generator "
                           "did not write; choose another output directory")
    out_dir.mkdir(parents=True, exist_ok=True)
    _write_json(out_dir / "dataset.json", {"generator": GENERATOR_NAME, "config": config.identity()})
    for path in owned:
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
    for split in ("train", "val"):
        (out_dir / "images" / split).mkdir(parents=True)
    (out_dir / "annotations").mkdir(exist_ok=True)


def _write_json(path: Path, payload: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(payload, separators=(",", ":")))
    os.replace(tmp, path)


def generate_dataset(out_dir: Path, config: SynthConfig, progress: bool = True) -> dict:
    """Generate the synthetic benchmark as a COCO dataset; returns summary stats.

    Writes ``out_dir/images/{train,val}/NNNNNN.jpg`` (NNNNNN = global image index),
    ``out_dir/annotations/instances_{train,val}.json`` and, last, ``out_dir/dataset.json``
    (config + stats), which marks the output complete: a rerun with the same config returns the
    stored stats without rendering; a different config or an incomplete output regenerates.
    Raises DatasetError rather than overwrite images or annotations it did not write.
    """
    out_dir = Path(out_dir)
    marker = _read_marker(out_dir)
    if (marker is not None and marker.get("config") == config.identity() and "stats" in marker
            and _is_complete(out_dir, marker["stats"])):
        log.info("synthetic dataset in %s is up to date; skipping generation", out_dir)
        return marker["stats"]
    _prepare_output(out_dir, config)

    n_train, n_val = _split_sizes(config)
    tasks = [(i, f"{'train' if i < n_train else 'val'}/{i:06d}.jpg") for i in range(config.num_images)]
    render = functools.partial(_render_and_write, config=config, images_dir=out_dir / "images")
    bar = functools.partial(tqdm, total=len(tasks), desc="synth images", unit="img", disable=not progress)
    if config.workers == 1:
        results = list(bar(map(render, tasks)))
    else:
        chunksize = max(1, min(16, len(tasks) // (config.workers * 8)))
        with multiprocessing.Pool(config.workers, initializer=_init_worker) as pool:
            results = list(bar(pool.imap(render, tasks, chunksize=chunksize)))

    categories = [{"id": k + 1, "name": name} for k, name in enumerate(SYNTH_CLASSES)]
    per_class = [0] * len(SYNTH_CLASSES)
    small = 0
    for split, indices in (("train", range(n_train)), ("val", range(n_train, config.num_images))):
        images, annotations = [], []
        for i in indices:
            images.append({"id": i + 1, "file_name": tasks[i][1], "width": config.width,
                           "height": config.height})
            for class_index, (x1, y1, x2, y2) in results[i]:
                w, h = x2 - x1, y2 - y1
                annotations.append({"id": len(annotations) + 1, "image_id": i + 1,
                                    "category_id": class_index + 1, "bbox": [x1, y1, w, h], "area": w * h,
                                    "iscrowd": 0})
                per_class[class_index] += 1
                small += int(w * h < 32 ** 2)
        _write_json(out_dir / "annotations" / f"instances_{split}.json",
                    {"images": images, "annotations": annotations, "categories": categories})

    counts = [len(boxes) for boxes in results]
    total = sum(counts)
    stats = {
        "seed": config.seed,
        "images_per_split": {"train": n_train, "val": n_val},
        "objects": total,
        "objects_per_class": dict(zip(SYNTH_CLASSES, per_class)),
        "objects_per_image": {"min": min(counts), "max": max(counts), "mean": round(total / len(counts), 3)},
        "small_fraction": round(small / max(total, 1), 4),  # COCO "small": area < 32 x 32 px
    }
    _write_json(out_dir / "dataset.json", {"generator": GENERATOR_NAME, "config": config.identity(),
                                           "classes": list(SYNTH_CLASSES), "stats": stats})
    return stats
