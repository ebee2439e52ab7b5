"""mAP evaluation on small hand-made cases."""

from pathlib import Path

import numpy as np
import pytest

from prune_perception.data.dataset import DetectionDataset, Sample
from prune_perception.evaluation.coco_map import evaluate_detections
from prune_perception.runtime.postprocess import Detections, select_detections


def _dataset() -> DetectionDataset:
    samples = [
        Sample(Path("a.jpg"), 1, 100, 80, np.array([[10, 10, 40, 50], [50, 20, 90, 70]], np.float32),
               np.array([0, 1], np.int64)),
        Sample(Path("b.jpg"), 2, 100, 80, np.array([[5, 5, 25, 30]], np.float32), np.array([0], np.int64)),
    ]
    return DetectionDataset(["car", "pedestrian", "truck"], samples, Path("."))


def _dets(boxes, scores, labels) -> Detections:
    return Detections(np.array(boxes, np.float32).reshape(-1, 4), np.array(scores, np.float32),
                      np.array(labels, np.int64))


def test_perfect_detections_score_one():
    dataset = _dataset()
    result = evaluate_detections(dataset, [_dets(s.boxes, [0.9] * len(s.labels), s.labels) for s in dataset.samples])
    assert result.map50 == pytest.approx(1.0)
    assert result.map50_95 == pytest.approx(1.0)
    assert result.per_class["car"]["AP50"] == pytest.approx(1.0)
    assert result.per_class["truck"]["AP50"] is None  # no ground truth for that class


def test_no_detections_score_zero():
    dataset = _dataset()
    result = evaluate_detections(dataset, [_dets([], [], []) for _ in dataset.samples])
    assert result.map50 == 0.0 and result.map50_95 == 0.0


def test_wrong_class_and_shifted_boxes_are_penalised():
    dataset = _dataset()
    wrong_class = [_dets(s.boxes, [0.9] * len(s.labels), 1 - s.labels) for s in dataset.samples]
    assert evaluate_detections(dataset, wrong_class).map50 == 0.0
    # boxes shifted to IoU ~0.6: counted at IoU 0.5, missed at stricter thresholds
    shifted = [_dets(s.boxes + np.array([4, 0, 4, 0], np.float32) * (s.boxes[:, 2:3] - s.boxes[:, 0:1]) / 16,
                     [0.9] * len(s.labels), s.labels) for s in dataset.samples]
    result = evaluate_detections(dataset, shifted)
    assert result.map50 == pytest.approx(1.0)
    assert 0.0 < result.map50_95 < 0.7


def test_half_the_objects_found():
    dataset = _dataset()
    first = dataset.samples[0]
    result = evaluate_detections(dataset, [_dets(first.boxes, [0.9, 0.9], first.labels), _dets([], [], [])])
    assert result.per_class["car"]["AP50"] == pytest.approx(0.5, abs=0.01)
    assert result.per_class["pedestrian"]["AP50"] == pytest.approx(1.0)


def test_nms_is_class_aware_and_sorted():
    boxes = np.array([[0, 0, 10, 10], [1, 1, 10, 10], [0, 0, 10, 10], [50, 50, 60, 60]], np.float32)
    scores = np.zeros((4, 2), np.float32)
    scores[0, 0], scores[1, 0], scores[2, 1], scores[3, 0] = 0.9, 0.8, 0.7, 0.95
    dets = select_detections(boxes, scores, score_threshold=0.1, nms_threshold=0.5, max_detections=10)
    assert dets.scores.tolist() == pytest.approx([0.95, 0.9, 0.7])  # the 0.8 duplicate of class 0 is suppressed
    assert dets.labels.tolist() == [0, 0, 1]
    assert len(select_detections(boxes, scores, 0.1, 0.5, max_detections=1)) == 1
    assert len(select_detections(boxes, scores, 0.99, 0.5, 10)) == 0


def test_class_agnostic_nms_keeps_one_of_two_overlapping_boxes_of_different_classes():
    boxes = np.array([[0, 0, 10, 10], [1, 0, 11, 10], [50, 50, 60, 60]], np.float32)  # IoU of the first two: 0.82
    scores = np.zeros((3, 2), np.float32)
    scores[0, 0], scores[1, 1], scores[2, 1] = 0.9, 0.8, 0.7
    aware = select_detections(boxes, scores, score_threshold=0.1, nms_threshold=0.5, max_detections=10)
    assert aware.scores.tolist() == pytest.approx([0.9, 0.8, 0.7]) and aware.labels.tolist() == [0, 1, 1]
    agnostic = select_detections(boxes, scores, 0.1, 0.5, 10, class_agnostic=True)
    assert agnostic.scores.tolist() == pytest.approx([0.9, 0.7]) and agnostic.labels.tolist() == [0, 1]
    np.testing.assert_array_equal(agnostic.boxes, boxes[[0, 2]])
