"""Export a pruned imported model back to ONNX as a drop-in replacement for the original file.

Kept from the original: input/output names, element types and declared shapes (symbolic dims such
as a dynamic batch stay symbolic under the same names), the default-domain opset, and every
``metadata_props`` entry. Added: our pruning record (:func:`pruning_metadata`). A parity check
(torch vs ONNX Runtime on two random batches) must pass before the file is written.
"""

from __future__ import annotations

import io
import json
import warnings
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch

from prune_perception.errors import ExportError
from prune_perception.export.metadata import KEY_CREATED, KEY_FORMAT, KEY_MODEL_HASH, KEY_PRUNING, model_hash
from prune_perception.export.onnx_export import write_model_atomically
from prune_perception.external.layout import as_output_list
from prune_perception.external.onnx_import import ImportedOnnx, read_signature

EXTERNAL_PRUNING_KEY = "prune_perception.pruning"
"""Our record in a model without our metadata (a key the runtime's metadata check does not look at)."""
PARITY_TOLERANCE = 1e-3
"""Max |torch - ORT| relative to the output's magnitude (max(1, max|torch|))."""


def pruning_metadata(original: dict[str, str], record: dict[str, Any], hash_hex: str) -> dict[str, str]:
    """The original metadata_props plus our record.

    Models with our own metadata get their ``pruning`` entry replaced (the dense record moves to
    ``pruned_from``), a new ``model_hash`` and ``created``; the runtime checks their keys strictly.
    Any other model keeps every key and gains ``prune_perception.pruning``.
    """
    metadata = dict(original)
    if KEY_FORMAT in metadata:
        record = dict(record, pruned_from=json.loads(metadata.get(KEY_PRUNING) or "null"))
        metadata.update({KEY_PRUNING: json.dumps(record), KEY_MODEL_HASH: hash_hex,
                         KEY_CREATED: datetime.now(timezone.utc).isoformat(timespec="seconds")})
    else:
        metadata[EXTERNAL_PRUNING_KEY] = json.dumps(record)
    return metadata


def _dynamic_axes(imported: ImportedOnnx) -> dict[str, dict[int, str]]:
    axes = {}
    for tensor in (*imported.signature.inputs, *imported.signature.outputs):
        symbolic = {axis: dim for axis, dim in enumerate(tensor.dims) if not isinstance(dim, int)}
        if symbolic:
            axes[tensor.name] = symbolic
    return axes


def _declare_original_shapes(model: onnx.ModelProto, imported: ImportedOnnx) -> None:
    """Write the original's declared dims (static sizes, symbolic names) onto the exported graph's IO."""
    originals = {t.name: t for t in (*imported.signature.inputs, *imported.signature.outputs)}
    for value in (*model.graph.input, *model.graph.output):
        original = originals.get(value.name)
        if original is None:
            continue
        shape = value.type.tensor_type.shape
        del shape.dim[:]
        for dim in original.dims:
            new = shape.dim.add()
            if isinstance(dim, int):
                new.dim_value = dim
            elif dim != "?":
                new.dim_param = dim


def trace_like_original(module: torch.nn.Module, imported: ImportedOnnx) -> onnx.ModelProto:
    """torch.onnx.export (legacy tracer) with the original's IO names, dynamic axes and opset."""
    signature = imported.signature
    buffer = io.BytesIO()
    module.eval()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(module, (imported.example_input(),), buffer,
                              input_names=[t.name for t in signature.inputs],
                              output_names=[t.name for t in signature.outputs],
                              opset_version=signature.opset, dynamic_axes=_dynamic_axes(imported) or None,
                              do_constant_folding=True, dynamo=False)
    except Exception as exc:  # the exporter raises many types
        raise ExportError(f"torch.onnx.export of the pruned model failed at opset {signature.opset}: "
                          f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
    model = onnx.load_from_string(buffer.getvalue())
    _declare_original_shapes(model, imported)
    return model


@torch.no_grad()
def check_parity(module: torch.nn.Module, model: onnx.ModelProto, imported: ImportedOnnx) -> float:
    """Max relative |torch - ORT| over two random batches; ExportError above PARITY_TOLERANCE or on an IO mismatch."""
    try:
        session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise ExportError(f"ONNX Runtime cannot load the pruned model: {str(exc).splitlines()[0]}") from None
    input_name = imported.signature.inputs[0].name
    worst = 0.0
    batches = 2 if imported.signature.dynamic_batch else 1
    for seed in range(2):
        images = np.random.default_rng(seed).random((batches, 3, *imported.input_hw), dtype=np.float32)
        expected = [t.numpy() for t in as_output_list(module(torch.from_numpy(images)))]
        actual = session.run([t.name for t in imported.signature.outputs], {input_name: images})
        for output, want, got in zip(imported.signature.outputs, expected, actual):
            if want.shape != got.shape:
                raise ExportError(f"pruned model's output {output.name} has shape {list(got.shape)} in ONNX Runtime, "
                                  f"torch gives {list(want.shape)}")
            worst = max(worst, float(np.abs(want - got).max()) / max(1.0, float(np.abs(want).max())))
    if worst > PARITY_TOLERANCE:
        raise ExportError(f"pruned ONNX differs from torch by {worst:.2e} (relative), over {PARITY_TOLERANCE}")
    return worst


def export_pruned(module: torch.nn.Module, imported: ImportedOnnx, path: str | Path,
                  record: dict[str, Any]) -> tuple[Path, float]:
    """Write the pruned ``module`` as a drop-in for ``imported``; returns (path, parity error)."""
    model = trace_like_original(module, imported)
    new_signature = read_signature(model)
    if new_signature.inputs != imported.signature.inputs or new_signature.outputs != imported.signature.outputs:
        raise ExportError(f"pruned model's IO ({new_signature.describe()}) differs from the original's "
                          f"({imported.signature.describe()})")
    parity = check_parity(module, model, imported)
    original = {prop.key: prop.value for prop in imported.proto.metadata_props}
    onnx.helper.set_model_props(model, pruning_metadata(original, dict(record, parity_max_rel_diff=parity),
                                                        model_hash(model)))
    path = Path(path)
    write_model_atomically(model, path)
    return path, parity
