"""Letterbox and augmentation: geometry consistent with the pixels, determinism by seed."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from prune_perception.config import AugmentSettings, TrainConfig, load_config
from prune_perception.data.augment import (
    augment,
    clip_and_filter_boxes,
    hflip,
    hsv_jitter,
    mosaic4,
    random_affine,
)
from prune_perception.errors import ConfigError
from prune_perception.runtime.letterbox import LetterboxTransform, letterbox, letterbox_transform

NO_COLOUR = dict(hsv_h=0.0, hsv_s=0.0, hsv_v=0.0)


def rectangle_image(hw=(200, 300), box=(50, 40, 150, 120), colour=(255, 255, 255)):
    """Black image with a filled rectangle; ``box`` is xyxy in pixel edges."""
    image = np.zeros((*hw, 3), dtype=np.uint8)
    x1, y1, x2, y2 = box
    image[y1:y2, x1:x2] = colour
    return image, np.array([box], dtype=np.float32), np.array([0], dtype=np.int64)


def mask_bounds(mask):
    """xyxy (pixel edges) of the True pixels of a mask."""
    ys, xs = np.nonzero(mask)
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=np.float32)


def bright(image):
    return image.min(axis=2) > 180  # above the grey padding (114)


# ---------------------------------------------------------------- letterbox


@pytest.mark.parametrize("original_hw", [(360, 640), (640, 360), (224, 384), (101, 57)])
def test_letterbox_round_trip(original_hw):
    transform = letterbox_transform(original_hw, (224, 384))
    rng = np.random.default_rng(0)
    corners = rng.uniform(0, 1, (50, 2, 2)) * original_hw[::-1]
    boxes = np.concatenate([corners.min(axis=1), corners.max(axis=1)], axis=1)
    back = transform.to_original(transform.to_input(boxes))
    assert back.dtype == np.float64
    assert np.abs(back - boxes).max() < 1e-4


def test_letterbox_padding_is_centred_and_grey():
    image = np.full((360, 640, 3), 255, dtype=np.uint8)
    output, transform = letterbox(image, (384, 384))
    assert output.shape == (384, 384, 3)
    assert transform == LetterboxTransform(scale=0.6, pad_x=0.0, pad_y=84.0)
    assert (output[:84] == 114).all() and (output[84 + 216 :] == 114).all()
    assert (output[84 : 84 + 216] == 255).all()

    tall, tall_transform = letterbox(np.full((640, 360), 7, dtype=np.uint8), (384, 384))
    assert tall.shape == (384, 384)
    assert tall_transform.pad_x == 84.0 and tall_transform.pad_y == 0.0
    assert (tall[:, :84] == 114).all() and (tall[:, 84:300] == 7).all() and (tall[:, 300:] == 114).all()


def test_letterbox_boxes_follow_pixels():
    image, boxes, _ = rectangle_image((360, 640), (100, 50, 300, 200))
    output, transform = letterbox(image, (224, 384))
    assert np.abs(mask_bounds(bright(output)) - transform.to_input(boxes)[0]).max() <= 1.0


def test_to_original_clips_to_image():
    transform = LetterboxTransform(scale=0.5, pad_x=0.0, pad_y=10.0)
    boxes = transform.to_original(np.array([[-4.0, 0.0, 400.0, 120.0]], dtype=np.float32), original_hw=(200, 640))
    assert boxes.dtype == np.float32
    np.testing.assert_allclose(boxes, [[0.0, 0.0, 640.0, 200.0]])


# ---------------------------------------------------------------- augmentation geometry


def test_hflip_moves_boxes_with_pixels():
    image, boxes, _ = rectangle_image()
    flipped, flipped_boxes = hflip(image, boxes)
    np.testing.assert_array_equal(mask_bounds(bright(flipped)), flipped_boxes[0])
    np.testing.assert_array_equal(flipped_boxes, [[150, 40, 250, 120]])


@pytest.mark.parametrize("seed", range(20))
def test_augment_boxes_bound_the_moved_rectangle(seed):
    image, boxes, labels = rectangle_image()
    config = AugmentSettings(flip_prob=0.5, scale_min=0.5, scale_max=1.5, translate=0.2, **NO_COLOUR)
    out_image, out_boxes, out_labels = augment(image, boxes, labels, config, np.random.default_rng(seed))
    assert out_image.shape == image.shape and out_image.dtype == np.uint8
    assert out_boxes.dtype == np.float32 and out_labels.dtype == np.int64
    assert len(out_boxes) == 1  # the rectangle stays mostly visible at these settings
    assert np.abs(mask_bounds(bright(out_image)) - out_boxes[0]).max() <= 2.0


def test_random_affine_drops_boxes_pushed_out_and_clips_the_rest():
    image = np.zeros((100, 100, 3), dtype=np.uint8)
    boxes = np.array([[0, 0, 10, 10], [40, 40, 60, 60], [0, 0, 100, 100]], dtype=np.float32)
    labels = np.array([0, 1, 2], dtype=np.int64)
    for seed in range(50):
        _, out_boxes, out_labels = random_affine(image, boxes, labels, np.random.default_rng(seed), (1.3, 1.4), 0.0)
        # zoomed about the centre: the corner box leaves the image, the centre box stays whole
        assert 0 not in out_labels and 1 in out_labels
        assert (out_boxes >= 0).all() and (out_boxes <= 100).all()


def test_clip_and_filter_rule():
    boxes = np.array([[-8, 0, 2, 10], [-5, 0, 5, 10], [10, 10, 11.5, 30], [20, 20, 40, 40]], dtype=np.float32)
    kept, labels = clip_and_filter_boxes(boxes, np.arange(4), (0, 0, 50, 50))
    # 20 % visible -> dropped; 50 % visible -> kept and clipped; 1.5 px wide -> dropped
    np.testing.assert_array_equal(labels, [1, 3])
    np.testing.assert_array_equal(kept, [[0, 0, 5, 10], [20, 20, 40, 40]])


def test_mosaic_boxes_bound_each_tile_rectangle():
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255)]
    items = []
    for label, colour in enumerate(colours):
        image, boxes, _ = rectangle_image((200, 300), (100, 60, 200, 140), colour)
        items.append((image, boxes, np.array([label], dtype=np.int64)))
    for seed in range(10):
        canvas, boxes, labels = mosaic4(items, np.random.default_rng(seed))
        assert canvas.shape == (200, 300, 3)
        assert (boxes[:, :2] >= 0).all() and (boxes[:, 2] <= 300).all() and (boxes[:, 3] <= 200).all()
        for box, label in zip(boxes, labels):
            colour_mask = (canvas == colours[label]).all(axis=2)
            np.testing.assert_array_equal(mask_bounds(colour_mask), box)


def test_augment_with_mosaic_keeps_boxes_inside_the_image():
    rng_boxes = np.random.default_rng(1)

    def random_item():
        corners = rng_boxes.uniform(0, 1, (6, 2, 2)) * (300, 200)
        boxes = np.concatenate([corners.min(axis=1), corners.max(axis=1)], axis=1).astype(np.float32)
        return np.zeros((200, 300, 3), dtype=np.uint8), boxes, np.arange(6, dtype=np.int64)

    config = AugmentSettings(mosaic_prob=1.0)
    for seed in range(20):
        image, boxes, labels = augment(*random_item(), config, np.random.default_rng(seed), random_item)
        assert image.shape == (200, 300, 3)
        assert len(boxes) == len(labels)
        assert (boxes[:, :2] >= 0).all() and (boxes[:, 2] <= 300).all() and (boxes[:, 3] <= 200).all()
        assert ((boxes[:, 2:] - boxes[:, :2]) >= 2).all()


# ---------------------------------------------------------------- colour, determinism, config


def test_hsv_jitter_keeps_shape_and_zero_gain_is_identity():
    image = np.random.default_rng(0).integers(0, 256, (32, 48, 3), dtype=np.uint8)
    jittered = hsv_jitter(image, np.random.default_rng(0))
    assert jittered.shape == image.shape and jittered.dtype == np.uint8
    assert not np.array_equal(jittered, image)
    assert hsv_jitter(image, np.random.default_rng(0), 0.0, 0.0, 0.0) is image


def test_augment_is_deterministic_by_seed():
    image = np.random.default_rng(0).integers(0, 256, (120, 160, 3), dtype=np.uint8)
    boxes = np.array([[10, 10, 80, 90], [60, 30, 150, 110]], dtype=np.float32)
    labels = np.array([0, 1], dtype=np.int64)
    config = AugmentSettings()
    first = augment(image, boxes, labels, config, np.random.default_rng(42))
    second = augment(image, boxes, labels, config, np.random.default_rng(42))
    other = augment(image, boxes, labels, config, np.random.default_rng(43))
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(first[0], other[0])


BAD_SETTINGS = [dict(flip_prob=1.5), dict(mosaic_prob=-0.1), dict(hsv_v=1.01), dict(scale_min=1.2, scale_max=0.8),
                dict(scale_min=0.0)]


@pytest.mark.parametrize("settings", BAD_SETTINGS)
def test_augment_settings_reject_bad_values(settings):
    with pytest.raises(ConfigError, match=f"augment.{next(iter(settings))}"):
        AugmentSettings(**settings)


@pytest.mark.parametrize("settings", BAD_SETTINGS + [dict(scale_min="wide")])
def test_bad_augment_yaml_fails_when_the_config_is_loaded(settings):
    """The YAML `augment:` section is checked on loading, before any training starts."""
    with pytest.raises(ConfigError, match="augment"):
        load_config(TrainConfig, None, [f"augment.{key}={value}" for key, value in settings.items()])


def test_vehicle_path_modules_do_not_import_torch():
    code = (
        "import sys, prune_perception.runtime.letterbox, prune_perception.data.dataset, prune_perception.data.augment; "
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[1])
