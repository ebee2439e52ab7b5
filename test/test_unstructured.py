"""Unstructured / kernel pruning: masks reach their sparsity, spare the head, survive training and checkpoints."""

import pytest
import torch

from prune_perception.config import PruneConfig, load_config
from prune_perception.errors import ConfigError
from prune_perception.models.arch import default_arch
from prune_perception.models.checkpoint import load_checkpoint, save_checkpoint
from prune_perception.models.detector import Detector, model_widths
from prune_perception.pruning import prune
from prune_perception.pruning.unstructured import FIXED_L1_FRACTION, masked_convs, prune_unstructured

INPUT_HW = (96, 160)


def _model(num_classes: int = 3) -> Detector:
    torch.manual_seed(0)
    return Detector(default_arch("nano", num_classes))


@pytest.mark.parametrize("granularity", ["weight", "kernel"])
@pytest.mark.parametrize("scope", ["global", "local"])
def test_sparsity_reached_per_granularity(granularity, scope):
    model = _model()
    masks, sparsity = prune_unstructured(model, 0.5, granularity, scope=scope)
    assert sparsity.overall == pytest.approx(0.5, abs=0.01)
    if scope == "local":
        assert all(s == pytest.approx(0.5, abs=0.05) for s in sparsity.layers.values())
    if granularity == "kernel":   # whole kxk kernels are zero or not at all
        for conv in masked_convs(model).values():
            kernel_zeros = (conv.weight == 0).flatten(2).sum(-1)
            assert bool(((kernel_zeros == 0) | (kernel_zeros == conv.weight[0, 0].numel())).all())
    assert masks.sparsity() == sparsity


def test_head_outputs_untouched_and_widths_unchanged():
    model = _model()
    head_before = [p.clone() for h in model.heads() for p in (h.cls_pred.weight, h.reg_pred.weight)]
    widths = model_widths(model)
    prune_unstructured(model, 0.8, "weight")
    head_after = [p for h in model.heads() for p in (h.cls_pred.weight, h.reg_pred.weight)]
    assert all(torch.equal(a, b) for a, b in zip(head_before, head_after))
    assert model_widths(model) == widths


def test_fixed_l1_prunes_exactly_below_a_tenth_of_the_layer_max():
    model = _model()
    before = {name: conv.weight.detach().clone() for name, conv in masked_convs(model).items()}
    _, sparsity = prune_unstructured(model, 0.0, "weight", rule="fixed_l1")
    for name, conv in masked_convs(model).items():
        small = before[name].abs() < FIXED_L1_FRACTION * before[name].abs().max()
        assert torch.equal(conv.weight == 0, small)
        assert torch.equal(conv.weight[~small], before[name][~small])
        assert sparsity.layers[name] == pytest.approx(float(small.float().mean()), abs=1e-6)
    with pytest.raises(ConfigError, match="fixed_l1"):
        prune_unstructured(model, 0.5, "kernel", rule="fixed_l1")


def test_masks_survive_a_finetuning_step():
    model = _model()
    masks, sparsity = prune_unstructured(model, 0.5, "kernel")
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.01)
    masks.keep_applied(optimizer)
    model.train()
    cls_logits, distances = model(torch.rand(2, 3, *INPUT_HW))
    (cls_logits.sigmoid().mean() + distances.mean()).backward()
    optimizer.step()
    assert masks.sparsity().overall == pytest.approx(sparsity.overall, abs=1e-4)


def test_checkpoint_reloads_with_zeros_and_dense_widths(tmp_path):
    model = _model().eval()
    _, sparsity = prune_unstructured(model, 0.5, "weight")
    save_checkpoint(tmp_path / "sparse.pt", model, ["a", "b", "c"], INPUT_HW)
    loaded = load_checkpoint(tmp_path / "sparse.pt").model
    assert set(loaded.state_dict()) == set(_model().state_dict())   # plain state_dict, no *_orig / *_mask
    assert model_widths(loaded) == model_widths(_model())
    for name, conv in masked_convs(loaded).items():
        assert float((conv.weight == 0).float().mean()) == pytest.approx(sparsity.layers[name], abs=1e-6)


def test_config_rejects_fixed_l1_without_weight_granularity(tmp_path):
    for overrides, message in ((["prune.method=fixed_l1"], "fixed_l1"),
                               (["prune.method=fixed_l1", "prune.granularity=kernel"], "fixed_l1"),
                               (["prune.method=taylor", "prune.granularity=weight"], "supports the methods"),
                               (["prune.granularity=filter"], "granularity")):
        config = load_config(PruneConfig, None, overrides + [f"checkpoint={tmp_path / 'missing.pt'}",
                                                             f"output={tmp_path / 'out'}"])
        with pytest.raises(ConfigError, match=message):
            prune(config, progress=False)
