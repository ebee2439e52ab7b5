"""Export a checkpoint to an ONNX model in the native layout (docs/design.md §5), checked against torch before writing.

Pipeline: load checkpoint -> wrap Detector + decode -> legacy tracer (`torch.onnx.export(dynamo=False)`)
-> onnxslim -> parity check (torch vs ONNX Runtime CPU) -> metadata -> atomic write; optionally an
INT8 copy (`quantize.py`) written next to it.
"""

from __future__ import annotations

import io
import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import onnxslim
import torch
from torch import nn

from prune_perception.data.synth import render_scene
from prune_perception.errors import ExportError
from prune_perception.export.metadata import (KEY_MODEL_HASH, KEY_QUANTIZATION, QUANTIZATION_TYPE_INT8,
                                              build_metadata, model_hash, set_metadata)
from prune_perception.export.quantize import Int8Calibration, load_calibration_images, quantize_int8
from prune_perception.models.checkpoint import Checkpoint, load_checkpoint
from prune_perception.models.cost import model_cost
from prune_perception.models.detector import Detector
from prune_perception.runtime.letterbox import letterbox
from prune_perception.runtime.model_metadata import file_sha256

BOX_TOLERANCE_PX = 1e-2
"""Max |torch - ORT| of box coordinates, input pixels. Faithful float32 exports differ by <= 5e-5 px
at 224x384 (summation order); 1e-2 px is invisible, yet a changed weight or op shows far above it."""
SCORE_TOLERANCE = 1e-4
"""Max |torch - ORT| of sigmoid scores. Faithful float32 exports differ by <= 5e-7."""
INPUT_NAME = "images"
OUTPUT_NAMES = ("boxes", "scores")
BATCH_DIM = "batch"
SUPPORTED_OPSETS = range(13, 21)
"""13: per-channel QuantizeLinear (INT8); 20: the newest opset the legacy (TorchScript) exporter writes."""
PARITY_SCENE_SIZE = (360, 640)  # (H, W) of the rendered road scene used as the real-looking parity input


class ExportableDetector(nn.Module):
    """Detector + decode as one graph: images [N,3,H,W] -> boxes [N,K,4] (xyxy input px), scores [N,K,C]."""

    def __init__(self, detector: Detector, input_hw: tuple[int, int]):
        super().__init__()
        self.detector = detector
        self.input_hw = input_hw

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.detector.decode(*self.detector(images), self.input_hw)


@dataclass(frozen=True)
class ParityResult:
    """Max absolute differences between torch and ONNX Runtime outputs on the same inputs."""

    boxes_max_abs_diff: float
    scores_max_abs_diff: float
    box_tolerance_px: float
    score_tolerance: float

    @property
    def passed(self) -> bool:
        # `<=` is False for NaN: a model that outputs NaN fails
        return self.boxes_max_abs_diff <= self.box_tolerance_px and self.scores_max_abs_diff <= self.score_tolerance

    def summary(self) -> str:
        return (f"max |boxes diff| {self.boxes_max_abs_diff:.3g} px (tolerance {self.box_tolerance_px:g}), "
                f"max |scores diff| {self.scores_max_abs_diff:.3g} (tolerance {self.score_tolerance:g})")


@dataclass(frozen=True)
class Int8Result:
    """The INT8 copy: file, calibration, and its max abs difference from the float model on a road scene."""

    path: Path
    size_bytes: int
    calibration_images: int
    excluded_nodes: int
    boxes_max_abs_diff_vs_float: float
    scores_max_abs_diff_vs_float: float


@dataclass(frozen=True)
class ExportReport:
    """What `export_onnx` wrote and measured; params/MACs are of the exported network at batch 1."""

    path: Path
    size_bytes: int
    opset: int
    dynamic_batch: bool
    params: int
    macs: int
    model_hash: str
    parity: ParityResult
    int8: Int8Result | None = None


def export_onnx(checkpoint_path: str | Path, output_path: str | Path, dynamic_batch: bool = False, opset: int = 17,
                slim: bool = True, box_tolerance_px: float = BOX_TOLERANCE_PX, score_tolerance: float = SCORE_TOLERANCE,
                int8_calibration: Int8Calibration | None = None) -> ExportReport:
    """Export a checkpoint to ONNX (+ an INT8 copy `<name>.int8.onnx` when `int8_calibration` is given).

    Nothing is written unless the parity check passes; ExportError (one line, with the differences)
    otherwise. CheckpointError / DatasetError for a bad checkpoint or calibration dataset.
    """
    if opset not in SUPPORTED_OPSETS:
        raise ExportError(f"opset {opset} not supported: use {SUPPORTED_OPSETS.start}..{SUPPORTED_OPSETS.stop - 1}")
    checkpoint_path, output_path = Path(checkpoint_path), Path(output_path)
    checkpoint = load_checkpoint(checkpoint_path)
    calibration_images = (load_calibration_images(int8_calibration, checkpoint.input_hw)
                          if int8_calibration is not None else None)
    wrapper = ExportableDetector(checkpoint.model, checkpoint.input_hw).eval()
    model = trace_to_onnx(wrapper, checkpoint.input_hw, dynamic_batch, opset)
    if slim:
        model = slim_model(model)
    parity_inputs = make_parity_inputs(checkpoint.input_hw, dynamic_batch)
    parity = check_parity(wrapper, model, parity_inputs, box_tolerance_px, score_tolerance)
    if not parity.passed:
        raise ExportError(f"parity check failed (torch vs ONNX Runtime): {parity.summary()}; "
                          f"nothing written to {output_path}")

    cost = model_cost(checkpoint.model, checkpoint.input_hw)
    macs, params = cost.macs, cost.params
    metadata = build_metadata(checkpoint.classes, checkpoint.input_hw,
                              pruning_record(checkpoint, checkpoint_path, params, macs), model_hash(model))
    set_metadata(model, metadata)

    int8_model = None
    if calibration_images is not None:
        int8_model, excluded_nodes = quantize_int8(model, calibration_images)
        quantization = {"type": QUANTIZATION_TYPE_INT8, "calibration_images": len(calibration_images.images),
                        "excluded_nodes": excluded_nodes}
        set_metadata(int8_model, dict(metadata, **{KEY_MODEL_HASH: model_hash(int8_model),
                                                   KEY_QUANTIZATION: json.dumps(quantization)}))

    write_model_atomically(model, output_path)
    int8 = None
    if int8_model is not None:
        int8_path = int8_output_path(output_path)
        write_model_atomically(int8_model, int8_path)
        scene = parity_inputs[-1][-1:]
        int8 = Int8Result(int8_path, int8_path.stat().st_size, len(calibration_images.images), excluded_nodes,
                          *max_abs_diffs(run_onnx(model, scene), run_onnx(int8_model, scene)))
    return ExportReport(output_path, output_path.stat().st_size, opset, dynamic_batch, params, macs,
                        metadata[KEY_MODEL_HASH], parity, int8)


def trace_to_onnx(wrapper: ExportableDetector, input_hw: tuple[int, int], dynamic_batch: bool,
                  opset: int) -> onnx.ModelProto:
    """Legacy TorchScript-based export (the dynamo exporter needs onnxscript); input `images`, outputs boxes/scores.

    Output shapes are declared in full ([batch|1, K, 4] and [batch|1, K, C]); the tracer leaves
    the scores' K and C symbolic when the batch is dynamic.
    """
    example = torch.zeros(1, 3, *input_hw)
    dynamic_axes = {name: {0: BATCH_DIM} for name in (INPUT_NAME, *OUTPUT_NAMES)} if dynamic_batch else None
    buffer = io.BytesIO()
    try:
        with warnings.catch_warnings():  # tracer chatter about the legacy exporter / Python-int shapes
            warnings.simplefilter("ignore")
            torch.onnx.export(wrapper, (example,), buffer, input_names=[INPUT_NAME], output_names=list(OUTPUT_NAMES),
                              opset_version=opset, dynamic_axes=dynamic_axes, do_constant_folding=True, dynamo=False)
    except Exception as exc:  # the exporter raises many types (ValueError, RuntimeError, OnnxExporterError)
        raise ExportError(f"torch.onnx.export failed at opset {opset}: {str(exc).splitlines()[0]}") from None
    model = onnx.load_from_string(buffer.getvalue())
    with torch.no_grad():
        example_outputs = wrapper(example)
    for output, tensor in zip(model.graph.output, example_outputs):
        for dim, size in zip(output.type.tensor_type.shape.dim[1:], tensor.shape[1:]):
            dim.dim_value = size
    return model


def slim_model(model: onnx.ModelProto) -> onnx.ModelProto:
    """onnxslim: constant folding, dead-node removal, shape-op simplification."""
    return onnxslim.slim(model)


def make_parity_inputs(input_hw: tuple[int, int], dynamic_batch: bool) -> list[np.ndarray]:
    """Uniform noise and a letterboxed rendered road scene (`x = pixel / 255`), as batches.

    Fixed batch: two [1,3,H,W] batches; dynamic batch: one [2,3,H,W] batch. The scene is the last image.
    """
    noise = np.random.default_rng(0).random((1, 3, *input_hw), dtype=np.float32)
    scene_bgr, _ = render_scene(np.random.default_rng(0), PARITY_SCENE_SIZE[1], PARITY_SCENE_SIZE[0])
    scene, _ = letterbox(np.ascontiguousarray(scene_bgr[..., ::-1]), input_hw)
    scene = (scene.transpose(2, 0, 1)[None] / np.float32(255.0)).astype(np.float32)
    return [np.concatenate([noise, scene])] if dynamic_batch else [noise, scene]


def run_onnx(model: onnx.ModelProto, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(boxes, scores) of one ONNX Runtime CPU run."""
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    boxes, scores = session.run(list(OUTPUT_NAMES), {INPUT_NAME: images})
    return boxes, scores


def max_abs_diffs(a: tuple[np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray]) -> tuple[float, float]:
    """Max |a - b| of (boxes, scores) pairs."""
    return float(np.abs(a[0] - b[0]).max()), float(np.abs(a[1] - b[1]).max())


@torch.no_grad()
def check_parity(wrapper: ExportableDetector, model: onnx.ModelProto, inputs: list[np.ndarray],
                 box_tolerance_px: float, score_tolerance: float) -> ParityResult:
    """Run torch and ONNX Runtime (CPU) on the same batches; max abs diffs over all of them."""
    boxes_diff = scores_diff = 0.0
    for images in inputs:
        torch_outputs = tuple(t.numpy() for t in wrapper(torch.from_numpy(images)))
        batch_boxes_diff, batch_scores_diff = max_abs_diffs(torch_outputs, run_onnx(model, images))
        boxes_diff, scores_diff = max(boxes_diff, batch_boxes_diff), max(scores_diff, batch_scores_diff)
    return ParityResult(boxes_diff, scores_diff, box_tolerance_px, score_tolerance)


def pruning_record(checkpoint: Checkpoint, checkpoint_path: Path, params: int, macs: int) -> dict:
    """The `pruning` metadata: the checkpoint's record (or {"method": "none"}) + measured params/MACs + source.

    `source_checkpoint` is the exported file {path, sha256}; the pruner's `source_checkpoint` and
    `source_sha256` (the dense model it started from) become `pruned_from` {path, sha256}.
    """
    record = dict(checkpoint.meta.get("pruning") or {"method": "none"})
    if "source_checkpoint" in record:
        record["pruned_from"] = {"path": record.pop("source_checkpoint"), "sha256": record.pop("source_sha256", None)}
    record.update(params=params, macs=macs,
                  source_checkpoint={"path": str(checkpoint_path), "sha256": file_sha256(checkpoint_path)})
    return record


def int8_output_path(output_path: Path) -> Path:
    """model.onnx -> model.int8.onnx"""
    return output_path.with_name(f"{output_path.stem}.int8{output_path.suffix}")


def write_model_atomically(model: onnx.ModelProto, path: Path) -> None:
    """Write to a temporary file beside `path`, then rename: readers never see a partial model."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(model.SerializeToString())
    os.replace(tmp, path)
