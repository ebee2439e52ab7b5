"""Output adapters: raw session outputs -> ``(boxes [N,K,4] xyxy in input pixels, scores [N,K,C])``.

Formats (``model_format``):

- ``native``: our export (docs/design.md §5): outputs ``boxes [N,K,4]`` xyxy input pixels and
  ``scores [N,K,C]`` after sigmoid, found by name.
- ``yolox``: one output ``[N, A, 5+C]`` per anchor point of the stride 8/16/32 grids, row-major,
  finest level first: ``(x, y, w, h, objectness, class probs)``; objectness and class probs are
  already sigmoided by the YOLOX head in both modes, score = objectness * class prob.
  Two box encodings (option ``decoded`` in the output layout):

  * ``decoded: false`` (default): what YOLOX's official ``tools/export_onnx.py`` writes (its
    ``--decode_in_inference`` flag is off unless given) and what the released ``yolox_*.onnx``
    files contain; the official ONNX Runtime demo decodes them with ``demo_postprocess``:
    ``xy = (raw_xy + cell) * stride``, ``wh = exp(raw_wh) * stride`` (``cell`` = integer grid
    position, no +0.5).
  * ``decoded: true``: exported with ``--decode_in_inference``: ``x, y, w, h`` are already the box
    centre and size in input pixels.
- ``yolov8``: one output ``[N, 4+C, A]`` (Ultralytics detect export): ``cx, cy, w, h`` in input
  pixels, then the class scores (already sigmoided, no objectness).

Anchor count ``A = sum(ceil(H/s) * ceil(W/s) for s in (8, 16, 32))`` for input ``H x W``.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import ClassVar

import numpy as np

from prune_perception.errors import ModelLoadError
from prune_perception.runtime.preprocess import Normalization

Shape = tuple[int | str | None, ...]
"""A tensor shape as ONNX Runtime reports it: ints, symbolic names, or None for unknown dims."""

GRID_STRIDES = (8, 16, 32)


class OutputAdapter(ABC):
    """Turns one format's raw outputs into native ``(boxes, scores)``; also knows the format's input conventions."""

    name: ClassVar[str]
    layout: ClassVar[str]
    """The output layout in words, for error messages."""
    default_color_order: ClassVar[str]
    default_normalization: ClassVar[Normalization]
    default_centered: ClassVar[bool]
    """Input conventions of the format's own exporter, used when a model has no metadata."""

    def __init__(self, input_hw: tuple[int, int], output_names: Sequence[str], layout: Mapping):
        self.input_hw = tuple(input_hw)
        self.output_names = tuple(output_names)

    @classmethod
    @abstractmethod
    def check_layout(cls, output_names: Sequence[str], output_shapes: Sequence[Shape],
                     input_hw: tuple[int, int]) -> int | None:
        """Number of classes (None if the class dim is symbolic); ValueError naming the mismatch otherwise."""

    @abstractmethod
    def __call__(self, outputs: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Session outputs (in ``output_names`` order) -> (boxes [N,K,4] xyxy input px, scores [N,K,C])."""


class NativeAdapter(OutputAdapter):
    """Our export: named ``boxes`` and ``scores`` outputs, passed through."""

    name = "native"
    layout = "boxes [N,K,4] + scores [N,K,C] (with prune_perception metadata)"
    default_color_order = "RGB"
    default_normalization = Normalization(scale=1 / 255)
    default_centered = True

    def __init__(self, input_hw, output_names, layout):
        super().__init__(input_hw, output_names, layout)
        self._boxes_index = self.output_names.index("boxes")
        self._scores_index = self.output_names.index("scores")

    @classmethod
    def check_layout(cls, output_names, output_shapes, input_hw):
        shapes = dict(zip(output_names, output_shapes))
        if "boxes" not in shapes or "scores" not in shapes:
            raise ValueError("native layout needs outputs named 'boxes' and 'scores'")
        boxes, scores = shapes["boxes"], shapes["scores"]
        if len(boxes) != 3 or len(scores) != 3 or (isinstance(boxes[2], int) and boxes[2] != 4):
            raise ValueError("native layout needs boxes [N,K,4] and scores [N,K,C]")
        if isinstance(boxes[1], int) and isinstance(scores[1], int) and boxes[1] != scores[1]:
            raise ValueError(f"native boxes and scores disagree on K: {boxes[1]} vs {scores[1]}")
        return _static_dim(scores[2], minimum=1)

    def __call__(self, outputs):
        return outputs[self._boxes_index], outputs[self._scores_index]


class YoloxAdapter(OutputAdapter):
    """YOLOX ``[N,A,5+C]``, raw grid offsets (default) or decoded pixels; score = objectness * class."""

    name = "yolox"
    layout = "one output [N,A,5+C]"
    default_color_order = "BGR"
    default_normalization = Normalization(scale=1.0)
    default_centered = False

    def __init__(self, input_hw, output_names, layout):
        super().__init__(input_hw, output_names, layout)
        self.decoded = bool(layout.get("decoded", False))
        self._cells, self._strides = anchor_grid(self.input_hw)

    @classmethod
    def check_layout(cls, output_names, output_shapes, input_hw):
        num_classes = _static_dim(_single_output_channels(output_shapes, 1, input_hw), minimum=6)
        return None if num_classes is None else num_classes - 5

    def __call__(self, outputs):
        predictions = outputs[0]
        centers, sizes = predictions[..., 0:2], predictions[..., 2:4]
        if not self.decoded:
            _check_anchor_count(predictions.shape[1], len(self._cells), self.input_hw)
            centers = (centers + self._cells) * self._strides
            sizes = np.exp(sizes) * self._strides
        return _center_size_to_xyxy(centers, sizes), predictions[..., 4:5] * predictions[..., 5:]


class Yolov8Adapter(OutputAdapter):
    """Ultralytics YOLOv8 ``[N,4+C,A]``: centre/size in pixels, then class scores."""

    name = "yolov8"
    layout = "one output [N,4+C,A]"
    default_color_order = "RGB"
    default_normalization = Normalization(scale=1 / 255)
    default_centered = True

    @classmethod
    def check_layout(cls, output_names, output_shapes, input_hw):
        num_classes = _static_dim(_single_output_channels(output_shapes, 2, input_hw), minimum=5)
        return None if num_classes is None else num_classes - 4

    def __call__(self, outputs):
        predictions = outputs[0].transpose(0, 2, 1)
        return _center_size_to_xyxy(predictions[..., 0:2], predictions[..., 2:4]), predictions[..., 4:]


ADAPTERS: dict[str, type[OutputAdapter]] = {a.name: a for a in (NativeAdapter, YoloxAdapter, Yolov8Adapter)}
OUTPUT_FORMATS = tuple(ADAPTERS)


def adapt(adapter: OutputAdapter, outputs: Sequence[np.ndarray], batch: int) -> tuple[np.ndarray, np.ndarray]:
    """``adapter(outputs)``, checked: boxes ``[batch,K,4]`` and scores ``[batch,K,C]`` (C >= 1).

    The loader checks the *declared* output shapes; symbolic dims are only known at run time, where a
    model may return shapes its layout cannot take. That is a ModelLoadError naming the shapes, not an
    IndexError from deep inside numpy."""
    try:
        boxes, scores = adapter(outputs)
        boxes, scores = np.asarray(boxes), np.asarray(scores)
        problem = ""
        if boxes.ndim != 3 or scores.ndim != 3 or boxes.shape[2] != 4 or boxes.shape[:2] != scores.shape[:2]:
            problem = f"gave boxes {list(boxes.shape)} and scores {list(scores.shape)}, expected [N,K,4] and [N,K,C]"
        elif boxes.shape[0] != batch or scores.shape[2] < 1:
            problem = f"gave {boxes.shape[0]} images and {scores.shape[2]} classes for a batch of {batch}"
    except (IndexError, ValueError, TypeError) as exc:
        problem = f"failed ({type(exc).__name__}: {exc})"
    if problem:
        shapes = ", ".join(str(list(np.shape(o))) for o in outputs)
        raise ModelLoadError(f"model outputs at run time ({shapes}) do not fit the {adapter.name} layout "
                             f"({adapter.layout}): the adapter {problem}")
    return boxes, scores


def matching_formats(output_names: Sequence[str], output_shapes: Sequence[Shape],
                     input_hw: tuple[int, int]) -> list[str]:
    """Names of the formats whose layout the outputs fit."""
    matches = []
    for name, adapter in ADAPTERS.items():
        try:
            adapter.check_layout(output_names, output_shapes, input_hw)
        except ValueError:
            continue
        matches.append(name)
    return matches


def describe_formats() -> str:
    """``native: ..., yolox: ..., yolov8: ...`` for error messages."""
    return "; ".join(f"{name}: {adapter.layout}" for name, adapter in ADAPTERS.items())


def describe_outputs(output_names: Sequence[str], output_shapes: Sequence[Shape]) -> str:
    """``boxes [1, 2100, 4], scores [1, 2100, 6]`` for error messages (symbolic dims by name, unknown as ?)."""
    return ", ".join(f"{name} [{', '.join('?' if d is None else str(d) for d in shape)}]"
                     for name, shape in zip(output_names, output_shapes))


def expected_anchors(input_hw: tuple[int, int]) -> int:
    """Anchor points of the stride 8/16/32 grids for an input of ``input_hw``."""
    height, width = input_hw
    return sum(math.ceil(height / s) * math.ceil(width / s) for s in GRID_STRIDES)


def anchor_grid(input_hw: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """(integer cell positions [A,2] as x, y; stride [A,1]) of all grid levels, finest first, row-major."""
    height, width = input_hw
    cells, strides = [], []
    for stride in GRID_STRIDES:
        ys, xs = np.meshgrid(np.arange(math.ceil(height / stride)), np.arange(math.ceil(width / stride)),
                             indexing="ij")
        cells.append(np.stack([xs.ravel(), ys.ravel()], axis=1))
        strides.append(np.full((xs.size, 1), stride))
    return np.concatenate(cells).astype(np.float32), np.concatenate(strides).astype(np.float32)


def _single_output_channels(output_shapes: Sequence[Shape], anchor_axis: int, input_hw: tuple[int, int]):
    """Channel dim of a single rank-3 output ``[N, A, ch]`` / ``[N, ch, A]``; ValueError if not one or A is wrong."""
    if len(output_shapes) != 1 or len(output_shapes[0]) != 3:
        raise ValueError("expected exactly one rank-3 output")
    shape = output_shapes[0]
    anchors, channels = shape[anchor_axis], shape[3 - anchor_axis]
    if isinstance(anchors, int) and anchors != expected_anchors(input_hw):
        raise ValueError(f"{anchors} anchors, expected {expected_anchors(input_hw)} for input "
                         f"{input_hw[0]}x{input_hw[1]}")
    return channels


def _static_dim(dim, minimum: int) -> int | None:
    """A static dim (>= minimum) as int, None if symbolic; ValueError if static and too small."""
    if not isinstance(dim, int):
        return None
    if dim < minimum:
        raise ValueError(f"dimension {dim} < {minimum}")
    return dim


def _check_anchor_count(actual: int, expected: int, input_hw: tuple[int, int]) -> None:
    if actual != expected:
        raise ModelLoadError(f"yolox output has {actual} anchors, expected {expected} for input "
                             f"{input_hw[0]}x{input_hw[1]} at strides {GRID_STRIDES}")


def _center_size_to_xyxy(centers: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    half = sizes * 0.5
    return np.concatenate([centers - half, centers + half], axis=-1)
