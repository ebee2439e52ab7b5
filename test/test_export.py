"""ONNX export: metadata contract, torch vs ONNX Runtime parity (and its failure), dynamic batch, INT8, CLI."""

import hashlib
import json
import subprocess
import sys
from datetime import datetime, timedelta, timezone

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from prune_perception.cli import main as cli_main
from prune_perception.data.classes import SYNTH_CLASSES
from prune_perception.errors import ExportError
from prune_perception.export import metadata as md
from prune_perception.export import onnx_export
from prune_perception.export.onnx_export import BOX_TOLERANCE_PX, SCORE_TOLERANCE, export_onnx
from prune_perception.export.quantize import Int8Calibration
from prune_perception.models.arch import default_arch
from prune_perception.models.checkpoint import load_checkpoint, save_checkpoint
from prune_perception.models.detector import Detector

INPUT_HW = (96, 160)
CELLS = 12 * 20 + 6 * 10 + 3 * 5  # strides 8/16/32 at 96x160
PRUNING_META = {"method": "l1", "ratio": 0.5, "params": 1, "macs": 1, "source_checkpoint": "runs/train/best.pt",
                "source_sha256": "ab" * 32}  # as pruning/run.py writes it


def _save_nano(path, meta=None):
    """A random `nano` whose outputs vary with the input like a trained one's (a fresh one: near-constant scores)."""
    torch.manual_seed(0)
    model = Detector(default_arch("nano", len(SYNTH_CLASSES)))
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_var.uniform_(0.5, 1.0)
                module.bias.normal_(0.0, 0.2)
        for head in model.heads():
            head.cls_pred.weight.mul_(20.0)
            head.reg_pred.weight.mul_(5.0)
    save_checkpoint(path, model, list(SYNTH_CLASSES), INPUT_HW, meta)
    return path


@pytest.fixture(scope="module")
def checkpoint_path(tmp_path_factory):
    return _save_nano(tmp_path_factory.mktemp("export_ckpt") / "nano.pt")


@pytest.fixture(scope="module")
def exported(checkpoint_path, tmp_path_factory):
    """(report, loaded ONNX model) of a fixed-batch export."""
    report = export_onnx(checkpoint_path, tmp_path_factory.mktemp("export") / "model.onnx")
    return report, onnx.load(report.path)


def _torch_outputs(checkpoint_path, images):
    model = load_checkpoint(checkpoint_path).model
    with torch.no_grad():
        return [t.numpy() for t in model.decode(*model(torch.from_numpy(images)), INPUT_HW)]


def _shape(value_info):
    return [d.dim_value or d.dim_param for d in value_info.type.tensor_type.shape.dim]


def test_metadata_contract(exported, checkpoint_path):
    report, model = exported
    meta = md.read_metadata(model)
    assert set(meta) == set(md.REQUIRED_KEYS)
    assert meta["prune_perception.format"] == "prune_perception.onnx/1"
    assert json.loads(meta["classes"]) == list(SYNTH_CLASSES)
    assert json.loads(meta["input_size"]) == list(INPUT_HW)
    assert meta["color_order"] == "RGB"
    assert json.loads(meta["normalization"]) == {"scale": 1 / 255, "mean": [0, 0, 0], "std": [1, 1, 1]}
    assert json.loads(meta["letterbox"]) == {"pad_value": 114, "centered": True}
    assert json.loads(meta["output_layout"])["name"] == "native"
    created = datetime.fromisoformat(meta["created"])
    assert created.utcoffset() == timedelta(0) and abs(datetime.now(timezone.utc) - created) < timedelta(minutes=10)
    assert meta["model_hash"] == report.model_hash == md.model_hash(model)  # re-checkable from the file
    pruning = json.loads(meta["pruning"])
    dense = load_checkpoint(checkpoint_path).model
    assert pruning["method"] == "none"
    assert pruning["params"] == report.params == sum(p.numel() for p in dense.parameters())
    assert pruning["macs"] == report.macs > 0
    assert pruning["source_checkpoint"] == {"path": str(checkpoint_path),
                                            "sha256": hashlib.sha256(checkpoint_path.read_bytes()).hexdigest()}
    assert [(i.name, _shape(i)) for i in [*model.graph.input, *model.graph.output]] == [
        ("images", [1, 3, *INPUT_HW]), ("boxes", [1, CELLS, 4]), ("scores", [1, CELLS, len(SYNTH_CLASSES)])]
    assert report.size_bytes == report.path.stat().st_size


def test_runtime_engine_reads_the_export(exported):
    """The contract seen from the vehicle side: the ONNX Runtime engine parses our metadata."""
    from prune_perception.runtime.engine import DetectorEngine

    report, _ = exported
    info = DetectorEngine(report.path, warmup_runs=0).info
    assert (info.output_format, info.format_source) == ("native", "metadata")
    assert info.classes == SYNTH_CLASSES and info.model_hash == report.model_hash
    assert info.pruning["macs"] == report.macs and info.batch_size == 1


def test_hash_stable_across_exports(exported, checkpoint_path, tmp_path):
    again = export_onnx(checkpoint_path, tmp_path / "again.onnx")
    assert again.model_hash == exported[0].model_hash


def test_pruning_record_of_a_pruned_checkpoint(tmp_path):
    checkpoint = _save_nano(tmp_path / "pruned.pt", {"pruning": PRUNING_META})
    report = export_onnx(checkpoint, tmp_path / "pruned.onnx")
    pruning = json.loads(md.read_metadata(onnx.load(report.path))["pruning"])
    assert pruning["method"] == "l1" and pruning["ratio"] == 0.5
    assert (pruning["params"], pruning["macs"]) == (report.params, report.macs)  # measured, not copied
    assert pruning["pruned_from"] == {"path": "runs/train/best.pt", "sha256": "ab" * 32}
    assert "source_sha256" not in pruning
    assert pruning["source_checkpoint"]["path"] == str(checkpoint)


def test_onnx_runtime_matches_torch(exported, checkpoint_path):
    report, model = exported
    assert report.parity.passed
    assert report.parity.boxes_max_abs_diff <= BOX_TOLERANCE_PX
    assert report.parity.scores_max_abs_diff <= SCORE_TOLERANCE
    images = np.random.default_rng(7).random((1, 3, *INPUT_HW), dtype=np.float32)
    boxes, scores = ort.InferenceSession(report.path).run(["boxes", "scores"], {"images": images})
    assert boxes.shape == (1, CELLS, 4) and scores.shape == (1, CELLS, len(SYNTH_CLASSES))
    torch_boxes, torch_scores = _torch_outputs(checkpoint_path, images)
    np.testing.assert_allclose(boxes, torch_boxes, rtol=0, atol=BOX_TOLERANCE_PX)
    np.testing.assert_allclose(scores, torch_scores, rtol=0, atol=SCORE_TOLERANCE)


def test_dynamic_batch(checkpoint_path, tmp_path):
    report = export_onnx(checkpoint_path, tmp_path / "dynamic.onnx", dynamic_batch=True)
    session = ort.InferenceSession(report.path)
    assert [(i.name, i.shape) for i in session.get_inputs() + session.get_outputs()] == [
        ("images", ["batch", 3, *INPUT_HW]), ("boxes", ["batch", CELLS, 4]), ("scores", ["batch", CELLS, len(SYNTH_CLASSES)])]
    for batch in (1, 3):
        images = np.random.default_rng(batch).random((batch, 3, *INPUT_HW), dtype=np.float32)
        boxes, scores = session.run(["boxes", "scores"], {"images": images})
        torch_boxes, torch_scores = _torch_outputs(checkpoint_path, images)
        np.testing.assert_allclose(boxes, torch_boxes, rtol=0, atol=BOX_TOLERANCE_PX)
        np.testing.assert_allclose(scores, torch_scores, rtol=0, atol=SCORE_TOLERANCE)


def test_parity_failure_writes_nothing(checkpoint_path, tmp_path, monkeypatch):
    """An exported graph that differs from torch (one class bias shifted by 0.05) must fail the check."""
    slim = onnx_export.slim_model

    def slim_and_perturb(model):
        model = slim(model)
        conv = next(n for n in model.graph.node if n.op_type == "Conv" and "head0/cls_pred" in n.name)
        bias = next(i for i in model.graph.initializer if i.name == conv.input[2])
        bias.CopyFrom(onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(bias) + np.float32(0.05), bias.name))
        return model

    monkeypatch.setattr(onnx_export, "slim_model", slim_and_perturb)
    output = tmp_path / "model.onnx"
    with pytest.raises(ExportError, match=r"parity check failed.*max \|scores diff\| [0-9.e-]+ \(tolerance"):
        export_onnx(checkpoint_path, output)
    assert list(tmp_path.iterdir()) == []


def test_unsupported_opset(checkpoint_path, tmp_path):
    with pytest.raises(ExportError, match="opset 9 not supported"):
        export_onnx(checkpoint_path, tmp_path / "model.onnx", opset=9)


def _upstream_until_conv(model, node):
    """Op types between `node` and the nearest Conv(s) above it."""
    producers = {out: n for n in model.graph.node for out in n.output}
    seen, stack = [], [producers[i] for i in node.input if i in producers]
    while stack:
        current = stack.pop()
        seen.append(current.op_type)
        if current.op_type != "Conv":
            stack.extend(producers[i] for i in current.input if i in producers)
    return seen


def test_int8_export(checkpoint_path, tiny_synth, tmp_path):
    report = export_onnx(checkpoint_path, tmp_path / "model.onnx",
                         int8_calibration=Int8Calibration(tiny_synth, "train", num_images=6))
    int8 = report.int8
    assert int8.path == tmp_path / "model.int8.onnx" and int8.size_bytes < 0.5 * report.size_bytes
    model = onnx.load(int8.path)
    meta = md.read_metadata(model)
    assert set(meta) == set(md.REQUIRED_KEYS) | {md.KEY_QUANTIZATION}
    assert json.loads(meta["quantization"]) == {"type": "int8_static_qdq", "calibration_images": 6,
                                                "excluded_nodes": int8.excluded_nodes}
    assert meta["model_hash"] == md.model_hash(model) != report.model_hash
    float_meta = md.read_metadata(onnx.load(report.path))
    assert all(meta[key] == float_meta[key] for key in md.REQUIRED_KEYS if key != "model_hash")

    ops = [n.op_type for n in model.graph.node]
    assert ops.count("QuantizeLinear") > 10  # really quantised
    tail = [n for n in model.graph.node if n.op_type in ("Sigmoid", "Softplus")]
    assert len(tail) == 4  # one Sigmoid, one Softplus per level
    for node in tail:
        above = _upstream_until_conv(model, node)
        assert "QuantizeLinear" not in above and "DequantizeLinear" not in above, (node.name, above)
    assert not any(n.op_type == "QuantizeLinear" and "images" in n.input for n in model.graph.node)  # input conv float

    images = np.random.default_rng(3).random((1, 3, *INPUT_HW), dtype=np.float32)
    float_out = ort.InferenceSession(report.path).run(["boxes", "scores"], {"images": images})
    int8_out = ort.InferenceSession(int8.path).run(["boxes", "scores"], {"images": images})
    assert np.abs(float_out[0] - int8_out[0]).max() < 2.0  # px
    assert np.abs(float_out[1] - int8_out[1]).max() < 0.05


def test_metadata_module_is_torch_free():
    code = "import sys, prune_perception.export.metadata; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], timeout=60).returncode == 0


def test_cli_export(checkpoint_path, tmp_path, capsys):
    output = tmp_path / "cli.onnx"
    assert cli_main(["-q", "export", str(checkpoint_path), "-o", str(output), "--dynamic-batch", "--no-slim"]) == 0
    printed = capsys.readouterr().out
    assert "parity (torch vs ONNX Runtime): max |boxes diff|" in printed
    assert f"wrote {output}" in printed and "batch dynamic" in printed and "GMACs" in printed
    assert output.is_file()


def test_cli_int8_with_evaluation(checkpoint_path, tiny_synth, tmp_path, capsys):
    output = tmp_path / "cli.onnx"
    assert cli_main(["-q", "export", str(checkpoint_path), "-o", str(output), "--int8", "--calib-data",
                     str(tiny_synth), "--calib-images", "4", "--eval-data", str(tiny_synth)]) == 0
    printed = capsys.readouterr().out
    assert f"wrote {tmp_path / 'cli.int8.onnx'}" in printed and "4 calibration images" in printed
    assert "float: mAP50 " in printed and "int8: mAP50 " in printed


def test_cli_corrupt_checkpoint(tmp_path):
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"not a checkpoint at all")
    result = subprocess.run([sys.executable, "-m", "prune_perception.cli", "-q", "export", str(corrupt),
                             "-o", str(tmp_path / "model.onnx")], capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "corrupt" in lines[0] and str(corrupt) in lines[0], result.stderr
    assert not (tmp_path / "model.onnx").exists()


def test_cli_int8_needs_calibration_data(checkpoint_path, tmp_path, capsys):
    assert cli_main(["-q", "export", str(checkpoint_path), "-o", str(tmp_path / "m.onnx"), "--int8"]) == 2
    assert "--calib-data" in capsys.readouterr().err
