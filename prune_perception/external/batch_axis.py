"""Fixed batch-1 exports made batch-flexible for pruning (the exported pruned model keeps the fixed batch).

Most detector exports fix the batch at 1 (YOLOX's ``export_onnx.py``, Ultralytics' default), and their graphs
bake it into constant Reshape shapes such as ``[1, 85, -1]``. Fine-tuning and scoring run on batches, so
before conversion such a graph gets a symbolic batch on its inputs and outputs, every constant Reshape
shape whose first entry is 1 has it turned into 0 (ONNX: copy that dimension from the input, i.e. the batch),
and a Resize to constant sizes resizes by the equivalent scales instead.
The converted module is then checked: a batch of two must give what two single images give. A graph that
still ties the batch to 1 is a ModelLoadError asking for a dynamic-batch export.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import numpy_helper

from prune_perception.errors import ModelLoadError
from prune_perception.external.layout import as_output_list

BATCH_CHECK_TOLERANCE = 1e-4
"""Max |batch-of-two - single| relative to the output's magnitude (max(1, max|single|))."""


def batch_fixed_at_one(model: onnx.ModelProto) -> bool:
    """Whether the (single) input declares a static batch of 1."""
    dims = model.graph.input[0].type.tensor_type.shape.dim
    return bool(dims) and dims[0].HasField("dim_value") and dims[0].dim_value == 1


def constant_tensors(model: onnx.ModelProto) -> dict[str, onnx.TensorProto]:
    """Initializers and Constant-node values by tensor name."""
    tensors = {tensor.name: tensor for tensor in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant":
            tensors.update({node.output[0]: attribute.t for attribute in node.attribute if attribute.name == "value"})
    return tensors


def free_batch_axis(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of `model` whose batch follows the input (see module doc); intermediate shapes are dropped."""
    model = copy.deepcopy(model)
    constants = constant_tensors(model)
    for node in model.graph.node:
        allow_zero = any(a.name == "allowzero" and a.i == 1 for a in node.attribute)
        if node.op_type != "Reshape" or allow_zero or node.input[1] not in constants:
            continue
        tensor = constants[node.input[1]]
        shape = numpy_helper.to_array(tensor)
        if shape.ndim == 1 and len(shape) > 1 and shape[0] == 1:
            shape = shape.copy()
            shape[0] = 0
            tensor.CopyFrom(numpy_helper.from_array(shape, tensor.name))
    _resize_sizes_to_scales(model, constants)
    for value in (*model.graph.input, *model.graph.output):
        dims = value.type.tensor_type.shape.dim
        if dims and dims[0].HasField("dim_value") and dims[0].dim_value == 1:
            dims[0].dim_param = "batch"
    del model.graph.value_info[:]
    return model


def _resize_sizes_to_scales(model: onnx.ModelProto, constants: dict[str, onnx.TensorProto]) -> None:
    """A Resize to constant ``sizes [1, C, H', W']`` becomes one by ``scales [1, 1, H'/H, W'/W]`` (shapes of the
    fixed-batch graph), so it no longer pins the batch (upsampling in FPN necks of fixed-batch exports)."""
    inferred = onnx.shape_inference.infer_shapes(model)
    shapes = {value.name: [d.dim_value for d in value.type.tensor_type.shape.dim]
              for value in (*inferred.graph.value_info, *inferred.graph.input)}
    for node in model.graph.node:
        if node.op_type != "Resize" or len(node.input) < 4 or node.input[3] not in constants:
            continue
        sizes, input_shape = numpy_helper.to_array(constants[node.input[3]]), shapes.get(node.input[0], [])
        if sizes.shape != (4,) or len(input_shape) != 4 or 0 in input_shape or list(sizes[:2]) != input_shape[:2]:
            continue
        scales = np.array([1.0, 1.0, sizes[2] / input_shape[2], sizes[3] / input_shape[3]], dtype=np.float32)
        model.graph.initializer.append(numpy_helper.from_array(scales, f"{node.input[3]}__scales"))
        node.input[2] = f"{node.input[3]}__scales"
        del node.input[3]


@torch.no_grad()
def check_batch_flexible(module: torch.nn.Module, input_hw: tuple[int, int], path: Path) -> None:
    """ModelLoadError unless a batch of two gives, per image, what each image gives alone."""
    images = torch.rand(2, 3, *input_hw, generator=torch.Generator().manual_seed(0))
    problem = ""
    try:
        batched = as_output_list(module(images))
        singles = [as_output_list(module(images[i:i + 1])) for i in range(2)]
        for index, output in enumerate(batched):
            alone = torch.cat([single[index] for single in singles])
            if output.shape != alone.shape:
                problem = f"output {index} has shape {tuple(output.shape)} for two images"
                break
            scale = max(1.0, float(alone.abs().max()))
            if float((output - alone).abs().max()) / scale > BATCH_CHECK_TOLERANCE:
                problem = f"output {index} differs between a batch of two and single images"
                break
    except RuntimeError as exc:
        problem = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    if problem:
        raise ModelLoadError(f"{path}: the graph ties its batch size to 1 ({problem}); pruning fine-tunes on batches: "
                             "re-export the model with a dynamic batch axis")
