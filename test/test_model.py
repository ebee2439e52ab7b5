"""Detector family, arch specs and checkpoints."""

import pytest
import torch

from prune_perception.errors import CheckpointError, ConfigError
from prune_perception.models.arch import default_arch, validate_arch
from prune_perception.models.checkpoint import load_checkpoint, save_checkpoint
from prune_perception.models.detector import Detector, model_widths


@pytest.mark.parametrize("size", ["nano", "small"])
def test_output_shapes(size):
    model = Detector(default_arch(size, 6)).eval()
    cls_logits, distances = model(torch.rand(2, 3, 96, 160))
    cells = sum((96 // s) * (160 // s) for s in (8, 16, 32))
    assert cls_logits.shape == (2, cells, 6)
    assert distances.shape == (2, cells, 4)
    boxes, scores = model.decode(cls_logits, distances, (96, 160))
    assert boxes.shape == (2, cells, 4) and scores.min() >= 0 and scores.max() <= 1
    assert (boxes[..., 2:] >= boxes[..., :2]).all()


def test_checkpoint_round_trip_gives_identical_outputs(tmp_path):
    torch.manual_seed(0)
    model = Detector(default_arch("nano", 3)).eval()
    path = tmp_path / "model.pt"
    save_checkpoint(path, model, ["a", "b", "c"], (96, 160), meta={"note": "x"})
    payload = torch.load(path, map_location="cpu", weights_only=True)  # no unpickling needed
    assert set(payload) >= {"format", "arch", "state_dict", "classes", "input_size", "meta"}
    loaded = load_checkpoint(path)
    images = torch.rand(2, 3, 96, 160)
    with torch.no_grad():
        for expected, actual in zip(model(images), loaded.model(images)):
            assert torch.equal(expected, actual)
    assert loaded.classes == ["a", "b", "c"] and loaded.input_hw == (96, 160) and loaded.meta == {"note": "x"}


def test_narrower_widths_rebuild_from_checkpoint(tmp_path):
    arch = default_arch("nano", 2)
    for name in arch["widths"]:
        if name.startswith(("neck.", "head")) or name.endswith(".cv1"):
            arch["widths"][name] = max(1, arch["widths"][name] // 2 - 1)
    model = Detector(arch).eval()
    assert model_widths(model) == arch["widths"]
    save_checkpoint(tmp_path / "narrow.pt", model, ["a", "b"], (64, 64))
    loaded = load_checkpoint(tmp_path / "narrow.pt")
    assert loaded.model.arch["widths"] == arch["widths"]
    assert sum(p.numel() for p in loaded.model.parameters()) < sum(
        p.numel() for p in Detector(default_arch("nano", 2)).parameters())


def test_arch_validation_names_the_problem():
    arch = default_arch("nano", 6)
    arch["widths"]["stage2.block0.cv2"] = 7
    with pytest.raises(ConfigError, match="stage2.block0.cv2"):
        validate_arch(arch)
    with pytest.raises(ConfigError, match="unknown model size 'huge'"):
        default_arch("huge", 6)
    del arch["widths"]["stem"]
    with pytest.raises(ConfigError, match="missing \\['stem'\\]"):
        validate_arch(arch)


def test_corrupt_or_foreign_checkpoint_is_a_clear_error(tmp_path):
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="corrupt.pt"):
        load_checkpoint(corrupt)
    foreign = tmp_path / "foreign.pt"
    torch.save({"model": 1}, foreign)
    with pytest.raises(CheckpointError, match="format None"):
        load_checkpoint(foreign)
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "missing.pt")


def test_pickled_module_is_refused(tmp_path):
    """A checkpoint that would need arbitrary unpickling (a whole module) is rejected."""
    path = tmp_path / "module.pt"
    torch.save(Detector(default_arch("nano", 1)), path)
    with pytest.raises(CheckpointError, match="weights-only"):
        load_checkpoint(path)
