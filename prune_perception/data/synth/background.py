"""The static scene behind the objects: sky, skyline, ground, road with markings, sidewalks, facades."""

from __future__ import annotations

import math

import cv2
import numpy as np

from prune_perception.data.synth.canvas import fill
from prune_perception.data.synth.layout import Layout
from prune_perception.data.synth.palette import gray, jitter, shade


def draw_background(image: np.ndarray, rng: np.random.Generator, layout: Layout) -> None:
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
        color = jitter(rng, tuple(int(0.6 * c) for c in light.haze_color), 20)
        if road.urban:
            x1 = x0 + rng.uniform(0.03, 0.12) * w
            bottom = cam.horizon_y + 1
            fill(image, [np.array([[x0, top], [x1, top], [x1, bottom], [x0, bottom]])], color)
        else:
            radius = cam.horizon_y - top
            axes = (int(radius * rng.uniform(1.5, 4)), int(radius))
            cv2.ellipse(image, (int(x0), int(cam.horizon_y)), axes, 0, 180, 360, shade(color, 0.8), -1)

    ground = gray(rng, 125, 20) if road.urban else jitter(rng, (60, 125, 90), 20)
    image[horizon_row:] = ground
    near, far = max(1.0, 0.5 * cam.focal * cam.height_m / (h - cam.horizon_y)), 3000.0
    asphalt = gray(rng, 95, 25)
    curb = gray(rng, 175, 20)
    paving = gray(rng, 155, 25, tint=12)
    for edge, sign in ((road.right, 1), (road.left, -1)):
        fill(image, cam.ground_quads(edge, edge + sign * road.sidewalk, near, far), paving)
        fill(image, cam.ground_quads(edge, edge + sign * 0.2, near, far), curb)
    if road.cross_z is not None:  # side street: its sidewalks end at the main road
        fill(image, cam.ground_quads(-200.0, 200.0, road.cross_z - road.sidewalk,
                                     road.cross_z + road.cross_width + road.sidewalk), paving)
    fill(image, cam.ground_quads(road.left, road.right, near, far), asphalt)
    if road.cross_z is not None:
        fill(image, cam.ground_quads(-200.0, 200.0, road.cross_z, road.cross_z + road.cross_width), asphalt)
    _draw_markings(image, rng, layout, near)

    if road.urban:
        for x_face in (road.right + road.sidewalk, road.left - road.sidewalk):
            _draw_facades(image, rng, layout, x_face, near)

    texture = rng.standard_normal((h // 8 + 2, w // 8 + 2), dtype=np.float32)
    texture = cv2.resize(texture, (w, h), interpolation=cv2.INTER_LINEAR)
    amplitude = np.where(np.arange(h) < cam.horizon_y, 0.015, 0.05).astype(np.float32)[:, None]
    mottle = cv2.cvtColor(1.0 + amplitude * texture, cv2.COLOR_GRAY2BGR)
    cv2.multiply(image, mottle, dst=image, dtype=cv2.CV_8U)


def _draw_markings(image: np.ndarray, rng: np.random.Generator, layout: Layout, near: float) -> None:
    """Edge lines, lane dashes (or a solid divider between directions) and zebra crossings."""
    cam, road = layout.camera, layout.road
    paint = jitter(rng, (225, 225, 225), 20)
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
            fill(image, cam.ground_quads(edge, edge + line_width, z0, z1), paint)
        for k, x in enumerate(boundaries):
            if road.lane_heading[k] != road.lane_heading[k + 1]:
                color = paint if rng.random() < 0.5 else (40, 190, 230)
                fill(image, cam.ground_quads(x - line_width / 2, x + line_width / 2, z0, z1), color)
                continue
            starts = np.arange(z0 - phase, z1, dash + gap)
            starts = starts[starts + dash > z0]
            fill(image, cam.ground_quads(x - line_width / 2, x + line_width / 2, np.maximum(starts, z0),
                                         np.minimum(starts + dash, z1)), paint)
    if road.crosswalk_z is not None:
        stripes = np.arange(road.left + 0.3, road.right - 0.3, 1.0)
        zebra = cam.ground_quads(stripes, stripes + 0.5, road.crosswalk_z, road.crosswalk_z + 3.0)
        fill(image, zebra, paint)


def _draw_facades(image: np.ndarray, rng: np.random.Generator, layout: Layout, x_face: float,
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
            wall = jitter(rng, gray(rng, 160, 30), 35)
            fill(image, cam.wall_quads(x_face, 0.0, height, z, z_end), wall)
            rows = np.arange(1.0, height - 1.5, rng.uniform(2.8, 3.5))
            cols = np.arange(z + 0.6, z_end - 1.5, rng.uniform(2.2, 3.5))
            if len(rows) and len(cols):
                y0, z0 = (grid.ravel() for grid in np.meshgrid(rows, cols))
                windows = cam.wall_quads(x_face, y0, y0 + 1.4, z0, z0 + 1.2)
                wide = np.ptp(windows[:, :, 0], axis=1) > 1.0
                glass = jitter(rng, (90, 80, 70), 25) if rng.random() < 0.7 else shade(wall, 0.6)
                fill(image, windows[wide], glass)
        z = z_end + rng.uniform(0.0, 4.0)
