"""Synthetic driving scenes: determinism, COCO validity, object statistics, skip/regenerate."""

import json
from pathlib import Path

import numpy as np
import pytest

from prune_perception.data import synth
from prune_perception.data.classes import SYNTH_CLASSES
from prune_perception.data.synth import SynthConfig, generate_dataset, render_scene
from prune_perception.data.synth.canvas import Painter, Sprite
from prune_perception.data.synth.objects import draw_car_end
from prune_perception.data.synth.render import count_visible
from prune_perception.errors import ConfigError, DatasetError


def tree_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def tree_mtimes(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in sorted(root.rglob("*")) if p.is_file()}


def load_coco(root: Path, split: str) -> dict:
    return json.loads((root / "annotations" / f"instances_{split}.json").read_text())


@pytest.fixture(scope="module")
def scenes():
    """60 scenes at the default size: (image, boxes) pairs."""
    return [render_scene(np.random.default_rng([0, i]), 640, 360) for i in range(60)]


def test_render_scene_contract(scenes):
    for image, boxes in scenes:
        assert image.shape == (360, 640, 3) and image.dtype == np.uint8
        assert synth.MIN_OBJECTS <= len(boxes) <= synth.MAX_OBJECTS
        for class_index, (x1, y1, x2, y2) in boxes:
            assert 0 <= class_index < len(SYNTH_CLASSES)
            assert 0 <= x1 < x2 <= 640 and 0 <= y1 < y2 <= 360
            assert x2 - x1 >= synth.MIN_BOX_SIDE and y2 - y1 >= synth.MIN_BOX_SIDE


def test_small_object_fraction_and_class_coverage(scenes):
    boxes = [box for _, image_boxes in scenes for box in image_boxes]
    areas = np.array([(x2 - x1) * (y2 - y1) for _, (x1, y1, x2, y2) in boxes])
    assert np.mean(areas < 32 ** 2) >= 0.30
    assert {class_index for class_index, _ in boxes} == set(range(len(SYNTH_CLASSES)))


def test_boxes_are_tight_around_visible_pixels():
    """A car half hidden behind a nearer box: its box covers exactly its visible pixels."""
    image, ids = np.zeros((100, 200, 3), np.uint8), np.zeros((100, 200), np.uint8)
    painter = Painter(image, ids)
    car = Sprite(painter, 100.0, 90.0, 40.0, 1, 1.0, 0.0, (0, 0, 0))
    draw_car_end(car, np.random.default_rng(0), 1.8, 1.5, front=False, lamps_on=False)
    drawn, full_box = count_visible(painter, 1)
    occluder = Sprite(painter, 100.0, 95.0, 40.0, 0, 1.0, 0.0, (0, 0, 0))
    occluder.rect(-2.5, 0, 0.0, 3.0, (255, 255, 255), labelled=False)
    visible, box = count_visible(painter, 1)
    rows, cols = np.nonzero(ids == 1)
    assert box == (cols.min(), rows.min(), cols.max() + 1, rows.max() + 1)
    assert box[0] >= 100 and box[2] == full_box[2] and 0.3 < visible / drawn < 0.7


def test_same_seed_is_byte_identical_for_any_worker_count(tmp_path):
    one = generate_dataset(tmp_path / "one", SynthConfig(num_images=12, seed=3, workers=1), progress=False)
    two = generate_dataset(tmp_path / "two", SynthConfig(num_images=12, seed=3, workers=2), progress=False)
    assert one == two
    assert tree_bytes(tmp_path / "one") == tree_bytes(tmp_path / "two")


def test_different_seed_gives_different_data(tmp_path):
    generate_dataset(tmp_path / "a", SynthConfig(num_images=4, seed=0, workers=1), progress=False)
    generate_dataset(tmp_path / "b", SynthConfig(num_images=4, seed=1, workers=1), progress=False)
    a, b = tree_bytes(tmp_path / "a"), tree_bytes(tmp_path / "b")
    assert a.keys() == b.keys()
    assert all(a[name] != b[name] for name in a if name.endswith(".jpg"))
    annotations = [load_coco(tmp_path / name, "train")["annotations"] for name in ("a", "b")]
    assert annotations[0] != annotations[1]


def test_coco_annotations_are_valid(tmp_path):
    config = SynthConfig(num_images=30, val_fraction=0.2, seed=5, workers=2)
    stats = generate_dataset(tmp_path, config, progress=False)
    assert stats["images_per_split"] == {"train": 24, "val": 6}
    per_class = dict.fromkeys(SYNTH_CLASSES, 0)
    small = 0
    image_ids: set[int] = set()
    for split, expected in (("train", 24), ("val", 6)):
        coco = load_coco(tmp_path, split)
        assert [c["name"] for c in coco["categories"]] == list(SYNTH_CLASSES)
        assert [c["id"] for c in coco["categories"]] == list(range(1, len(SYNTH_CLASSES) + 1))
        images = {image["id"]: image for image in coco["images"]}
        assert len(images) == len(coco["images"]) == expected
        assert not image_ids & images.keys()
        image_ids |= images.keys()
        assert len(list((tmp_path / "images" / split).iterdir())) == expected
        for image in coco["images"]:
            assert image["file_name"].startswith(f"{split}/") and image["file_name"].endswith(".jpg")
            assert (tmp_path / "images" / image["file_name"]).is_file()
            assert (image["width"], image["height"]) == (640, 360)
        annotation_ids = [a["id"] for a in coco["annotations"]]
        assert len(set(annotation_ids)) == len(annotation_ids)
        for annotation in coco["annotations"]:
            image = images[annotation["image_id"]]
            x, y, w, h = annotation["bbox"]
            assert all(isinstance(v, float) for v in annotation["bbox"])
            assert x >= 0 and y >= 0 and w > 0 and h > 0
            assert x + w <= image["width"] and y + h <= image["height"]
            assert annotation["area"] == pytest.approx(w * h)
            assert annotation["iscrowd"] == 0
            per_class[SYNTH_CLASSES[annotation["category_id"] - 1]] += 1
            small += w * h < 32 ** 2
    assert stats["objects_per_class"] == per_class
    assert stats["small_fraction"] == pytest.approx(small / sum(per_class.values()), abs=1e-4)
    stored = json.loads((tmp_path / "dataset.json").read_text())
    assert stored["stats"] == stats and stored["config"]["seed"] == 5


def test_split_sizes_follow_val_fraction(tmp_path):
    stats = generate_dataset(tmp_path, SynthConfig(num_images=5, val_fraction=0.0, workers=1), progress=False)
    assert stats["images_per_split"] == {"train": 5, "val": 0}
    assert load_coco(tmp_path, "val")["images"] == []


def test_rerun_with_same_config_is_skipped(tmp_path, monkeypatch):
    config = SynthConfig(num_images=6, workers=1)
    stats = generate_dataset(tmp_path, config, progress=False)
    before = tree_mtimes(tmp_path)

    def fail(*args, **kwargs):
        raise AssertionError("rendered although the output is complete")

    monkeypatch.setattr(synth.generate, "_render_and_write", fail)
    assert generate_dataset(tmp_path, config, progress=False) == stats
    assert generate_dataset(tmp_path, SynthConfig(num_images=6, workers=2), progress=False) == stats
    assert tree_mtimes(tmp_path) == before


def test_changed_config_or_incomplete_output_regenerates(tmp_path):
    generate_dataset(tmp_path, SynthConfig(num_images=10, workers=1), progress=False)
    stats = generate_dataset(tmp_path, SynthConfig(num_images=5, seed=2, workers=1), progress=False)
    assert stats["seed"] == 2 and stats["images_per_split"] == {"train": 4, "val": 1}
    train_files = sorted(p.name for p in (tmp_path / "images" / "train").iterdir())
    assert train_files == [f"{i:06d}.jpg" for i in range(4)]
    assert json.loads((tmp_path / "dataset.json").read_text())["config"]["seed"] == 2

    (tmp_path / "images" / "train" / "000001.jpg").unlink()
    generate_dataset(tmp_path, SynthConfig(num_images=5, seed=2, workers=1), progress=False)
    assert (tmp_path / "images" / "train" / "000001.jpg").is_file()


def test_refuses_to_overwrite_foreign_dataset(tmp_path):
    (tmp_path / "images" / "train").mkdir(parents=True)
    (tmp_path / "images" / "train" / "mine.jpg").write_bytes(b"not ours")
    with pytest.raises(DatasetError, match="did not write"):
        generate_dataset(tmp_path, SynthConfig(num_images=2, workers=1), progress=False)
    assert (tmp_path / "images" / "train" / "mine.jpg").read_bytes() == b"not ours"


@pytest.mark.parametrize("field, value", [("num_images", 0), ("val_fraction", 1.0), ("workers", 0),
                                          ("jpeg_quality", 101), ("width", 16)])
def test_invalid_config_is_rejected(field, value):
    with pytest.raises(ConfigError, match=field.split("_")[0]):
        SynthConfig(**{field: value})
