"""Run a torch Detector over a dataset: letterbox, batched forward, NMS, boxes back to image pixels."""

from __future__ import annotations

import numpy as np
import torch
from tqdm import tqdm

from prune_perception.data.dataset import DetectionDataset, read_image_rgb
from prune_perception.evaluation.coco_map import MapResult, evaluate_detections
from prune_perception.models.detector import Detector
from prune_perception.runtime.letterbox import LetterboxTransform, letterbox
from prune_perception.runtime.postprocess import Detections, select_detections

EVAL_SCORE_THRESHOLD = 0.001
EVAL_NMS_THRESHOLD = 0.65
EVAL_MAX_DETECTIONS = 100


class LetterboxedImages:
    """A dataset's images letterboxed to the network input once, kept in memory for repeated evaluation."""

    def __init__(self, dataset: DetectionDataset, input_hw: tuple[int, int]):
        self.input_hw = input_hw
        self.images: list[np.ndarray] = []
        self.transforms: list[LetterboxTransform] = []
        for sample in dataset.samples:
            image, transform = letterbox(read_image_rgb(sample.image_path), input_hw)
            self.images.append(image)
            self.transforms.append(transform)
        self.original_hw = [(s.height, s.width) for s in dataset.samples]

    def batch(self, start: int, stop: int) -> torch.Tensor:
        array = np.stack(self.images[start:stop]).transpose(0, 3, 1, 2)
        return torch.from_numpy(np.ascontiguousarray(array)).float().div_(255.0)


@torch.no_grad()
def predict_images(model: Detector, images: LetterboxedImages, batch_size: int = 16,
                   score_threshold: float = EVAL_SCORE_THRESHOLD, nms_threshold: float = EVAL_NMS_THRESHOLD,
                   max_detections: int = EVAL_MAX_DETECTIONS, progress: bool = False) -> list[Detections]:
    """Detections per image in original image pixels."""
    was_training = model.training
    model.eval()
    results: list[Detections] = []
    starts = range(0, len(images.images), batch_size)
    for start in tqdm(starts, desc="predict", unit="batch", disable=not progress, leave=False):
        stop = min(start + batch_size, len(images.images))
        boxes, scores = model.decode(*model(images.batch(start, stop)), images.input_hw)
        for offset, (image_boxes, image_scores) in enumerate(zip(boxes.numpy(), scores.numpy())):
            index = start + offset
            dets = select_detections(image_boxes, image_scores, score_threshold, nms_threshold, max_detections)
            original = images.transforms[index].to_original(dets.boxes, images.original_hw[index])
            results.append(Detections(original.astype(np.float32), dets.scores, dets.labels))
    model.train(was_training)
    return results


def evaluate_model(model: Detector, images: LetterboxedImages, dataset: DetectionDataset,
                   batch_size: int = 16, progress: bool = False) -> MapResult:
    """COCO mAP of a torch model on a dataset whose images are already letterboxed."""
    return evaluate_detections(dataset, predict_images(model, images, batch_size, progress=progress))
