"""Detection datasets: COCO json and YOLO txt loaders and writers, validated into one in-memory form.

numpy + OpenCV only (no torch), so evaluation and bag tools can use it too.

Conventions of the in-memory form:

- boxes are float32 ``[M, 4]`` xyxy in original image pixels (edges, so a box covering pixel
  columns 10..19 is x1=10, x2=20), clipped to the image;
- labels are int64 indices into ``DetectionDataset.classes``;
- boxes narrower or lower than 1 px (after clipping) are dropped and counted in
  ``DetectionDataset.dropped_boxes``; anything else that is wrong raises :class:`DatasetError`
  with one line naming the file and the problem.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import yaml

from prune_perception.errors import DatasetError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"})
MIN_BOX_SIDE_PX = 1.0
YOLO_LABEL_PRECISION = 6  # decimals of the normalised coordinates written to YOLO label files


@dataclass
class Sample:
    """One image and its ground-truth boxes."""

    image_path: Path
    image_id: int
    width: int
    height: int
    boxes: np.ndarray  # float32 [M,4] xyxy in original pixels
    labels: np.ndarray  # int64 [M] index into DetectionDataset.classes


@dataclass
class DetectionDataset:
    """Images with labelled boxes; ``source`` is the annotation file or dataset folder."""

    classes: list[str]
    samples: list[Sample]
    source: Path
    dropped_boxes: int = 0  # degenerate boxes (< 1 px wide or high) dropped while loading

    def __len__(self) -> int:
        return len(self.samples)


# --------------------------------------------------------------------------- images


def read_image_rgb(path: Path) -> np.ndarray:
    """Decode an image file to uint8 HxWx3 RGB; DatasetError if missing, unreadable or corrupt."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: image file not found")
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)   # BGR; IMREAD_COLOR_RGB needs OpenCV 4.11+
    if image is None:
        raise DatasetError(f"{path}: cannot decode image (corrupt or unsupported format)")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


# --------------------------------------------------------------------------- shared validation


def _make_sample(
    image_path: Path,
    image_id: int,
    width: int,
    height: int,
    boxes_xyxy: np.ndarray,
    labels: np.ndarray,
    where: str,
) -> tuple[Sample, int]:
    """Validate, clip and filter one image's boxes; returns the sample and the number of boxes dropped."""
    if width <= 0 or height <= 0:
        raise DatasetError(f"{where}: image size must be positive, got {width}x{height}")
    boxes = np.asarray(boxes_xyxy, dtype=np.float64).reshape(-1, 4)
    if not np.isfinite(boxes).all():
        raise DatasetError(f"{where}: box coordinates are NaN or infinite")
    np.clip(boxes[:, 0::2], 0, width, out=boxes[:, 0::2])
    np.clip(boxes[:, 1::2], 0, height, out=boxes[:, 1::2])
    keep = (boxes[:, 2] - boxes[:, 0] >= MIN_BOX_SIDE_PX) & (boxes[:, 3] - boxes[:, 1] >= MIN_BOX_SIDE_PX)
    sample = Sample(
        image_path=Path(image_path),
        image_id=int(image_id),
        width=int(width),
        height=int(height),
        boxes=boxes[keep].astype(np.float32),
        labels=np.asarray(labels, dtype=np.int64).reshape(-1)[keep],
    )
    return sample, int(np.count_nonzero(~keep))


def _build_dataset(
    names: list[str],
    samples: list[Sample],
    source: Path,
    dropped_boxes: int,
    classes: Sequence[str] | None,
) -> DetectionDataset:
    """Check class names, remap labels onto ``classes`` when given, and report dropped boxes."""
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise DatasetError(f"{source}: duplicate class names {duplicates}")
    if classes is not None:
        classes = [str(name) for name in classes]
        unknown = [name for name in names if name not in classes]
        if unknown:
            raise DatasetError(f"{source}: class names {unknown} are not among the expected classes {classes}")
        new_index = np.array([classes.index(name) for name in names], dtype=np.int64)
        for sample in samples:
            sample.labels = new_index[sample.labels]
        names = classes
    if dropped_boxes:
        log.warning("%s: dropped %d degenerate boxes (< %g px wide or high)", source, dropped_boxes, MIN_BOX_SIDE_PX)
    return DetectionDataset(classes=list(names), samples=samples, source=source, dropped_boxes=dropped_boxes)


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{path}: cannot read text file ({exc})") from None


# --------------------------------------------------------------------------- COCO


def _default_images_dir(json_path: Path) -> Path:
    """``<json dir>/../images`` if it exists (our layout), else the json's own folder."""
    sibling = json_path.parent.parent / "images"
    return sibling if sibling.is_dir() else json_path.parent


def read_json_file(path: Path, what: str) -> Any:
    """The parsed JSON of ``path``; DatasetError naming the file (``what``: e.g. 'annotation file') otherwise."""
    if not path.is_file():
        raise DatasetError(f"{path}: {what} not found")
    try:
        return json.loads(path.read_bytes())
    except ValueError as exc:
        raise DatasetError(f"{path}: not valid JSON ({exc})") from None


def _read_coco_json(json_path: Path) -> dict[str, Any]:
    document = read_json_file(json_path, "annotation file")
    if not isinstance(document, dict):
        raise DatasetError(f"{json_path}: expected a COCO JSON object with 'images' and 'categories'")
    return document


def _parse_coco_entries(
    document: dict[str, Any], key: str, parse_entry: Callable[[dict], tuple], json_path: Path
) -> list[tuple]:
    """Parse every entry of ``document[key]``; a missing or malformed field names the entry."""
    if key not in document and key != "annotations":  # image-info files have no annotations
        raise DatasetError(f"{json_path}: not a COCO detection file: no '{key}' list")
    entries = document.get(key, [])
    if not isinstance(entries, list):
        raise DatasetError(f"{json_path}: '{key}' must be a list, got {type(entries).__name__}")
    parsed = []
    for number, entry in enumerate(entries):
        try:
            parsed.append(parse_entry(entry))
        except KeyError as exc:
            raise DatasetError(f"{json_path}: {key}[{number}] has no {exc} field") from None
        except (TypeError, ValueError) as exc:
            raise DatasetError(f"{json_path}: {key}[{number}] is malformed ({exc})") from None
    return parsed


def _parse_coco_bbox(bbox: Any) -> list[float]:
    if not isinstance(bbox, list) or len(bbox) != 4:
        raise ValueError(f"bbox must be a list of 4 numbers [x, y, w, h], got {bbox!r}")
    return [float(value) for value in bbox]


def load_coco(
    json_path: Path, images_dir: Path | None = None, classes: Sequence[str] | None = None,
    require_images: bool = True,
) -> DetectionDataset:
    """Load a COCO detection json.

    ``file_name`` entries are relative to ``images_dir`` (default ``<json dir>/../images`` if it
    exists, else the json's folder). Category ids may be arbitrary; labels are contiguous indices
    in order of category id. Crowd annotations (``iscrowd: 1``) are skipped. With ``classes``,
    labels are remapped onto that order (DatasetError if a category name is not in it).
    ``require_images=False`` skips the check that every image file exists (scoring results files).
    """
    json_path = Path(json_path)
    document = _read_coco_json(json_path)
    images_dir = Path(images_dir) if images_dir is not None else _default_images_dir(json_path)

    categories = sorted(
        _parse_coco_entries(document, "categories", lambda c: (int(c["id"]), str(c["name"])), json_path)
    )
    category_ids = [category_id for category_id, _ in categories]
    if len(set(category_ids)) != len(category_ids):
        raise DatasetError(f"{json_path}: duplicate category ids")
    category_index = {category_id: index for index, category_id in enumerate(category_ids)}

    images = _parse_coco_entries(
        document,
        "images",
        lambda im: (int(im["id"]), str(im["file_name"]), int(im["width"]), int(im["height"])),
        json_path,
    )
    if not images:
        raise DatasetError(f"{json_path}: dataset has no images")
    boxes_by_image: dict[int, list[list[float]]] = {image_id: [] for image_id, *_ in images}
    labels_by_image: dict[int, list[int]] = {image_id: [] for image_id, *_ in images}
    if len(boxes_by_image) != len(images):
        raise DatasetError(f"{json_path}: duplicate image ids")

    annotations = _parse_coco_entries(
        document,
        "annotations",
        lambda a: (int(a["image_id"]), int(a["category_id"]), _parse_coco_bbox(a["bbox"]), bool(a.get("iscrowd", 0))),
        json_path,
    )
    for image_id, category_id, bbox, is_crowd in annotations:
        if image_id not in boxes_by_image:
            raise DatasetError(f"{json_path}: annotation refers to unknown image id {image_id}")
        if category_id not in category_index:
            raise DatasetError(f"{json_path}: annotation refers to unknown category id {category_id}")
        if not is_crowd:
            boxes_by_image[image_id].append(bbox)
            labels_by_image[image_id].append(category_index[category_id])

    missing = [images_dir / file_name for _, file_name, _, _ in images
               if require_images and not (images_dir / file_name).is_file()]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise DatasetError(f"{json_path}: image file not found: {missing[0]}{more}")

    samples, dropped_boxes = [], 0
    for image_id, file_name, width, height in images:
        boxes = np.asarray(boxes_by_image[image_id], dtype=np.float64).reshape(-1, 4)
        boxes[:, 2:] += boxes[:, :2]  # xywh -> xyxy
        sample, dropped = _make_sample(
            images_dir / file_name,
            image_id,
            width,
            height,
            boxes,
            labels_by_image[image_id],
            f"{json_path}: image '{file_name}'",
        )
        samples.append(sample)
        dropped_boxes += dropped
    return _build_dataset([name for _, name in categories], samples, json_path, dropped_boxes, classes)


def write_coco(dataset: DetectionDataset, json_path: Path, images_dir: Path | None = None) -> None:
    """Write ``dataset`` as a COCO json; images are referenced, not copied.

    ``file_name`` is relative to ``images_dir`` (default: the folder :func:`load_coco` would use
    for this json), so ``load_coco(json_path)`` finds the images again. Category ids are 1..N.
    """
    json_path = Path(json_path)
    json_path.parent.mkdir(parents=True, exist_ok=True)
    images_dir = Path(images_dir) if images_dir is not None else _default_images_dir(json_path)
    images, annotations = [], []
    for sample in dataset.samples:
        images.append(
            {
                "id": sample.image_id,
                "file_name": Path(os.path.relpath(sample.image_path, images_dir)).as_posix(),
                "width": sample.width,
                "height": sample.height,
            }
        )
        for (x1, y1, x2, y2), label in zip(sample.boxes.tolist(), sample.labels.tolist()):
            width, height = x2 - x1, y2 - y1
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": sample.image_id,
                    "category_id": label + 1,
                    "bbox": [round(x1, 3), round(y1, 3), round(width, 3), round(height, 3)],
                    "area": round(width * height, 3),
                    "iscrowd": 0,
                }
            )
    document = {
        "info": {"description": "written by prune_perception"},
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": [{"id": index + 1, "name": name} for index, name in enumerate(dataset.classes)],
    }
    json_path.write_text(json.dumps(document), encoding="utf-8")


# --------------------------------------------------------------------------- YOLO


def _yolo_label_path(image_path: Path) -> Path:
    """Ultralytics rule: the last ``images`` folder of the path becomes ``labels``, suffix ``.txt``."""
    parts = list(image_path.parts)
    folders = parts[:-1]
    if "images" in folders:
        parts[len(folders) - 1 - folders[::-1].index("images")] = "labels"
    return Path(*parts).with_suffix(".txt")


def _read_yaml(yaml_path: Path) -> dict[str, Any]:
    try:
        config = yaml.safe_load(_read_text(yaml_path))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}: " if mark is not None else ""
        raise DatasetError(f"{yaml_path}: not valid YAML ({where}{getattr(exc, 'problem', None) or exc})") from None
    if not isinstance(config, dict):
        raise DatasetError(f"{yaml_path}: expected a YAML mapping with 'names' and split paths")
    return config


def _yolo_names_from_yaml(names: Any, yaml_path: Path) -> list[str]:
    """``names`` as a list, or a dict ``{0: name, 1: name, ...}`` with ids 0..N-1."""
    if isinstance(names, list):
        return [str(name) for name in names]
    if isinstance(names, dict):
        try:
            by_id = {int(class_id): str(name) for class_id, name in names.items()}
        except (TypeError, ValueError):
            by_id = {}
        if sorted(by_id) == list(range(len(names))):
            return [by_id[class_id] for class_id in range(len(names))]
    raise DatasetError(f"{yaml_path}: 'names' must be a list or a mapping with class ids 0..N-1")


def _yolo_class_names(
    config: dict[str, Any], yaml_path: Path, dataset_dir: Path, classes: Sequence[str] | None
) -> list[str]:
    if "names" in config:
        return _yolo_names_from_yaml(config["names"], yaml_path)
    classes_txt = dataset_dir / "classes.txt"
    if classes_txt.is_file():
        return [line.strip() for line in _read_text(classes_txt).splitlines() if line.strip()]
    if classes is not None:
        return [str(name) for name in classes]
    raise DatasetError(f"{dataset_dir}: no class names: expected 'names' in data.yaml or a classes.txt")


def _yolo_image_paths(config: dict[str, Any], yaml_path: Path, dataset_dir: Path, split: str) -> list[Path]:
    """Images of ``split``: from the yaml's split entry (folders or .txt lists), else ``images/<split>``."""
    if config.get(split):
        base = dataset_dir / str(config.get("path", ""))
        if not base.is_dir():  # ultralytics resolves a relative 'path' elsewhere; fall back to the yaml's folder
            base = dataset_dir
        entries = config[split] if isinstance(config[split], list) else [config[split]]
        locations = [base / str(entry) for entry in entries]
    else:
        locations = [dataset_dir / "images" / split]
        if not locations[0].is_dir():
            raise DatasetError(
                f"{dataset_dir}: no '{split}' split: expected a '{split}:' entry in data.yaml "
                f"or the folder images/{split}"
            )
    image_paths: list[Path] = []
    for location in locations:
        if location.is_dir():
            image_paths += sorted(p for p in location.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        elif location.is_file() and location.suffix == ".txt":
            lines = _read_text(location).splitlines()
            image_paths += [location.parent / line.strip() for line in lines if line.strip()]
        else:
            raise DatasetError(f"{yaml_path}: '{split}' points to {location}, which does not exist")
    if not image_paths:
        raise DatasetError(f"{dataset_dir}: no images found for split '{split}' in {', '.join(map(str, locations))}")
    return image_paths


def _read_yolo_label_file(label_path: Path, class_count: int) -> tuple[np.ndarray, np.ndarray]:
    """Class ids int64 [M] and normalised float64 [M,4] (cx, cy, w, h); no file means no objects."""
    if not label_path.is_file():
        return np.zeros(0, dtype=np.int64), np.zeros((0, 4))
    rows = []
    for line_number, line in enumerate(_read_text(label_path).splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        where = f"{label_path}:{line_number}"
        if len(fields) != 5:
            raise DatasetError(f"{where}: expected 5 values 'class cx cy w h', got {len(fields)}")
        try:
            values = [float(field) for field in fields]
        except ValueError:
            raise DatasetError(f"{where}: non-numeric value in {line.strip()!r}") from None
        if not all(math.isfinite(value) for value in values):
            raise DatasetError(f"{where}: NaN or infinite value in {line.strip()!r}")
        class_id, *box = values
        if not class_id.is_integer() or not 0 <= class_id < class_count:
            raise DatasetError(f"{where}: class id {fields[0]} is not an integer in 0..{class_count - 1}")
        if not all(0.0 <= value <= 1.0 for value in box):
            raise DatasetError(f"{where}: box {' '.join(fields[1:])} is not normalised to 0..1")
        rows.append(values)
    table = np.array(rows, dtype=np.float64).reshape(-1, 5)
    return table[:, 0].astype(np.int64), table[:, 1:]


def load_yolo(root: Path, split: str, classes: Sequence[str] | None = None) -> DetectionDataset:
    """Load an ultralytics-style YOLO dataset (``root`` = dataset folder or its data yaml).

    Class names come from the yaml's ``names`` (list or ``{id: name}``), else ``classes.txt``,
    else ``classes``. Images of ``split`` come from the yaml's ``<split>:`` entry (folder, list of
    folders or .txt image list, relative to the yaml's ``path:`` or its folder), else from
    ``images/<split>``. Labels: the last ``images`` folder replaced by ``labels``, ``.txt``, one
    ``cls cx cy w h`` (normalised) per line; a missing or empty label file means no objects.
    Image sizes are read by decoding each image once, which also validates it.
    """
    root = Path(root)
    if not root.exists():
        raise DatasetError(f"{root}: dataset path does not exist")
    yaml_path = root if root.is_file() else root / "data.yaml"
    dataset_dir = yaml_path.parent
    config = _read_yaml(yaml_path) if yaml_path.is_file() else {}
    names = _yolo_class_names(config, yaml_path, dataset_dir, classes)
    samples, dropped_boxes = [], 0
    for image_id, image_path in enumerate(_yolo_image_paths(config, yaml_path, dataset_dir, split), start=1):
        height, width = read_image_rgb(image_path).shape[:2]
        label_path = _yolo_label_path(image_path)
        class_ids, boxes_cxcywh = _read_yolo_label_file(label_path, len(names))
        centres, sizes = boxes_cxcywh[:, :2], boxes_cxcywh[:, 2:]
        boxes = np.concatenate([centres - sizes / 2, centres + sizes / 2], axis=1) * [width, height, width, height]
        sample, dropped = _make_sample(image_path, image_id, width, height, boxes, class_ids, str(label_path))
        samples.append(sample)
        dropped_boxes += dropped
    return _build_dataset(names, samples, dataset_dir, dropped_boxes, classes)


def _link_or_copy(source: Path, target: Path) -> None:
    """Hard-link ``source`` to ``target`` (copy across file systems); replaces an existing target."""
    if target.exists():
        if target.samefile(source):
            return
        target.unlink()
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def _yolo_label_text(sample: Sample) -> str:
    scale = np.array([sample.width, sample.height], dtype=np.float64)
    boxes = sample.boxes.astype(np.float64)
    centres = (boxes[:, :2] + boxes[:, 2:]) / 2 / scale
    sizes = (boxes[:, 2:] - boxes[:, :2]) / scale
    digits = YOLO_LABEL_PRECISION
    return "".join(
        f"{label} {cx:.{digits}f} {cy:.{digits}f} {w:.{digits}f} {h:.{digits}f}\n"
        for label, (cx, cy), (w, h) in zip(sample.labels.tolist(), centres.tolist(), sizes.tolist())
    )


def _write_data_yaml(yaml_path: Path, split: str, classes: list[str]) -> None:
    """Add ``split`` to data.yaml (created if missing); its class names must match ``classes``."""
    config = _read_yaml(yaml_path) if yaml_path.is_file() else {}
    if "names" in config and _yolo_names_from_yaml(config["names"], yaml_path) != classes:
        raise DatasetError(f"{yaml_path}: existing class names differ from the dataset's {classes}")
    config[split] = f"images/{split}"
    config["names"] = dict(enumerate(classes))
    yaml_path.write_text(yaml.safe_dump(config, sort_keys=False, allow_unicode=True), encoding="utf-8")


def write_yolo(dataset: DetectionDataset, root: Path, split: str) -> None:
    """Write ``dataset`` as the ``split`` of a YOLO dataset at ``root``.

    Images are hard-linked (or copied) to ``root/images/<split>/`` (name clashes get the image id
    appended), labels written to ``root/labels/<split>/``, and ``root/data.yaml`` gains the split
    entry and the class names. Existing files of the same name are replaced; others are left alone.
    """
    root = Path(root)
    image_dir = root / "images" / split
    image_dir.mkdir(parents=True, exist_ok=True)
    _write_data_yaml(root / "data.yaml", split, list(dataset.classes))
    used_names: set[str] = set()
    for sample in dataset.samples:
        name = sample.image_path.name
        if name in used_names:
            name = f"{sample.image_path.stem}_{sample.image_id}{sample.image_path.suffix}"
        used_names.add(name)
        image_path = image_dir / name
        _link_or_copy(sample.image_path, image_path)
        label_path = _yolo_label_path(image_path)
        label_path.parent.mkdir(parents=True, exist_ok=True)
        label_path.write_text(_yolo_label_text(sample), encoding="utf-8")


# --------------------------------------------------------------------------- auto-detection


def load_dataset(path: str | Path, split: str = "val", classes: Sequence[str] | None = None) -> DetectionDataset:
    """Load a COCO or YOLO dataset, detecting the format.

    A ``.json`` file is COCO; a ``.yaml``/``.yml`` file is a YOLO data yaml; a folder with
    ``annotations/instances_<split>.json`` is COCO; a folder with ``data.yaml`` or ``labels/`` is YOLO.
    """
    path = Path(path)
    if path.is_file():
        if path.suffix.lower() == ".json":
            return load_coco(path, classes=classes)
        if path.suffix.lower() in (".yaml", ".yml"):
            return load_yolo(path, split, classes)
        raise DatasetError(f"{path}: unknown dataset file type (expected a COCO .json or a YOLO data .yaml)")
    if path.is_dir():
        coco_json = path / "annotations" / f"instances_{split}.json"
        if coco_json.is_file():
            return load_coco(coco_json, classes=classes)
        if (path / "data.yaml").is_file() or (path / "labels").is_dir():
            return load_yolo(path, split, classes)
        raise DatasetError(
            f"{path}: no dataset found: looked for annotations/instances_{split}.json (COCO), "
            "data.yaml or labels/ (YOLO)"
        )
    raise DatasetError(f"{path}: dataset path does not exist")
