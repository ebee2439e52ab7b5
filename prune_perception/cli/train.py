"""`train` a detector and `eval` a checkpoint or ONNX model on a dataset."""

from __future__ import annotations

import argparse
from pathlib import Path

from prune_perception.cli.common import (CLASS_AGNOSTIC_HELP, MODEL_OVERRIDES, add_command, add_json_option,
                                         nms_override, node_overrides, print_json)
from prune_perception.pruning.choices import IMPORTED_MODEL_FORMATS, RAW_OUTPUT_FORMAT


def _cmd_train(args: argparse.Namespace) -> None:
    from prune_perception.config import TrainConfig, load_config
    from prune_perception.training import distributed
    from prune_perception.training.trainer import Trainer

    config = load_config(TrainConfig, args.config, args.set)
    if args.output:
        config.output = args.output
    ctx = distributed.init_distributed()   # under torchrun: DDP over every rank (docs/scale-out.md)
    completed = False
    try:
        result = Trainer(config, progress=not args.quiet).fit(resume=args.resume)
        completed = True
    finally:
        distributed.shutdown_distributed(synchronize=completed)
    if ctx.is_main:
        print(f"best checkpoint: {result.best_checkpoint} (epoch {result.best_epoch}) "
              f"val mAP50 {result.best_map.map50:.3f} mAP50-95 {result.best_map.map50_95:.3f}")


def add_train_parser(sub) -> None:
    train = add_command(sub, "train", help="train a detector from a YAML config")
    train.add_argument("--config", help="YAML file (e.g. config/train_synth.yaml); defaults when omitted")
    train.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                       help="override a config value, e.g. --set optim.epochs=5 (repeatable)")
    train.add_argument("-o", "--output", help="output directory (overrides the config's output)")
    train.add_argument("--resume", action="store_true", help="continue from OUTPUT/last.pt")
    train.set_defaults(func=_cmd_train)


def _cmd_eval(args: argparse.Namespace) -> None:
    from prune_perception.errors import ConfigError

    if args.detections or args.annotations:
        if not (args.detections and args.annotations) or args.model or args.data:
            raise ConfigError("--detections DETS_JSON needs --annotations GT_JSON and scores that file: give no model "
                              "and no --data with it")
        from prune_perception.evaluation.coco_map import evaluate_results_file

        result, paths = evaluate_results_file(Path(args.detections), Path(args.annotations)), []
    elif not (args.model and args.data):
        raise ConfigError("give a model and --data DATASET, or --detections DETS_JSON --annotations GT_JSON")
    else:
        from prune_perception.evaluation.evaluate import evaluate_model_file

        result, paths = evaluate_model_file(Path(args.model), args.data, args.split,
                                            Path(args.output) if args.output else None, args.batch_size,
                                            progress=not args.quiet, engine_options=_eval_engine_options(args))
    if args.json:
        print_json(dict(result.as_dict(), model=args.model, data=str(args.data), split=args.split,
                        written=[str(path) for path in paths]))
        return
    for path in paths:
        print(f"wrote {path}")
    print(f"mAP50 {result.map50:.3f} mAP50-95 {result.map50_95:.3f} on {result.num_images} images")


def _eval_engine_options(args: argparse.Namespace) -> dict:
    """Engine options of `eval` (--model-format, --class-agnostic-nms, -p); ConfigError for a -p it does not take."""
    from prune_perception.errors import ConfigError

    params = node_overrides(args.param)
    unknown = sorted(set(params) - set(MODEL_OVERRIDES))
    if unknown:
        raise ConfigError(f"eval -p takes {', '.join(MODEL_OVERRIDES)} (thresholds are fixed for mAP); "
                          f"got {', '.join(unknown)}")
    if args.model_format:
        params["model_format"] = args.model_format
    return {**params, **nms_override(args)}


def add_eval_parser(sub) -> None:
    evaluate = add_command(sub, "eval", help="mAP50, mAP50-95 and per-class AP of a model on a dataset, or of a "
                                             "COCO results file against COCO ground truth")
    evaluate.add_argument("model", nargs="?", help="checkpoint (.pt) or ONNX model (.onnx, run with ONNX Runtime)")
    evaluate.add_argument("--data", help="COCO json, COCO root or YOLO root (with a model)")
    evaluate.add_argument("--split", default="val")
    evaluate.add_argument("-o", "--output", help="directory for eval.json and eval.md")
    evaluate.add_argument("--batch-size", type=int, default=16)
    evaluate.add_argument("--detections", metavar="DETS_JSON",
                          help="instead of a model: score this COCO results file ([{image_id, category_id, bbox, "
                               "score}, ...]) against --annotations; no image files needed")
    evaluate.add_argument("--annotations", metavar="GT_JSON", help="COCO ground truth for --detections")
    onnx_options = evaluate.add_argument_group("ONNX models")
    onnx_options.add_argument("--model-format", choices=[f for f in IMPORTED_MODEL_FORMATS if f != RAW_OUTPUT_FORMAT],
                              help="output layout (default auto: our metadata, else recognised from the output shapes)")
    onnx_options.add_argument("--class-agnostic-nms", action="store_true", help=CLASS_AGNOSTIC_HELP)
    onnx_options.add_argument("-p", "--param", action="append", default=[], metavar="NAME=VALUE",
                              help="setting for a model without our metadata (YAML value), repeatable: "
                                   "class_names=[a,b], yolox_decoded=true, input_size=[H,W], input_color_order=BGR, "
                                   "input_scale=1.0")
    add_json_option(evaluate, "the mAP results")
    evaluate.set_defaults(func=_cmd_eval)
