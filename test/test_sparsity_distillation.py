"""Sparsity training shrinks what pruning removes; distillation from the dense teacher trains the student."""

import copy
import json
from pathlib import Path

import pytest
import torch
from torch import nn

from prune_perception.config import DistillSettings, PruneConfig, SparsitySettings, TrainConfig, load_config
from prune_perception.data.dataset import load_dataset
from prune_perception.errors import ConfigError
from prune_perception.models.arch import default_arch
from prune_perception.models.checkpoint import load_checkpoint, save_checkpoint
from prune_perception.models.detector import Detector, model_widths
from prune_perception.pruning.importance import make_importance
from prune_perception.pruning import prune
from prune_perception.pruning.structured import PruneSpec, StructuredPruner
from prune_perception.training.distillation import NECK_OUTPUTS, Distiller, distillation_teacher, distills
from prune_perception.training.regularization import SparsityRegularizer
from prune_perception.training.trainer import Trainer

REPO = Path(__file__).resolve().parents[1]
INPUT_HW = (96, 160)


def _teacher_and_pruned_student(num_classes: int = 3) -> tuple[Detector, Detector]:
    """A dense 'teacher' with confident cells (so the box term has boxes to follow), a half-width student."""
    torch.manual_seed(0)
    teacher = Detector(default_arch("nano", num_classes)).eval()
    nn.init.constant_(teacher.head0.cls_pred.bias, 1.0)   # sigmoid 0.73
    student = Detector(default_arch("nano", num_classes))
    StructuredPruner(student, INPUT_HW, make_importance("l1"), PruneSpec(ratio=0.5)).step()
    return teacher, student


def _bn_scales(model: Detector) -> torch.Tensor:
    return torch.cat([m.weight.detach().abs() for m in model.modules() if isinstance(m, nn.BatchNorm2d)])


def _filter_norms(model: Detector) -> torch.Tensor:
    output_layers = set(model.prunable_output_layers())
    return torch.cat([m.weight.detach().flatten(1).norm(dim=1) for m in model.modules()
                      if isinstance(m, nn.Conv2d) and m not in output_layers])


def test_shipped_prune_config_equals_defaults():
    assert load_config(PruneConfig, REPO / "config" / "prune_synth.yaml") == PruneConfig()


@torch.no_grad()
def test_sparsity_penalty_values_and_config_errors():
    model = Detector(default_arch("nano", 3))
    assert float(SparsityRegularizer(model, SparsitySettings()).penalty()) == 0.0
    expected_bn = 1e-3 * float(_bn_scales(model).sum())
    assert float(SparsityRegularizer(model, SparsitySettings("bn_l1", 1e-3)).penalty()) == pytest.approx(expected_bn)
    expected_group = 1e-3 * float(_filter_norms(model).sum())   # the head's output convs are left out
    assert float(SparsityRegularizer(model, SparsitySettings("group_lasso", 1e-3)).penalty()) == pytest.approx(
        expected_group, rel=1e-5)
    with pytest.raises(ConfigError, match="sparsity.type .*'lasso'"):
        SparsityRegularizer(model, SparsitySettings("lasso"))
    config = load_config(TrainConfig, None, ["sparsity.type=bn_l1", "sparsity.weight=1e-4"])
    assert config.sparsity == SparsitySettings("bn_l1", 1e-4)


@pytest.mark.slow
def test_sparsity_training_shrinks_bn_scales_and_filter_norms(tiny_train_config, tmp_path):
    def train_one_epoch(sparsity: SparsitySettings) -> tuple[Detector, float]:
        config = load_config(TrainConfig, None, [
            f"data.train={tiny_train_config.data.train}", f"data.val={tiny_train_config.data.val}",
            f"output={tmp_path}", "model.input_size=[64, 96]", "optim.epochs=1", "optim.batch_size=8",
            "optim.warmup_epochs=0", "optim.lr=0.01", "optim.ema=false"])
        config.sparsity = sparsity
        trainer = Trainer(config, progress=False)
        loss_sparsity = trainer.train_epoch(0)[3]
        return trainer.model, loss_sparsity

    plain, plain_penalty = train_one_epoch(SparsitySettings())
    slimmed, bn_penalty = train_one_epoch(SparsitySettings("bn_l1", 1e-2))
    grouped, group_penalty = train_one_epoch(SparsitySettings("group_lasso", 1e-2))
    assert plain_penalty == 0.0 and bn_penalty > 0 and group_penalty > 0
    assert _bn_scales(slimmed).mean() < 0.99 * _bn_scales(plain).mean()
    assert _filter_norms(grouped).sum() < 0.95 * _filter_norms(plain).sum()


def test_distillation_loss_decreases_and_teacher_stays_frozen():
    teacher, student = _teacher_and_pruned_student()
    teacher_weights = copy.deepcopy(teacher.state_dict())
    distiller = Distiller(teacher, student, DistillSettings(enabled=True, mode="both", temperature=2.0))
    optimizer = torch.optim.AdamW([*student.parameters(), *distiller.parameters()], lr=2e-3)
    images = torch.rand(2, 3, *INPUT_HW)
    losses = []
    for _ in range(12):
        _, loss = distiller.student_forward(images)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    assert losses[0] > 0 and losses[-1] < 0.7 * losses[0], losses
    assert not teacher.training
    assert all(torch.equal(value, teacher_weights[name]) for name, value in teacher.state_dict().items())


def test_feature_adapters_map_pruned_widths_and_stay_out_of_checkpoints(tmp_path):
    teacher, student = _teacher_and_pruned_student()
    distiller = Distiller(teacher, student, DistillSettings(enabled=True, mode="feature"))
    student_widths, teacher_widths = model_widths(student), model_widths(teacher)
    for adapter, name in zip(distiller.adapters, NECK_OUTPUTS):
        assert student_widths[name] < teacher_widths[name]
        assert adapter.weight.shape == (teacher_widths[name], student_widths[name], 1, 1)
    save_checkpoint(tmp_path / "student.pt", student, ["a", "b", "c"], INPUT_HW)
    assert not any("adapter" in key for key in torch.load(tmp_path / "student.pt", weights_only=True)["state_dict"])
    assert model_widths(load_checkpoint(tmp_path / "student.pt").model) == student_widths
    assert len(list(Distiller(teacher, student, DistillSettings(mode="logit")).parameters())) == 0
    with pytest.raises(ConfigError, match="distill.mode .*'soft'"):
        Distiller(teacher, student, DistillSettings(mode="soft"))


@pytest.mark.slow
def test_prune_run_with_distillation(tiny_synth, tmp_path):
    classes = load_dataset(tiny_synth, "train").classes
    torch.manual_seed(0)
    save_checkpoint(tmp_path / "dense.pt", Detector(default_arch("nano", len(classes))), classes, (128, 192))
    config = load_config(PruneConfig, None, [
        f"checkpoint={tmp_path / 'dense.pt'}", f"data.train={tiny_synth}", f"data.val={tiny_synth}",
        "prune.ratio=0.3", "finetune.epochs=1", "finetune.batch_size=8", "finetune.ema=false",
        "distill.enabled=true", "distill.mode=both", f"output={tmp_path / 'pruned'}"])
    path = prune(config, progress=False).path
    epochs = json.loads((tmp_path / "pruned" / "finetune_step1" / "history.json").read_text())
    assert epochs[0]["loss_distill"] > 0 and epochs[0]["loss_sparsity"] == 0
    assert not any("adapter" in key for key in torch.load(path, weights_only=True)["state_dict"])
    assert load_checkpoint(path).model.num_classes == len(classes)


def test_auto_distillation_is_on_only_when_pruning_hard_and_explicit_settings_win():
    auto = DistillSettings()
    assert auto.enabled == "auto" and auto.auto_min_macs_cut == 0.5
    assert distills(auto, 0.63) and distills(auto, 0.5) and not distills(auto, 0.46)
    assert distills(DistillSettings(enabled=True), 0.0) and not distills(DistillSettings(enabled=False), 0.9)
    with pytest.raises(ConfigError, match="distill.enabled must be true, false or auto, got 'sometimes'"):
        Distiller(*_teacher_and_pruned_student(), DistillSettings(enabled="sometimes"))
    with pytest.raises(ConfigError, match="auto_min_macs_cut must be in"):
        Distiller(*_teacher_and_pruned_student(), DistillSettings(auto_min_macs_cut=1.5))


def test_auto_distillation_measures_the_cut_of_the_student_against_the_dense_checkpoint(tmp_path):
    teacher, half = _teacher_and_pruned_student()   # ratio 0.5 of channels: about 75 % of the MACs removed
    save_checkpoint(tmp_path / "dense.pt", teacher, ["a", "b", "c"], INPUT_HW)
    light = copy.deepcopy(teacher)
    StructuredPruner(light, INPUT_HW, make_importance("l1"), PruneSpec(ratio=0.1)).step()
    assert distillation_teacher(tmp_path / "dense.pt", DistillSettings(), half, INPUT_HW) is not None
    assert distillation_teacher(tmp_path / "dense.pt", DistillSettings(), light, INPUT_HW) is None
    assert distillation_teacher(tmp_path / "dense.pt", DistillSettings(), light, INPUT_HW, lambda: 0.7) is not None
    assert distillation_teacher(tmp_path / "dense.pt", DistillSettings(enabled=False), half, INPUT_HW) is None
