"""Evaluate a model file on a dataset and write eval.json + eval.md."""

from __future__ import annotations

import json
from pathlib import Path

from prune_perception.data.dataset import load_dataset
from prune_perception.evaluation.coco_map import MapResult, evaluate_detections
from prune_perception.evaluation.report import map_markdown
from prune_perception.models.checkpoint import load_checkpoint
from prune_perception.models.inference import LetterboxedImages, predict_images


def evaluate_checkpoint_file(model_path: Path, data: str, split: str = "val", output: Path | None = None,
                             batch_size: int = 16, progress: bool = True) -> tuple[MapResult, list[Path]]:
    """mAP of a checkpoint on a dataset (its classes mapped onto the checkpoint's)."""
    checkpoint = load_checkpoint(model_path)
    dataset = load_dataset(data, split, checkpoint.classes)
    images = LetterboxedImages(dataset, checkpoint.input_hw)
    result = evaluate_detections(dataset, predict_images(checkpoint.model, images, batch_size, progress=progress))
    written: list[Path] = []
    if output is not None:
        output.mkdir(parents=True, exist_ok=True)
        payload = dict(result.as_dict(), model=str(model_path), data=str(data), split=split)
        written.append(output / "eval.json")
        written[-1].write_text(json.dumps(payload, indent=2))
        written.append(output / "eval.md")
        written[-1].write_text(map_markdown(result, f"Evaluation of {model_path.name}",
                                            f"Dataset `{data}` split `{split}`, input {checkpoint.input_hw[1]}x"
                                            f"{checkpoint.input_hw[0]}."))
    return result, written
