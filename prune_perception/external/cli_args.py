"""Command-line options of `prune --model det.onnx --images ...` (imported detectors), as config overrides.

:func:`add_external_arguments` adds the options to the `prune` parser; :func:`external_overrides`
turns the parsed values into ``section.key=value`` overrides of :class:`ExternalPruneConfig`, so the
CLI, a YAML file (``external:`` section) and ``--set`` all go through one schema.
"""

from __future__ import annotations

import argparse
import json

from prune_perception.external.layout import PRUNE_MODEL_FORMATS


def add_external_arguments(parser: argparse.ArgumentParser) -> None:
    """--model, --images, --frame-stride, --max-frames, --input-size, --model-format, --keep-layer, --distill-loss,
    --labeled-data."""
    group = parser.add_argument_group("imported detectors (ONNX), fine-tuned without labels")
    group.add_argument("--model", metavar="DET.ONNX", help="an ONNX detector to prune (instead of --checkpoint)")
    group.add_argument("--images", nargs="+", metavar="DIR|VIDEO|BAG",
                       help="unlabeled frames: image folders, video files, rosbag2 bags (any number)")
    group.add_argument("--frame-stride", type=int, metavar="N", help="keep every N-th frame of each source")
    group.add_argument("--max-frames", type=int, metavar="N", help="frames read in all (default 1000)")
    group.add_argument("--input-size", type=int, nargs=2, metavar=("H", "W"),
                       help="network input size; required when the model's H/W are dynamic")
    group.add_argument("--model-format", choices=PRUNE_MODEL_FORMATS,
                       help="output layout (auto: metadata / output shapes; raw: match outputs element-wise)")
    group.add_argument("--keep-layer", action="append", metavar="NAME",
                       help="module name never pruned, besides the layers feeding the outputs (repeatable)")
    group.add_argument("--distill-loss", metavar="TERMS", help="auto, or '+'-joined: output, pseudo, feature, raw")
    group.add_argument("--labeled-data", metavar="DATASET",
                       help="optional COCO/YOLO set: its labeled mAP (val split) is reported as well")


def external_overrides(args: argparse.Namespace) -> list[str]:
    """``section.key=value`` overrides (values as JSON, which YAML reads back) for the options that were given."""
    values = {"external.model": args.model, "external.images": args.images,
              "external.frame_stride": args.frame_stride, "external.max_frames": args.max_frames,
              "external.input_size": args.input_size, "external.model_format": args.model_format,
              "external.keep_layers": args.keep_layer, "distill.loss": args.distill_loss,
              "external.labeled_data": args.labeled_data}
    return [f"{key}={json.dumps(value)}" for key, value in values.items() if value is not None]
