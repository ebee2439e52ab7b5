"""YAML configs: strict keys and types, shipped files in sync with the defaults."""

import dataclasses
from pathlib import Path

import pytest

from prune_perception.config import ExternalPruneConfig, PruneConfig, TrainConfig, load_config
from prune_perception.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]


def test_shipped_train_config_equals_defaults():
    assert load_config(TrainConfig, REPO / "config" / "train_synth.yaml") == TrainConfig()


def test_unknown_key_is_named(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("optim:\n  epochz: 3\n")
    with pytest.raises(ConfigError, match=r"bad.yaml.optim: unknown key\(s\) epochz"):
        load_config(TrainConfig, path)


def test_wrong_type_is_named(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("optim:\n  lr: fast\n")
    with pytest.raises(ConfigError, match="optim.lr: expected float, got 'fast'"):
        load_config(TrainConfig, path)


def test_overrides_are_typed():
    config = load_config(TrainConfig, None, ["optim.epochs=5", "model.input_size=[64, 96]", "optim.lr=1"])
    assert config.optim.epochs == 5 and config.model.input_size == [64, 96] and config.optim.lr == 1.0
    with pytest.raises(ConfigError, match="optim.epochs: expected int"):
        load_config(TrainConfig, None, ["optim.epochs=many"])


def test_overriding_one_key_of_a_section_keeps_the_sections_own_defaults(tmp_path):
    # PruneConfig's fine-tuning and ExternalPruneConfig's pruning defaults differ from their classes' defaults
    external = load_config(ExternalPruneConfig, None, ["prune.ratio=0.25", "finetune.epochs=3"])
    assert external.prune.round_to == ExternalPruneConfig().prune.round_to == 8 and external.prune.ratio == 0.25
    assert external.finetune.lr == ExternalPruneConfig().finetune.lr == 0.001 and external.finetune.epochs == 3
    assert not external.finetune.ema and PruneConfig().finetune.ema   # label-free: no weight average by default
    path = tmp_path / "prune.yaml"
    path.write_text("finetune:\n  epochs: 2\n")
    ours = load_config(PruneConfig, path)
    assert ours.finetune == dataclasses.replace(PruneConfig().finetune, epochs=2)


def test_invalid_yaml_and_missing_file(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("optim: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(TrainConfig, path)
    with pytest.raises(ConfigError, match="not found"):
        load_config(TrainConfig, tmp_path / "nope.yaml")
