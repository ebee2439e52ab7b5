"""Structured pruning really shrinks the detector, keeps it loadable, and is recorded."""

import json

import pytest
import torch

from prune_perception.config import PruneConfig, load_config
from prune_perception.errors import ConfigError
from prune_perception.models.arch import default_arch
from prune_perception.models.checkpoint import load_checkpoint, save_checkpoint
from prune_perception.models.detector import Detector
from prune_perception.pruning.importance import IMPORTANCE_CRITERIA, make_importance
from prune_perception.pruning import prune
from prune_perception.models.cost import model_cost
from prune_perception.pruning.structured import PruneSpec, StructuredPruner

INPUT_HW = (96, 160)


@pytest.mark.parametrize("method", [m for m in IMPORTANCE_CRITERIA if m != "taylor"])
@pytest.mark.parametrize("global_pruning", [False, True])
def test_half_the_channels_cut_macs_and_keep_head_outputs(method, global_pruning):
    torch.manual_seed(0)
    model = Detector(default_arch("nano", 6)).eval()
    for module in model.modules():  # untrained BN scales are all 1.0: give bn_scale something to rank
        if isinstance(module, torch.nn.BatchNorm2d):
            torch.nn.init.uniform_(module.weight, 0.2, 1.5)
    dense = model_cost(model, INPUT_HW)
    StructuredPruner(model, INPUT_HW, make_importance(method), PruneSpec(ratio=0.5, global_pruning=global_pruning)).step()
    pruned = model_cost(model, INPUT_HW)
    assert pruned.macs < 0.5 * dense.macs
    cls_logits, distances = model(torch.rand(1, 3, *INPUT_HW))
    assert cls_logits.shape[-1] == 6 and distances.shape[-1] == 4
    for head in model.heads():
        assert head.cls_pred.out_channels == 6 and head.reg_pred.out_channels == 4


def test_pruned_model_round_trips_through_checkpoint(tmp_path):
    model = Detector(default_arch("nano", 3)).eval()
    StructuredPruner(model, INPUT_HW, make_importance("l1"), PruneSpec(ratio=0.4)).step()
    save_checkpoint(tmp_path / "p.pt", model, ["a", "b", "c"], INPUT_HW)
    loaded = load_checkpoint(tmp_path / "p.pt").model
    images = torch.rand(2, 3, *INPUT_HW)
    with torch.no_grad():
        assert torch.equal(model(images)[0], loaded(images)[0])
    assert loaded.arch["widths"]["stem"] < default_arch("nano", 3)["widths"]["stem"]


def test_layer_overrides_and_iterative_steps():
    model = Detector(default_arch("nano", 2))
    spec = PruneSpec(ratio=0.5, iterative_steps=2, layer_ratios={"neck.td3": 0.0})
    pruner = StructuredPruner(model, INPUT_HW, make_importance("l2"), spec)
    first = pruner.step()
    second = pruner.step()
    dense = default_arch("nano", 2)["widths"]
    assert dense["stage4.block0.cv1"] > first["stage4.block0.cv1"] > second["stage4.block0.cv1"]
    assert second["neck.td3"] == dense["neck.td3"]
    with pytest.raises(RuntimeError):
        pruner.step()
    with pytest.raises(ConfigError, match="unknown layer"):
        StructuredPruner(Detector(default_arch("nano", 2)), INPUT_HW, make_importance("l1"),
                         PruneSpec(layer_ratios={"neck.nope": 0.1}))
    with pytest.raises(ConfigError, match="unknown importance"):
        make_importance("magic")


@pytest.mark.slow
def test_prune_run_with_taylor_and_finetuning(tiny_train_config, tmp_path):
    from prune_perception.training.trainer import Trainer

    import dataclasses
    dense_config = dataclasses.replace(tiny_train_config, output=str(tmp_path / "dense"),
                                       optim=dataclasses.replace(tiny_train_config.optim, epochs=1))
    dense = Trainer(dense_config, progress=False).fit().best_checkpoint
    config = load_config(PruneConfig, None, [
        f"checkpoint={dense}", f"data.train={tiny_train_config.data.train}", f"data.val={tiny_train_config.data.val}",
        "prune.method=taylor", "prune.ratio=0.5", "prune.iterative_steps=2", "prune.taylor_batches=2",
        "finetune.epochs=1", "finetune.batch_size=8", f"output={tmp_path / 'pruned'}"])
    result = prune(config, progress=False)
    path, history = result.path, result.history
    assert [h.step for h in history] == [0, 1, 2]
    assert history[2].macs < history[1].macs < history[0].macs
    checkpoint = load_checkpoint(path)
    assert checkpoint.meta["pruning"]["method"] == "taylor"
    assert checkpoint.meta["pruning"]["macs"] == history[-1].macs
    assert model_cost(checkpoint.model, checkpoint.input_hw).macs == history[-1].macs
    saved = json.loads((tmp_path / "pruned" / "history.json").read_text())
    assert len(saved["steps"]) == 3
    assert "| 2 |" in (tmp_path / "pruned" / "summary.md").read_text()
