"""mAP of an exported ONNX model on a dataset, run with ONNX Runtime (CPU): the export step's own check.

Small on purpose: it compares a float export with its INT8 copy right after export. It reuses the
torch evaluation path's pieces (`LetterboxedImages` letterboxing, `select_detections` with the
same thresholds, `LetterboxTransform.to_original`, `evaluate_detections`), so its numbers are
comparable with `prune-perception eval` on the checkpoint. The runtime engine
(`prune_perception.runtime`) is the full, torch-free inference path and will replace this helper.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort

from prune_perception.data.dataset import load_dataset
from prune_perception.evaluation.coco_map import MapResult, evaluate_detections
from prune_perception.export.metadata import KEY_CLASSES, KEY_INPUT_SIZE
from prune_perception.models.inference import (EVAL_MAX_DETECTIONS, EVAL_NMS_THRESHOLD, EVAL_SCORE_THRESHOLD,
                                               LetterboxedImages)
from prune_perception.runtime.postprocess import Detections, select_detections


def predict_onnx(session: ort.InferenceSession, images: LetterboxedImages, batch_size: int = 16) -> list[Detections]:
    """Detections per image in original image pixels (eval thresholds); batch 1 for fixed-batch models."""
    input_meta = session.get_inputs()[0]
    if isinstance(input_meta.shape[0], int):
        batch_size = input_meta.shape[0]
    results: list[Detections] = []
    for start in range(0, len(images.images), batch_size):
        stop = min(start + batch_size, len(images.images))
        boxes, scores = session.run(["boxes", "scores"], {input_meta.name: images.batch(start, stop).numpy()})
        for index, image_boxes, image_scores in zip(range(start, stop), boxes, scores):
            dets = select_detections(image_boxes, image_scores, EVAL_SCORE_THRESHOLD, EVAL_NMS_THRESHOLD,
                                     EVAL_MAX_DETECTIONS)
            original = images.transforms[index].to_original(dets.boxes, images.original_hw[index])
            results.append(Detections(original.astype(np.float32), dets.scores, dets.labels))
    return results


def evaluate_onnx_file(model_path: str | Path, data: str | Path, split: str = "val") -> MapResult:
    """mAP of an exported model (classes and input size read from its metadata) on a dataset split."""
    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    metadata = session.get_modelmeta().custom_metadata_map
    classes, input_hw = json.loads(metadata[KEY_CLASSES]), tuple(json.loads(metadata[KEY_INPUT_SIZE]))
    dataset = load_dataset(data, split, classes)
    return evaluate_detections(dataset, predict_onnx(session, LetterboxedImages(dataset, input_hw)))
