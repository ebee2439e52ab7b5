"""Camera effects on a rendered scene: cast shadows, exposure, white balance, blur, sensor noise."""

from __future__ import annotations

import functools

import cv2
import numpy as np

from prune_perception.data.synth.canvas import fill
from prune_perception.data.synth.layout import Layout


@functools.lru_cache(maxsize=4)
def _noise_bank(height: int, width: int) -> np.ndarray:
    """Fixed standard-normal noise, a margin larger than the image: each image takes a random
    window of it (drawing fresh Gaussian noise per pixel would dominate the render time)."""
    return np.random.default_rng(0x5EED).standard_normal((height + 64, width + 64, 3), dtype=np.float32)


def apply_camera_effects(image: np.ndarray, rng: np.random.Generator, layout: Layout) -> np.ndarray:
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
            fill(lit, quad, int(255 * rng.uniform(0.55, 0.75)))
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
