"""The `metadata_props` of our ONNX models (docs/design.md §5): key names, fixed values, hash, read/write.

Torch-free (onnx, stdlib and runtime/letterbox only), so the runtime may import it. Every value is a string; structured
values are JSON. Keys written by the exporter:

- ``prune_perception.format``: ``"prune_perception.onnx/1"``
- ``classes``: JSON list of class names (index = class id in ``scores``)
- ``input_size``: JSON ``[H, W]`` of the network input
- ``color_order``: ``"RGB"``
- ``normalization``: JSON ``{"scale", "mean", "std"}``; ``x = (pixel * scale - mean) / std``
- ``letterbox``: JSON ``{"pad_value": 114, "centered": true}``
- ``output_layout``: JSON describing the native outputs ``boxes`` / ``scores``
- ``model_hash``: see :func:`model_hash`
- ``pruning``: JSON; the checkpoint's pruning record (or ``{"method": "none"}``) with ``params`` and
  ``macs`` measured on the exported network (batch 1), ``source_checkpoint`` ``{"path", "sha256"}``
  of the exported checkpoint and, for pruned models, ``pruned_from`` ``{"path", "sha256"}``
- ``created``: ISO-8601 UTC time of the export
- ``quantization`` (INT8 models only): JSON ``{"type", "calibration_images", "excluded_nodes"}``
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, timezone
from typing import Any

import onnx

from prune_perception.runtime.letterbox import DEFAULT_PAD_VALUE

FORMAT = "prune_perception.onnx/1"

KEY_FORMAT = "prune_perception.format"
KEY_CLASSES = "classes"
KEY_INPUT_SIZE = "input_size"
KEY_COLOR_ORDER = "color_order"
KEY_NORMALIZATION = "normalization"
KEY_LETTERBOX = "letterbox"
KEY_OUTPUT_LAYOUT = "output_layout"
KEY_MODEL_HASH = "model_hash"
KEY_PRUNING = "pruning"
KEY_CREATED = "created"
KEY_QUANTIZATION = "quantization"

REQUIRED_KEYS = (KEY_FORMAT, KEY_CLASSES, KEY_INPUT_SIZE, KEY_COLOR_ORDER, KEY_NORMALIZATION, KEY_LETTERBOX,
                 KEY_OUTPUT_LAYOUT, KEY_MODEL_HASH, KEY_PRUNING, KEY_CREATED)
"""Keys every model written by the exporter carries (INT8 models add KEY_QUANTIZATION)."""

COLOR_ORDER = "RGB"
NORMALIZATION = {"scale": 1.0 / 255.0, "mean": [0.0, 0.0, 0.0], "std": [1.0, 1.0, 1.0]}
LETTERBOX = {"pad_value": DEFAULT_PAD_VALUE, "centered": True}
NATIVE_OUTPUT_LAYOUT = {
    "name": "native",
    "boxes": "xyxy input pixels [N,K,4]",
    "scores": "sigmoid [N,K,C]",
}
QUANTIZATION_TYPE_INT8 = "int8_static_qdq"


def model_hash(model: onnx.ModelProto) -> str:
    """sha256 hex of the model serialized without its metadata_props.

    Covers everything else in the file: graph, weights, opset imports, producer and IR version.
    So it identifies the network (two exports of one checkpoint give the same hash) and can be
    re-checked from a file: load it, call this function, compare with the ``model_hash`` entry.
    """
    stripped = onnx.ModelProto()
    stripped.CopyFrom(model)
    del stripped.metadata_props[:]
    return hashlib.sha256(stripped.SerializeToString(deterministic=True)).hexdigest()


def build_metadata(classes: list[str], input_hw: tuple[int, int], pruning: dict[str, Any], hash_hex: str,
                   created: datetime | None = None) -> dict[str, str]:
    """All REQUIRED_KEYS as strings (``created`` defaults to now, UTC)."""
    created = created or datetime.now(timezone.utc)
    return {
        KEY_FORMAT: FORMAT,
        KEY_CLASSES: json.dumps(list(classes)),
        KEY_INPUT_SIZE: json.dumps([int(input_hw[0]), int(input_hw[1])]),
        KEY_COLOR_ORDER: COLOR_ORDER,
        KEY_NORMALIZATION: json.dumps(NORMALIZATION),
        KEY_LETTERBOX: json.dumps(LETTERBOX),
        KEY_OUTPUT_LAYOUT: json.dumps(NATIVE_OUTPUT_LAYOUT),
        KEY_MODEL_HASH: hash_hex,
        KEY_PRUNING: json.dumps(pruning),
        KEY_CREATED: created.astimezone(timezone.utc).isoformat(timespec="seconds"),
    }


def set_metadata(model: onnx.ModelProto, metadata: dict[str, str]) -> None:
    """Replace the model's metadata_props with `metadata` (keys sorted)."""
    del model.metadata_props[:]
    onnx.helper.set_model_props(model, dict(sorted(metadata.items())))


def read_metadata(model: onnx.ModelProto) -> dict[str, str]:
    """The model's metadata_props as a dict."""
    return {prop.key: prop.value for prop in model.metadata_props}
