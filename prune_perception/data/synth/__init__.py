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

Modules, bottom up: ``palette`` (colours), ``camera`` (projection), ``canvas`` (sub-pixel drawing,
instance ids, sprite frames), ``objects`` and ``clutter`` (what stands in the scene), ``layout``
(lighting, road, placement), ``background``, ``effects`` (camera effects), ``render`` (one scene),
``config`` and ``generate`` (the dataset on disk).
"""

from prune_perception.data.synth.config import GENERATOR_NAME, GENERATOR_VERSION, SynthConfig
from prune_perception.data.synth.generate import generate_dataset
from prune_perception.data.synth.layout import (CAR, CYCLIST, MAX_OBJECTS, MIN_OBJECTS, PEDESTRIAN, TRAFFIC_LIGHT,
                                                TRAFFIC_SIGN, TRUCK, Footprint)
from prune_perception.data.synth.palette import Color
from prune_perception.data.synth.render import MIN_BOX_SIDE, MIN_VISIBLE_FRACTION, Box, Labelled, render_scene

__all__ = ["CAR", "CYCLIST", "GENERATOR_NAME", "GENERATOR_VERSION", "MAX_OBJECTS", "MIN_BOX_SIDE", "MIN_OBJECTS",
           "MIN_VISIBLE_FRACTION", "PEDESTRIAN", "TRAFFIC_LIGHT", "TRAFFIC_SIGN", "TRUCK", "Box", "Color", "Footprint",
           "Labelled", "SynthConfig", "generate_dataset", "render_scene"]
