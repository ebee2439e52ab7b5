"""Each importance criterion ranks a constructed case correctly; global and local scopes differ."""

import pytest
import torch

from prune_perception.models.arch import default_arch
from prune_perception.models.detector import Detector, spec_layers
from prune_perception.pruning.importance import make_importance
from prune_perception.pruning.structured import PruneSpec, StructuredPruner

INPUT_HW = (64, 96)
LAYER = "stage4.block0.cv1"   # 64 channels, coupled only to its BN and the next conv's input
VICTIM = 3


def _model() -> Detector:
    torch.manual_seed(0)
    model = Detector(default_arch("nano", 2)).eval()
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            torch.nn.init.uniform_(module.weight, 0.5, 1.5)
    return model


def _kill_channels(model: Detector, layer_name: str, next_name: str, channels) -> None:
    """Make channels dead in the whole coupled group: filter, BN scale and the next conv's input."""
    layers = spec_layers(model)
    with torch.no_grad():
        layers[layer_name].conv.weight[channels] = 0
        layers[layer_name].bn.weight[channels] = 0
        layers[next_name].conv.weight[:, channels] = 0


def _prune_one_channel(model: Detector, method: str) -> torch.nn.Module:
    layer = spec_layers(model)[LAYER]
    width = layer.conv.out_channels
    StructuredPruner(model, INPUT_HW, make_importance(method),
                     PruneSpec(ratio=0.0, layer_ratios={LAYER: 1.0 / width})).step()
    assert layer.conv.out_channels == width - 1
    return layer


def test_l1_and_l2_remove_the_dead_channel_first():
    for method in ("l1", "l2"):
        model = _model()
        layer = spec_layers(model)[LAYER]
        _kill_channels(model, LAYER, "stage4.block0.cv2", [VICTIM])
        _prune_one_channel(model, method)
        assert layer.conv.weight.abs().flatten(1).sum(1).min() > 0, method  # the zero filter is gone


def test_bn_scale_removes_the_channel_with_zero_gamma():
    model = _model()
    layer = spec_layers(model)[LAYER]
    with torch.no_grad():
        layer.bn.weight[VICTIM] = 0
    _prune_one_channel(model, "bn_scale")
    assert layer.bn.weight.abs().min() > 0


def test_taylor_follows_gradients_not_magnitude():
    model = _model()
    layer = spec_layers(model)[LAYER]
    next_conv = spec_layers(model)["stage4.block0.cv2"].conv
    with torch.no_grad():
        layer.conv.weight[VICTIM] *= 10  # the biggest filter: magnitude criteria would keep it
    for parameter in model.parameters():
        parameter.grad = torch.ones_like(parameter)
    layer.conv.weight.grad[VICTIM] = 0
    layer.bn.weight.grad[VICTIM] = 0
    layer.bn.bias.grad[VICTIM] = 0
    next_conv.weight.grad[:, VICTIM] = 0
    _prune_one_channel(model, "taylor")
    norms = layer.conv.weight.abs().flatten(1).sum(1)
    assert norms.max() < 5 * norms.median()  # the x10 filter (zero gradient) was removed


def test_global_and_local_scopes_distribute_differently():
    dense = default_arch("nano", 2)["widths"]
    results = {}
    for global_pruning in (False, True):
        model = _model()
        # half the channels of one layer are dead: one global ranking takes them all first
        _kill_channels(model, "stage3.block0.cv1", "stage3.block0.cv2", slice(0, 24))
        results[global_pruning] = StructuredPruner(
            model, INPUT_HW, make_importance("l1"), PruneSpec(ratio=0.3, global_pruning=global_pruning)).step()
    local, global_ = results[False], results[True]
    assert local != global_
    assert local["stage3.block0.cv1"] == pytest.approx(dense["stage3.block0.cv1"] * 0.7, abs=1)
    assert global_["stage3.block0.cv1"] <= dense["stage3.block0.cv1"] // 2
