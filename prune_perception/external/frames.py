"""Unlabeled frames for label-free fine-tuning: image folders, video files and rosbag2 bags.

A source is recognised by what it is on disk: a bag (a folder with ``metadata.yaml``, or an
``.mcap`` / ``.db3`` file; raw and compressed image topics, read with this package's bag reader), a
folder of images (searched recursively, sorted), or any other file opened as a video with OpenCV.
Every ``frame_stride``-th frame of each source is kept, up to ``max_frames`` in all. Frames are
pre-processed once, as the model expects (:func:`prune_perception.runtime.preprocess.preprocess_batch`:
letterbox, colour order, normalisation), and stored as float16 (exact for 0..255 pixels).

Unreadable frames are skipped and counted; a source with no readable frame is a :class:`DatasetError`.
The last ``holdout_fraction`` of each source's frames are held out for scoring, so the scored frames
are never neighbours of training frames from the middle of a clip.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch

from prune_perception.bags.raw_bag import METADATA, STORAGE_SUFFIXES
from prune_perception.bags.reader import open_bag
from prune_perception.data.dataset import IMAGE_SUFFIXES
from prune_perception.errors import ConfigError, DatasetError, PrunePerceptionError
from prune_perception.runtime.preprocess import PreprocessSpec, preprocess_batch


@dataclass
class SourceSummary:
    """One source as it was read: kind, frames kept and frames skipped as unreadable."""

    path: str
    kind: str
    frames: int
    unreadable: int = 0


@dataclass
class UnlabeledFrames:
    """Pre-processed frames, float16 ``[N, 3, H, W]``, split into fine-tuning and held-out (scoring) frames."""

    train: torch.Tensor
    holdout: torch.Tensor
    sources: list[SourceSummary] = field(default_factory=list)
    frame_stride: int = 1

    def describe(self) -> dict:
        """What the model was tuned on, for metadata and history."""
        return {"frame_stride": self.frame_stride, "train_frames": len(self.train),
                "holdout_frames": len(self.holdout),
                "sources": [vars(source) for source in self.sources]}


def source_kind(path: Path) -> str:
    """'bag', 'images' or 'video'; DatasetError when the path does not exist."""
    if not path.exists():
        raise DatasetError(f"{path}: image source not found")
    if (path.is_dir() and (path / METADATA).is_file()) or path.suffix in STORAGE_SUFFIXES:
        return "bag"
    return "images" if path.is_dir() else "video"


def _image_folder(path: Path, counts: SourceSummary) -> Iterator[tuple[np.ndarray, str]]:
    for file in sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()):
        image = cv2.imread(str(file), cv2.IMREAD_COLOR_BGR)
        if image is None:
            counts.unreadable += 1
            continue
        yield image, "bgr"


def _video(path: Path, counts: SourceSummary) -> Iterator[tuple[np.ndarray, str]]:
    capture = cv2.VideoCapture(str(path))
    try:
        while capture.isOpened():
            ok, image = capture.read()
            if not ok:
                break
            yield image, "bgr"
    finally:
        capture.release()


def _bag(path: Path, counts: SourceSummary) -> Iterator[tuple[np.ndarray, str]]:
    with open_bag(path) as bag:
        for frame in bag.frames():
            try:
                yield frame.image()
            except PrunePerceptionError:
                counts.unreadable += 1


READERS = {"images": _image_folder, "video": _video, "bag": _bag}


def _read_source(path: Path, spec: PreprocessSpec, stride: int, limit: int) -> tuple[list[np.ndarray], SourceSummary]:
    kind = source_kind(path)
    summary = SourceSummary(str(path), kind, 0)
    tensors = []
    for index, (image, color_order) in enumerate(READERS[kind](path, summary)):
        if len(tensors) >= limit:
            break
        if index % stride:
            continue
        try:
            tensor, _ = preprocess_batch([image], color_order, spec)
        except PrunePerceptionError:
            summary.unreadable += 1
            continue
        tensors.append(tensor[0].astype(np.float16))
    summary.frames = len(tensors)
    if not tensors:
        what = {"images": "no readable image file", "video": "no frame OpenCV can decode (not a video?)",
                "bag": "no decodable image message"}[kind]
        raise DatasetError(f"{path}: {what} ({summary.unreadable} unreadable); an image source must be an image "
                           f"folder, a video file or a rosbag2 bag")
    return tensors, summary


def load_frames(sources: Sequence[str | Path], spec: PreprocessSpec, frame_stride: int = 1,
                max_frames: int = 1000, holdout_fraction: float = 0.2) -> UnlabeledFrames:
    """Read and pre-process the frames of every source (see module doc); DatasetError/ConfigError on bad input."""
    if not sources:
        raise ConfigError("no image source given: name image folders, videos or bags (--images ...)")
    if frame_stride < 1 or max_frames < 2:
        raise ConfigError(f"frame_stride must be >= 1 and max_frames >= 2, got {frame_stride} and {max_frames}")
    if not 0.0 < holdout_fraction < 1.0:
        raise ConfigError(f"holdout_fraction must be in (0, 1), got {holdout_fraction}")
    train, holdout, summaries = [], [], []
    per_source = max(2, max_frames // len(sources))
    for source in sources:
        tensors, summary = _read_source(Path(source), spec, frame_stride, per_source)
        held = max(1, math.ceil(len(tensors) * holdout_fraction)) if len(tensors) > 1 else 0
        train += tensors[:len(tensors) - held]
        holdout += tensors[len(tensors) - held:]
        summaries.append(summary)
    if not train or not holdout:
        raise DatasetError(f"{len(train) + len(holdout)} frame(s) read: need at least 2 (one to fine-tune on, one "
                           "held out to score agreement); add sources or lower frame_stride")
    return UnlabeledFrames(torch.from_numpy(np.stack(train)), torch.from_numpy(np.stack(holdout)), summaries,
                           frame_stride)
