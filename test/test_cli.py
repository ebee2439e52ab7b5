"""The CLI on bad input: one readable line naming the problem, non-zero exit, no traceback."""

import json
import shutil
import subprocess
import sys

import pytest

from prune_perception.models.arch import default_arch
from prune_perception.models.checkpoint import save_checkpoint
from prune_perception.models.detector import Detector


def run_cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "prune_perception.cli", "-q", *map(str, args)],
                          capture_output=True, text=True, cwd=cwd, timeout=300)


def assert_clean_failure(result, *fragments):
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


@pytest.fixture
def synth_copy(tiny_synth, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(tiny_synth, root)
    return root


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    from prune_perception.data.classes import SYNTH_CLASSES

    path = tmp_path_factory.mktemp("ckpt") / "model.pt"
    save_checkpoint(path, Detector(default_arch("nano", len(SYNTH_CLASSES))), list(SYNTH_CLASSES), (96, 160))
    return path


def test_train_with_unknown_config_key(tmp_path):
    config = tmp_path / "train.yaml"
    config.write_text("optim:\n  learning_rate: 0.1\n")
    assert_clean_failure(run_cli("train", "--config", config), "unknown key(s) learning_rate")


def test_train_with_missing_dataset(tmp_path):
    assert_clean_failure(run_cli("train", "--set", f"data.train={tmp_path / 'nowhere'}"), "nowhere")


def test_eval_with_missing_image(synth_copy, checkpoint):
    victim = next((synth_copy / "images" / "val").iterdir())
    victim.unlink()
    assert_clean_failure(run_cli("eval", checkpoint, "--data", synth_copy), victim.name)


def test_eval_with_corrupt_image(synth_copy, checkpoint):
    victim = next((synth_copy / "images" / "val").iterdir())
    victim.write_bytes(b"\x00garbage" * 10)
    assert_clean_failure(run_cli("eval", checkpoint, "--data", synth_copy), victim.name)


def test_eval_with_malformed_annotations(synth_copy, checkpoint):
    annotations = synth_copy / "annotations" / "instances_val.json"
    annotations.write_text('{"images": [ broken')
    assert_clean_failure(run_cli("eval", checkpoint, "--data", synth_copy), "instances_val.json")


def test_eval_with_unknown_class_names(synth_copy, checkpoint):
    annotations = synth_copy / "annotations" / "instances_val.json"
    coco = json.loads(annotations.read_text())
    coco["categories"][0]["name"] = "tractor"
    annotations.write_text(json.dumps(coco))
    assert_clean_failure(run_cli("eval", checkpoint, "--data", synth_copy), "tractor")


def test_eval_with_empty_dataset(synth_copy, checkpoint):
    annotations = synth_copy / "annotations" / "instances_val.json"
    coco = json.loads(annotations.read_text())
    annotations.write_text(json.dumps(dict(coco, images=[], annotations=[])))
    assert_clean_failure(run_cli("eval", checkpoint, "--data", synth_copy), "instances_val.json")


def test_eval_with_corrupt_checkpoint(tiny_synth, tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_text("this is not torch")
    assert_clean_failure(run_cli("eval", bad, "--data", tiny_synth), "bad.pt")


def test_synth_with_bad_value(tmp_path):
    assert_clean_failure(run_cli("synth", "-o", tmp_path / "s", "-n", "0"), "num_images")


@pytest.mark.slow
def test_eval_writes_json_and_markdown(tiny_synth, checkpoint, tmp_path):
    result = run_cli("eval", checkpoint, "--data", tiny_synth, "-o", tmp_path / "eval")
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "eval" / "eval.json").read_text())
    assert {"mAP50", "mAP50_95", "per_class"} <= set(report)
    assert "| car |" in (tmp_path / "eval" / "eval.md").read_text()


@pytest.mark.parametrize("args, fragment", [
    (["--ratio", "1.2"], "ratio must be in [0, 1)"),
    (["--ratio", "-0.1"], "ratio must be in [0, 1)"),
    (["--method", "magic"], "unknown importance criterion 'magic'"),
])
def test_prune_rejects_bad_settings(checkpoint, tiny_synth, tmp_path, args, fragment):
    result = run_cli("prune", "--checkpoint", checkpoint, "--set", f"data.val={tiny_synth}",
                     "--set", f"data.train={tiny_synth}", "--finetune-epochs", "0", "-o", tmp_path / "p", *args)
    assert_clean_failure(result, fragment)


def test_prune_rejects_a_checkpoint_of_another_model_family(tiny_synth, tmp_path):
    import torch

    from prune_perception.models.checkpoint import CHECKPOINT_FORMAT

    foreign = tmp_path / "yolo.pt"
    torch.save({"format": CHECKPOINT_FORMAT, "arch": {"family": "yolov5", "version": 7}, "state_dict": {},
                "classes": ["car"], "input_size": [96, 160], "meta": {}}, foreign)
    result = run_cli("prune", "--checkpoint", foreign, "--set", f"data.val={tiny_synth}", "-o", tmp_path / "p")
    assert_clean_failure(result, "yolo.pt", "family='yolov5'")


def test_global_options_after_the_sub_command(tmp_path):
    """`prune-perception train ... -q` is the same as `prune-perception -q train ...` (argparse refused it once)."""
    result = subprocess.run([sys.executable, "-m", "prune_perception.cli", "train", "--set",
                             f"data.train={tmp_path / 'nowhere'}", "-q"], capture_output=True, text=True, timeout=300)
    assert_clean_failure(result, "nowhere")
