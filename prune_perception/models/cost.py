"""Parameters and multiply-accumulates of a torch model (torch-pruning's counter)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch_pruning as tp


@dataclass(frozen=True)
class ModelCost:
    params: int
    macs: int


def model_cost(model: torch.nn.Module, input_hw: tuple[int, int]) -> ModelCost:
    """Parameters and multiply-accumulates of one forward pass at batch 1."""
    was_training = model.training
    model.eval()
    macs, params = tp.utils.count_ops_and_params(model, torch.zeros(1, 3, *input_hw))
    model.train(was_training)
    return ModelCost(int(params), int(macs))
