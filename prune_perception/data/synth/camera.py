"""The pinhole camera of a scene: world points on and above the ground plane to image pixels."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Camera:
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
