"""The labelled objects, drawn in sprite-local metres: cars, trucks, pedestrians, cyclists, traffic lights
and signs."""

from __future__ import annotations

import math

import numpy as np

from prune_perception.data.synth.canvas import Sprite
from prune_perception.data.synth.palette import (GLASS, SKIN_TONES, TIRE, Color, jitter, random_color, shade,
                                                 vehicle_paint)


def draw_car_end(s: Sprite, rng: np.random.Generator, width: float, height: float, front: bool,
                 lamps_on: bool) -> None:
    """Car seen from behind or from the front: wheels, body, cabin with window, lamps, plate."""
    paint = vehicle_paint(rng)
    half = width / 2
    belt = height * rng.uniform(0.5, 0.6)
    s.rect(-half + 0.08, 0, -half + 0.34, 0.45, TIRE)
    s.rect(half - 0.34, 0, half - 0.08, 0.45, TIRE)
    s.rect(-half - 0.1, belt - 0.02, half + 0.1, belt + 0.1, shade(paint, 0.7))  # mirrors
    s.poly(((-half, 0.2), (half, 0.2), (half, belt - 0.06), (half - 0.06, belt),
            (-half + 0.06, belt), (-half, belt - 0.06)), paint)
    top_half = half * rng.uniform(0.6, 0.78)
    s.poly(((-half * 0.94, belt), (half * 0.94, belt), (top_half, height), (-top_half, height)),
           shade(paint, 0.9))
    glass = jitter(rng, GLASS, 20)
    s.poly(((-half * 0.84, belt + 0.05), (half * 0.84, belt + 0.05), (top_half - 0.08, height - 0.07),
            (-top_half + 0.08, height - 0.07)), glass)
    s.rect(-half, 0.2, half, 0.36, shade(paint, 0.55) if rng.random() < 0.5 else (40, 40, 42))
    s.rect(-0.2, 0.25, 0.2, 0.36, (230, 230, 230) if rng.random() < 0.8 else (60, 200, 230))
    lamp_low, lamp_high = belt - 0.22, belt - 0.06
    if front:
        lamp = (235, 245, 250) if lamps_on else (200, 205, 205)
        s.rect(-half * 0.5, 0.42, half * 0.5, lamp_high - 0.02, (45, 45, 48))  # grille
    else:
        lamp = (60, 60, 255) if lamps_on else (40, 40, 170)
    s.rect(-half + 0.05, lamp_low, -half + 0.38, lamp_high, lamp)
    s.rect(half - 0.38, lamp_low, half - 0.05, lamp_high, lamp)


def draw_car_side(s: Sprite, rng: np.random.Generator, length: float, height: float,
                  lamps_on: bool) -> None:
    """Car in side view, front towards +u: body, cabin with two windows, two wheels."""
    paint = vehicle_paint(rng)
    half = length / 2
    belt = height * rng.uniform(0.5, 0.58)
    s.poly(((-half, 0.28), (half, 0.28), (half, belt - 0.15), (half - 0.15, belt),
            (-half + 0.08, belt), (-half, belt - 0.08)), paint)
    hood = rng.uniform(1.0, 1.3)
    trunk = rng.uniform(0.3, 0.8)
    s.poly(((-half + trunk, belt), (half - hood, belt), (half - hood - 0.55, height),
            (-half + trunk + 0.35, height)), shade(paint, 0.9))
    glass = jitter(rng, GLASS, 20)
    pillar = (half - hood - 0.55 + -half + trunk + 0.35) / 2
    s.poly(((-half + trunk + 0.12, belt + 0.05), (pillar - 0.06, belt + 0.05), (pillar - 0.06, height - 0.06),
            (-half + trunk + 0.4, height - 0.06)), glass)
    s.poly(((pillar + 0.06, belt + 0.05), (half - hood - 0.1, belt + 0.05),
            (half - hood - 0.55, height - 0.06), (pillar + 0.06, height - 0.06)), glass)
    s.rect(half - 0.12, belt - 0.25, half, belt - 0.12, (230, 240, 245) if lamps_on else (170, 190, 200))
    s.rect(-half, belt - 0.25, -half + 0.08, belt - 0.1, (50, 50, 200))
    radius = rng.uniform(0.3, 0.34)
    for axle in (-half + 0.75, half - 0.85):
        s.ellipse(axle, radius, radius, radius, TIRE)
        s.ellipse(axle, radius, radius * 0.55, radius * 0.55, (150, 150, 155))


def draw_truck_rear(s: Sprite, rng: np.random.Generator, width: float, height: float,
                    lamps_on: bool) -> None:
    """Box truck from behind: dual wheels, dark chassis, tall cargo box with doors and ribs."""
    half = width / 2
    cargo = jitter(rng, (225, 225, 225)) if rng.random() < 0.4 else vehicle_paint(rng)
    s.rect(-half + 0.05, 0, -half + 0.7, 0.6, TIRE)
    s.rect(half - 0.7, 0, half - 0.05, 0.6, TIRE)
    s.rect(-half + 0.1, 0.45, half - 0.1, 1.05, (38, 38, 40))
    s.rect(-half, 1.0, half, height, cargo)
    line = shade(cargo, 0.6)
    s.segment((0, 1.05), (0, height - 0.08), 0.05, line)
    for rib in np.linspace(1.0, height, int(rng.integers(2, 5)) + 2)[1:-1]:
        s.segment((-half, rib), (half, rib), 0.03, shade(cargo, 0.8))
    for handle in (-0.25, 0.25):
        s.segment((handle, 1.6), (handle, 2.3), 0.04, line)
    lamp = (60, 60, 255) if lamps_on else (40, 40, 170)
    s.rect(-half + 0.1, 0.6, -half + 0.45, 0.8, lamp)
    s.rect(half - 0.45, 0.6, half - 0.1, 0.8, lamp)
    s.rect(-0.25, 0.5, 0.25, 0.65, (60, 200, 230))


def draw_truck_front(s: Sprite, rng: np.random.Generator, width: float, height: float,
                     lamps_on: bool) -> None:
    """Truck from the front: cargo box above/behind the cab, big windshield, grille, mirrors."""
    half = width / 2
    cab_height = min(height, rng.uniform(2.6, 3.0))
    if height > cab_height + 0.2:
        cargo = jitter(rng, (225, 225, 225)) if rng.random() < 0.4 else vehicle_paint(rng)
        s.rect(-half - 0.03, 1.2, half + 0.03, height, cargo)
    paint = vehicle_paint(rng)
    s.rect(-half + 0.05, 0, -half + 0.45, 0.6, TIRE)
    s.rect(half - 0.45, 0, half - 0.05, 0.6, TIRE)
    s.rect(-half, 0.4, half, cab_height, paint)
    s.segment((-half - 0.2, cab_height - 0.95), (-half - 0.2, cab_height - 0.25), 0.09, (35, 35, 35))
    s.segment((half + 0.2, cab_height - 0.95), (half + 0.2, cab_height - 0.25), 0.09, (35, 35, 35))
    s.rect(-half, cab_height - 0.95, -half - 0.2, cab_height - 0.85, (35, 35, 35))
    s.rect(half, cab_height - 0.95, half + 0.2, cab_height - 0.85, (35, 35, 35))
    s.rect(-half + 0.12, cab_height - 1.05, half - 0.12, cab_height - 0.15, jitter(rng, GLASS, 20))
    s.rect(-0.6, 0.75, 0.6, cab_height - 1.3, (45, 45, 48))
    for slat in np.linspace(0.85, cab_height - 1.4, 4):
        s.segment((-0.55, slat), (0.55, slat), 0.04, (110, 110, 115))
    s.rect(-half, 0.4, half, 0.68, (70, 70, 72))
    lamp = (235, 245, 250) if lamps_on else (200, 205, 205)
    s.rect(-half + 0.1, 0.75, -half + 0.5, 0.95, lamp)
    s.rect(half - 0.5, 0.75, half - 0.1, 0.95, lamp)


def draw_truck_side(s: Sprite, rng: np.random.Generator, length: float, height: float,
                    lamps_on: bool) -> None:
    """Truck in side view, cab towards +u: long cargo box, cab with windshield, three axles."""
    half = length / 2
    cab_length = rng.uniform(2.0, 2.4)
    cab_height = min(height, rng.uniform(2.6, 3.0))
    cargo = jitter(rng, (225, 225, 225)) if rng.random() < 0.4 else vehicle_paint(rng)
    paint = vehicle_paint(rng)
    s.rect(-half, 0.5, half - 0.1, 1.05, (38, 38, 40))
    s.rect(-half, 1.0, half - cab_length - 0.15, height, cargo)
    front = half
    s.poly(((front - cab_length, 0.5), (front, 0.5), (front, cab_height - 0.9),
            (front - 0.35, cab_height), (front - cab_length, cab_height)), paint)
    s.poly(((front - 0.9, cab_height - 0.95), (front - 0.05, cab_height - 0.95),
            (front - 0.38, cab_height - 0.12), (front - 0.9, cab_height - 0.12)), jitter(rng, GLASS, 20))
    s.rect(front - 0.12, 0.6, front, 0.8, (230, 240, 245) if lamps_on else (170, 190, 200))
    radius = 0.5
    for axle in (front - 1.1, -half + 2.2, -half + 1.1):
        s.ellipse(axle, radius, radius, radius, TIRE)
        s.ellipse(axle, radius, radius * 0.5, radius * 0.5, (140, 140, 145))


def draw_pedestrian(s: Sprite, rng: np.random.Generator, height: float, side_view: bool) -> None:
    """Walking person: legs, torso, arms, head (facing the camera, away, or sideways)."""
    h = height
    skin = jitter(rng, SKIN_TONES[rng.integers(len(SKIN_TONES))], 10)
    shirt, pants = random_color(rng), random_color(rng, (0.1, 0.7))
    hair = jitter(rng, (25, 35, 45), 20) if rng.random() < 0.8 else jitter(rng, (80, 160, 200), 30)
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
        s.rect(-shoulder_half - 0.06 * h, 0.55 * h, -shoulder_half + 0.01 * h, 0.77 * h, random_color(rng))
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


def draw_cyclist(s: Sprite, rng: np.random.Generator) -> None:
    """Rider on a bicycle in side view, heading towards +u: two wheels, frame, pedalling legs."""
    radius = rng.uniform(0.32, 0.36)
    wheelbase = rng.uniform(1.0, 1.1)
    rear, front = (-wheelbase / 2, radius), (wheelbase / 2, radius)
    crank = (-0.04, 0.3)
    seat = (-wheelbase / 2 + 0.32, radius + 0.55)
    bar = (wheelbase / 2 - 0.15, radius + 0.62)
    frame = random_color(rng, (0.3, 0.95))
    clothes, pants = random_color(rng), random_color(rng, (0.1, 0.6))
    skin = jitter(rng, SKIN_TONES[rng.integers(len(SKIN_TONES))], 10)
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

    leg(angle + math.pi, shade(pants, 0.7))
    for hub in (rear, front):
        s.ellipse(hub[0], hub[1], radius, radius, TIRE, ring=0.06)
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
        s.ellipse(head[0] - 0.01, head[1] + 0.05, 0.125, 0.085, random_color(rng, (0.4, 0.95)))


def draw_traffic_light(s: Sprite, rng: np.random.Generator, bottom: float, offset: float,
                       arm_height: float | None) -> None:
    """Three-lamp signal head on a side pole or hanging from a mast arm; only the head is labelled."""
    pole = jitter(rng, (95, 95, 95), 25)
    width, height = rng.uniform(0.32, 0.42), rng.uniform(0.9, 1.1)
    if arm_height is None:
        s.segment((0, 0), (0, bottom + 0.2), 0.13, pole, labelled=False)
    else:
        s.segment((0, 0), (0, arm_height + 0.1), 0.18, pole, labelled=False)
        s.segment((0, arm_height), (offset + 0.3 * np.sign(offset), arm_height), 0.12, pole, labelled=False)
        s.segment((offset, arm_height), (offset, bottom + height), 0.06, pole, labelled=False)
    housing = jitter(rng, (30, 30, 30), 12) if rng.random() < 0.75 else jitter(rng, (30, 150, 190), 20)
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
        color = lamp if k == lit else shade(lamp, 0.22)
        s.ellipse(offset, v, width * 0.34, width * 0.34, color)


def draw_traffic_sign(s: Sprite, rng: np.random.Generator, center: float, size: float) -> None:
    """Sign plate on a pole: circle, triangle, octagon, diamond or rectangle with border."""
    s.segment((0, 0), (0, center), 0.07, jitter(rng, (150, 150, 150), 20), labelled=False)
    r = size / 2
    white, red, blue, black = (240, 240, 240), (40, 30, 200), (170, 80, 20), (25, 25, 25)
    white, red, blue = jitter(rng, white, 10), jitter(rng, red, 15), jitter(rng, blue, 15)
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
        background = (blue, jitter(rng, (60, 120, 20), 15), white)[rng.integers(3)]
        s.rect(-half_w, center - half_h, half_w, center + half_h, black if background == white else white)
        s.rect(-half_w * 0.9, center - half_h + 0.1 * half_w, half_w * 0.9, center + half_h - 0.1 * half_w,
               background)
        ink = black if background == white else white
        for line in np.linspace(center - half_h * 0.45, center + half_h * 0.45, int(rng.integers(1, 4))):
            s.rect(-half_w * 0.6, line - 0.04 * half_h, half_w * 0.6 * rng.uniform(0.4, 1),
                   line + 0.04 * half_h, ink)
