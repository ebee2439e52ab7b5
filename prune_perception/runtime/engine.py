"""The ONNX Runtime detector engine (ROS-free, torch-free): image(s) in, detections in original pixels out.

Loading: the file is checked (exists, readable, size), ONNX Runtime parses it with the preferred
execution providers (:mod:`.providers`), the model is described and validated
(:mod:`.model_metadata`: input ``float32 [N,3,H,W]``, metadata, output layout), then warmed up.
Every problem raises :class:`ModelLoadError` / :class:`ProviderError` / :class:`ConfigError`
naming the file and the problem.

Per call: decode (``detect_encoded`` only) -> pre-process (letterbox, colour order,
normalisation) -> inference -> post-process (output adapter, class-aware NMS or class-agnostic
with ``class_agnostic_nms``, boxes back to original pixels, clipped), each stage timed (:class:`StageTimes`).

Threading: one engine is meant to be called from one worker thread. ``set_thresholds`` may be
called from another thread (the thresholds are swapped as one immutable object, a call in flight
keeps the ones it started with); everything else is not synchronised.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from numbers import Integral, Real
from pathlib import Path

import cv2
import numpy as np
import onnxruntime as ort
from onnxruntime.capi.onnxruntime_pybind11_state import InvalidProtobuf

from prune_perception.errors import ConfigError, InputImageError, ModelLoadError, PrunePerceptionError
from prune_perception.runtime.adapters import ADAPTERS, adapt
from prune_perception.runtime.model_metadata import ModelInfo, ModelOverrides, model_format_name, read_model_info
from prune_perception.runtime.postprocess import Detections, select_detections
from prune_perception.runtime.preprocess import preprocess_batch
from prune_perception.runtime.providers import create_session

MAX_MODEL_BYTES = 2 << 30
"""Protobuf cannot parse a single file above 2 GiB (bigger models keep weights in external data files)."""


@dataclass
class StageTimes:
    """Wall-clock milliseconds per stage of one call (decode is 0 unless the input was encoded)."""

    decode_ms: float = 0.0
    preprocess_ms: float = 0.0
    inference_ms: float = 0.0
    postprocess_ms: float = 0.0

    @property
    def total_ms(self) -> float:
        return self.decode_ms + self.preprocess_ms + self.inference_ms + self.postprocess_ms


@dataclass(frozen=True)
class Thresholds:
    """Post-processing settings: score threshold [0, 1], NMS IoU threshold (0, 1], max detections >= 1,
    NMS across classes (``class_agnostic``) or per class."""

    score: float
    nms: float
    max_detections: int
    class_agnostic: bool = False

    def __post_init__(self):
        if not (isinstance(self.score, Real) and 0.0 <= self.score <= 1.0):
            raise ConfigError(f"score_threshold must be in [0, 1], got {self.score!r}")
        if not (isinstance(self.nms, Real) and 0.0 < self.nms <= 1.0):
            raise ConfigError(f"nms_threshold must be in (0, 1], got {self.nms!r}")
        if not (isinstance(self.max_detections, Integral) and not isinstance(self.max_detections, bool)
                and self.max_detections >= 1):
            raise ConfigError(f"max_detections must be an int >= 1, got {self.max_detections!r}")
        if not isinstance(self.class_agnostic, bool):
            raise ConfigError(f"class_agnostic_nms must be true or false, got {self.class_agnostic!r}")


def validate_model_file(path: str | os.PathLike) -> Path:
    """Cheap checks before parsing: the file exists, is a readable regular file, 0 < size <= 2 GiB."""
    path = Path(path)
    if not path.exists():
        raise ModelLoadError(f"{path}: model file not found")
    if not path.is_file():
        raise ModelLoadError(f"{path}: not a regular file")
    if not os.access(path, os.R_OK):
        raise ModelLoadError(f"{path}: model file is not readable (permissions)")
    size = path.stat().st_size
    if size == 0:
        raise ModelLoadError(f"{path}: model file is empty")
    if size > MAX_MODEL_BYTES:
        raise ModelLoadError(f"{path}: model file is {size / 2**30:.1f} GiB, over the 2 GiB protobuf limit "
                             "(store the weights as ONNX external data)")
    return path


class DetectorEngine:
    """Runs one ONNX detector: ``detect`` / ``detect_batch`` / ``detect_encoded`` -> detections in original pixels.

    ``model_format``: ``auto`` (our metadata -> native; no metadata -> YOLOX/YOLOv8 recognised from
    the output shapes), or force ``native`` / ``yolox`` / ``yolov8``. ``providers``: preference list
    (``tensorrt``, ``cuda``, ``cpu`` or full ORT names); ``strict_provider`` fails unless the first
    one is active. ``class_agnostic_nms``: one NMS over all classes (YOLOX's and many external
    pipelines' own post-processing) instead of one per class. ``intra_op_threads`` 0 = ONNX
    Runtime's default. ``input_size``, ``input_color_order``, ``input_scale``, ``class_names``,
    ``yolox_decoded`` override what the metadata or the format's defaults say (see :mod:`.model_metadata`).
    """

    def __init__(self, model_path: str | os.PathLike, model_format: str = "auto",
                 providers: Sequence[str] = ("cpu",), strict_provider: bool = False, intra_op_threads: int = 0,
                 warmup_runs: int = 3, score_threshold: float = 0.35, nms_threshold: float = 0.7,
                 max_detections: int = 100, class_agnostic_nms: bool = False, input_size: tuple[int, int] | None = None,
                 input_color_order: str | None = None, input_scale: float | None = None,
                 class_names: Sequence[str] | None = None, yolox_decoded: bool | None = None):
        path = validate_model_file(model_path)
        self._thresholds = Thresholds(score_threshold, nms_threshold, max_detections, class_agnostic_nms)
        for name, value in (("intra_op_threads", intra_op_threads), ("warmup_runs", warmup_runs)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ConfigError(f"{name} must be an int >= 0, got {value!r}")
        overrides = ModelOverrides(
            input_size=tuple(input_size) if input_size is not None else None, input_color_order=input_color_order,
            input_scale=input_scale, class_names=tuple(class_names) if class_names is not None else None,
            yolox_decoded=yolox_decoded)
        model_format = model_format_name(model_format)
        options = ort.SessionOptions()
        options.intra_op_num_threads = intra_op_threads
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL   # one operator at a time: steady latency
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        try:
            self._session = create_session(path, providers, strict_provider, options)
        except PrunePerceptionError:
            raise
        except InvalidProtobuf as exc:
            raise ModelLoadError(f"{path}: not an ONNX model, or the file is truncated/corrupt ({exc})") from None
        except Exception as exc:  # ONNX Runtime's load errors share no base class below Exception
            raise ModelLoadError(f"{path}: ONNX Runtime cannot load the model: {exc}") from None
        try:
            self.info: ModelInfo = read_model_info(path, self._session, model_format, overrides)
            self._adapter = ADAPTERS[self.info.output_format](self.info.input_hw, self.info.output_names,
                                                              self.info.output_layout)
        except PrunePerceptionError:
            raise
        except Exception as exc:  # e.g. metadata or tensor names that are not UTF-8 (ORT raises UnicodeDecodeError)
            raise ModelLoadError(f"{path}: cannot read the model's inputs, outputs or metadata "
                                 f"({type(exc).__name__}: {exc})") from None
        try:
            warmup_batch = np.zeros((1, 3, *self.info.input_hw), dtype=np.float32) if warmup_runs else None
            for _ in range(warmup_runs):
                self.infer(warmup_batch)
        except PrunePerceptionError:
            raise
        except Exception as exc:  # ORT run errors, MemoryError: the model cannot serve, say so as a load error
            raise ModelLoadError(f"{path}: warm-up inference failed ({type(exc).__name__}: {exc})") from None

    @property
    def active_providers(self) -> tuple[str, ...]:
        """Execution providers the session actually uses, in priority order."""
        return tuple(self._session.get_providers())

    @property
    def thresholds(self) -> Thresholds:
        return self._thresholds

    def set_thresholds(self, score_threshold: float, nms_threshold: float, max_detections: int,
                       class_agnostic_nms: bool = False) -> None:
        """Change post-processing live; ConfigError (and no change) if a value is out of range."""
        self._thresholds = Thresholds(score_threshold, nms_threshold, max_detections, class_agnostic_nms)

    def infer(self, batch: np.ndarray) -> list[np.ndarray]:
        """Raw session outputs (``info.output_names`` order) for a float32 ``[N,3,H,W]`` input batch.

        Dynamic-batch models run the batch in one call; fixed batch-1 models run image by image.
        """
        expected = (3, *self.info.input_hw)
        if not (isinstance(batch, np.ndarray) and batch.dtype == np.float32 and batch.ndim == 4
                and batch.shape[1:] == expected and len(batch) > 0):
            raise InputImageError(f"input batch must be float32 [N, {', '.join(map(str, expected))}] with N >= 1, "
                                  f"got {getattr(batch, 'dtype', type(batch).__name__)} "
                                  f"{list(getattr(batch, 'shape', []))}")
        feed = self.info.input_name
        if self.info.dynamic_batch:
            return self._session.run(None, {feed: batch})
        runs = [self._session.run(None, {feed: batch[i:i + 1]}) for i in range(len(batch))]
        return [np.concatenate(parts) for parts in zip(*runs)]

    def detect(self, image: np.ndarray, color_order: str = "rgb") -> tuple[Detections, StageTimes]:
        """Detections of one image (uint8/uint16, mono / 3 / 4 channels, ``color_order`` rgb or bgr)."""
        detections, times = self.detect_batch([image], color_order)
        return detections[0], times

    def detect_batch(self, images: Sequence[np.ndarray],
                     color_order: str = "rgb") -> tuple[list[Detections], StageTimes]:
        """Detections per image, all images in ``color_order``; one timing for the whole batch."""
        if len(images) == 0:
            raise InputImageError("no images given")
        times = StageTimes()
        start = time.perf_counter()
        batch, transforms = preprocess_batch(list(images), color_order, self.info.preprocess)
        preprocessed = time.perf_counter()
        outputs = self.infer(batch)
        inferred = time.perf_counter()
        boxes, scores = adapt(self._adapter, outputs, len(images))
        thresholds = self._thresholds
        results = []
        for image, transform, image_boxes, image_scores in zip(images, transforms, boxes, scores):
            selected = select_detections(image_boxes, image_scores, thresholds.score, thresholds.nms,
                                         thresholds.max_detections, class_agnostic=thresholds.class_agnostic)
            original = transform.to_original(selected.boxes, image.shape[:2])
            results.append(Detections(original.astype(np.float32), selected.scores, selected.labels))
        done = time.perf_counter()
        times.preprocess_ms = (preprocessed - start) * 1e3
        times.inference_ms = (inferred - preprocessed) * 1e3
        times.postprocess_ms = (done - inferred) * 1e3
        return results, times

    def decode(self, data: bytes | memoryview) -> tuple[np.ndarray, str, float]:
        """``(image, color_order, milliseconds)`` of one encoded image (JPEG, PNG, any format OpenCV reads);
        InputImageError if undecodable.

        Decoded as OpenCV's BGR (``IMREAD_COLOR``: every OpenCV the vehicle may have, 4.5+); pre-processing
        reorders the channels for an RGB model in the same pass, at no extra copy."""
        start = time.perf_counter()
        buffer = np.frombuffer(data, dtype=np.uint8)
        if buffer.size == 0:
            raise InputImageError("encoded image is empty (0 bytes)")
        image = cv2.imdecode(buffer, cv2.IMREAD_COLOR)
        if image is None:
            raise InputImageError(f"cannot decode image ({buffer.size} bytes): corrupt or unsupported format")
        return image, "bgr", (time.perf_counter() - start) * 1e3

    def detect_encoded(self, data: bytes | memoryview) -> tuple[Detections, StageTimes]:
        """Detections of one encoded image (JPEG, PNG, any format OpenCV reads); InputImageError if undecodable."""
        image, color_order, decode_ms = self.decode(data)
        detections, times = self.detect(image, color_order)
        times.decode_ms = decode_ms
        return detections, times
