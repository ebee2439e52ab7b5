"""Post-processing of native model outputs: score filter, class-aware or class-agnostic NMS, top-k (numpy + OpenCV)."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np


@dataclass(frozen=True)
class Detections:
    """Detections of one image: boxes [N,4] xyxy float32, scores [N] float32, labels [N] int64."""

    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.scores)


def select_detections(boxes: np.ndarray, scores: np.ndarray, score_threshold: float, nms_threshold: float,
                      max_detections: int, pre_nms_top_k: int = 1000, class_agnostic: bool = False) -> Detections:
    """NMS of one image. boxes [K,4] xyxy, scores [K,C] per-class probabilities.

    Every (cell, class) pair above the threshold is a candidate, so one cell can give boxes of
    several classes (what mAP evaluation expects); only the best `pre_nms_top_k` go to NMS.
    Class-aware (default): a box only suppresses boxes of its own class. ``class_agnostic``: any
    higher-scoring box suppresses it, whatever the classes (YOLOX's and Ultralytics' ``agnostic``
    option), so overlapping boxes of different classes keep only the best one.
    """
    cells, classes = np.nonzero(scores > score_threshold)
    candidate_scores = scores[cells, classes]
    if len(candidate_scores) > pre_nms_top_k:
        top = np.argpartition(-candidate_scores, pre_nms_top_k - 1)[:pre_nms_top_k]
        cells, classes, candidate_scores = cells[top], classes[top], candidate_scores[top]
    candidate_boxes = boxes[cells].astype(np.float32)
    xywh = candidate_boxes.copy()
    xywh[:, 2:] -= xywh[:, :2]
    nms_groups = np.zeros_like(classes) if class_agnostic else classes
    keep = class_aware_nms(xywh, candidate_scores.astype(np.float32), nms_groups, score_threshold, nms_threshold)
    keep = keep[np.argsort(-candidate_scores[keep], kind="stable")][:max_detections]
    return Detections(candidate_boxes[keep], candidate_scores[keep].astype(np.float32), classes[keep].astype(np.int64))


def class_aware_nms(xywh: np.ndarray, scores: np.ndarray, classes: np.ndarray, score_threshold: float,
                    nms_threshold: float) -> np.ndarray:
    """Indices kept by per-class NMS of float32 [N,4] x,y,w,h boxes.

    Each class's boxes are shifted to their own region, so one ``cv2.dnn.NMSBoxes`` call never
    compares boxes of two classes (what ``NMSBoxesBatched`` does, which needs OpenCV 4.6+;
    Ubuntu 22.04 ships 4.5.4)."""
    if len(xywh) == 0:
        return np.zeros(0, dtype=np.int64)
    extent = float(np.abs(xywh).max()) * 3 + 1   # a box spans at most [-max, 2 max]
    shifted = xywh.astype(np.float32)
    shifted[:, :2] += (classes.astype(np.float32) * extent)[:, None]
    return np.asarray(cv2.dnn.NMSBoxes(shifted, scores, score_threshold, nms_threshold), dtype=np.int64).reshape(-1)
