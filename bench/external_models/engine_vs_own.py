"""prune_perception's engine vs a project's own ONNX inference code, detection by detection (package venv).

For the first N val images: the engine's best detection against the own pipeline's best (IoU, score
difference, class) and the detection counts. Identical top detections mean the engine's
pre-processing (colour order, scale, letterbox) and output decoding match the project's, whatever the
model's accuracy. Counts differ where the NMS differs: the engine keeps every (box, class) pair above
the threshold (as Ultralytics' validator, multi-label), YOLOX's demo too, Ultralytics' predictor keeps
one class per box.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict

import numpy as np

from prune_perception.data.dataset import read_image_rgb
from prune_perception.runtime.engine import DetectorEngine


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--format", required=True, choices=("yolox", "yolov8"))
    parser.add_argument("--own", required=True, help="COCO results file of own_pipeline_dets.py")
    parser.add_argument("--annotations", required=True)
    parser.add_argument("--images", required=True)
    parser.add_argument("--class-agnostic", action="store_true")
    parser.add_argument("--yolox-decoded", action="store_true")
    parser.add_argument("--score", type=float, default=0.001, help="score threshold (the own pipeline's)")
    parser.add_argument("--count", type=int, default=40)
    args = parser.parse_args()
    ground_truth = json.load(open(args.annotations))
    category_ids = sorted(c["id"] for c in ground_truth["categories"])
    own = defaultdict(list)
    for detection in json.load(open(args.own)):
        own[detection["image_id"]].append(detection)
    engine = DetectorEngine(args.model, model_format=args.format, warmup_runs=0, score_threshold=args.score,
                            nms_threshold=0.65, class_agnostic_nms=args.class_agnostic,
                            yolox_decoded=args.yolox_decoded or None)
    ious, score_diffs, same_class, counts = [], [], [], [0, 0]
    for image in sorted(ground_truth["images"], key=lambda i: i["id"])[:args.count]:
        detections, _ = engine.detect(read_image_rgb(f"{args.images}/{image['file_name']}"))
        theirs = sorted(own[image["id"]], key=lambda d: -d["score"])
        counts[0] += len(detections)
        counts[1] += len(theirs)
        if not theirs or not len(detections):
            continue  # an empty side shows in the counts
        x, y, w, h = theirs[0]["bbox"]
        a, b = np.array([x, y, x + w, y + h]), detections.boxes[0]
        inter = np.prod(np.clip(np.minimum(a[2:], b[2:]) - np.maximum(a[:2], b[:2]), 0, None))
        ious.append(inter / (np.prod(a[2:] - a[:2]) + np.prod(b[2:] - b[:2]) - inter))
        score_diffs.append(abs(theirs[0]["score"] - float(detections.scores[0])))
        same_class.append(category_ids[int(detections.labels[0])] == theirs[0]["category_id"])
    compared = bool(ious)
    print(json.dumps({"model": args.model, "images": len(ious),
                      "top1_iou_min": round(float(min(ious)), 5) if compared else None,
                      "top1_iou_mean": round(float(np.mean(ious)), 5) if compared else None,
                      "top1_score_abs_diff_max": float(max(score_diffs)) if compared else None,
                      "top1_same_class": float(np.mean(same_class)) if compared else None,
                      "detections_engine": counts[0], "detections_own": counts[1]}))


if __name__ == "__main__":
    main()
