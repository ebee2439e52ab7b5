"""`prune` a checkpoint (plain, iterative, elastic, to an accuracy budget or a latency target), `sensitivity` of
each layer group, and the `report` comparing pruning runs."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from prune_perception.cli.common import add_command, add_scale_out_options, report_failures
from prune_perception.pruning.choices import (GRADIENT_FREE_CRITERIA, GRANULARITIES, IMPORTANCE_CRITERIA,
                                              IMPORTED_MODEL_FORMATS, LATENCY_DEVICES, SCHEDULES)


def _cmd_prune(args: argparse.Namespace) -> None:
    from prune_perception.config import ExternalPruneConfig, PruneConfig, load_config
    from prune_perception.errors import ConfigError

    if args.model and args.checkpoint:
        raise ConfigError("--model (an ONNX detector) and --checkpoint (one of ours) exclude each other: give one")
    overrides = list(args.set)
    for key, value in (("prune.method", args.method), ("prune.ratio", args.ratio),
                       ("prune.granularity", args.granularity),
                       ("prune.iterative_steps", args.steps), ("finetune.epochs", args.finetune_epochs),
                       ("prune.schedule", args.schedule), ("prune.latency_ms", args.latency_ms),
                       ("prune.latency_device", args.device), ("prune.latency_threads", args.threads),
                       ("output", args.output)):
        if value is not None:
            overrides.append(f"{key}={value}")
    if args.global_pruning:
        overrides.append("prune.global_pruning=true")
    if args.budget is not None:
        overrides.append(f"prune.budget={args.budget}")
    if args.schedule == "oneshot" and (args.steps or 1) > 1:
        raise ConfigError(f"--schedule oneshot contradicts --steps {args.steps}: use --schedule iterative")
    if args.sensitivity and not args.model:
        raise ConfigError("--sensitivity guides the ratios of an imported model: it needs --model")
    if args.model:
        sensitivity = [f"external.sensitivity={json.dumps(args.sensitivity)}"] if args.sensitivity else []
        config = load_config(ExternalPruneConfig, args.config, overrides + external_overrides(args) + sensitivity)
    else:
        config = load_config(PruneConfig, args.config, overrides + ([f"checkpoint={args.checkpoint}"]
                                                                    if args.checkpoint else []))
    from prune_perception.pruning import prune

    result = prune(config, progress=not args.quiet, fan_out=_fan_out_settings(args))
    if result is not None:   # None: a torchrun rank other than 0 (rank 0 prints)
        print("\n".join(result.summary))


def add_external_arguments(parser: argparse.ArgumentParser) -> None:
    """--model, --images, --frame-stride, --max-frames, --input-size, --model-format, --keep-layer, --distill-loss,
    --labeled-data, --class-names."""
    group = parser.add_argument_group("imported detectors (ONNX), fine-tuned without labels")
    group.add_argument("--model", metavar="DET.ONNX", help="an ONNX detector to prune (instead of --checkpoint)")
    group.add_argument("--images", nargs="+", metavar="DIR|VIDEO|BAG",
                       help="unlabeled frames: image folders, video files, rosbag2 bags (any number)")
    group.add_argument("--frame-stride", type=int, metavar="N", help="keep every N-th frame of each source")
    group.add_argument("--max-frames", type=int, metavar="N", help="frames read in all (default 1000)")
    group.add_argument("--input-size", type=int, nargs=2, metavar=("H", "W"),
                       help="network input size; required when the model's H/W are dynamic")
    group.add_argument("--model-format", choices=IMPORTED_MODEL_FORMATS,
                       help="output layout (auto: metadata / output shapes; raw: match outputs element-wise)")
    group.add_argument("--keep-layer", action="append", metavar="NAME",
                       help="module name never pruned, besides the layers feeding the outputs (repeatable)")
    group.add_argument("--distill-loss", metavar="TERMS", help="auto, or '+'-joined: output, pseudo, feature, raw")
    group.add_argument("--labeled-data", metavar="DATASET",
                       help="optional COCO/YOLO set: its labeled mAP (val split) is reported as well")
    group.add_argument("--class-names", nargs="+", metavar="NAME",
                       help="the model's classes in output order, when its ONNX names none (e.g. YOLOX exports): "
                            "needed to score it on --labeled-data")


def external_overrides(args: argparse.Namespace) -> list[str]:
    """``section.key=value`` overrides (values as JSON, which YAML reads back) for the options that were given."""
    values = {"external.model": args.model, "external.images": args.images,
              "external.frame_stride": args.frame_stride, "external.max_frames": args.max_frames,
              "external.input_size": args.input_size, "external.model_format": args.model_format,
              "external.keep_layers": args.keep_layer, "distill.loss": args.distill_loss,
              "external.labeled_data": args.labeled_data, "external.class_names": args.class_names}
    return [f"{key}={json.dumps(value)}" for key, value in values.items() if value is not None]


def _fan_out_settings(args: argparse.Namespace):
    """Dask settings from --scheduler / --workers / --retries / --allow-failures; None: run serially here."""
    if getattr(args, "scheduler", None) is None and getattr(args, "workers", None) is None:
        return None
    from prune_perception.scaleout.runner import FanOutSettings

    return FanOutSettings(scheduler=args.scheduler, workers=args.workers, retries=args.retries,
                          allow_failures=getattr(args, "allow_failures", False), progress=not args.quiet)


def add_prune_parser(sub) -> None:
    prune = add_command(sub, "prune", help="structured channel pruning (+ fine-tuning) of a checkpoint")
    prune.add_argument("--config", help="YAML file (e.g. config/prune_synth.yaml); defaults when omitted")
    prune.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                       help="override a config value, e.g. --set prune.max_layer_ratio=0.8 (repeatable)")
    prune.add_argument("--checkpoint", help="dense checkpoint to prune")
    prune.add_argument("--method", help=f"importance: {', '.join(IMPORTANCE_CRITERIA)}")
    prune.add_argument("--ratio", type=float, help="fraction of channels to remove")
    prune.add_argument("--granularity", choices=GRANULARITIES,
                       help="channel: structured (default); weight / kernel: unstructured masks (baseline, no speed-up)")
    prune.add_argument("--global", dest="global_pruning", action="store_true",
                       help="one importance ranking across layers (default: same ratio per layer)")
    prune.add_argument("--steps", type=int, help="iterative steps (fine-tuning after each)")
    prune.add_argument("--finetune-epochs", type=int, help="fine-tuning epochs per step (0: none)")
    prune.add_argument("--budget", type=float, metavar="POINTS",
                       help="accuracy budget: the fastest (measured) ratio whose fine-tuned mAP50 drop is "
                            "<= POINTS (prune.budget_*)")
    prune.add_argument("--schedule", choices=SCHEDULES,
                       help="oneshot, iterative (--steps N) or elastic: soft pruning while fine-tuning, "
                            "removed for real at the end")
    prune.add_argument("--latency-ms", type=float, metavar="MS",
                       help="latency target (inference p50 through the runtime engine, measured here) instead of "
                            "a ratio; with --budget the accuracy budget applies too (prune.latency_*)")
    prune.add_argument("--device", choices=LATENCY_DEVICES, help="with --latency-ms: where latency is measured")
    prune.add_argument("--threads", type=int, help="with --latency-ms: ONNX Runtime intra-op threads (0: default)")
    prune.add_argument("-o", "--output", help="output directory")
    add_scale_out_options(prune, allow_failures=False,
                          what="with --budget (steps or descending search): the candidate ratios")
    add_external_arguments(prune)
    prune.add_argument("--sensitivity", metavar="DIR",
                       help="with --model: the `sensitivity --model` output of the same model; the MACs that --ratio "
                            "cuts uniformly are cut where the agreement drops least (external.sensitivity)")
    prune.set_defaults(func=_cmd_prune)


def _cmd_sensitivity(args: argparse.Namespace) -> None:
    from prune_perception.errors import ConfigError

    output = Path(args.output)
    if bool(args.model) == bool(args.checkpoint):
        raise ConfigError("sensitivity needs one of --checkpoint (one of ours, scored on --data) or --model (an ONNX "
                          "detector, scored by agreement on --images)")
    if args.model:
        if _fan_out_settings(args) is not None:
            raise ConfigError("sensitivity --model runs here: --scheduler / --workers fan out --checkpoint points only")
        from prune_perception.config import ExternalPruneConfig, load_config
        from prune_perception.external.sensitivity import run_imported_sensitivity

        overrides = list(args.set) + [f"output={args.output}", f"prune.method={args.method}"] + external_overrides(args)
        config = load_config(ExternalPruneConfig, args.config, overrides)
        dense, points = run_imported_sensitivity(config, args.ratios, args.layers, progress=not args.quiet)
        failures = []
    else:
        from prune_perception.pruning.sensitivity import run_sensitivity

        if not args.data:
            raise ConfigError("sensitivity --checkpoint needs --data (the labeled set it is scored on)")
        settings, fan_out = _fan_out_settings(args), None
        if settings is not None:
            from prune_perception.scaleout.sensitivity_points import DaskSensitivity

            fan_out = DaskSensitivity(settings)
        dense, points = run_sensitivity(Path(args.checkpoint), args.data, output, args.ratios, args.method,
                                        args.layers, args.split, args.val_images, progress=not args.quiet,
                                        fan_out=fan_out)
        failures = getattr(fan_out, "failures", [])
    for name in ("sensitivity.json", "sensitivity.md", "sensitivity.png"):
        print(f"wrote {output / name}")
    report_failures(failures, "sensitivity")
    if points:
        worst = min(points, key=lambda p: p.mAP50)
        print(f"dense score {dense.mAP50:.3f}; {len(points)} evaluations; most sensitive: {worst.group} at "
              f"{worst.ratio:g} -> {worst.mAP50:.3f}")


def add_sensitivity_parser(sub) -> None:
    sensitivity = add_command(sub, "sensitivity",
                              help="prune each layer group alone at several ratios; score table/plot (val mAP50, "
                                   "or agreement with the dense model for an imported --model)")
    sensitivity.add_argument("--checkpoint", help="dense checkpoint (.pt)")
    sensitivity.add_argument("--data", help="with --checkpoint: COCO json, COCO root or YOLO root")
    sensitivity.add_argument("--split", default="val")
    sensitivity.add_argument("--ratios", type=float, nargs="+", default=[0.25, 0.5, 0.75])
    sensitivity.add_argument("--method", default="l1", help=f"importance: {', '.join(GRADIENT_FREE_CRITERIA)}")
    sensitivity.add_argument("--layers", nargs="+",
                             help="arch-spec layer names, or module names of an imported model (default: every "
                                  "prunable group)")
    sensitivity.add_argument("--val-images", type=int, help="evaluate on the first N val images only (faster)")
    sensitivity.add_argument("--config", help="with --model: YAML file of the prune schema (external:, prune:, ...)")
    sensitivity.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                             help="with --model: override a config value (repeatable)")
    sensitivity.add_argument("-o", "--output", default="runs/sensitivity")
    add_scale_out_options(sensitivity, allow_failures=True)
    add_external_arguments(sensitivity)
    sensitivity.set_defaults(func=_cmd_sensitivity)


def _cmd_report(args: argparse.Namespace) -> None:
    from prune_perception.evaluation.html_report import write_pruning_report

    paths = write_pruning_report([Path(run) for run in args.runs], Path(args.output),
                                 Path(args.sensitivity) if args.sensitivity else None)
    for path in paths:
        print(f"wrote {path}")
    print(f"pruning report of {len(args.runs)} run(s): {paths[-1]}")


def add_report_parser(sub) -> None:
    report = add_command(sub, "report", help="Markdown + self-contained HTML report comparing pruning runs")
    report.add_argument("runs", nargs="+", metavar="RUN_DIR", help="prune output folders (history.json, pruned.pt)")
    report.add_argument("--sensitivity", metavar="DIR", help="sensitivity output folder (sensitivity.json)")
    report.add_argument("-o", "--output", default="runs/report")
    report.set_defaults(func=_cmd_report)
