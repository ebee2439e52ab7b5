"""Data in and out: `synth` (the synthetic dataset) and `bag` (evaluation bags from / to a dataset, bag info)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from prune_perception.cli.common import add_command, add_json_option, print_json

SYNTH_FIELDS = ("num_images", "width", "height", "val_fraction", "seed", "workers")
"""SynthConfig fields with a `synth` option; their defaults are SynthConfig's."""


def _cmd_synth(args: argparse.Namespace) -> None:
    from prune_perception.data.synth import SynthConfig, generate_dataset

    config = SynthConfig(**{name: getattr(args, name) for name in SYNTH_FIELDS if getattr(args, name) is not None})
    stats = generate_dataset(Path(args.output), config, progress=not args.quiet)
    print(json.dumps(stats, indent=2))
    print(f"dataset written to {args.output}")


def add_synth_parser(sub) -> None:
    synth = add_command(sub, "synth", help="generate the synthetic driving-scene dataset (COCO)")
    synth.add_argument("-o", "--output", default="runs/synth")
    synth.add_argument("-n", "--num-images", type=int)
    synth.add_argument("--width", type=int)
    synth.add_argument("--height", type=int)
    synth.add_argument("--val-fraction", type=float)
    synth.add_argument("--seed", type=int)
    synth.add_argument("--workers", type=int)
    synth.set_defaults(func=_cmd_synth)


def _cmd_bag_from_dataset(args: argparse.Namespace) -> None:
    from prune_perception.bags.dataset_bag import write_dataset_bag

    summary = write_dataset_bag(args.dataset, args.split, Path(args.output), fps=args.fps, transport=args.transport,
                                storage=args.storage, encoding=args.encoding, progress=not args.quiet)
    print(f"wrote {summary.path}: {summary.frames} frames ({summary.transport}, {args.fps:g} fps, "
          f"{(summary.end_ns - summary.start_ns) / 1e9:.1f} s) on {summary.image_topic}, {summary.boxes} ground-truth "
          f"boxes of {len(summary.classes)} classes on {summary.gt_topic}, {summary.storage} storage")


def _cmd_bag_info(args: argparse.Namespace) -> None:
    from prune_perception.bags.info import bag_info

    info = bag_info(args.bag)
    if args.json:
        print_json(info.as_dict())
    else:
        print(info.to_text())


def _cmd_bag_to_dataset(args: argparse.Namespace) -> None:
    from prune_perception.bags.to_dataset import bag_to_dataset

    export = bag_to_dataset(args.bag, Path(args.output), split=args.split, image_topic=args.image_topic,
                            require_ground_truth=not args.allow_missing_gt, progress=not args.quiet)
    left_out = {"broken frames": export.broken_frames, "frames without ground truth":
                export.frames_without_ground_truth, "ground truth without a frame": export.ground_truth_without_frame}
    print(f"wrote {export.images} images and {export.boxes} boxes of {len(export.classes)} classes to "
          f"{export.output} ({export.annotations.name}); left out: "
          + (", ".join(f"{count} {what}" for what, count in left_out.items() if count) or "nothing"))


def add_bag_parser(sub) -> None:
    bag = add_command(sub, "bag", help="evaluation bags: from a dataset, info, back to a dataset")
    bag_sub = bag.add_subparsers(dest="bag_command", required=True)
    from_dataset = add_command(bag_sub, "from-dataset", help="images + ground truth of a dataset split into a bag")
    from_dataset.add_argument("dataset", help="COCO json, COCO root or YOLO root")
    from_dataset.add_argument("-o", "--output", required=True, help="bag folder to create")
    from_dataset.add_argument("--split", default="val")
    from_dataset.add_argument("--fps", type=float, default=10.0)
    from_dataset.add_argument("--transport", choices=("raw", "compressed"), default="raw")
    from_dataset.add_argument("--storage", choices=("mcap", "sqlite3"), default="mcap")
    from_dataset.add_argument("--encoding", default="rgb8", help="raw image encoding (rgb8, bgr8, mono8, ...)")
    from_dataset.set_defaults(func=_cmd_bag_from_dataset)
    info = add_command(bag_sub, "info", help="topics, types, counts, duration, rates")
    info.add_argument("bag")
    info.add_argument("--json", action="store_true")
    info.set_defaults(func=_cmd_bag_info)
    to_dataset = add_command(bag_sub, "to-dataset", help="images + COCO json out of an evaluation bag")
    to_dataset.add_argument("bag")
    to_dataset.add_argument("-o", "--output", required=True)
    to_dataset.add_argument("--split", default="val")
    to_dataset.add_argument("--image-topic")
    to_dataset.add_argument("--allow-missing-gt", action="store_true", help="also export a bag without ground truth")
    to_dataset.set_defaults(func=_cmd_bag_to_dataset)
