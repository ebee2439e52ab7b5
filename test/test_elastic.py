"""Elastic (soft) pruning: zeroed filters keep learning and can come back; the end result is really smaller."""

import json

import pytest
import torch

from prune_perception.cli import main
from prune_perception.config import PruneConfig, PruneSettings, load_config
from prune_perception.data.dataset import load_dataset
from prune_perception.errors import ConfigError
from prune_perception.models.arch import default_arch
from prune_perception.models.checkpoint import load_checkpoint, save_checkpoint
from prune_perception.models.cost import model_cost
from prune_perception.models.detector import Detector
from prune_perception.pruning.channel_masks import (ChannelGroups, SoftSelector, StraightThroughMask,
                                                    remove_zeroed_channels, selection_filters, zero_selection)
from prune_perception.pruning.elastic import validate_elastic
from prune_perception.pruning.importance import make_importance
from prune_perception.pruning import prune
from prune_perception.pruning.schedules import resolve_schedule
from prune_perception.pruning.structured import PruneSpec

INPUT_HW = (96, 160)


def _model(classes: int = 3) -> Detector:
    torch.manual_seed(0)
    model = Detector(default_arch("nano", classes))
    for module in model.modules():   # give BatchNorm non-trivial statistics, so zeroing has something to undo
        if isinstance(module, torch.nn.BatchNorm2d):
            torch.nn.init.uniform_(module.weight, 0.2, 1.5)
            torch.nn.init.uniform_(module.bias, -0.5, 0.5)
            module.running_mean.uniform_(-1, 1)
    return model.eval()


def test_removing_fully_zeroed_channels_is_exact_and_shrinks_the_network():
    model = _model()
    selection = SoftSelector.for_detector(model, INPUT_HW, make_importance("l1"), PruneSpec(0.5)).select()
    zero_selection(model, selection, full=True)
    images = torch.rand(2, 3, *INPUT_HW)
    with torch.no_grad():
        zeroed = model(images)
    dense_cost = model_cost(model, INPUT_HW)
    widths = remove_zeroed_channels(model, INPUT_HW)
    with torch.no_grad():
        removed = model(images)
    assert torch.allclose(zeroed[0], removed[0], atol=1e-4) and torch.allclose(zeroed[1], removed[1], atol=1e-3)
    assert widths["neck.td3"] == 32 and widths["stage2.down"] == widths["stage2.block1.cv2"] == 32
    assert model_cost(model, INPUT_HW).macs < 0.5 * dense_cost.macs


def test_soft_zeroed_filter_still_gets_gradient_and_regains_weights():
    model = _model().train()
    selection = SoftSelector.for_detector(model, INPUT_HW, make_importance("l1"), PruneSpec(0.5)).select()
    zero_selection(model, selection, full=False)
    modules = dict(model.named_modules())
    # the hard case: a zeroed filter whose BatchNorm shift is negative (its ReLU passes no gradient)
    name, index = next((name, i) for name, i in sorted(selection_filters(selection, model))
                       if modules[name.replace(".conv", ".bn")].bias[i] < -0.1)
    conv = modules[name]
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)

    def loss():
        cls_logits, distances = model(torch.rand(2, 3, *INPUT_HW))
        return cls_logits.sigmoid().mean() + distances.mean()

    loss().backward()
    assert conv.weight.grad is None or conv.weight.grad[index].abs().sum() == 0   # plain zeroing: stuck
    model.zero_grad()
    mask = StraightThroughMask(model)
    mask.set(selection)
    loss().backward()
    assert conv.weight.grad[index].abs().sum() > 0
    optimizer.step()
    assert conv.weight[index].abs().sum() > 0
    mask.remove()


def test_straight_through_mask_forward_is_the_pruned_network():
    model = _model()
    selection = SoftSelector.for_detector(model, INPUT_HW, make_importance("l1"), PruneSpec(0.5)).select()
    zero_selection(model, selection, full=False)
    mask = StraightThroughMask(model)
    mask.set(selection)
    images = torch.rand(2, 3, *INPUT_HW)
    with torch.no_grad():
        masked = model(images)
    mask.remove()
    zero_selection(model, selection, full=True)
    remove_zeroed_channels(model, INPUT_HW)
    with torch.no_grad():
        removed = model(images)
    assert torch.allclose(masked[0], removed[0], atol=1e-4) and torch.allclose(masked[1], removed[1], atol=1e-3)


def test_masked_filters_learn_but_the_rest_gets_the_pruned_networks_gradient():
    """Regrown masked filters must not leak gradient into the layers before them (the pruned network's own)."""
    model = _model()
    selection = SoftSelector.for_detector(model, INPUT_HW, make_importance("l1"), PruneSpec(0.5)).select()
    model.train()   # (building the selector's dependency graph leaves the model in eval mode)
    masked_filters = selection_filters(selection, model)
    modules = dict(model.named_modules())
    with torch.no_grad():          # the masked filters after some regrowth: non-zero
        for name, index in masked_filters:
            modules[name].weight[index].normal_(0, 0.1)
    pruned = Detector(model.arch)
    pruned.load_state_dict(model.state_dict())
    pruned.train()
    zero_selection(pruned, selection, full=True)   # the pruned network: those channels contribute nothing
    images = torch.rand(4, 3, *INPUT_HW)

    def gradients(net):
        net.zero_grad()
        cls_logits, distances = net(images)
        (cls_logits.sigmoid().mean() + distances.mean()).backward()
        return {name: p.grad.clone() for name, p in net.named_parameters() if p.grad is not None}

    mask = StraightThroughMask(model)
    mask.set(selection)
    soft, reference = gradients(model), gradients(pruned)
    mask.remove()
    masked_rows = {(f"{name}.weight", index) for name, index in masked_filters}
    compared = 0
    for name, grad in reference.items():
        if not name.endswith(".conv.weight"):
            continue
        keep = [i for i in range(grad.shape[0]) if (name, i) not in masked_rows]
        assert torch.allclose(soft[name][keep], grad[keep], rtol=1e-4, atol=1e-6), name
        compared += 1
    assert compared > 20
    assert all(soft[f"{name}.weight"][index].abs().sum() > 0 for name, index in masked_filters)


def test_a_zeroed_filter_that_proves_useful_comes_back_at_the_next_selection():
    model = _model()
    selector = SoftSelector.for_detector(model, INPUT_HW, make_importance("l1"), PruneSpec(0.5))
    selection = selector.select()
    model.train()
    layer = "neck.td3"
    useful = selection[f"{layer}.conv"][0]   # a filter the first selection zeroes
    zero_selection(model, selection, full=False)
    mask = StraightThroughMask(model)
    mask.set(selection)
    outputs = []
    handle = model.get_submodule(layer).register_forward_hook(lambda m, a, out: outputs.append(out))
    optimizer = torch.optim.SGD(model.get_submodule(layer).parameters(), lr=0.5)
    images = torch.rand(2, 3, *INPUT_HW)
    wanted = None
    for _ in range(20):   # a loss that wants this channel: the layer outputs 0 there, only the mask passes gradient
        outputs.clear()
        model(images)
        channel = outputs[0][:, useful]
        assert channel.abs().max() == 0
        wanted = torch.randn(channel.shape, generator=torch.Generator().manual_seed(0)) if wanted is None else wanted
        optimizer.zero_grad()
        (-(channel * wanted).mean()).backward()
        optimizer.step()
    handle.remove()
    mask.remove()
    assert model.get_submodule(f"{layer}.conv").weight[useful].abs().sum() > 0
    assert useful not in selector.select()[f"{layer}.conv"]


def test_channel_groups_zero_the_least_important_channels_of_one_coupled_group():
    model = _model()
    groups = ChannelGroups(model, INPUT_HW, make_importance("l1"))
    stage2 = next(i for i, g in enumerate(groups.groups) if "stage2.down" in g.layers)
    selection = groups.selection(stage2, 16)
    convs = {name for name, idxs in selection.items() if name.endswith("conv")}
    assert convs == {"stage2.down.conv", "stage2.blocks.0.cv2.conv", "stage2.blocks.1.cv2.conv"}
    assert all(len(idxs) == 16 for idxs in selection.values())
    assert sorted(groups.groups[stage2].ranking[:16]) == selection["stage2.down.conv"]


def test_schedule_settings_are_checked():
    assert resolve_schedule(PruneSettings()) == "oneshot"
    assert resolve_schedule(PruneSettings(iterative_steps=3)) == "iterative"   # older configs: steps alone
    assert resolve_schedule(PruneSettings(schedule="elastic")) == "elastic"
    with pytest.raises(ConfigError, match="iterative_steps >= 2"):
        resolve_schedule(PruneSettings(schedule="iterative"))
    with pytest.raises(ConfigError, match="must be 1"):
        resolve_schedule(PruneSettings(schedule="elastic", iterative_steps=2))
    with pytest.raises(ConfigError, match="channel granularity"):
        resolve_schedule(PruneSettings(schedule="elastic", granularity="weight"))
    with pytest.raises(ConfigError, match="schedule must be one of"):
        resolve_schedule(PruneSettings(schedule="gradual"))
    config = PruneConfig(prune=PruneSettings(schedule="elastic", method="taylor"))
    with pytest.raises(ConfigError, match="without loss gradients"):
        validate_elastic(config)
    config = PruneConfig(prune=PruneSettings(schedule="elastic", elastic_hard_epochs=2))
    config.finetune.epochs = 2
    with pytest.raises(ConfigError, match="must exceed"):
        validate_elastic(config)


def test_cli_schedule_conflict_is_one_line_exit_2(tmp_path, capsys):
    code = main(["prune", "--checkpoint", str(tmp_path / "missing.pt"), "--schedule", "elastic", "--steps", "3",
                 "-o", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "iterative_steps must be 1" in err


@pytest.fixture(scope="module")
def random_checkpoint(tiny_synth, tmp_path_factory):
    classes = load_dataset(str(tiny_synth), "train").classes
    path = tmp_path_factory.mktemp("elastic_dense") / "dense.pt"
    save_checkpoint(path, _model(len(classes)), classes, INPUT_HW)
    return path


@pytest.mark.slow
@pytest.mark.parametrize("hard_epochs", [0, 1])
def test_elastic_run_revives_filters_and_ends_with_a_smaller_network(random_checkpoint, tiny_synth, tmp_path,
                                                                     hard_epochs):
    config = load_config(PruneConfig, None, [
        f"checkpoint={random_checkpoint}", f"data.train={tiny_synth}", f"data.val={tiny_synth}",
        "prune.schedule=elastic", "prune.ratio=0.5", f"prune.elastic_hard_epochs={hard_epochs}",
        "finetune.epochs=3", "finetune.batch_size=8", "finetune.lr=0.01", f"output={tmp_path}"])
    result = prune(config, progress=False)
    path, history = result.path, result.history
    dense, final = history[0], history[-1]
    assert len(history) == 2 and final.macs < 0.5 * dense.macs and final.params < dense.params
    records = final.elastic
    assert [r["epoch"] for r in records] == list(range(1, 3 - hard_epochs + 2))  # each soft epoch + the end
    assert records[0]["zeroed"] > 0 and records[0]["regrown"] == 0
    assert all(r["regrown"] > 0 for r in records[1:])   # zeroed filters kept learning
    checkpoint = load_checkpoint(path)
    assert checkpoint.meta["pruning"]["schedule"] == "elastic"
    assert checkpoint.model.arch["widths"]["neck.td3"] == 32     # removed for real: half of 64
    with torch.no_grad():
        cls_logits, _ = checkpoint.model.eval()(torch.rand(1, 3, *INPUT_HW))
    assert cls_logits.shape[-1] == len(checkpoint.classes)
    saved = json.loads((tmp_path / "history.json").read_text())
    assert saved["config"]["prune"]["schedule"] == "elastic" and saved["steps"][1]["elastic"] == records
    assert "elastic" in (tmp_path / "summary.md").read_text()
