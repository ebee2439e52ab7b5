"""COCO / YOLO loading and writing, validation errors, and the torch dataset."""

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from prune_perception.config import AugmentSettings
from prune_perception.data.dataset import (
    DetectionDataset,
    Sample,
    load_coco,
    load_dataset,
    load_yolo,
    read_image_rgb,
    write_coco,
    write_yolo,
)
from prune_perception.data.torch_dataset import TorchDetectionDataset, collate_detections
from prune_perception.errors import DatasetError
from prune_perception.runtime.letterbox import letterbox

CLASSES = ["car", "pedestrian", "cyclist"]


def write_image(path: Path, hw=(60, 80), value=0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = np.full((*hw, 3), value, dtype=np.uint8)
    image[10:30, 20:50] = (200, 100, 50)
    assert cv2.imwrite(str(path), image)
    return path


def make_dataset(root: Path, split: str = "train") -> DetectionDataset:
    """Three images in our synthetic layout (root/images/<split>/), one without objects."""
    boxes = [
        [[20, 10, 50, 30], [0, 0, 80, 60]],
        [[5.5, 6.25, 40.75, 33.5]],
        [],
    ]
    labels = [[0, 2], [1], []]
    samples = [
        Sample(
            image_path=write_image(root / "images" / split / f"{index:06d}.png", value=index * 40),
            image_id=index + 1,
            width=80,
            height=60,
            boxes=np.array(box_list, dtype=np.float32).reshape(-1, 4),
            labels=np.array(label_list, dtype=np.int64),
        )
        for index, (box_list, label_list) in enumerate(zip(boxes, labels))
    ]
    return DetectionDataset(classes=list(CLASSES), samples=samples, source=root)


def assert_same_annotations(actual: DetectionDataset, expected: DetectionDataset, atol: float = 1e-3) -> None:
    assert actual.classes == expected.classes
    assert len(actual) == len(expected)
    for got, want in zip(actual.samples, expected.samples):
        assert got.image_path.name == want.image_path.name
        assert (got.width, got.height) == (want.width, want.height)
        assert got.boxes.dtype == np.float32 and got.boxes.shape == want.boxes.shape
        assert got.labels.dtype == np.int64
        np.testing.assert_allclose(got.boxes, want.boxes, atol=atol)
        np.testing.assert_array_equal(got.labels, want.labels)


def write_json(path: Path, document) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document))
    return path


def coco_document(file_name="a.png", bbox=(10, 10, 20, 20), categories=({"id": 1, "name": "car"},)):
    return {
        "images": [{"id": 1, "file_name": file_name, "width": 80, "height": 60}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": categories[0]["id"], "bbox": list(bbox)}],
        "categories": list(categories),
    }


def expect_error(call, *fragments):
    """The call raises DatasetError with a one-line message containing every fragment."""
    with pytest.raises(DatasetError) as info:
        call()
    message = str(info.value)
    assert "\n" not in message
    for fragment in fragments:
        assert str(fragment) in message, message
    return message


# ---------------------------------------------------------------- round trips


def test_coco_round_trip(tmp_path):
    dataset = make_dataset(tmp_path)
    json_path = tmp_path / "annotations" / "instances_train.json"
    write_coco(dataset, json_path)
    document = json.loads(json_path.read_text())
    assert document["images"][0]["file_name"] == "train/000000.png"  # relative to root/images
    loaded = load_coco(json_path)
    assert_same_annotations(loaded, dataset)
    assert [s.image_id for s in loaded.samples] == [1, 2, 3]
    assert loaded.samples[0].image_path == tmp_path / "images" / "train" / "000000.png"


def test_yolo_round_trip(tmp_path):
    dataset = make_dataset(tmp_path / "source")
    write_yolo(dataset, tmp_path / "yolo", "train")
    write_yolo(dataset, tmp_path / "yolo", "val")  # a second split joins the same data.yaml
    assert (tmp_path / "yolo" / "labels" / "train" / "000002.txt").read_text() == ""
    for split in ("train", "val"):
        assert_same_annotations(load_yolo(tmp_path / "yolo", split), dataset)


def test_coco_to_yolo_to_coco(tmp_path):
    dataset = make_dataset(tmp_path / "coco")
    write_coco(dataset, tmp_path / "coco" / "annotations" / "instances_train.json")
    from_coco = load_dataset(tmp_path / "coco", split="train")
    write_yolo(from_coco, tmp_path / "yolo", "train")
    from_yolo = load_dataset(tmp_path / "yolo", split="train")
    write_coco(from_yolo, tmp_path / "back" / "instances_train.json")
    assert_same_annotations(load_coco(tmp_path / "back" / "instances_train.json"), dataset)


def test_write_yolo_renames_clashing_file_names(tmp_path):
    dataset = make_dataset(tmp_path / "a")
    other = make_dataset(tmp_path / "b")
    dataset.samples.append(other.samples[0])
    dataset.samples[-1].image_id = 9
    write_yolo(dataset, tmp_path / "yolo", "train")
    loaded = load_yolo(tmp_path / "yolo", "train")
    assert sorted(s.image_path.name for s in loaded.samples)[-1] == "000002.png"
    assert "000000_9.png" in {s.image_path.name for s in loaded.samples}


# ---------------------------------------------------------------- COCO specifics


def test_coco_non_contiguous_category_ids(tmp_path):
    write_image(tmp_path / "a.png")
    categories = [{"id": 42, "name": "truck"}, {"id": 3, "name": "car"}, {"id": 7, "name": "bus"}]
    document = coco_document(categories=categories)
    document["annotations"] = [
        {"id": n, "image_id": 1, "category_id": category_id, "bbox": [n, n, 10, 10]}
        for n, category_id in enumerate([42, 3, 7], start=1)
    ]
    loaded = load_coco(write_json(tmp_path / "a.json", document))
    assert loaded.classes == ["car", "bus", "truck"]  # ordered by category id
    np.testing.assert_array_equal(loaded.samples[0].labels, [2, 0, 1])


def test_coco_images_dir_defaults_to_json_folder_and_can_be_given(tmp_path):
    write_image(tmp_path / "flat" / "a.png")
    assert len(load_coco(write_json(tmp_path / "flat" / "a.json", coco_document()))) == 1
    write_image(tmp_path / "pictures" / "a.png")
    json_path = write_json(tmp_path / "ann" / "a.json", coco_document())
    assert load_coco(json_path, images_dir=tmp_path / "pictures").samples[0].image_path.parent.name == "pictures"


def test_coco_clips_boxes_drops_degenerate_and_crowd(tmp_path):
    write_image(tmp_path / "a.png")
    document = coco_document()
    document["annotations"] = [
        {"id": 1, "image_id": 1, "category_id": 1, "bbox": [-5, 50, 20, 30]},  # clipped
        {"id": 2, "image_id": 1, "category_id": 1, "bbox": [10, 10, 0.5, 20]},  # too thin
        {"id": 3, "image_id": 1, "category_id": 1, "bbox": [90, 10, 10, 10]},  # outside -> empty
        {"id": 4, "image_id": 1, "category_id": 1, "bbox": [1, 1, 10, 10], "iscrowd": 1},
    ]
    loaded = load_coco(write_json(tmp_path / "a.json", document))
    np.testing.assert_array_equal(loaded.samples[0].boxes, [[0, 50, 15, 60]])
    assert loaded.dropped_boxes == 2


def test_class_names_remap_and_unknown_names(tmp_path):
    dataset = make_dataset(tmp_path)
    json_path = tmp_path / "annotations" / "instances_train.json"
    write_coco(dataset, json_path)
    wanted = ["cyclist", "bus", "car", "pedestrian"]
    remapped = load_coco(json_path, classes=wanted)
    assert remapped.classes == wanted
    np.testing.assert_array_equal(remapped.samples[0].labels, [2, 0])
    np.testing.assert_array_equal(remapped.samples[1].labels, [3])
    write_yolo(dataset, tmp_path / "yolo", "train")
    np.testing.assert_array_equal(load_yolo(tmp_path / "yolo", "train", classes=wanted).samples[0].labels, [2, 0])
    expect_error(lambda: load_coco(json_path, classes=["car", "truck"]), json_path.name, "pedestrian", "cyclist")
    expect_error(lambda: load_yolo(tmp_path / "yolo", "train", classes=["car"]), "pedestrian")


# ---------------------------------------------------------------- YOLO layouts


def test_yolo_data_yaml_with_path_and_name_list(tmp_path):
    root = tmp_path / "ds"
    write_image(root / "imgs" / "images" / "a.jpg", hw=(50, 100))
    write_image(root / "imgs" / "images" / "b.jpg", hw=(50, 100))
    (root / "imgs" / "labels").mkdir(parents=True)
    (root / "imgs" / "labels" / "a.txt").write_text("1 0.5 0.5 0.2 0.4\n\n0 0.1 0.1 0.2 0.2\n")
    # no label file for b.jpg: an image without objects
    (root / "custom.yaml").write_text("path: imgs\nval: images\nnames: [car, person]\n")
    loaded = load_dataset(root / "custom.yaml", split="val")
    assert loaded.classes == ["car", "person"]
    assert [s.image_path.name for s in loaded.samples] == ["a.jpg", "b.jpg"]
    np.testing.assert_allclose(loaded.samples[0].boxes, [[40, 15, 60, 35], [0, 0, 20, 10]], atol=1e-4)
    np.testing.assert_array_equal(loaded.samples[0].labels, [1, 0])
    assert loaded.samples[1].boxes.shape == (0, 4)
    expect_error(lambda: load_dataset(root / "custom.yaml", split="train"), "no 'train' split")


def test_yolo_plain_folders_with_classes_txt_and_image_list(tmp_path):
    write_image(tmp_path / "images" / "val" / "a.png")
    (tmp_path / "labels" / "val").mkdir(parents=True)
    (tmp_path / "labels" / "val" / "a.txt").write_text("0 0.5 0.5 0.5 0.5\n")
    (tmp_path / "classes.txt").write_text("car\n")
    loaded = load_dataset(tmp_path)  # split defaults to val
    assert loaded.classes == ["car"] and len(loaded.samples[0].boxes) == 1

    (tmp_path / "val.txt").write_text("images/val/a.png\n")
    (tmp_path / "data.yaml").write_text("val: val.txt\nnames: {0: car}\n")
    assert load_dataset(tmp_path).samples[0].image_path == tmp_path / "images" / "val" / "a.png"


# ---------------------------------------------------------------- errors


def test_malformed_json_errors(tmp_path):
    write_image(tmp_path / "a.png")
    bad_syntax = tmp_path / "syntax.json"
    bad_syntax.write_text('{"images": [')
    expect_error(lambda: load_coco(bad_syntax), "syntax.json", "not valid JSON")

    no_bbox = coco_document()
    del no_bbox["annotations"][0]["bbox"]
    expect_error(lambda: load_coco(write_json(tmp_path / "nobbox.json", no_bbox)), "nobbox.json", "bbox")

    text_bbox = coco_document(bbox=("a", 1, 2, 3))
    expect_error(lambda: load_coco(write_json(tmp_path / "text.json", text_bbox)), "text.json", "malformed")

    nan_bbox = coco_document(bbox=(float("nan"), 1, 2, 3))
    expect_error(lambda: load_coco(write_json(tmp_path / "nan.json", nan_bbox)), "nan.json", "NaN")

    unknown_category = coco_document()
    unknown_category["annotations"][0]["category_id"] = 5
    expect_error(lambda: load_coco(write_json(tmp_path / "cat.json", unknown_category)), "cat.json", "category id 5")

    expect_error(lambda: load_coco(write_json(tmp_path / "list.json", [])), "list.json")
    expect_error(lambda: load_coco(write_json(tmp_path / "noimg.json", {"categories": []})), "noimg.json", "images")


def test_missing_and_corrupt_images(tmp_path):
    json_path = write_json(tmp_path / "a.json", coco_document(file_name="missing.png"))
    expect_error(lambda: load_coco(json_path), "a.json", "missing.png", "not found")

    corrupt = tmp_path / "images" / "val" / "corrupt.jpg"
    corrupt.parent.mkdir(parents=True)
    corrupt.write_bytes(b"\xff\xd8\xff\xe0 definitely not a jpeg")
    expect_error(lambda: read_image_rgb(corrupt), "corrupt.jpg", "cannot decode")
    (tmp_path / "classes.txt").write_text("car\n")
    expect_error(lambda: load_yolo(tmp_path, "val"), "corrupt.jpg")
    expect_error(lambda: read_image_rgb(tmp_path / "nothing.png"), "nothing.png", "not found")


@pytest.mark.parametrize(
    "line, problem",
    [
        ("0 0.5 0.5 0.2", "expected 5 values"),
        ("0 0.5 0.5 0.2 0.2 0.1", "expected 5 values"),
        ("0 0.5 abc 0.2 0.2", "non-numeric"),
        ("0 0.5 nan 0.2 0.2", "NaN"),
        ("3 0.5 0.5 0.2 0.2", "class id 3"),
        ("0.5 0.5 0.5 0.2 0.2", "class id 0.5"),
        ("0 50 40 20 20", "not normalised"),
    ],
)
def test_bad_yolo_lines(tmp_path, line, problem):
    write_image(tmp_path / "images" / "val" / "a.png")
    label_path = tmp_path / "labels" / "val" / "a.txt"
    label_path.parent.mkdir(parents=True)
    label_path.write_text(f"1 0.5 0.5 0.1 0.1\n{line}\n")
    (tmp_path / "data.yaml").write_text("names: [car, person, bike]\n")
    expect_error(lambda: load_yolo(tmp_path, "val"), f"{label_path}:2", problem)


def test_empty_datasets(tmp_path):
    json_path = write_json(tmp_path / "empty.json", {"images": [], "annotations": [], "categories": []})
    expect_error(lambda: load_coco(json_path), "empty.json", "no images")
    (tmp_path / "yolo" / "images" / "val").mkdir(parents=True)
    (tmp_path / "yolo" / "data.yaml").write_text("names: [car]\n")
    expect_error(lambda: load_yolo(tmp_path / "yolo", "val"), "yolo", "no images")


def test_bad_yaml_and_class_names(tmp_path):
    write_image(tmp_path / "images" / "val" / "a.png")
    (tmp_path / "data.yaml").write_text("names: [car\n")
    expect_error(lambda: load_yolo(tmp_path, "val"), "data.yaml", "not valid YAML")
    (tmp_path / "data.yaml").write_text("names: {1: car, 2: person}\n")
    expect_error(lambda: load_yolo(tmp_path, "val"), "data.yaml", "names")
    (tmp_path / "data.yaml").write_text("val: elsewhere\nnames: [car]\n")
    expect_error(lambda: load_yolo(tmp_path, "val"), "elsewhere", "does not exist")
    (tmp_path / "data.yaml").unlink()
    expect_error(lambda: load_yolo(tmp_path, "val"), "no class names")


def test_load_dataset_detection_errors(tmp_path):
    expect_error(lambda: load_dataset(tmp_path / "nowhere"), "nowhere", "does not exist")
    expect_error(lambda: load_dataset(tmp_path), "instances_val.json", "data.yaml")
    (tmp_path / "notes.txt").write_text("hi")
    expect_error(lambda: load_dataset(tmp_path / "notes.txt"), "notes.txt")


# ---------------------------------------------------------------- torch dataset


def test_torch_dataset_without_augmentation_matches_letterbox(tmp_path):
    dataset = make_dataset(tmp_path)
    torch_dataset = TorchDetectionDataset(dataset, (48, 48))
    assert len(torch_dataset) == 3
    image, targets, index = torch_dataset[0]
    assert index == 0
    assert image.shape == (3, 48, 48) and image.dtype == torch.float32 and image.is_contiguous()
    assert 0.0 <= image.min() and image.max() <= 1.0
    expected_image, transform = letterbox(read_image_rgb(dataset.samples[0].image_path), (48, 48))
    assert transform == torch_dataset.letterbox_transform(0)
    np.testing.assert_array_equal((image * 255).round().byte().permute(1, 2, 0).numpy(), expected_image)
    assert targets.shape == (2, 5) and targets.dtype == torch.float32
    np.testing.assert_array_equal(targets[:, 0].numpy(), [0, 2])
    np.testing.assert_allclose(targets[:, 1:].numpy(), transform.to_input(dataset.samples[0].boxes), atol=1e-5)
    assert torch_dataset[2][1].shape == (0, 5)


def test_torch_dataset_augmentation_is_reproducible_per_epoch(tmp_path):
    dataset = make_dataset(tmp_path)
    config = AugmentSettings(mosaic_prob=0.5)

    def epoch_items(epoch, cache_images):
        torch_dataset = TorchDetectionDataset(dataset, (40, 56), augment=config, seed=3, cache_images=cache_images)
        torch_dataset.set_epoch(epoch)
        return [torch_dataset[i] for i in range(len(torch_dataset))]

    first, again, next_epoch = epoch_items(0, True), epoch_items(0, True), epoch_items(1, True)
    uncached = epoch_items(0, False)
    for a, b, c in zip(first, again, uncached):
        assert torch.equal(a[0], b[0]) and torch.equal(a[0], c[0])
        assert torch.equal(a[1], b[1]) and torch.equal(a[1], c[1])
    assert not all(torch.equal(a[0], d[0]) for a, d in zip(first, next_epoch))
    for image, targets, _ in first:
        assert image.shape == (3, 40, 56)
        assert (targets[:, 1:] >= 0).all() and (targets[:, [1, 3]] <= 56).all() and (targets[:, [2, 4]] <= 40).all()


def test_torch_dataset_cache_and_collate(tmp_path):
    dataset = make_dataset(tmp_path)
    torch_dataset = TorchDetectionDataset(dataset, (32, 32))
    torch_dataset.preload()
    for sample in dataset.samples:  # served from memory from now on
        sample.image_path.unlink()
    loader = torch.utils.data.DataLoader(torch_dataset, batch_size=3, collate_fn=collate_detections)
    images, targets, indices = next(iter(loader))
    assert images.shape == (3, 3, 32, 32) and images.dtype == torch.float32
    assert targets.shape == (3, 6) and targets.dtype == torch.float32
    np.testing.assert_array_equal(targets[:, 0].numpy(), [0, 0, 1])
    np.testing.assert_array_equal(targets[:, 1].numpy(), [0, 2, 1])
    assert indices == [0, 1, 2]
