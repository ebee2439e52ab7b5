"""`eval` on an exported ONNX model (runtime engine) gives the checkpoint's mAP."""

import dataclasses

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
