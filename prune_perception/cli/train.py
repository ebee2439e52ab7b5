"""`train` a detector and `eval` a checkpoint or ONNX model on a dataset."""

from __future__ import annotations

import argparse
from pathlib import Path

from prune_perception.cli.common import add_command, add_json_option, print_json


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
    from prune_perception.evaluation.evaluate import evaluate_model_file

    result, paths = evaluate_model_file(Path(args.model), args.data, args.split,
                                        Path(args.output) if args.output else None, args.batch_size,
                                        progress=not args.quiet)
    if args.json:
        print_json(dict(result.as_dict(), model=args.model, data=str(args.data), split=args.split,
                        written=[str(path) for path in paths]))
        return
    for path in paths:
        print(f"wrote {path}")
    print(f"mAP50 {result.map50:.3f} mAP50-95 {result.map50_95:.3f} on {result.num_images} images")


def add_eval_parser(sub) -> None:
    evaluate = add_command(sub, "eval", help="mAP50, mAP50-95 and per-class AP of a checkpoint on a dataset")
    evaluate.add_argument("model", help="checkpoint (.pt) or ONNX model (.onnx, run with ONNX Runtime)")
    evaluate.add_argument("--data", required=True, help="COCO json, COCO root or YOLO root")
    evaluate.add_argument("--split", default="val")
    evaluate.add_argument("-o", "--output", help="directory for eval.json and eval.md")
    evaluate.add_argument("--batch-size", type=int, default=16)
    add_json_option(evaluate, "the mAP results")
    evaluate.set_defaults(func=_cmd_eval)
