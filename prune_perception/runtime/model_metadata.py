"""What the runtime knows about a loaded model: metadata (docs/design.md §5), input/output signature, output format.

Read from an ONNX Runtime session (no ``onnx`` package needed on the vehicle).

Our exports carry ``metadata_props`` with ``prune_perception.format = prune_perception.onnx/1``;
then every key of the contract must be present and valid and no unknown key may appear (a typo
would otherwise silently fall back to a default). Models without that key are *external*
(YOLOX, YOLOv8): their pre-processing follows the format's own exporter and demo code
(see :mod:`prune_perception.runtime.adapters`):

- ``yolox``: BGR, raw 0..255 pixels (scale 1, no mean/std), grey 114 padding with the image at the
  top-left. Source: YOLOX ``preproc`` (yolox/data/data_augment.py) as used by the official
  demo/ONNXRuntime/onnx_inference.py on ``cv2.imread`` (BGR) images; since YOLOX 0.1.1 models take
  unnormalised pixels (pre-0.1.1 "legacy" models want RGB / 255 with ImageNet mean/std; there is no
  mean/std override, so those are not supported).
- ``yolov8``: RGB, pixels / 255, grey 114 padding centred. Source: Ultralytics
  examples/YOLOv8-ONNXRuntime/main.py (BGR->RGB, ``LetterBox`` centred, ``/ 255.0``).
- ``native`` forced on a model without metadata: docs/design.md §5 defaults, RGB, / 255, 114 centred.

YOLOX resizes to ``int(side * r)``, we round: the fitted image can differ by one pixel, boxes
are mapped back with the exact scale either way. Colour order, scale, input size, class names
and the YOLOX box encoding can be overridden (:class:`ModelOverrides`); overrides win over
metadata and defaults. Class names of external models: ``class_names`` override, else the
``names`` property Ultralytics writes into its exports, else the 80 COCO names when the model has
80 classes (the official YOLOX/YOLOv8 weights are COCO models), else ``class_0, class_1, ...``.
"""

from __future__ import annotations

import ast
import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prune_perception.errors import ConfigError, ModelLoadError
from prune_perception.runtime.adapters import (ADAPTERS, OUTPUT_FORMATS, Shape, describe_formats,
                                               describe_outputs, matching_formats)
from prune_perception.runtime.coco_classes import COCO80_CLASSES
from prune_perception.runtime.letterbox import DEFAULT_PAD_VALUE
from prune_perception.runtime.preprocess import Normalization, PreprocessSpec, color_order_name

FORMAT_KEY = "prune_perception.format"
FORMAT_VERSION = "prune_perception.onnx/1"
REQUIRED_KEYS = (FORMAT_KEY, "classes", "input_size", "color_order", "normalization", "letterbox",
                 "output_layout", "model_hash", "pruning", "created")
OPTIONAL_KEYS = ("quantization",)
MODEL_FORMATS = ("auto", *OUTPUT_FORMATS)
MAX_INPUT_PIXELS = 4096 * 4096
"""Largest network input H x W the runtime accepts: one float32 input alone is 200 MB there; a model
declaring more (e.g. [1, 3, 100000, 100000]) would exhaust memory at its first inference."""
MAX_OUTPUT_ELEMENTS = 1 << 28
"""Largest static output (elements, 1 GiB of float32) a model may declare, for the same reason."""


@dataclass(frozen=True)
class ModelOverrides:
    """User settings that win over metadata and format defaults (mainly for external models)."""

    input_size: tuple[int, int] | None = None
    """(H, W) network input; needed for external models with dynamic H/W."""
    input_color_order: str | None = None
    """Colour order the network expects: 'RGB' or 'BGR'."""
    input_scale: float | None = None
    """Pixel scale before mean/std, e.g. 1/255 or 1.0."""
    class_names: tuple[str, ...] | None = None
    yolox_decoded: bool | None = None
    """YOLOX outputs already decoded to pixels (exported with --decode_in_inference); default False."""

    def __post_init__(self):
        if self.input_size is not None and not _is_hw(self.input_size):
            raise ConfigError(f"input_size must be [H, W] with positive ints, got {self.input_size!r}")
        if self.input_color_order is not None:
            color_order_name(self.input_color_order, "input_color_order")
        if self.input_scale is not None and not (_is_number(self.input_scale) and self.input_scale > 0):
            raise ConfigError(f"input_scale must be a positive number, got {self.input_scale!r}")
        if self.class_names is not None and not _is_name_list(self.class_names):
            raise ConfigError(f"class_names must be a non-empty list of non-empty strings, got {self.class_names!r}")


@dataclass(frozen=True)
class ModelInfo:
    """A loaded model as the runtime sees it."""

    path: Path
    file_sha256: str
    output_format: str
    """native / yolox / yolov8."""
    format_source: str
    """How the format was chosen: 'metadata', 'model_format' (forced) or 'output shapes' (auto-detected)."""
    output_layout: dict[str, Any]
    """{'name': format, ...options} (from metadata, or built for external models)."""
    classes: tuple[str, ...]
    preprocess: PreprocessSpec
    input_name: str
    output_names: tuple[str, ...]
    output_shapes: tuple[Shape, ...]
    batch_size: int | None
    """1 for a fixed-batch model, None for a dynamic batch."""
    has_metadata: bool
    model_hash: str | None = None
    pruning: dict[str, Any] | None = None
    quantization: dict[str, Any] | None = None
    created: str | None = None
    metadata: dict[str, str] = field(default_factory=dict, repr=False)
    """All raw metadata_props strings."""

    @property
    def input_hw(self) -> tuple[int, int]:
        return self.preprocess.input_hw

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def dynamic_batch(self) -> bool:
        return self.batch_size is None


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for chunk in iter(lambda: stream.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_model_info(path: Path, session, model_format: str = "auto",
                    overrides: ModelOverrides = ModelOverrides()) -> ModelInfo:
    """Validate a session's model (input, outputs, metadata, layout) and describe it; ModelLoadError if unfit."""
    path = Path(path)
    model_format = model_format_name(model_format)
    input_name, batch_size, model_hw = _input_signature(path, session)
    output_names = tuple(o.name for o in session.get_outputs())
    output_shapes = tuple(tuple(o.shape) for o in session.get_outputs())
    _check_output_sizes(path, output_names, output_shapes)
    props = dict(session.get_modelmeta().custom_metadata_map)
    metadata = _parse_metadata(path, props) if FORMAT_KEY in props else None

    declared_hw = overrides.input_size or (metadata["input_size"] if metadata else None)
    input_hw = _input_hw(path, model_hw, declared_hw)

    if metadata:
        output_format, source = metadata["output_layout"]["name"], "metadata"
        if model_format not in ("auto", output_format):
            raise ModelLoadError(f"{path}: metadata says output layout {output_format!r} but "
                                 f"model_format={model_format!r}; use model_format=auto or {output_format}")
    elif model_format != "auto":
        output_format, source = model_format, "model_format"
    else:
        output_format, source = _detect_format(path, output_names, output_shapes, input_hw), "output shapes"
    adapter = ADAPTERS[output_format]
    try:
        num_classes = adapter.check_layout(output_names, output_shapes, input_hw)
    except ValueError as exc:
        raise ModelLoadError(f"{path}: outputs {describe_outputs(output_names, output_shapes)} do not fit "
                             f"the {output_format} layout ({adapter.layout}): {exc}") from None

    if overrides.yolox_decoded and output_format != "yolox":
        raise ConfigError(f"yolox_decoded applies to yolox models only; this model is {output_format}")
    output_layout = dict(metadata["output_layout"]) if metadata else {"name": output_format}
    if output_format == "yolox":
        output_layout["decoded"] = bool(output_layout.get("decoded", False) if overrides.yolox_decoded is None
                                        else overrides.yolox_decoded)

    classes = _classes(path, num_classes, overrides.class_names or (metadata["classes"] if metadata else None),
                       props)
    if metadata:
        normalization, color_order = metadata["normalization"], metadata["color_order"]
        pad_value, centered = metadata["letterbox"]["pad_value"], metadata["letterbox"]["centered"]
    else:
        normalization, color_order = adapter.default_normalization, adapter.default_color_order
        pad_value, centered = DEFAULT_PAD_VALUE, adapter.default_centered
    if overrides.input_scale is not None:
        normalization = Normalization(overrides.input_scale, normalization.mean, normalization.std)
    if overrides.input_color_order is not None:
        color_order = color_order_name(overrides.input_color_order, "input_color_order")
    return ModelInfo(
        path=path, file_sha256=file_sha256(path), output_format=output_format, format_source=source,
        output_layout=output_layout, classes=classes,
        preprocess=PreprocessSpec(input_hw, color_order, normalization, pad_value, centered),
        input_name=input_name, output_names=output_names, output_shapes=output_shapes, batch_size=batch_size,
        has_metadata=metadata is not None,
        model_hash=metadata["model_hash"] if metadata else None,
        pruning=metadata["pruning"] if metadata else None,
        quantization=metadata.get("quantization") if metadata else None,
        created=metadata["created"] if metadata else None,
        metadata=props)


# --------------------------------------------------------------------------- options


def model_format_name(value: str) -> str:
    """``'auto'``/``'YOLOX'``/... -> lower-case format name; ConfigError listing the known ones otherwise."""
    name = str(value).strip().lower()
    if name not in MODEL_FORMATS:
        raise ConfigError(f"model_format {value!r} unknown; known: {', '.join(MODEL_FORMATS)}")
    return name


# --------------------------------------------------------------------------- signature


def _input_signature(path: Path, session) -> tuple[str, int | None, tuple]:
    """(input name, batch size or None if dynamic, (H, W) dims as reported)."""
    inputs = session.get_inputs()
    if len(inputs) != 1:
        raise ModelLoadError(f"{path}: expected one image input, the model has {len(inputs)}: "
                             f"{', '.join(i.name for i in inputs)}")
    tensor = inputs[0]
    shape = tuple(tensor.shape)
    if tensor.type != "tensor(float)":
        raise ModelLoadError(f"{path}: input {tensor.name!r} is {tensor.type}, expected tensor(float) (float32)")
    if len(shape) != 4 or (isinstance(shape[1], int) and shape[1] != 3):
        raise ModelLoadError(f"{path}: input {tensor.name!r} has shape {list(shape)}, expected [N, 3, H, W]")
    batch = shape[0] if isinstance(shape[0], int) else None
    if batch is not None and batch != 1:
        raise ModelLoadError(f"{path}: input batch size is fixed at {batch}; export with batch 1 or a dynamic batch")
    return tensor.name, batch, shape[2:]


def _input_hw(path: Path, model_hw: tuple, declared_hw) -> tuple[int, int]:
    """Network input (H, W): the model's static dims, which must agree with metadata/override if given."""
    static = all(isinstance(d, int) for d in model_hw)
    if declared_hw is not None:
        declared_hw = tuple(int(d) for d in declared_hw)
        if static and tuple(model_hw) != declared_hw:
            raise ModelLoadError(f"{path}: input size {list(declared_hw)} (metadata or input_size) disagrees with "
                                 f"the model's input {list(model_hw)}")
        hw = declared_hw
    elif not static:
        raise ModelLoadError(f"{path}: the model's input H/W are dynamic ({list(model_hw)}) and no input size is "
                             "given: set input_size [H, W]")
    else:
        hw = tuple(model_hw)
    if min(hw) <= 0 or hw[0] * hw[1] > MAX_INPUT_PIXELS:
        raise ModelLoadError(f"{path}: input size {hw[0]}x{hw[1]} is not usable: H and W must be > 0 and H x W at "
                             f"most {MAX_INPUT_PIXELS} ({int(MAX_INPUT_PIXELS ** 0.5)}x{int(MAX_INPUT_PIXELS ** 0.5)})")
    return hw


def _check_output_sizes(path: Path, names, shapes) -> None:
    """ModelLoadError for a static output dim < 0 or an output declaring more than MAX_OUTPUT_ELEMENTS."""
    for name, shape in zip(names, shapes):
        static = [d for d in shape if isinstance(d, int)]
        if any(d < 0 for d in static) or math.prod(static) > MAX_OUTPUT_ELEMENTS:
            raise ModelLoadError(f"{path}: output {name!r} declares shape {list(shape)}: more than "
                                 f"{MAX_OUTPUT_ELEMENTS} elements or a negative dim")


def _detect_format(path: Path, names, shapes, input_hw) -> str:
    """The external format whose layout the outputs fit; ModelLoadError naming shapes and known formats."""
    matches = matching_formats(names, shapes, input_hw)
    external = [name for name in matches if name != "native"]
    if len(external) == 1:
        return external[0]
    if len(external) > 1:
        problem = f"the outputs fit several layouts ({', '.join(external)})"
    elif matches:
        problem = ("the outputs look like the native layout, but a native model needs its metadata "
                   "(re-export it, or force model_format=native for the default RGB 1/255 input)")
    else:
        problem = "the output layout is not recognised"
    raise ModelLoadError(f"{path}: no prune_perception metadata found ({FORMAT_KEY!r} missing) and {problem}; "
                         f"outputs: {describe_outputs(names, shapes)}; input {input_hw[0]}x{input_hw[1]}; "
                         f"known formats: {describe_formats()}; set model_format to one of "
                         f"{', '.join(OUTPUT_FORMATS)}")


def _classes(path: Path, num_classes: int | None, names, props: dict[str, str]) -> tuple[str, ...]:
    """Class names: given names (override or metadata), Ultralytics 'names', COCO-80, or class_i."""
    names = names or _ultralytics_names(props)
    if names is not None:
        if num_classes is not None and len(names) != num_classes:
            raise ModelLoadError(f"{path}: {len(names)} class names given but the model outputs {num_classes} "
                                 "classes")
        return tuple(names)
    if num_classes is None:
        raise ModelLoadError(f"{path}: the class count is dynamic in the outputs and no class names are given")
    if num_classes == len(COCO80_CLASSES):
        return COCO80_CLASSES
    return tuple(f"class_{i}" for i in range(num_classes))


def _ultralytics_names(props: dict[str, str]) -> list[str] | None:
    """Ultralytics exports store ``names`` as a Python dict literal ``{0: 'person', ...}``; None if absent/invalid."""
    try:
        names = ast.literal_eval(props["names"])
    except (KeyError, ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return None
    if isinstance(names, dict) and sorted(names) == list(range(len(names))):
        names = [names[i] for i in range(len(names))]
    return list(names) if _is_name_list(names) else None


# --------------------------------------------------------------------------- our metadata


def _parse_metadata(path: Path, props: dict[str, str]) -> dict[str, Any]:
    """Typed values of our metadata_props; ModelLoadError on unknown/missing keys or invalid values."""
    unknown = sorted(set(props) - set(REQUIRED_KEYS) - set(OPTIONAL_KEYS))
    missing = [key for key in REQUIRED_KEYS if key not in props]
    if unknown or missing:
        raise ModelLoadError(f"{path}: {FORMAT_VERSION} metadata "
                             + "; ".join(filter(None, [unknown and f"has unknown keys {unknown}",
                                                       missing and f"misses keys {missing}"]))
                             + f" (expected {list(REQUIRED_KEYS)}, optional {list(OPTIONAL_KEYS)})")
    if props[FORMAT_KEY] != FORMAT_VERSION:
        raise ModelLoadError(f"{path}: metadata format {props[FORMAT_KEY]!r} not supported; this runtime reads "
                             f"{FORMAT_VERSION!r}")

    def invalid(key: str, expected: str):
        return ModelLoadError(f"{path}: metadata {key!r} must be {expected}, got {props[key]!r}")

    def json_value(key: str, check, expected: str):
        try:
            value = json.loads(props[key])
        except json.JSONDecodeError:
            raise invalid(key, f"JSON {expected}") from None
        if not check(value):
            raise invalid(key, f"JSON {expected}")
        return value

    values: dict[str, Any] = {
        "classes": tuple(json_value("classes", _is_name_list, "list of non-empty class names")),
        "input_size": tuple(json_value("input_size", _is_hw, "[H, W] with positive ints")),
        "normalization": _normalization(json_value(
            "normalization", _is_normalization, 'object {"scale": >0, "mean": [3 numbers], "std": [3 numbers >0]}')),
        "letterbox": json_value("letterbox", _is_letterbox, 'object {"pad_value": 0..255, "centered": true/false}'),
        "output_layout": json_value("output_layout", _is_output_layout,
                                    f"object with \"name\" one of {list(OUTPUT_FORMATS)}"),
        "pruning": json_value("pruning", lambda v: v is None or isinstance(v, dict), "object or null"),
    }
    try:
        values["color_order"] = color_order_name(props["color_order"])
    except ConfigError:
        raise invalid("color_order", '"RGB" or "BGR"') from None
    for key in ("model_hash", "created"):
        if not props[key].strip():
            raise invalid(key, "a non-empty string")
        values[key] = props[key]
    if "quantization" in props:
        values["quantization"] = json_value("quantization", lambda v: isinstance(v, dict), "object")
    return values


def _normalization(value: dict) -> Normalization:
    return Normalization(float(value["scale"]), tuple(map(float, value["mean"])), tuple(map(float, value["std"])))


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_hw(value) -> bool:
    return (isinstance(value, (list, tuple)) and len(value) == 2
            and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value))


def _is_name_list(value) -> bool:
    return (isinstance(value, (list, tuple)) and len(value) > 0
            and all(isinstance(v, str) and v.strip() for v in value))


def _is_triple(value, positive: bool) -> bool:
    return (isinstance(value, list) and len(value) == 3
            and all(_is_number(v) and (v > 0 or not positive) for v in value))


def _is_normalization(value) -> bool:
    return (isinstance(value, dict) and set(value) == {"scale", "mean", "std"}
            and _is_number(value["scale"]) and value["scale"] > 0
            and _is_triple(value["mean"], positive=False) and _is_triple(value["std"], positive=True))


def _is_letterbox(value) -> bool:
    return (isinstance(value, dict) and set(value) == {"pad_value", "centered"}
            and isinstance(value["pad_value"], int) and not isinstance(value["pad_value"], bool)
            and 0 <= value["pad_value"] <= 255 and isinstance(value["centered"], bool))


def _is_output_layout(value) -> bool:
    return isinstance(value, dict) and value.get("name") in OUTPUT_FORMATS
