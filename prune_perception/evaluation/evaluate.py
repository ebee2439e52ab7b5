"""Evaluate a model file (torch checkpoint or ONNX) on a dataset and write eval.json + eval.md."""

from __future__ import annotations

import json
from pathlib import Path

from tqdm import tqdm

from prune_perception.data.dataset import DetectionDataset, load_dataset, read_image_rgb
from prune_perception.errors import ConfigError
from prune_perception.evaluation.coco_map import MapResult, evaluate_detections
from prune_perception.evaluation.report import map_markdown
from prune_perception.models.torch_eval import (EVAL_MAX_DETECTIONS, EVAL_NMS_THRESHOLD, EVAL_SCORE_THRESHOLD,
                                               LetterboxedImages, evaluate_model)
from prune_perception.runtime.postprocess import Detections


def predict_with_engine(engine, dataset: DetectionDataset, progress: bool = False) -> list[Detections]:
    """Detections per image through the ONNX Runtime engine (the vehicle's inference path), at the evaluation
    thresholds; the engine's NMS mode (class-aware or class-agnostic) is kept."""
    engine.set_thresholds(EVAL_SCORE_THRESHOLD, EVAL_NMS_THRESHOLD, EVAL_MAX_DETECTIONS,
                          engine.thresholds.class_agnostic)
    return [engine.detect(read_image_rgb(sample.image_path))[0]
            for sample in tqdm(dataset.samples, desc="predict", unit="img", disable=not progress, leave=False)]


def evaluate_onnx(model_path: Path, data: str, split: str = "val", providers=("cpu",),
                  progress: bool = False, **engine_options) -> tuple[MapResult, dict]:
    """mAP of an ONNX model run by DetectorEngine; returns the result and a description of the model."""
    from prune_perception.runtime.engine import DetectorEngine

    engine = DetectorEngine(model_path, providers=providers, warmup_runs=1, **engine_options)
    dataset = load_dataset(data, split, engine.info.classes)
    result = evaluate_detections(dataset, predict_with_engine(engine, dataset, progress))
    nms = "class-agnostic" if engine.thresholds.class_agnostic else "class-aware"
    return result, {"input_hw": list(engine.info.input_hw), "providers": list(engine.active_providers),
                    "model_format": engine.info.output_format, "nms": nms}


def evaluate_checkpoint(model_path: Path, data: str, split: str = "val", batch_size: int = 16,
                        progress: bool = False) -> tuple[MapResult, dict]:
    """mAP of a torch checkpoint (its classes and input size)."""
    from prune_perception.models.checkpoint import load_checkpoint

    checkpoint = load_checkpoint(model_path)
    dataset = load_dataset(data, split, checkpoint.classes)
    images = LetterboxedImages(dataset, checkpoint.input_hw)
    result = evaluate_model(checkpoint.model, images, dataset, batch_size, progress)
    return result, {"input_hw": list(checkpoint.input_hw), "providers": ["torch"], "nms": "class-aware"}


def evaluate_model_file(model_path: Path, data: str, split: str = "val", output: Path | None = None,
                        batch_size: int = 16, progress: bool = True,
                        engine_options: dict | None = None) -> tuple[MapResult, list[Path]]:
    """mAP of a `.pt` checkpoint or `.onnx` model; with `output`, writes eval.json and eval.md there.

    ``engine_options`` (ONNX models only): DetectorEngine settings such as ``model_format``,
    ``class_agnostic_nms``, ``class_names``."""
    if model_path.suffix.lower() == ".onnx":
        result, described = evaluate_onnx(model_path, data, split, progress=progress, **(engine_options or {}))
    elif engine_options:
        raise ConfigError(f"{', '.join(sorted(engine_options))} apply to ONNX models only; {model_path} is a "
                          "checkpoint")
    else:
        result, described = evaluate_checkpoint(model_path, data, split, batch_size, progress)
    written: list[Path] = []
    if output is not None:
        output.mkdir(parents=True, exist_ok=True)
        payload = dict(result.as_dict(), model=str(model_path), data=str(data), split=split, **described)
        written.append(output / "eval.json")
        written[-1].write_text(json.dumps(payload, indent=2))
        height, width = described["input_hw"]
        written.append(output / "eval.md")
        written[-1].write_text(map_markdown(result, f"Evaluation of {model_path.name}",
                                            f"Dataset `{data}` split `{split}`, input {width}x{height}, "
                                            f"run with {', '.join(described['providers'])}, {described['nms']} NMS."))
    return result, written
