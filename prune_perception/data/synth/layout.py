"""Scene layout: lighting, road, and where objects and clutter stand on the ground plane."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Callable

import numpy as np

from prune_perception.data.classes import SYNTH_CLASSES
from prune_perception.data.synth.camera import Camera
from prune_perception.data.synth.canvas import Sprite
from prune_perception.data.synth.clutter import (draw_box, draw_bush, draw_cone, draw_lamp_post, draw_pole,
                                                 draw_tree)
from prune_perception.data.synth.objects import (draw_car_end, draw_car_side, draw_cyclist, draw_pedestrian,
                                                 draw_traffic_light, draw_traffic_sign, draw_truck_front,
                                                 draw_truck_rear, draw_truck_side)
from prune_perception.data.synth.palette import Color, jitter, shade


MIN_OBJECTS, MAX_OBJECTS = 3, 15  # labelled objects per image

CAR, TRUCK, PEDESTRIAN, CYCLIST, TRAFFIC_LIGHT, TRAFFIC_SIGN = (
    SYNTH_CLASSES.index(name)
    for name in ("car", "truck", "pedestrian", "cyclist", "traffic_light", "traffic_sign"))
_CLASS_SHARE = {  # expected share of placed objects per class
    CAR: 0.30, TRUCK: 0.13, PEDESTRIAN: 0.20, CYCLIST: 0.12, TRAFFIC_LIGHT: 0.12, TRAFFIC_SIGN: 0.13}

Footprint = tuple[float, float, float, float]  # x1, x2, z1, z2 on the ground plane, metres


@dataclass(frozen=True)
class Lighting:
    sky_top: Color
    sky_horizon: Color
    haze_color: Color
    visibility_m: float
    gain: float
    contrast: float
    lamps_on: bool
    shadows: bool


def sample_lighting(rng: np.random.Generator) -> Lighting:
    """Day (sunny, with shadows), dusk (dark, warm horizon, lamps on) or overcast (grey, hazy)."""
    kind = rng.choice(3, p=(0.55, 0.2, 0.25))
    if kind == 0:
        horizon = jitter(rng, (235, 215, 195), 15)
        return Lighting(jitter(rng, (205, 135, 70), 25), horizon, horizon, rng.uniform(400, 1200),
                        rng.uniform(0.95, 1.15), rng.uniform(0.95, 1.15), False, rng.random() < 0.6)
    if kind == 1:
        horizon = jitter(rng, (90, 150, 235), 25)
        return Lighting(jitter(rng, (90, 45, 45), 20), horizon, shade(horizon, 0.7), rng.uniform(300, 800),
                        rng.uniform(0.55, 0.8), rng.uniform(0.9, 1.1), True, False)
    horizon = jitter(rng, (210, 208, 205), 12)
    return Lighting(jitter(rng, (175, 170, 165), 15), horizon, horizon, rng.uniform(150, 400),
                    rng.uniform(0.85, 1.0), rng.uniform(0.8, 0.95), rng.random() < 0.3, False)


@dataclass(frozen=True)
class Road:
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


def sample_road(rng: np.random.Generator) -> Road:
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
    return Road(centers[0] - lane_width / 2, centers[-1] + lane_width / 2, centers,
                tuple(-1 if k < oncoming else 1 for k in range(lanes)), ego, rng.uniform(2.0, 4.0),
                bool(rng.random() < 0.6), cross_z, rng.uniform(8, 12), crosswalk)


@dataclass(frozen=True)
class Layout:
    camera: Camera
    road: Road
    lighting: Lighting
    width: int
    height: int


@dataclass(frozen=True)
class Item:
    """Something standing on the ground plane, drawn in far-to-near order."""

    x: float
    z: float
    class_index: int | None  # None: unlabelled clutter
    draw: Callable[[Sprite], None]
    footprint: Footprint  # for collisions
    squeeze: float = 1.0


# Farthest placement per class (metres): keeps the smallest instances a few pixels wide at 640 px.
_MAX_DEPTH = {
    CAR: 65.0, TRUCK: 80.0, PEDESTRIAN: 28.0, CYCLIST: 36.0, TRAFFIC_LIGHT: 30.0, TRAFFIC_SIGN: 30.0}
_DEPTH_POWER = 2.0  # > 1 favours near placements


def _depth_range(layout: Layout, x: float, top: float) -> float:
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


def _sidewalk_x(rng: np.random.Generator, road: Road, inset: tuple[float, float]) -> float:
    if rng.random() < 0.5:
        return road.right + rng.uniform(*inset)
    return road.left - rng.uniform(*inset)


def _place_vehicle(rng: np.random.Generator, layout: Layout, class_index: int) -> Item | None:
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
        draw = functools.partial(draw_truck_side if truck else draw_car_side, rng=rng, length=length,
                                 height=height, lamps_on=lamps)
        return Item(x, z, class_index, draw, (x - length / 2, x + length / 2, z, z + width),
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
        draw = functools.partial(draw_truck_front if front else draw_truck_rear, rng=rng, width=width,
                                 height=height, lamps_on=lamps)
    else:
        draw = functools.partial(draw_car_end, rng=rng, width=width, height=height, front=front,
                                 lamps_on=lamps)
    return Item(x, z, class_index, draw, (x - width / 2, x + width / 2, z, z + length))


def _place_pedestrian(rng: np.random.Generator, layout: Layout) -> Item | None:
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
    draw = functools.partial(draw_pedestrian, rng=rng, height=height, side_view=side_view)
    return Item(x, z, PEDESTRIAN, draw, (x - 0.3, x + 0.3, z, z + 0.5), 1.0 if rng.random() < 0.5 else -1.0)


def _place_cyclist(rng: np.random.Generator, layout: Layout) -> Item | None:
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
    draw = functools.partial(draw_cyclist, rng=rng)
    return Item(x, z, CYCLIST, draw, (x - 0.9, x + 0.9, z, z + 1.0), squeeze)


def _place_traffic_light(rng: np.random.Generator, layout: Layout) -> Item | None:
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
    draw = functools.partial(draw_traffic_light, rng=rng, bottom=bottom, offset=offset, arm_height=arm)
    return Item(x, z, TRAFFIC_LIGHT, draw, (x - 0.3, x + 0.3, z, z + 0.3))


def _place_traffic_sign(rng: np.random.Generator, layout: Layout) -> Item | None:
    road = layout.road
    x = _sidewalk_x(rng, road, (0.3, 1.5))
    center, size = rng.uniform(1.8, 2.8), rng.uniform(0.6, 1.0)
    z = _sample_depth(rng, _depth_range(layout, x, center + size / 2), _MAX_DEPTH[TRAFFIC_SIGN])
    if z is None:
        return None
    draw = functools.partial(draw_traffic_sign, rng=rng, center=center, size=size)
    return Item(x, z, TRAFFIC_SIGN, draw, (x - 0.25, x + 0.25, z, z + 0.2))


def _place_clutter(rng: np.random.Generator, layout: Layout) -> Item | None:
    """Unlabelled street furniture or vegetation; None when it does not fit in view."""
    road = layout.road
    kind = rng.choice(6, p=(0.2, 0.15, 0.2, 0.1, 0.25, 0.1))
    if kind == 0:
        x = _sidewalk_x(rng, road, (0.3, road.sidewalk - 0.3))
        draw = functools.partial(draw_lamp_post, reach=-1.5 if x > 0 else 1.5)  # arm over the road
    elif kind in (1, 2):
        x, draw = _sidewalk_x(rng, road, (0.3, road.sidewalk - 0.3)), (draw_pole, draw_box)[kind - 1]
    elif kind == 3:  # cone on the road
        x, draw = rng.uniform(road.left + 0.5, road.right - 0.5), draw_cone
    elif kind == 4:  # tree: on the sidewalk in town, beside it in the open
        inset = (0.5, road.sidewalk - 0.5) if road.urban else (road.sidewalk + 1, road.sidewalk + 12)
        x, draw = _sidewalk_x(rng, road, inset), draw_tree
    else:  # bush: in front of the facades in town
        inset = (0.3, road.sidewalk - 0.3) if road.urban else (road.sidewalk + 0.5, road.sidewalk + 6)
        x, draw = _sidewalk_x(rng, road, inset), draw_bush
    z = _sample_depth(rng, _depth_range(layout, x, 1.0), 120.0)
    if z is None:
        return None
    return Item(x, z, None, functools.partial(draw, rng=rng), (x - 0.4, x + 0.4, z, z + 0.4))


_PLACERS: dict[int | None, Callable[[np.random.Generator, Layout], Item | None]] = {
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


def place_items(rng: np.random.Generator, layout: Layout) -> list[Item]:
    """Objects and clutter at non-overlapping ground positions, sorted far to near."""
    items: list[Item] = []
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
