"""ONNX detector -> torch graph (onnx2torch), with the file's IO signature kept for the export back.

Checks before conversion, each a :class:`ModelLoadError` in one line: the file parses, it has one
float32 ``[N, 3, H, W]`` input, every op has an onnx2torch converter (the unsupported ones are
named with their nodes), and H/W are static or given as ``input_size``. The graph is simplified with
onnxslim before conversion: the legacy torch exporter writes deduplicated weights as ``Identity``
nodes, and onnx2torch's Conv converter takes weights from initializers only. A batch fixed at 1 is
freed for conversion (:mod:`.batch_axis`), and channel Splits of a conv's output become one conv per
part (:mod:`.split_convs`: CSP blocks such as YOLOv8's C2f).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import onnx
import torch
from onnx import TensorProto

from prune_perception.errors import ModelLoadError
from prune_perception.export.onnx_export import slim_model
from prune_perception.external.batch_axis import batch_fixed_at_one, check_batch_flexible, free_batch_axis
from prune_perception.external.split_convs import split_producing_convs
from prune_perception.external.torchvision_stub import ensure_torchvision_importable, ops_needing_torchvision
from prune_perception.runtime.model_metadata import file_sha256

warnings.filterwarnings("ignore", message="Using a non-tuple sequence for multidimensional indexing",
                        category=UserWarning)   # onnx2torch's Slice, on every forward of a converted graph
Dim = int | str
"""A static size, or the name of a symbolic dimension ('?' when the file gives none)."""
MAX_NAMED_NODES = 3


@dataclass(frozen=True)
class TensorSignature:
    name: str
    elem_type: int
    dims: tuple[Dim, ...]

    def describe(self) -> str:
        return f"{self.name} {TensorProto.DataType.Name(self.elem_type).lower()} [{', '.join(map(str, self.dims))}]"


@dataclass(frozen=True)
class OnnxSignature:
    """Graph inputs/outputs (initializers excluded) and the default-domain opset."""

    inputs: tuple[TensorSignature, ...]
    outputs: tuple[TensorSignature, ...]
    opset: int

    @property
    def dynamic_batch(self) -> bool:
        return not isinstance(self.inputs[0].dims[0], int)

    def describe(self) -> str:
        return (f"inputs {'; '.join(t.describe() for t in self.inputs)}, "
                f"outputs {'; '.join(t.describe() for t in self.outputs)}")


@dataclass
class ImportedOnnx:
    """An ONNX detector converted to torch: the module, the original file's facts, the input size used."""

    path: Path
    proto: onnx.ModelProto
    module: torch.nn.Module
    signature: OnnxSignature
    input_hw: tuple[int, int]
    sha256: str

    def example_input(self, batch: int = 1) -> torch.Tensor:
        return torch.zeros(batch, 3, *self.input_hw)


def _tensor_signature(value: onnx.ValueInfoProto) -> TensorSignature:
    tensor = value.type.tensor_type
    dims = tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in tensor.shape.dim)
    return TensorSignature(value.name, tensor.elem_type, dims)


def read_signature(proto: onnx.ModelProto) -> OnnxSignature:
    """The model's IO signature (initializers listed as inputs by old exporters are left out)."""
    initializers = {init.name for init in proto.graph.initializer}
    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 0)
    return OnnxSignature(tuple(_tensor_signature(v) for v in proto.graph.input if v.name not in initializers),
                         tuple(_tensor_signature(v) for v in proto.graph.output), opset)


def unsupported_ops(proto: onnx.ModelProto) -> dict[str, list[str]]:
    """``{op_type: [node names]}`` of the nodes onnx2torch has no converter for (or that need torchvision)."""
    from onnx2torch.node_converters.registry import get_converter

    opsets = {o.domain: o.version for o in proto.opset_import}
    missing: dict[str, list[str]] = {}
    for index, node in enumerate(proto.graph.node):
        try:
            get_converter(node.op_type, opsets.get(node.domain, 0), node.domain or onnx.defs.ONNX_DOMAIN)
            supported = True
        except NotImplementedError:
            supported = False
        if not supported or ops_needing_torchvision({node.op_type}):
            label = f"{node.domain}::{node.op_type}" if node.domain not in ("", "ai.onnx") else node.op_type
            missing.setdefault(label, []).append(node.name or f"#{index}")
    return missing


def _older_opset_hint(proto: onnx.ModelProto, missing: dict[str, list[str]]) -> str:
    """When every missing op has a converter at an older opset of the default domain: which one to re-export at."""
    from onnx2torch.node_converters.registry import get_converter

    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 0)
    newest = []
    for op in missing:
        versions = [v for v in range(opset - 1, 0, -1) if _has_converter(get_converter, op, v)]
        if not versions:
            return ""
        newest.append(versions[0])
    return (f" at opset {opset}; onnx2torch converts them up to opset {min(newest)}: re-export the model at "
            f"opset {min(newest)} (e.g. Ultralytics export(format='onnx', opset={min(newest)}))")


def _has_converter(get_converter, op: str, version: int) -> bool:
    try:
        get_converter(op, version, onnx.defs.ONNX_DOMAIN)
        return True
    except NotImplementedError:
        return False


def _describe_unsupported(missing: dict[str, list[str]]) -> str:
    parts = []
    for op, nodes in sorted(missing.items()):
        shown = ", ".join(nodes[:MAX_NAMED_NODES]) + (f" and {len(nodes) - MAX_NAMED_NODES} more"
                                                     if len(nodes) > MAX_NAMED_NODES else "")
        parts.append(f"{op} (nodes {shown})")
    return "; ".join(parts)


def _check_input(path: Path, signature: OnnxSignature, input_size: Sequence[int] | None) -> tuple[int, int]:
    if len(signature.inputs) != 1:
        raise ModelLoadError(f"{path}: expected one image input, the model has {len(signature.inputs)}: "
                             f"{signature.describe()}")
    image = signature.inputs[0]
    if image.elem_type != TensorProto.FLOAT or len(image.dims) != 4 or image.dims[1] not in (3, "?"):
        raise ModelLoadError(f"{path}: the input must be float32 [N, 3, H, W], got {image.describe()}")
    static_hw = tuple(d for d in image.dims[2:] if isinstance(d, int) and d > 0)
    if input_size is not None:
        input_hw = (int(input_size[0]), int(input_size[1]))
        if len(input_size) != 2 or min(input_hw) <= 0:
            raise ModelLoadError(f"input_size must be [H, W] with positive ints, got {list(input_size)}")
        if len(static_hw) == 2 and static_hw != input_hw:
            raise ModelLoadError(f"{path}: input_size {list(input_hw)} disagrees with the model's static input "
                                 f"{image.describe()}")
        return input_hw
    if len(static_hw) != 2:
        raise ModelLoadError(f"{path}: the input's H/W are dynamic ({image.describe()}) and no input size is given: "
                             "set input_size [H, W] (--input-size H W)")
    return static_hw


def import_onnx(path: str | Path, input_size: Sequence[int] | None = None) -> ImportedOnnx:
    """Read, check and convert an ONNX detector; ModelLoadError naming the problem (see module doc)."""
    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(f"{path}: model file not found")
    try:
        proto = onnx.load(str(path))
    except Exception as exc:  # protobuf DecodeError and friends
        raise ModelLoadError(f"{path}: not an ONNX model or the file is corrupt ({type(exc).__name__})") from None
    signature = read_signature(proto)
    input_hw = _check_input(path, signature, input_size)
    ensure_torchvision_importable()
    missing = unsupported_ops(proto)
    if missing:
        raise ModelLoadError(f"{path}: ONNX op(s) the converter (onnx2torch) cannot handle: "
                             f"{_describe_unsupported(missing)}{_older_opset_hint(proto, missing)}")
    import onnx2torch

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            slimmed, _ = split_producing_convs(slim_model(proto))
            fixed_batch = batch_fixed_at_one(slimmed)
            module = onnx2torch.convert(free_batch_axis(slimmed) if fixed_batch else slimmed)
            module.eval()
            module(torch.zeros(1, 3, *input_hw))
    except Exception as exc:  # a converter refusing an attribute value, or a shape that does not fit
        raise ModelLoadError(f"{path}: conversion to torch failed ({type(exc).__name__}: "
                             f"{str(exc).splitlines()[0] if str(exc) else ''})") from None
    if fixed_batch:
        check_batch_flexible(module, input_hw, path)
    return ImportedOnnx(path, proto, module, signature, input_hw, file_sha256(path))
