"""The synthetic benchmark on disk: images rendered in parallel, COCO annotations, a completion marker."""

from __future__ import annotations

import functools
import json
import logging
import multiprocessing
import os
import shutil
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from prune_perception.data.classes import SYNTH_CLASSES
from prune_perception.data.synth.config import GENERATOR_NAME, SynthConfig
from prune_perception.data.synth.render import Labelled, render_scene
from prune_perception.errors import DatasetError

log = logging.getLogger(__name__)


def _render_and_write(task: tuple[int, str], config: SynthConfig, images_dir: Path) -> list[Labelled]:
    """Render image ``task = (index, file name)``, write it as JPEG under ``images_dir``, return its boxes."""
    index, file_name = task
    image, boxes = render_scene(np.random.default_rng([config.seed, index]), config.width, config.height)
    ok, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, config.jpeg_quality])
    if not ok:
        raise RuntimeError(f"JPEG encoding failed for synthetic image {index}")
    (images_dir / file_name).write_bytes(data.tobytes())
    return boxes


def _init_worker() -> None:
    cv2.setNumThreads(1)  # one process per core already


def _split_sizes(config: SynthConfig) -> tuple[int, int]:
    val = min(int(round(config.num_images * config.val_fraction)), config.num_images - 1)
    return config.num_images - val, val


def _is_complete(out_dir: Path, stats: dict) -> bool:
    """All annotation files and the recorded number of images of each split are present."""
    for split, count in stats["images_per_split"].items():
        if not (out_dir / "annotations" / f"instances_{split}.json").is_file():
            return False
        split_dir = out_dir / "images" / split
        if not split_dir.is_dir() or sum(1 for _ in os.scandir(split_dir)) != count:
            return False
    return True


def _read_marker(out_dir: Path) -> dict | None:
    """Our ``dataset.json`` in ``out_dir``, or None when there is none (or someone else's)."""
    try:
        marker = json.loads((out_dir / "dataset.json").read_text())
    except (OSError, ValueError):
        return None
    return marker if isinstance(marker, dict) and marker.get("generator") == GENERATOR_NAME else None


def _prepare_output(out_dir: Path, config: SynthConfig) -> None:
    """Claim ``out_dir`` with an in-progress marker and clear what an earlier run left there.

    Refuses a directory that already holds images or annotations this generator did not write.
    """
    owned = [out_dir / "images" / split for split in ("train", "val")]
    owned += [out_dir / "annotations" / f"instances_{split}.json" for split in ("train", "val")]
    if _read_marker(out_dir) is None and any(path.exists() for path in owned):
        raise DatasetError(f"{out_dir} already holds images or annotations that the synthetic generator "
                           "did not write; choose another output directory")
    out_dir.mkdir(parents=True, exist_ok=True)
    _write_json(out_dir / "dataset.json", {"generator": GENERATOR_NAME, "config": config.identity()})
    for path in owned:
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
    for split in ("train", "val"):
        (out_dir / "images" / split).mkdir(parents=True)
    (out_dir / "annotations").mkdir(exist_ok=True)


def _write_json(path: Path, payload: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(payload, separators=(",", ":")))
    os.replace(tmp, path)


def generate_dataset(out_dir: Path, config: SynthConfig, progress: bool = True) -> dict:
    """Generate the synthetic benchmark as a COCO dataset; returns summary stats.

    Writes ``out_dir/images/{train,val}/NNNNNN.jpg`` (NNNNNN = global image index),
    ``out_dir/annotations/instances_{train,val}.json`` and, last, ``out_dir/dataset.json``
    (config + stats), which marks the output complete: a rerun with the same config returns the
    stored stats without rendering; a different config or an incomplete output regenerates.
    Raises DatasetError rather than overwrite images or annotations it did not write.
    """
    out_dir = Path(out_dir)
    marker = _read_marker(out_dir)
    if (marker is not None and marker.get("config") == config.identity() and "stats" in marker
            and _is_complete(out_dir, marker["stats"])):
        log.info("synthetic dataset in %s is up to date; skipping generation", out_dir)
        return marker["stats"]
    _prepare_output(out_dir, config)

    n_train, n_val = _split_sizes(config)
    tasks = [(i, f"{'train' if i < n_train else 'val'}/{i:06d}.jpg") for i in range(config.num_images)]
    render = functools.partial(_render_and_write, config=config, images_dir=out_dir / "images")
    bar = functools.partial(tqdm, total=len(tasks), desc="synth images", unit="img", disable=not progress)
    if config.workers == 1:
        results = list(bar(map(render, tasks)))
    else:
        chunksize = max(1, min(16, len(tasks) // (config.workers * 8)))
        with multiprocessing.Pool(config.workers, initializer=_init_worker) as pool:
            results = list(bar(pool.imap(render, tasks, chunksize=chunksize)))

    categories = [{"id": k + 1, "name": name} for k, name in enumerate(SYNTH_CLASSES)]
    per_class = [0] * len(SYNTH_CLASSES)
    small = 0
    for split, indices in (("train", range(n_train)), ("val", range(n_train, config.num_images))):
        images, annotations = [], []
        for i in indices:
            images.append({"id": i + 1, "file_name": tasks[i][1], "width": config.width,
                           "height": config.height})
            for class_index, (x1, y1, x2, y2) in results[i]:
                w, h = x2 - x1, y2 - y1
                annotations.append({"id": len(annotations) + 1, "image_id": i + 1,
                                    "category_id": class_index + 1, "bbox": [x1, y1, w, h], "area": w * h,
                                    "iscrowd": 0})
                per_class[class_index] += 1
                small += int(w * h < 32 ** 2)
        _write_json(out_dir / "annotations" / f"instances_{split}.json",
                    {"images": images, "annotations": annotations, "categories": categories})

    counts = [len(boxes) for boxes in results]
    total = sum(counts)
    stats = {
        "seed": config.seed,
        "images_per_split": {"train": n_train, "val": n_val},
        "objects": total,
        "objects_per_class": dict(zip(SYNTH_CLASSES, per_class)),
        "objects_per_image": {"min": min(counts), "max": max(counts), "mean": round(total / len(counts), 3)},
        "small_fraction": round(small / max(total, 1), 4),  # COCO "small": area < 32 x 32 px
    }
    _write_json(out_dir / "dataset.json", {"generator": GENERATOR_NAME, "config": config.identity(),
                                           "classes": list(SYNTH_CLASSES), "stats": stats})
    return stats
