"""Colours (BGR): paints, skin tones, greys and random hues drawn from the scene's generator."""

from __future__ import annotations

import colorsys

import numpy as np


Color = tuple[int, int, int]

_CAR_PAINTS: tuple[Color, ...] = (
    (235, 235, 235), (195, 195, 200), (125, 125, 130), (35, 35, 38), (120, 50, 25), (35, 35, 180),
    (170, 100, 40), (55, 110, 45), (40, 190, 225), (165, 195, 210), (40, 65, 100), (30, 110, 220),
)
SKIN_TONES: tuple[Color, ...] = (
    (150, 180, 225), (120, 155, 205), (90, 120, 170), (60, 85, 125), (45, 60, 90))
TIRE: Color = (28, 28, 30)
GLASS: Color = (70, 55, 45)


def hsv(hue: float, saturation: float, value: float) -> Color:
    r, g, b = colorsys.hsv_to_rgb(hue, saturation, value)
    return int(b * 255), int(g * 255), int(r * 255)


def random_color(rng: np.random.Generator, value: tuple[float, float] = (0.15, 0.95)) -> Color:
    """Any hue: colour alone must never identify a class."""
    return hsv(rng.random(), rng.uniform(0.1, 0.9), rng.uniform(*value))


def jitter(rng: np.random.Generator, color: Color, amount: int = 14) -> Color:
    offsets = rng.integers(-amount, amount + 1, size=3).tolist()
    return tuple(min(255, max(0, c + d)) for c, d in zip(color, offsets))


def gray(rng: np.random.Generator, level: float, spread: float, tint: int = 6) -> Color:
    """A near-neutral grey (asphalt, concrete) with a slight random tint."""
    base = int(level + rng.uniform(-spread, spread))
    return jitter(rng, (base, base, base), tint)


def shade(color: Color, factor: float) -> Color:
    return tuple(int(min(255.0, c * factor)) for c in color)


def vehicle_paint(rng: np.random.Generator) -> Color:
    """Vehicle paint: mostly common car colours, often any hue."""
    if rng.random() < 0.6:
        return jitter(rng, _CAR_PAINTS[rng.integers(len(_CAR_PAINTS))])
    return random_color(rng)
