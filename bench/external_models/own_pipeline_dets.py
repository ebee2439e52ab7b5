"""Detections of an exported model through its own project's ONNX inference code, as a COCO results file.

Runs in make_models.sh's separate venv. The results file is scored by prune_perception with
``prune-perception eval --detections DETS --annotations GT`` and compared with the same model run by
prune_perception's engine (``eval MODEL.onnx``): equal numbers mean the engine's pre- and
post-processing match the project's own.

- ``yolox``: YOLOX's ONNX Runtime demo (demo/ONNXRuntime/onnx_inference.py): ``preproc`` (BGR, 0..255,
  top-left letterbox), ``demo_postprocess`` (grid decode), score = objectness x class, ``multiclass_nms``.
- ``yolov8``: Ultralytics' predictor on the ONNX file (``YOLO(model).predict``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import cv2
import numpy as np


def yolox_detections(model: Path, image_paths: list[Path], input_hw, score: float, nms: float,
                     class_agnostic: bool):
    """Per image: (boxes xyxy original px, scores, class indices) from YOLOX's ONNX demo code."""
    import onnxruntime
    from yolox.data.data_augment import preproc
    from yolox.utils import demo_postprocess, multiclass_nms

    session = onnxruntime.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    for path in image_paths:
        image, ratio = preproc(cv2.imread(str(path)), input_hw)
        output = session.run(None, {session.get_inputs()[0].name: image[None]})
        predictions = demo_postprocess(output[0], input_hw)[0]
        centres, sizes = predictions[:, :2], predictions[:, 2:4]
        boxes = np.concatenate([centres - sizes / 2, centres + sizes / 2], axis=1) / ratio
        dets = multiclass_nms(boxes, predictions[:, 4:5] * predictions[:, 5:], nms_thr=nms, score_thr=score,
                              class_agnostic=class_agnostic)
        dets = np.zeros((0, 6)) if dets is None else dets
        yield dets[:, :4], dets[:, 4], dets[:, 5].astype(int)


def yolov8_detections(model: Path, image_paths: list[Path], input_hw, score: float, nms: float,
                      class_agnostic: bool):
    """Per image: (boxes xyxy original px, scores, class indices) from Ultralytics' predictor."""
    from ultralytics import YOLO

    yolo = YOLO(str(model), task="detect")
    for path in image_paths:
        result = yolo.predict(str(path), imgsz=list(input_hw), conf=score, iou=nms, agnostic_nms=class_agnostic,
                              max_det=100, device="cpu", verbose=False)[0]
        yield result.boxes.xyxy.numpy(), result.boxes.conf.numpy(), result.boxes.cls.numpy().astype(int)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--format", choices=("yolox", "yolov8"), required=True)
    parser.add_argument("--annotations", type=Path, required=True, help="COCO json of the images (val split)")
    parser.add_argument("--images", type=Path, required=True, help="folder the json's file_name entries are in")
    parser.add_argument("--input-size", type=int, nargs=2, required=True, metavar=("H", "W"))
    parser.add_argument("--score", type=float, default=0.001, help="score threshold (prune_perception eval's)")
    parser.add_argument("--nms", type=float, default=0.65, help="NMS IoU threshold (prune_perception eval's)")
    parser.add_argument("--class-agnostic", action="store_true")
    parser.add_argument("--output", type=Path, required=True, help="COCO results json to write")
    args = parser.parse_args()
    document = json.loads(args.annotations.read_text())
    category_ids = sorted(c["id"] for c in document["categories"])  # class index i -> i-th category id
    images = sorted(document["images"], key=lambda image: image["id"])
    detect = yolox_detections if args.format == "yolox" else yolov8_detections
    results = []
    paths = [args.images / image["file_name"] for image in images]
    for image, (boxes, scores, classes) in zip(images, detect(args.model, paths, tuple(args.input_size), args.score,
                                                                args.nms, args.class_agnostic)):
        for (x1, y1, x2, y2), score, cls in zip(boxes.tolist(), scores.tolist(), classes.tolist()):
            results.append({"image_id": image["id"], "category_id": category_ids[cls],
                            "bbox": [x1, y1, x2 - x1, y2 - y1], "score": score})
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results))
    print(f"wrote {args.output}: {len(results)} detections on {len(images)} images")


if __name__ == "__main__":
    main()
