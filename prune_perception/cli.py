"""`prune-perception <command>`: the offline tool. Bad input ends with one readable line and exit code 2."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from prune_perception.errors import PrunePerceptionError


def _cmd_synth(args: argparse.Namespace) -> None:
    from prune_perception.data.synth import SynthConfig, generate_dataset

    config = SynthConfig(num_images=args.num_images, width=args.width, height=args.height,
                         val_fraction=args.val_fraction, seed=args.seed, workers=args.workers)
    stats = generate_dataset(Path(args.output), config, progress=not args.quiet)
    print(json.dumps(stats, indent=2))
    print(f"dataset written to {args.output}")


def _cmd_train(args: argparse.Namespace) -> None:
    from prune_perception.config import TrainConfig, load_config
    from prune_perception.training.trainer import Trainer

    config = load_config(TrainConfig, args.config, args.set)
    if args.output:
        config.output = args.output
    result = Trainer(config, progress=not args.quiet).fit(resume=args.resume)
    print(f"best checkpoint: {result.best_checkpoint} (epoch {result.best_epoch}) "
          f"val mAP50 {result.best_map.map50:.3f} mAP50-95 {result.best_map.map50_95:.3f}")


def _cmd_eval(args: argparse.Namespace) -> None:
    from prune_perception.evaluation.evaluate import evaluate_checkpoint_file

    result, paths = evaluate_checkpoint_file(Path(args.model), args.data, args.split,
                                             Path(args.output) if args.output else None, args.batch_size,
                                             progress=not args.quiet)
    print(f"mAP50 {result.map50:.3f} mAP50-95 {result.map50_95:.3f} on {result.num_images} images")
    for path in paths:
        print(f"wrote {path}")


def _cmd_demo(args: argparse.Namespace) -> None:
    from prune_perception.demo import run_demo

    run_demo(Path(args.output), num_images=args.num_images, epochs=args.epochs, progress=not args.quiet)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="prune-perception", description=__doc__)
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    sub = parser.add_subparsers(dest="command", required=True)

    synth = sub.add_parser("synth", help="generate the synthetic driving-scene dataset (COCO)")
    synth.add_argument("-o", "--output", default="runs/synth")
    synth.add_argument("-n", "--num-images", type=int, default=1000)
    synth.add_argument("--width", type=int, default=640)
    synth.add_argument("--height", type=int, default=360)
    synth.add_argument("--val-fraction", type=float, default=0.2)
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--workers", type=int, default=2)
    synth.set_defaults(func=_cmd_synth)

    train = sub.add_parser("train", help="train a detector from a YAML config")
    train.add_argument("--config", help="YAML file (e.g. config/train_synth.yaml); defaults when omitted")
    train.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                       help="override a config value, e.g. --set optim.epochs=5 (repeatable)")
    train.add_argument("-o", "--output", help="output directory (overrides the config's output)")
    train.add_argument("--resume", action="store_true", help="continue from OUTPUT/last.pt")
    train.set_defaults(func=_cmd_train)

    evaluate = sub.add_parser("eval", help="mAP50, mAP50-95 and per-class AP of a checkpoint on a dataset")
    evaluate.add_argument("model", help="checkpoint (.pt)")
    evaluate.add_argument("--data", required=True, help="COCO json, COCO root or YOLO root")
    evaluate.add_argument("--split", default="val")
    evaluate.add_argument("-o", "--output", help="directory for eval.json and eval.md")
    evaluate.add_argument("--batch-size", type=int, default=16)
    evaluate.set_defaults(func=_cmd_eval)

    demo = sub.add_parser("demo", help="the whole pipeline on synthetic data; reuses finished stages")
    demo.add_argument("-o", "--output", default="runs/demo")
    demo.add_argument("-n", "--num-images", type=int, default=1000)
    demo.add_argument("--epochs", type=int, default=None, help="training epochs (default: config/train_synth.yaml)")
    demo.set_defaults(func=_cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except PrunePerceptionError as exc:
        print(f"prune-perception {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"prune-perception {args.command}: error: {exc.strerror or exc}: {exc.filename or ''}".rstrip(": "),
              file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"prune-perception {args.command}: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
