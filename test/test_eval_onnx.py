"""`eval` on an exported ONNX model (runtime engine) gives the checkpoint's mAP."""

import dataclasses
import json
import subprocess
import sys

import pytest

from prune_perception.evaluation.evaluate import evaluate_model_file
from prune_perception.export.onnx_export import export_onnx
from prune_perception.training.trainer import Trainer


@pytest.mark.slow
def test_onnx_eval_matches_checkpoint_eval(tiny_train_config, tmp_path):
    config = dataclasses.replace(tiny_train_config, output=str(tmp_path / "train"))
    checkpoint = Trainer(config, progress=False).fit().best_checkpoint
    onnx_path = tmp_path / "model.onnx"
    export_onnx(checkpoint, onnx_path)
    data = tiny_train_config.data.val
    torch_result, _ = evaluate_model_file(checkpoint, data, progress=False)
    onnx_result, written = evaluate_model_file(onnx_path, data, output=tmp_path / "eval", progress=False)
    assert torch_result.num_detections > 0
    assert onnx_result.map50 == pytest.approx(torch_result.map50, abs=0.005)
    assert onnx_result.map50_95 == pytest.approx(torch_result.map50_95, abs=0.005)
    assert abs(onnx_result.num_detections - torch_result.num_detections) <= 0.02 * torch_result.num_detections
    assert "CPUExecutionProvider" in written[1].read_text()


def run_eval(*args):
    return subprocess.run([sys.executable, "-m", "prune_perception.cli", "-q", "eval", *map(str, args)],
                          capture_output=True, text=True, timeout=300)


def test_eval_cli_nms_mode_and_model_format(tiny_onnx_model, tiny_synth, tmp_path):
    for flags, mode in (([], "class-aware"), (["--class-agnostic-nms"], "class-agnostic")):
        out = tmp_path / mode
        result = run_eval(tiny_onnx_model, "--data", tiny_synth, "--model-format", "native", *flags, "-o", out)
        assert result.returncode == 0, result.stderr
        written = json.loads((out / "eval.json").read_text())
        assert (written["nms"], written["model_format"]) == (mode, "native")
        assert f"{mode} NMS" in (out / "eval.md").read_text()
    for args, problem in [(["--model-format", "yolox"], "metadata says output layout 'native' but model_format='yolox"),
                          (["-p", "score_threshold=0.5"], "eval -p takes class_names, input_size"),
                          (["-p", "class_names=[a]"], "1 class names given but the model outputs")]:
        result = run_eval(tiny_onnx_model, "--data", tiny_synth, *args)
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 2 and len(lines) == 1 and problem in lines[0], result.stderr
