"""Agreement of a pruned model with its dense teacher on held-out frames, without labels.

The dense model's detections (the engine's default thresholds: what the node would publish) are
the ground truth; the pruned model's detections (evaluation thresholds) are scored against them
with COCO mAP (:func:`prune_perception.evaluation.coco_map.evaluate_detections`): mAP50 = 1 when
the pruned model finds every box the dense one finds, at the same class, and nothing it does not.
Decoding and NMS are the runtime's own (:mod:`prune_perception.runtime.adapters`,
:func:`prune_perception.runtime.postprocess.select_detections`), boxes in network-input pixels.
For every layout, the relative raw-output error ``mean|s - t| / mean|t|`` is reported too; for raw
(undecodable) layouts, and when the dense model detects nothing on the held-out frames, it is the
only score.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from prune_perception.data.dataset import DetectionDataset, Sample
from prune_perception.evaluation.coco_map import evaluate_detections
from prune_perception.external.layout import DetectorLayout, as_output_list
from prune_perception.models.torch_eval import EVAL_MAX_DETECTIONS, EVAL_NMS_THRESHOLD, EVAL_SCORE_THRESHOLD
from prune_perception.runtime.adapters import ADAPTERS
from prune_perception.runtime.postprocess import Detections, select_detections

TEACHER_SCORE_THRESHOLD = 0.35
TEACHER_NMS_THRESHOLD = 0.7
TEACHER_MAX_DETECTIONS = 100
"""The engine's (and node's) defaults: the teacher's detections as a vehicle would publish them."""


@dataclass(frozen=True)
class Agreement:
    """Scores of a student against the teacher; mAP fields are None for raw layouts."""

    raw_error: float
    mAP50: float | None = None
    mAP50_95: float | None = None
    teacher_boxes: int = 0

    def score(self) -> float:
        """One number, higher is better: mAP50 when decodable, else -raw_error (early stopping, model selection)."""
        return self.mAP50 if self.mAP50 is not None else -self.raw_error

    def as_dict(self) -> dict:
        return {"agreement_mAP50": self.mAP50, "agreement_mAP50_95": self.mAP50_95, "raw_error": self.raw_error,
                "teacher_boxes": self.teacher_boxes}


@torch.no_grad()
def predict(model: torch.nn.Module, frames: torch.Tensor, batch_size: int = 16) -> list[np.ndarray]:
    """Raw outputs (numpy, one array per model output, batches concatenated) of ``model`` on float16/32 frames."""
    was_training = model.training
    model.eval()
    batches = [as_output_list(model(frames[i:i + batch_size].float())) for i in range(0, len(frames), batch_size)]
    model.train(was_training)
    return [torch.cat(parts).numpy() for parts in zip(*batches)]


def _detections(layout: DetectorLayout, outputs: list[np.ndarray], score: float, nms: float,
                max_detections: int) -> list[Detections]:
    height, width = layout.preprocess.input_hw
    adapter = ADAPTERS[layout.output_format](layout.preprocess.input_hw, layout.output_names, layout.output_layout)
    boxes, scores = adapter(outputs)
    boxes = np.clip(boxes, 0, [width, height, width, height])   # what the engine does in image pixels
    return [select_detections(b, s, score, nms, max_detections) for b, s in zip(boxes, scores)]


class AgreementScorer:
    """Holds the teacher's outputs on the held-out frames; ``score(student)`` compares a student with them."""

    def __init__(self, teacher: torch.nn.Module, frames: torch.Tensor, layout: DetectorLayout, batch_size: int = 16):
        self.frames, self.layout, self.batch_size = frames, layout, batch_size
        self.teacher_outputs = predict(teacher, frames, batch_size)
        self.teacher_scale = float(np.mean([np.abs(o).mean() for o in self.teacher_outputs])) + 1e-12
        self.reference = None
        if layout.decodable:
            height, width = layout.preprocess.input_hw
            teacher = _detections(layout, self.teacher_outputs, TEACHER_SCORE_THRESHOLD, TEACHER_NMS_THRESHOLD,
                                  TEACHER_MAX_DETECTIONS)
            samples = [Sample(Path(f"holdout/{index}"), index + 1, width, height, dets.boxes, dets.labels)
                       for index, dets in enumerate(teacher)]
            if any(len(sample.labels) for sample in samples):
                self.reference = DetectionDataset(list(layout.classes), samples, Path("holdout"))

    def score(self, student: torch.nn.Module) -> Agreement:
        outputs = predict(student, self.frames, self.batch_size)
        raw_error = float(np.mean([np.abs(s - t).mean() for s, t in zip(outputs, self.teacher_outputs)])
                          / self.teacher_scale)
        if self.reference is None:
            return Agreement(raw_error)
        detections = _detections(self.layout, outputs, EVAL_SCORE_THRESHOLD, EVAL_NMS_THRESHOLD, EVAL_MAX_DETECTIONS)
        result = evaluate_detections(self.reference, detections)
        return Agreement(raw_error, result.map50, result.map50_95,
                         sum(len(sample.labels) for sample in self.reference.samples))
