"""Channel Splits of a conv's output rewritten as one conv per part, so torch-pruning can prune through them.

CSP blocks (YOLOv8's C2f, YOLO11's C3k2) split a conv's activated output in two along the channels and
concatenate both parts again further on, one of them also feeding the next block. torch-pruning maps a
Split's parts to its consumers by position, which breaks as soon as a part has more than one consumer
(``IndexError`` in its channel inference). The rewrite is exact: ``Split(act(Conv(x, W, b)))`` becomes
``act(Conv(x, W[a:b], b[a:b]))`` per part (the same weights, sliced), which torch-pruning handles (it is the
C2f_v2 trick of its YOLOv8 example, done on the ONNX graph). Splits whose input is not such a chain (a
conv with groups, a tensor used elsewhere, a non-scalar constant operand) are left as they are.
"""

from __future__ import annotations

import copy

import numpy as np
import onnx
from onnx import helper, numpy_helper

from prune_perception.external.batch_axis import constant_tensors

ELEMENTWISE_OPS = frozenset({
    "Sigmoid", "Relu", "LeakyRelu", "Tanh", "HardSigmoid", "HardSwish", "Elu", "Selu", "Softplus", "Clip", "Mish",
    "Gelu", "PRelu", "Mul", "Add", "Sub", "Div"})
"""Per-element ops a conv's output may pass between the conv and the Split (activations such as SiLU = x * sigmoid(x))."""


def _attribute(node: onnx.NodeProto, name: str, default):
    for attribute in node.attribute:
        if attribute.name == name:
            return helper.get_attribute_value(attribute)
    return default


class _Graph:
    def __init__(self, model: onnx.ModelProto):
        self.model = model
        self.constants = constant_tensors(model)
        self.producer = {output: node for node in model.graph.node for output in node.output}
        self.consumers: dict[str, list[onnx.NodeProto]] = {}
        for node in model.graph.node:
            for name in node.input:
                self.consumers.setdefault(name, []).append(node)
        self.graph_outputs = {value.name for value in model.graph.output}

    def is_scalar_constant(self, name: str) -> bool:
        return name in self.constants and int(np.prod(self.constants[name].dims)) == 1

    def conv_chain(self, split: onnx.NodeProto) -> tuple[onnx.NodeProto, list[onnx.NodeProto]] | None:
        """(conv, elementwise nodes between it and ``split``) when the split input is only that chain's, else None."""
        conv, chain, tensors, frontier = None, [], set(), [split.input[0]]
        while frontier:
            tensor = frontier.pop()
            if tensor in tensors:
                continue
            tensors.add(tensor)
            node = self.producer.get(tensor)
            if node is None:
                return None
            if node.op_type == "Conv":
                if conv is not None and conv is not node:
                    return None
                conv = node
                continue
            if node.op_type not in ELEMENTWISE_OPS:
                return None
            if all(node is not member for member in chain):
                chain.append(node)
            for name in node.input:
                if name and not self.is_scalar_constant(name):
                    frontier.append(name)
        if conv is None or not self._conv_sliceable(conv):
            return None
        for tensor in tensors:
            users = self.consumers.get(tensor, [])
            allowed = [split] if tensor == split.input[0] else chain
            if tensor in self.graph_outputs or any(all(user is not m for m in allowed) for user in users):
                return None
        order = {id(node): index for index, node in enumerate(self.model.graph.node)}
        chain.sort(key=lambda node: order[id(node)])
        return conv, chain

    def _conv_sliceable(self, conv: onnx.NodeProto) -> bool:
        if _attribute(conv, "group", 1) != 1 or conv.input[1] not in self.constants:
            return False
        return len(conv.input) < 3 or not conv.input[2] or conv.input[2] in self.constants

    def split_sizes(self, split: onnx.NodeProto, channels: int) -> list[int] | None:
        sizes = _attribute(split, "split", None)
        if len(split.input) > 1 and split.input[1]:
            if split.input[1] not in self.constants:
                return None
            sizes = numpy_helper.to_array(self.constants[split.input[1]]).tolist()
        if sizes is None:
            parts = len(split.output)
            sizes = [channels // parts] * parts if channels % parts == 0 else None
        return list(sizes) if sizes is not None and sum(sizes) == channels else None


def split_producing_convs(model: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    """(a copy of ``model`` with every rewritable channel Split replaced, how many were replaced)."""
    model = copy.deepcopy(model)
    rewritten = 0
    while True:
        graph = _Graph(model)
        for split in model.graph.node:
            if split.op_type != "Split" or _attribute(split, "axis", 0) != 1:
                continue
            found = graph.conv_chain(split)
            if found is None:
                continue
            conv, chain = found
            weight = numpy_helper.to_array(graph.constants[conv.input[1]])
            sizes = graph.split_sizes(split, weight.shape[0])
            if sizes is not None:
                _rewrite(model, graph, split, conv, chain, weight, sizes)
                rewritten += 1
                break
        else:
            return model, rewritten


def _rewrite(model: onnx.ModelProto, graph: _Graph, split: onnx.NodeProto, conv: onnx.NodeProto,
             chain: list[onnx.NodeProto], weight: np.ndarray, sizes: list[int]) -> None:
    has_bias = len(conv.input) > 2 and bool(conv.input[2])
    bias = numpy_helper.to_array(graph.constants[conv.input[2]]) if has_bias else None
    replacement, start = [], 0
    for part, size in enumerate(sizes):
        def renamed(name: str) -> str:
            if name == split.input[0]:
                return split.output[part]
            return name if not name or graph.is_scalar_constant(name) else f"{name}__part{part}"

        stop = start + size
        inputs = [conv.input[0], f"{conv.input[1]}__part{part}"]
        model.graph.initializer.append(numpy_helper.from_array(weight[start:stop], inputs[1]))
        if has_bias:
            inputs.append(f"{conv.input[2]}__part{part}")
            model.graph.initializer.append(numpy_helper.from_array(bias[start:stop], inputs[2]))
        part_conv = copy.deepcopy(conv)
        part_conv.name = f"{conv.name}__part{part}"
        del part_conv.input[:], part_conv.output[:]
        part_conv.input.extend(inputs)
        part_conv.output.append(renamed(conv.output[0]))
        replacement.append(part_conv)
        for node in chain:
            part_node = copy.deepcopy(node)
            part_node.name = f"{node.name}__part{part}"
            del part_node.input[:], part_node.output[:]
            part_node.input.extend(renamed(name) for name in node.input)
            part_node.output.extend(renamed(name) for name in node.output)
            replacement.append(part_node)
        start = stop
    removed = {id(conv), id(split), *map(id, chain)}
    nodes = []
    for node in model.graph.node:
        if node is split:
            nodes.extend(replacement)
        elif id(node) not in removed:
            nodes.append(copy.deepcopy(node))
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    used = {name for node in model.graph.node for name in node.input}
    unused = {name for name in conv.input[1:] if name and name not in used}
    kept = [tensor for tensor in model.graph.initializer if tensor.name not in unused]
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept)
    dropped = {name for node in (conv, *chain) for name in node.output}
    kept_info = [value for value in model.graph.value_info if value.name not in dropped]
    del model.graph.value_info[:]
    model.graph.value_info.extend(kept_info)
