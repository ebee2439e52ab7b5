"""A tiny real training run: the loss goes down, outputs are written, resume continues."""

import dataclasses
import json

import pytest
import torch

from prune_perception.config import TrainConfig, load_config
from prune_perception.errors import ConfigError
from prune_perception.models.checkpoint import load_checkpoint
from prune_perception.training.loss import DetectionLoss
from prune_perception.training.trainer import Trainer


@pytest.mark.slow
def test_tiny_training_lowers_loss_and_writes_outputs(tiny_train_config):
    result = Trainer(tiny_train_config, progress=False).fit()
    losses = [r.loss for r in result.history]
    assert len(losses) == 4
    assert losses[-1] < 0.8 * losses[0], losses
    output = result.best_checkpoint.parent
    for name in ("best.pt", "last.pt", "history.json", "training.png", "eval_best.json"):
        assert (output / name).is_file(), name
    history = json.loads((output / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2, 3, 4]
    assert all(h["mAP50"] is not None for h in history)
    assert load_checkpoint(result.best_checkpoint).model.num_classes == 6


@pytest.mark.slow
def test_resume_continues_from_last_epoch(tiny_train_config, tmp_path):
    config = dataclasses.replace(tiny_train_config, output=str(tmp_path / "run"),
                                 optim=dataclasses.replace(tiny_train_config.optim, epochs=1))
    Trainer(config, progress=False).fit()
    longer = dataclasses.replace(config, optim=dataclasses.replace(config.optim, epochs=2))
    resumed = Trainer(longer, progress=False)
    result = resumed.fit(resume=True)
    assert resumed.start_epoch == 1
    assert [r.epoch for r in result.history] == [1, 2]


def test_loss_decreases_when_fitting_one_batch():
    """The assigner + loss give a signal a model can follow (overfit one hand-made batch)."""
    from prune_perception.models.arch import default_arch
    from prune_perception.models.detector import Detector

    torch.manual_seed(0)
    model = Detector(default_arch("nano", 3))
    loss_fn = DetectionLoss(model.strides)
    images = torch.rand(2, 3, 96, 160)
    targets = torch.tensor([[0, 0, 10, 10, 60, 50], [0, 2, 100, 40, 108, 52], [1, 1, 20, 20, 150, 90]])
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
    losses = []
    for _ in range(25):
        loss, parts = loss_fn(*model(images), targets, (96, 160))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
        assert set(parts) == {"cls", "box"}
    assert losses[-1] < 0.5 * losses[0]


def test_images_without_objects_give_finite_loss():
    from prune_perception.models.arch import default_arch
    from prune_perception.models.detector import Detector

    model = Detector(default_arch("nano", 2))
    loss, _ = DetectionLoss(model.strides)(*model(torch.rand(2, 3, 64, 64)), torch.zeros(0, 6), (64, 64))
    assert torch.isfinite(loss)
    loss.backward()


def test_train_config_range_checks(tiny_train_config):
    bad = dataclasses.replace(tiny_train_config, optim=dataclasses.replace(tiny_train_config.optim, optimizer="adam"))
    with pytest.raises(ConfigError, match="optim.optimizer"):
        Trainer(bad, progress=False)
    with pytest.raises(ConfigError, match="multiples of 32"):
        Trainer(load_config(TrainConfig, None, [f"data.train={tiny_train_config.data.train}",
                                                f"data.val={tiny_train_config.data.val}",
                                                "model.input_size=[100, 100]"]), progress=False)
