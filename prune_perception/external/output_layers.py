"""Find, in torch-pruning's dependency graph, the layers whose output channels reach a model output.

Removing a channel of such a layer would change an output's shape (the class count, the box
coordinates): they are protected. A layer is an *output layer* when a path from it reaches the
graph's output through operations that keep channels one to one (activations, BatchNorm, concat,
slices, reshapes, depthwise convs) without passing a layer that maps channels to new ones (a dense
or grouped conv, a linear layer). Works for any ``nn.Module`` torch-pruning can trace: converted
ONNX graphs and users' own models alike.
"""

from __future__ import annotations

import torch_pruning as tp
from torch import nn

CHANNEL_MIXING = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d, nn.Linear)


def _mixes_channels(module: nn.Module) -> bool:
    """True for a layer whose output channels are new combinations of its inputs (not depthwise)."""
    if not isinstance(module, CHANNEL_MIXING):
        return False
    groups = getattr(module, "groups", 1)
    return groups == 1 or groups != getattr(module, "in_channels", groups)


def output_layers(graph: tp.DependencyGraph) -> list[nn.Module]:
    """The channel-mixing layers (convs, linears) of ``graph`` whose channels reach a model output."""
    found = []
    for module, node in graph.module2node.items():
        if not _mixes_channels(module):
            continue
        pending, seen = [node], {id(node)}
        while pending:
            current = pending.pop()
            if current.type == tp.ops.OPTYPE.OUTPUT or not current.outputs:
                found.append(module)
                break
            for successor in current.outputs:
                if id(successor) not in seen and not _mixes_channels(successor.module):
                    seen.add(id(successor))
                    pending.append(successor)
    return found
