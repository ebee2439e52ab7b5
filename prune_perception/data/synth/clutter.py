"""Unlabelled street furniture and vegetation (hard negatives), drawn in sprite-local metres."""

from __future__ import annotations

import numpy as np

from prune_perception.data.synth.canvas import Sprite
from prune_perception.data.synth.palette import hsv, jitter, random_color, shade


def draw_lamp_post(s: Sprite, rng: np.random.Generator, reach: float) -> None:
    color = jitter(rng, (90, 95, 90), 25)
    top = rng.uniform(6.5, 9)
    s.segment((0, 0), (0, top), 0.16, color, labelled=False)
    s.segment((0, top), (reach, top + 0.3), 0.1, color, labelled=False)
    s.rect(reach - 0.35, top + 0.05, reach + 0.35, top + 0.35, (200, 230, 240), labelled=False)


def draw_pole(s: Sprite, rng: np.random.Generator) -> None:
    color = jitter(rng, (60, 80, 100), 30) if rng.random() < 0.5 else jitter(rng, (140, 140, 140), 25)
    s.segment((0, 0), (0, rng.uniform(2.5, 9)), rng.uniform(0.08, 0.25), color, labelled=False)


def draw_box(s: Sprite, rng: np.random.Generator) -> None:
    """Bin, utility cabinet or parking meter: boxy things that are not traffic lights."""
    kind = rng.integers(3)
    color = random_color(rng, (0.2, 0.7))
    if kind == 0:
        w, h = rng.uniform(0.5, 0.7), rng.uniform(0.8, 1.1)
        s.rect(-w / 2, 0, w / 2, h, color, labelled=False)
        s.rect(-w / 2 - 0.03, h, w / 2 + 0.03, h + 0.08, shade(color, 0.7), labelled=False)
    elif kind == 1:
        w, h = rng.uniform(0.6, 1.2), rng.uniform(1.0, 1.6)
        s.rect(-w / 2, 0, w / 2, h, jitter(rng, (110, 125, 115), 20), labelled=False)
        s.segment((0, 0.1), (0, h - 0.1), 0.03, (70, 80, 75), labelled=False)
    else:
        s.segment((0, 0), (0, 1.1), 0.08, (90, 90, 90), labelled=False)
        s.rect(-0.15, 1.0, 0.15, 1.5, jitter(rng, (45, 45, 45), 20), labelled=False)
        s.rect(-0.1, 1.3, 0.1, 1.42, (150, 170, 160), labelled=False)


def draw_cone(s: Sprite, rng: np.random.Generator) -> None:
    orange = jitter(rng, (20, 110, 240), 20)
    s.poly(((-0.2, 0), (0.2, 0), (0.04, 0.72), (-0.04, 0.72)), orange, labelled=False)
    s.poly(((-0.12, 0.3), (0.12, 0.3), (0.09, 0.45), (-0.09, 0.45)), (235, 235, 235), labelled=False)
    s.rect(-0.28, 0, 0.28, 0.05, (30, 30, 30), labelled=False)


def draw_tree(s: Sprite, rng: np.random.Generator) -> None:
    height = rng.uniform(4, 9)
    trunk = jitter(rng, (40, 60, 80), 15)
    s.segment((0, 0), (0, height * 0.6), rng.uniform(0.2, 0.4), trunk, labelled=False)
    green = hsv(rng.uniform(0.2, 0.36), rng.uniform(0.4, 0.8), rng.uniform(0.25, 0.55))
    crown = height * rng.uniform(0.25, 0.4)
    for _ in range(int(rng.integers(3, 6))):
        du, dv = rng.uniform(-0.6, 0.6, 2) * crown
        size = crown * rng.uniform(0.6, 1.0)
        s.ellipse(du, height - crown + dv, size, size * rng.uniform(0.8, 1.1), jitter(rng, green, 15),
                  labelled=False)


def draw_bush(s: Sprite, rng: np.random.Generator) -> None:
    green = hsv(rng.uniform(0.2, 0.36), rng.uniform(0.4, 0.8), rng.uniform(0.2, 0.5))
    for _ in range(int(rng.integers(2, 5))):
        size = rng.uniform(0.4, 0.9)
        s.ellipse(rng.uniform(-0.8, 0.8), size * 0.8, size, size * 0.8, jitter(rng, green, 15),
                  labelled=False)
