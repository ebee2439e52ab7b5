"""Structured pruning really shrinks the detector, keeps it loadable, and is recorded."""

import dataclasses
import json

import pytest
import torch

from prune_perception.config import PruneConfig, PruneSettings, load_config
from prune_perception.errors import ConfigError
from prune_perception.models.arch import default_arch
from prune_perception.models.checkpoint import load_checkpoint, save_checkpoint
from prune_perception.models.detector import Detector, model_widths
from prune_perception.pruning.importance import IMPORTANCE_CRITERIA, make_importance
from prune_perception.pruning import prune
from prune_perception.pruning.latency_model import vector_block
from prune_perception.pruning.schedules import prune_spec
from prune_perception.models.cost import model_cost
from prune_perception.pruning.structured import PruneSpec, StructuredPruner, aligned_width

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


def test_aligned_width_rounds_to_the_nearest_block_within_the_limits():
    assert aligned_width(64, 0.3, 8, 0.9) == 48        # keeps 44 -> nearest multiple of 8 (ties round up)
    assert aligned_width(96, 0.3, 8, 0.9) == 64        # keeps 67 -> 64
    assert aligned_width(16, 0.5, 8, 0.9) == 8
    assert aligned_width(16, 0.9, 8, 0.9) == 8         # never below one block
    assert aligned_width(40, 0.5, 16, 0.5) == 32       # keeps 20 -> 16 is below what max_layer_ratio keeps: 32
    assert aligned_width(12, 0.5, 8, 0.9) == 6         # narrower than two blocks: the plain ratio
    assert aligned_width(64, 0.0, 8, 0.9) == 64


@pytest.mark.parametrize("ratio", [0.3, 0.4, 0.5])
def test_plain_ratio_pruning_aligns_every_pruned_width_to_the_vector_block(ratio):
    """Without round_to, `prune --ratio` keeps widths that are multiples of the block ONNX Runtime computes in."""
    block = vector_block("cpu")
    assert block in (8, 16)
    spec = prune_spec(PruneSettings(ratio=ratio))
    assert spec.align_to == block and spec.round_to is None
    dense = default_arch("nano", 3)["widths"]
    model = Detector(default_arch("nano", 3)).eval()
    widths = StructuredPruner(model, INPUT_HW, make_importance("l1"), spec).step()
    assert model_widths(model) == widths
    assert sum(widths.values()) < (1 - ratio + 0.1) * sum(dense.values())
    assert all(w % block == 0 for w in widths.values()), widths
    unaligned = Detector(default_arch("nano", 3)).eval()
    plain = StructuredPruner(unaligned, INPUT_HW, make_importance("l1"),
                             dataclasses.replace(spec, align_to=None)).step()
    # what the alignment changes (e.g. 0.3 of 16 keeps 11; at 0.5 every nano width halves to a multiple of 8)
    assert any(w % block for w in plain.values()) == any(int(c * (1 - ratio)) % block for c in dense.values())


def test_round_to_or_global_pruning_turn_the_alignment_off():
    assert prune_spec(PruneSettings(ratio=0.3, round_to=1)).align_to is None
    assert prune_spec(PruneSettings(ratio=0.3, round_to=4)).round_to == 4
    spec = prune_spec(PruneSettings(ratio=0.3, global_pruning=True))
    model = Detector(default_arch("nano", 3)).eval()
    StructuredPruner(model, INPUT_HW, make_importance("l1"), spec).step()   # global: the ranking decides widths
    assert model_cost(model, INPUT_HW).macs < model_cost(Detector(default_arch("nano", 3)), INPUT_HW).macs
