"""Parameters and MACs of an ONNX graph (Conv, Gemm, MatMul), float or quantized, without torch."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import shape_inference

from prune_perception.errors import ModelLoadError


@dataclass(frozen=True)
class GraphCost:
    params: int   # weights + biases of Conv/Gemm/MatMul layers (BatchNorm is folded into convs on export)
    macs: int     # multiply-accumulates of one forward pass at the graph's batch size (1 if dynamic)


def _static_shape(value_info: onnx.ValueInfoProto) -> list[int] | None:
    dims = value_info.type.tensor_type.shape.dim
    shape = [d.dim_value if d.HasField("dim_value") else 1 for d in dims]  # dynamic batch counted as 1
    return shape if dims else None


def onnx_graph_cost(path: Path) -> GraphCost:
    """Count from the graph with ONNX shape inference; QDQ and QLinearConv models count like float ones."""
    try:
        model = shape_inference.infer_shapes(onnx.load(str(path)))
    except Exception as exc:  # onnx raises several types for foreign or truncated files
        raise ModelLoadError(f"{path}: cannot read ONNX graph: {str(exc).splitlines()[0]}") from None
    graph = model.graph
    shapes = {vi.name: _static_shape(vi) for vi in list(graph.value_info) + list(graph.input) + list(graph.output)}
    shapes.update({init.name: list(init.dims) for init in graph.initializer})
    constants = {init.name: init for init in graph.initializer}
    params = macs = 0
    for node in graph.node:
        if node.op_type in ("Conv", "QLinearConv", "ConvInteger"):
            weight = node.input[3] if node.op_type == "QLinearConv" else node.input[1]
            bias = node.input[8] if node.op_type == "QLinearConv" and len(node.input) > 8 else (
                node.input[2] if node.op_type == "Conv" and len(node.input) > 2 else "")
            w_shape, out_shape = shapes.get(weight), shapes.get(node.output[0])
            if not w_shape or not out_shape:
                continue
            per_output = int(np.prod(w_shape[1:]))  # (Cin / groups) * kH * kW
            macs += int(np.prod(out_shape)) * per_output
            params += int(np.prod(w_shape)) + (int(np.prod(shapes[bias])) if bias and shapes.get(bias) else 0)
        elif node.op_type in ("Gemm", "MatMul"):
            a_shape, out_shape = shapes.get(node.input[0]), shapes.get(node.output[0])
            if not a_shape or not out_shape:
                continue
            inner = a_shape[0] if node.op_type == "Gemm" and _attr(node, "transA") else a_shape[-1]
            macs += int(np.prod(out_shape)) * int(inner)
            params += sum(int(np.prod(constants[name].dims)) for name in node.input[1:] if name in constants)
    return GraphCost(params, macs)


def _attr(node: onnx.NodeProto, name: str) -> int:
    return next((onnx.helper.get_attribute_value(a) for a in node.attribute if a.name == name), 0)
