"""What an imported detector's outputs mean and how its input is prepared, as the runtime engine sees it.

The output format and pre-processing come from the runtime's own reader
(:func:`prune_perception.runtime.model_metadata.read_model_info`) on an ONNX Runtime session of the
original file, so pruning sees exactly what the node will: ``native`` (our metadata), ``yolox``
(BGR, raw 0..255, top-left padding) and ``yolov8`` (RGB, /255, centred). Outputs that fit no known
layout are ``raw`` (with ``model_format: auto``; outputs that fit several stay an error): they cannot be decoded, distillation matches them element by element, and the input
is RGB /255 centred unless ``input_color_order`` / ``input_scale`` say otherwise.

:func:`decode_outputs` is the torch (differentiable) twin of the runtime's output adapters
(:mod:`prune_perception.runtime.adapters`): same box conventions, same grid.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnxruntime as ort
import torch

from prune_perception.errors import ConfigError, ModelLoadError
from prune_perception.pruning.choices import IMPORTED_MODEL_FORMATS, RAW_OUTPUT_FORMAT
from prune_perception.runtime.adapters import anchor_grid, matching_formats
from prune_perception.runtime.letterbox import DEFAULT_PAD_VALUE
from prune_perception.runtime.model_metadata import ModelOverrides, read_model_info
from prune_perception.runtime.preprocess import Normalization, PreprocessSpec, color_order_name

RAW_FORMAT = RAW_OUTPUT_FORMAT
PRUNE_MODEL_FORMATS = IMPORTED_MODEL_FORMATS


@dataclass(frozen=True)
class DetectorLayout:
    """Output format (native / yolox / yolov8 / raw), its options, class names and the input pre-processing."""

    output_format: str
    preprocess: PreprocessSpec
    output_names: tuple[str, ...]
    output_layout: dict[str, Any] = field(default_factory=dict)
    classes: tuple[str, ...] = ()
    note: str = ""
    """Why the layout is raw when model_format was auto (empty otherwise)."""

    @property
    def decodable(self) -> bool:
        return self.output_format != RAW_FORMAT


def resolve_layout(path: str | Path, input_hw: tuple[int, int], model_format: str = "auto",
                   overrides: ModelOverrides = ModelOverrides()) -> DetectorLayout:
    """The layout of the ONNX file at ``path``; ``auto`` falls back to ``raw`` when the engine cannot read it."""
    model_format = str(model_format).strip().lower()
    if model_format not in PRUNE_MODEL_FORMATS:
        raise ConfigError(f"model_format {model_format!r} unknown; known: {', '.join(PRUNE_MODEL_FORMATS)}")
    overrides = ModelOverrides(tuple(input_hw), overrides.input_color_order, overrides.input_scale,
                               overrides.class_names, overrides.yolox_decoded)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    output_names = tuple(o.name for o in session.get_outputs())
    note = ""
    if model_format != RAW_FORMAT:
        try:
            info = read_model_info(Path(path), session, model_format, overrides)
            return DetectorLayout(info.output_format, info.preprocess, info.output_names, info.output_layout,
                                  info.classes)
        except ModelLoadError as exc:
            shapes = [tuple(o.shape) for o in session.get_outputs()]
            if model_format != "auto" or matching_formats(output_names, shapes, tuple(input_hw)):
                raise
            note = f"outputs not decodable as a known layout ({exc}): distilling raw outputs"
    color_order = color_order_name(overrides.input_color_order or "RGB", "input_color_order")
    normalization = Normalization(overrides.input_scale or 1 / 255)
    return DetectorLayout(RAW_FORMAT, PreprocessSpec(tuple(input_hw), color_order, normalization, DEFAULT_PAD_VALUE,
                                                     True), output_names, {"name": RAW_FORMAT}, (), note)


def as_output_list(outputs: torch.Tensor | Sequence[torch.Tensor] | dict) -> list[torch.Tensor]:
    """A model's outputs as a list in output order (a single tensor, a tuple/list or a dict)."""
    if isinstance(outputs, torch.Tensor):
        return [outputs]
    if isinstance(outputs, dict):
        return list(outputs.values())
    return list(outputs)


class OutputDecoder:
    """Torch outputs of a known layout -> (boxes [N,K,4] xyxy input pixels, scores [N,K,C]), differentiable."""

    def __init__(self, layout: DetectorLayout):
        if not layout.decodable:
            raise ConfigError("raw outputs cannot be decoded into boxes and scores")
        self.layout = layout
        self.decoded = bool(layout.output_layout.get("decoded", False))
        cells, strides = anchor_grid(layout.preprocess.input_hw)
        self.cells, self.strides = torch.from_numpy(cells), torch.from_numpy(strides)

    def __call__(self, outputs: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        name = self.layout.output_format
        if name == "native":
            return (outputs[self.layout.output_names.index("boxes")],
                    outputs[self.layout.output_names.index("scores")])
        if name == "yolox":
            predictions = outputs[0]
            centers, sizes = predictions[..., 0:2], predictions[..., 2:4]
            if not self.decoded:
                centers = (centers + self.cells) * self.strides
                sizes = sizes.clamp(max=20.0).exp() * self.strides   # clamp: a diverging student must not give inf
            return _center_size_to_xyxy(centers, sizes), predictions[..., 4:5] * predictions[..., 5:]
        predictions = outputs[0].transpose(1, 2)   # yolov8 [N,4+C,A] -> [N,A,4+C]
        return _center_size_to_xyxy(predictions[..., 0:2], predictions[..., 2:4]), predictions[..., 4:]


def _center_size_to_xyxy(centers: torch.Tensor, sizes: torch.Tensor) -> torch.Tensor:
    return torch.cat([centers - sizes / 2, centers + sizes / 2], dim=-1)
