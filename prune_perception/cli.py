"""`prune-perception <command>`: the offline tool. Bad input ends with one readable line and exit code 2."""

from __future__ import annotations

import argparse
import json
import logging
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
    print(f"mAP50 {result.map50:.3f} mAP50-95 {result.map50_95:.3f} on {result.num_images} images")
    for path in paths:
        print(f"wrote {path}")


def _cmd_prune(args: argparse.Namespace) -> None:
    from prune_perception.config import PruneConfig, load_config

    overrides = list(args.set)
    for key, value in (("checkpoint", args.checkpoint), ("prune.method", args.method), ("prune.ratio", args.ratio),
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
        from prune_perception.errors import ConfigError

        raise ConfigError(f"--schedule oneshot contradicts --steps {args.steps}: use --schedule iterative")
    config = load_config(PruneConfig, args.config, overrides)
    fan_out = _fan_out_settings(args)
    if fan_out is not None:
        from prune_perception.errors import ConfigError
        from prune_perception.training.distributed import env_context

        if config.prune.budget is None or config.prune.latency_ms is not None:
            raise ConfigError("--scheduler / --workers fan out the candidates of an accuracy-budget search: they "
                              "need --budget (and no --latency-ms)")
        if config.prune.budget_search != "steps":
            raise ConfigError(f"only the steps budget search fans out its candidates (bisect is sequential): "
                              f"prune.budget_search is {config.prune.budget_search!r}")
        if env_context().is_distributed:
            raise ConfigError("--scheduler / --workers (Dask) and torchrun do not combine: use one of them")
    from prune_perception.pruning.ddp_finetune import run_on_ranks

    # under torchrun rank 0 prunes and writes; every rank fine-tunes (docs/scale-out.md)
    run_on_ranks(config, lambda: _run_prune(config, args, fan_out))


def _run_prune(config, args: argparse.Namespace, fan_out) -> None:
    from prune_perception.pruning.run import run_pruning

    if config.prune.latency_ms is not None:
        from prune_perception.pruning.latency_budget import run_latency_pruning

        outcome = run_latency_pruning(config, progress=not args.quiet)
        print("\n".join(outcome.summary_lines()))
        return
    if config.prune.budget is not None:
        _prune_to_budget(config, args.quiet, fan_out)
        return
    path, history = run_pruning(config, progress=not args.quiet)
    dense, final = history[0], history[-1]
    print(f"pruned checkpoint: {path}")
    print(f"params {dense.params:,} -> {final.params:,}, MACs {dense.macs / 1e6:.1f}M -> {final.macs / 1e6:.1f}M "
          f"({1 - final.macs / dense.macs:.1%} cut), val mAP50 {dense.mAP50:.3f} -> {final.mAP50:.3f}")


def _prune_to_budget(config, quiet: bool, fan_out=None) -> None:
    from prune_perception.pruning.budget import run_budget_pruning

    candidates_on = None
    if fan_out is not None:
        from prune_perception.scaleout.budget import DaskBudgetCandidates

        candidates_on = DaskBudgetCandidates(fan_out)
    path, candidates, ratio = run_budget_pruning(config, progress=not quiet, fan_out=candidates_on)
    if ratio is None:
        print(f"no ratio kept val mAP50 within {config.prune.budget:g} points: dense model written unchanged to {path}")
        return
    chosen = next(c for c in candidates if c.ratio == ratio)
    print(f"pruned checkpoint: {path} (ratio {ratio:g}, largest within {config.prune.budget:g} mAP50 points; "
          f"{len(candidates)} candidates): params {chosen.params:,}, MACs {chosen.macs / 1e6:.1f}M, val mAP50 "
          f"{chosen.mAP50:.3f}")


def _cmd_sensitivity(args: argparse.Namespace) -> None:
    from prune_perception.pruning.sensitivity import run_sensitivity

    output = Path(args.output)
    settings, fan_out = _fan_out_settings(args), None
    if settings is not None:
        from prune_perception.scaleout.sensitivity import DaskSensitivity

        fan_out = DaskSensitivity(settings)
    dense, points = run_sensitivity(Path(args.checkpoint), args.data, output, args.ratios, args.method, args.layers,
                                    args.split, args.val_images, progress=not args.quiet, fan_out=fan_out)
    if points:
        worst = min(points, key=lambda p: p.mAP50)
        print(f"dense val mAP50 {dense.mAP50:.3f}; {len(points)} evaluations; most sensitive: {worst.group} at "
              f"{worst.ratio:g} -> {worst.mAP50:.3f}")
    for name in ("sensitivity.json", "sensitivity.md", "sensitivity.png"):
        print(f"wrote {output / name}")
    _report_failures(getattr(fan_out, "failures", []), "sensitivity")


def _fan_out_settings(args: argparse.Namespace):
    """Dask settings from --scheduler / --workers / --retries / --allow-failures; None: run serially here."""
    if getattr(args, "scheduler", None) is None and getattr(args, "workers", None) is None:
        return None
    from prune_perception.scaleout.runner import FanOutSettings

    return FanOutSettings(scheduler=args.scheduler, workers=args.workers, retries=args.retries,
                          allow_failures=getattr(args, "allow_failures", False), progress=not args.quiet)


def _report_failures(failures, what: str) -> None:
    """Print each failed task on stderr (they were allowed with --allow-failures)."""
    for failure in failures:
        print(f"prune-perception {what}: FAILED {failure.line()}", file=sys.stderr)


def _cmd_fleet_eval(args: argparse.Namespace) -> None:
    from prune_perception.evaluation.html_report import markdown_table
    from prune_perception.scaleout.fleet import fleet_evaluate, fleet_tables, write_fleet_report
    from prune_perception.scaleout.runner import FanOutSettings, TaskFailures

    settings = FanOutSettings(scheduler=args.scheduler, workers=args.workers, retries=args.retries,
                              allow_failures=args.allow_failures, progress=not args.quiet)
    result = fleet_evaluate(args.bags, args.models, args.image_topic, _engine_options(args), settings)
    for header, rows in fleet_tables(result)[:1]:
        print(markdown_table(header, rows))
    for path in write_fleet_report(result, Path(args.output)):
        print(f"wrote {path}")
    _report_failures(result.failures, "fleet-eval")
    if result.failures and not args.allow_failures:
        raise TaskFailures("bag evaluation", result.failures, len(args.bags) * len(args.models))


def _cmd_export(args: argparse.Namespace) -> None:
    from prune_perception.errors import ConfigError
    from prune_perception.evaluation.evaluate import evaluate_onnx
    from prune_perception.export.onnx_export import export_onnx
    from prune_perception.export.quantize import Int8Calibration

    if args.int8 and not args.calib_data:
        raise ConfigError("--int8 needs --calib-data DATASET (calibration images)")
    if args.eval_data and not args.int8:
        raise ConfigError("--eval-data compares the float and INT8 models: it needs --int8")
    calibration = Int8Calibration(args.calib_data, args.calib_split, args.calib_images) if args.int8 else None
    report = export_onnx(Path(args.checkpoint), Path(args.output), dynamic_batch=args.dynamic_batch,
                         opset=args.opset, slim=not args.no_slim, int8_calibration=calibration)
    print(f"parity (torch vs ONNX Runtime): {report.parity.summary()}")
    print(f"wrote {report.path}: {report.size_bytes / 1e6:.2f} MB, opset {report.opset}, "
          f"batch {'dynamic' if report.dynamic_batch else 1}, {report.params / 1e6:.3f} M params, "
          f"{report.macs / 1e9:.3f} GMACs, model_hash {report.model_hash[:12]}")
    if report.int8 is not None:
        int8 = report.int8
        print(f"wrote {int8.path}: {int8.size_bytes / 1e6:.2f} MB INT8, {int8.calibration_images} calibration "
              f"images, {int8.excluded_nodes} nodes kept float; vs float on a road scene: max |boxes diff| "
              f"{int8.boxes_max_abs_diff_vs_float:.3g} px, max |scores diff| {int8.scores_max_abs_diff_vs_float:.3g}")
        if args.eval_data:
            for name, path in (("float", report.path), ("int8", int8.path)):
                result, _ = evaluate_onnx(path, args.eval_data, args.eval_split, progress=not args.quiet)
                print(f"{name}: mAP50 {result.map50:.3f} mAP50-95 {result.map50_95:.3f} on {result.num_images} "
                      f"images ({args.eval_split})")


def _cmd_bench(args: argparse.Namespace) -> None:
    from prune_perception.evaluation.bench import BenchSettings, bench_images, bench_markdown, run_bench, write_bench

    settings = BenchSettings(tuple(args.providers), args.threads, args.runs, args.warmup, args.pin_cores)
    images = bench_images(args.data, args.split, args.images)
    results, machine = run_bench([Path(m) for m in args.models], images, settings, progress=not args.quiet)
    print(bench_markdown(results, machine, settings))
    for path in write_bench(results, machine, settings, Path(args.output)):
        print(f"wrote {path}")


def _cmd_report(args: argparse.Namespace) -> None:
    from prune_perception.evaluation.html_report import write_pruning_report

    paths = write_pruning_report([Path(run) for run in args.runs], Path(args.output),
                                 Path(args.sensitivity) if args.sensitivity else None)
    for path in paths:
        print(f"wrote {path}")


def _cmd_demo(args: argparse.Namespace) -> None:
    from prune_perception.demo import run_demo_from_args

    run_demo_from_args(args)


def _cmd_node(args: argparse.Namespace) -> None:
    from prune_perception.ros.runner import RunnerConfig, run

    overrides = _node_overrides(args.param)
    if args.model:
        overrides["model_path"] = str(Path(args.model).resolve())
    camera_params = {"fps": args.camera_fps, "count": args.camera_count}
    if args.camera_size:
        camera_params["width"], camera_params["height"] = args.camera_size
    config = RunnerConfig(params_file=args.config, overrides=overrides,
                          cameras=[c for c in (args.cameras or "").split(",") if c.strip()],
                          image_topic=args.image_topic, camera_source=args.camera, camera_params=camera_params,
                          fastdds_profile=None if args.no_fastdds_profile else (args.fastdds_profile or ""),
                          duration=args.duration)
    for index, counts in enumerate(run(config)):
        print(f"detector {index}: " + ", ".join(f"{key} {value}" for key, value in counts.items()))


def _cmd_bag(args: argparse.Namespace) -> None:
    if args.bag_command == "from-dataset":
        from prune_perception.bags.writer import write_dataset_bag

        summary = write_dataset_bag(args.dataset, args.split, Path(args.output), fps=args.fps,
                                    transport=args.transport, storage=args.storage, encoding=args.encoding,
                                    progress=not args.quiet)
        print(summary)
    elif args.bag_command == "info":
        from prune_perception.bags.info import bag_info

        info = bag_info(args.bag)
        print(json.dumps(info.as_dict(), indent=2) if args.json else info.to_text())
    else:
        from prune_perception.bags.to_dataset import bag_to_dataset

        print(bag_to_dataset(args.bag, Path(args.output), split=args.split, image_topic=args.image_topic,
                             require_ground_truth=not args.allow_missing_gt, progress=not args.quiet))


def _node_overrides(texts: list[str]) -> dict:
    from prune_perception.config import parse_override

    return {".".join(key): value for key, value in map(parse_override, texts)}


def _evaluate_on_bag(bag: str, model: str, args: argparse.Namespace):
    """One model on one bag: replay through the node, or --offline through the engine."""
    params = {"providers": args.providers, **_node_overrides(args.param), **_nms_override(args)}
    if args.offline:
        from prune_perception.evaluation.bag_eval import evaluate_bag_offline

        return evaluate_bag_offline(bag, model, args.image_topic, _engine_options(args), progress=not args.quiet)
    from prune_perception.ros.replay import ReplaySettings, replay_bag

    record = Path(args.record) if getattr(args, "record", None) else None
    settings = ReplaySettings(rate=None if args.max_rate else args.rate, clock=args.clock, record=record,
                              image_topic=args.image_topic, params=params, progress=not args.quiet)
    return replay_bag(bag, model, settings)


def _nms_override(args: argparse.Namespace) -> dict:
    """{'class_agnostic_nms': True} when --class-agnostic-nms is given."""
    return {"class_agnostic_nms": True} if getattr(args, "class_agnostic_nms", False) else {}


MODEL_OVERRIDES = ("class_names", "input_size", "input_color_order", "input_scale", "yolox_decoded")
"""DetectorEngine settings for external models without our metadata (runtime/model_metadata.py)."""


def _engine_options(args: argparse.Namespace) -> dict:
    """Runtime-engine options of --providers, --class-agnostic-nms and the -p overrides (offline evaluation)."""
    params = {"providers": args.providers, **_node_overrides(args.param), **_nms_override(args)}
    return {k: v for k, v in params.items() if k in (
        "providers", "score_threshold", "nms_threshold", "max_detections", "model_format", "intra_op_threads",
        "class_agnostic_nms", *MODEL_OVERRIDES)}


def _eval_engine_options(args: argparse.Namespace) -> dict:
    """Engine options of `eval` (--model-format, --class-agnostic-nms, -p); ConfigError for a -p it does not take."""
    from prune_perception.errors import ConfigError

    params = _node_overrides(args.param)
    unknown = sorted(set(params) - set(MODEL_OVERRIDES))
    if unknown:
        raise ConfigError(f"eval -p takes {', '.join(MODEL_OVERRIDES)} (thresholds are fixed for mAP); "
                          f"got {', '.join(unknown)}")
    if args.model_format:
        params["model_format"] = args.model_format
    return {**params, **_nms_override(args)}


def _cmd_replay(args: argparse.Namespace) -> None:
    from prune_perception.evaluation.bag_eval import evaluation_markdown, write_evaluation

    result = _evaluate_on_bag(args.bag, args.model, args)
    print(evaluation_markdown(result))
    for path in write_evaluation(result, Path(args.output), "offline" if args.offline else "replay"):
        print(f"wrote {path}")
    if args.record and not args.offline:
        print(f"recorded outputs and /diagnostics to {args.record}")


def _cmd_compare(args: argparse.Namespace) -> None:
    from prune_perception.evaluation.compare_report import summary_table, write_compare_report
    from prune_perception.evaluation.html_report import markdown_table

    results = [_evaluate_on_bag(args.bag, model, args) for model in args.models]
    print(markdown_table(*summary_table(results)))
    for path in write_compare_report(results, Path(args.output)):
        print(f"wrote {path}")


CLASS_AGNOSTIC_HELP = ("one NMS over all classes (YOLOX's and many external pipelines' own post-processing) "
                       "instead of one per class (the parameter class_agnostic_nms)")


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

    evaluate = sub.add_parser("eval", help="mAP50, mAP50-95 and per-class AP of a model on a dataset, or of a "
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
    onnx_options.add_argument("--model-format", choices=("auto", "native", "yolox", "yolov8"),
                              help="output layout (default auto: our metadata, else recognised from the output shapes)")
    onnx_options.add_argument("--class-agnostic-nms", action="store_true", help=CLASS_AGNOSTIC_HELP)
    onnx_options.add_argument("-p", "--param", action="append", default=[], metavar="NAME=VALUE",
                              help="setting for a model without our metadata (YAML value), repeatable: "
                                   "class_names=[a,b], yolox_decoded=true, input_size=[H,W], input_color_order=BGR, "
                                   "input_scale=1.0")
    evaluate.set_defaults(func=_cmd_eval)

    def scale_out_options(command: argparse.ArgumentParser, allow_failures: bool, what: str = "the evaluations",
                          local_default: bool = False) -> None:
        group = command.add_argument_group("scale-out (Dask; docs/scale-out.md)")
        group.add_argument("--scheduler", metavar="ADDRESS",
                           help=f"fan out {what} on this existing Dask cluster (e.g. tcp://10.0.0.5:8786)")
        group.add_argument("--workers", type=int, metavar="N",
                           help=(f"fan out {what} on a local Dask cluster of N processes on 127.0.0.1; 0: one "
                                 "after the other in this process "
                                 + ("(default: as many processes as usable cores)" if local_default
                                    else "(default without --scheduler/--workers: serially here, no Dask)")))
        group.add_argument("--retries", type=int, default=1, help="retries of a failed task (default 1; errors of the "
                                                                  "input itself are reported at once)")
        if allow_failures:
            group.add_argument("--allow-failures", action="store_true",
                               help="exit 0 even if tasks failed (they are still listed in the outputs and on stderr)")

    prune = sub.add_parser("prune", help="structured channel pruning (+ fine-tuning) of a checkpoint")
    prune.add_argument("--config", help="YAML file (e.g. config/prune_synth.yaml); defaults when omitted")
    prune.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                       help="override a config value, e.g. --set prune.max_layer_ratio=0.8 (repeatable)")
    prune.add_argument("--checkpoint", help="dense checkpoint to prune")
    prune.add_argument("--method", help="importance: l1, l2, taylor, bn_scale, random")
    prune.add_argument("--ratio", type=float, help="fraction of channels to remove")
    prune.add_argument("--granularity", choices=["channel", "weight", "kernel"],
                       help="channel: structured (default); weight / kernel: unstructured masks (baseline, no speed-up)")
    prune.add_argument("--global", dest="global_pruning", action="store_true",
                       help="one importance ranking across layers (default: same ratio per layer)")
    prune.add_argument("--steps", type=int, help="iterative steps (fine-tuning after each)")
    prune.add_argument("--finetune-epochs", type=int, help="fine-tuning epochs per step (0: none)")
    prune.add_argument("--budget", type=float, metavar="POINTS",
                       help="accuracy budget: largest ratio whose fine-tuned mAP50 drop is <= POINTS (prune.budget_*)")
    prune.add_argument("--schedule", choices=["oneshot", "iterative", "elastic"],
                       help="oneshot, iterative (--steps N) or elastic: soft pruning while fine-tuning, "
                            "removed for real at the end")
    prune.add_argument("--latency-ms", type=float, metavar="MS",
                       help="latency target (inference p50 through the runtime engine, measured here) instead of "
                            "a ratio; with --budget the accuracy budget applies too (prune.latency_*)")
    prune.add_argument("--device", choices=["cpu", "cuda"], help="with --latency-ms: where latency is measured")
    prune.add_argument("--threads", type=int, help="with --latency-ms: ONNX Runtime intra-op threads (0: default)")
    prune.add_argument("-o", "--output", help="output directory")
    scale_out_options(prune, allow_failures=False, what="with --budget (steps search): the candidate ratios")
    prune.set_defaults(func=_cmd_prune)

    sensitivity = sub.add_parser("sensitivity", help="prune each layer group alone at several ratios; mAP50 table/plot")
    sensitivity.add_argument("--checkpoint", required=True, help="dense checkpoint (.pt)")
    sensitivity.add_argument("--data", required=True, help="COCO json, COCO root or YOLO root")
    sensitivity.add_argument("--split", default="val")
    sensitivity.add_argument("--ratios", type=float, nargs="+", default=[0.25, 0.5, 0.75])
    sensitivity.add_argument("--method", default="l1", help="importance: l1, l2, bn_scale, random")
    sensitivity.add_argument("--layers", nargs="+", help="arch-spec layer names (default: every prunable group)")
    sensitivity.add_argument("--val-images", type=int, help="evaluate on the first N val images only (faster)")
    sensitivity.add_argument("-o", "--output", default="runs/sensitivity")
    scale_out_options(sensitivity, allow_failures=True)
    sensitivity.set_defaults(func=_cmd_sensitivity)

    export = sub.add_parser("export", help="export a checkpoint to ONNX (metadata, parity check, optional INT8)")
    export.add_argument("checkpoint", help="checkpoint (.pt)")
    export.add_argument("-o", "--output", required=True, help="ONNX file to write (INT8 copy: NAME.int8.onnx)")
    export.add_argument("--dynamic-batch", action="store_true", help="batch dimension 'batch' instead of 1")
    export.add_argument("--opset", type=int, default=17, help="ONNX opset, 13..20 (default 17)")
    export.add_argument("--no-slim", action="store_true", help="skip onnxslim")
    export.add_argument("--int8", action="store_true", help="also write a static INT8 (QDQ) copy")
    export.add_argument("--calib-data", help="INT8 calibration dataset (COCO json, COCO root or YOLO root)")
    export.add_argument("--calib-split", default="train", help="calibration split (default train)")
    export.add_argument("--calib-images", type=int, default=64, help="calibration images, spread over the split")
    export.add_argument("--eval-data", help="with --int8: mAP of the float and INT8 models on this dataset")
    export.add_argument("--eval-split", default="val", help="evaluation split (default val)")
    export.set_defaults(func=_cmd_export)

    bench = sub.add_parser("bench", help="latency of ONNX models side by side (per stage p50/p90/p99)")
    bench.add_argument("models", nargs="+", help="ONNX models; ratios are relative to the first")
    bench.add_argument("-o", "--output", default="runs/bench")
    bench.add_argument("--providers", nargs="+", default=["cpu"], help="preference list: tensorrt cuda cpu")
    bench.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads")
    bench.add_argument("--runs", type=int, default=200)
    bench.add_argument("--warmup", type=int, default=20)
    bench.add_argument("--pin-cores", action="store_true", help="pin the process to the first THREADS cores")
    bench.add_argument("--data", help="dataset whose images are timed (default: synthetic 640x360 scenes)")
    bench.add_argument("--split", default="val")
    bench.add_argument("--images", type=int, default=16, help="distinct images cycled through")
    bench.set_defaults(func=_cmd_bench)

    report = sub.add_parser("report", help="Markdown + self-contained HTML report comparing pruning runs")
    report.add_argument("runs", nargs="+", metavar="RUN_DIR", help="prune output folders (history.json, pruned.pt)")
    report.add_argument("--sensitivity", metavar="DIR", help="sensitivity output folder (sensitivity.json)")
    report.add_argument("-o", "--output", default="runs/report")
    report.set_defaults(func=_cmd_report)

    demo = sub.add_parser("demo", help="the whole story on synthetic data: synth, train, prune to a budget, "
                                       "export, bag, replay dense and pruned, compare; reuses finished stages")
    from prune_perception.demo import add_demo_arguments, size_argument  # light: stages are imported lazily

    add_demo_arguments(demo)
    demo.set_defaults(func=_cmd_demo)

    node = sub.add_parser("node", help="run detector node(s) in this process (pip installs; same nodes as the "
                                       "launch files)")
    node.add_argument("--config", metavar="PARAMS_YAML", help="ROS 2 params file, e.g. config/detector.yaml")
    node.add_argument("--model", help="ONNX model (overrides model_path)")
    node.add_argument("-p", "--param", action="append", default=[], metavar="NAME=VALUE",
                      help="parameter override (YAML value), repeatable")
    node.add_argument("--cameras", metavar="NAMES", help="comma-separated camera names: one detector per camera "
                                                         "in namespace /NAME reading /NAME/image_raw")
    node.add_argument("--image-topic", default="/image_raw", help="input topic of a single detector")
    node.add_argument("--camera", metavar="SOURCE", help="also publish frames: 'synthetic', a video or a folder")
    node.add_argument("--camera-fps", type=float, default=10.0)
    node.add_argument("--camera-count", type=int, default=0, help="frames to publish (0: until stopped)")
    node.add_argument("--camera-size", type=size_argument, metavar="WxH",
                      help="synthetic frame size (default 640x480)")
    node.add_argument("--fastdds-profile", metavar="XML", help="Fast DDS profile (default: the shipped "
                      "shared-memory profile, unless FASTDDS_DEFAULT_PROFILES_FILE is set)")
    node.add_argument("--no-fastdds-profile", action="store_true", help="leave the DDS configuration alone")
    node.add_argument("--duration", type=float, help="stop after this many seconds")
    node.set_defaults(func=_cmd_node)

    bag = sub.add_parser("bag", help="evaluation bags: from a dataset, info, back to a dataset")
    bag_sub = bag.add_subparsers(dest="bag_command", required=True)
    from_dataset = bag_sub.add_parser("from-dataset", help="images + ground truth of a dataset split into a bag")
    from_dataset.add_argument("dataset", help="COCO json, COCO root or YOLO root")
    from_dataset.add_argument("-o", "--output", required=True, help="bag folder to create")
    from_dataset.add_argument("--split", default="val")
    from_dataset.add_argument("--fps", type=float, default=10.0)
    from_dataset.add_argument("--transport", choices=("raw", "compressed"), default="raw")
    from_dataset.add_argument("--storage", choices=("mcap", "sqlite3"), default="mcap")
    from_dataset.add_argument("--encoding", default="rgb8", help="raw image encoding (rgb8, bgr8, mono8, ...)")
    info = bag_sub.add_parser("info", help="topics, types, counts, duration, rates")
    info.add_argument("bag")
    info.add_argument("--json", action="store_true")
    to_dataset = bag_sub.add_parser("to-dataset", help="images + COCO json out of an evaluation bag")
    to_dataset.add_argument("bag")
    to_dataset.add_argument("-o", "--output", required=True)
    to_dataset.add_argument("--split", default="val")
    to_dataset.add_argument("--image-topic")
    to_dataset.add_argument("--allow-missing-gt", action="store_true", help="also export a bag without ground truth")
    bag.set_defaults(func=_cmd_bag)

    def bag_evaluation_options(command: argparse.ArgumentParser) -> None:
        command.add_argument("--rate", type=float, default=1.0, help="bag time scale (2 = twice as fast)")
        command.add_argument("--max-rate", action="store_true",
                             help="each frame waits for the previous output (deterministic, nothing dropped)")
        command.add_argument("--clock", action="store_true", help="publish /clock; the node uses sim time")
        command.add_argument("--offline", action="store_true", help="run the runtime engine over the bag, no ROS")
        command.add_argument("--image-topic", help="image topic (default: the bag's only image topic)")
        command.add_argument("--providers", nargs="+", default=["cpu"])
        command.add_argument("--class-agnostic-nms", action="store_true", help=CLASS_AGNOSTIC_HELP)
        command.add_argument("-p", "--param", action="append", default=[], metavar="NAME=VALUE",
                             help="detector parameter override (YAML value), repeatable")

    replay = sub.add_parser("replay", help="play a bag through the detector node; mAP + latency")
    replay.add_argument("bag")
    replay.add_argument("--model", required=True)
    bag_evaluation_options(replay)
    replay.add_argument("--record", metavar="BAG", help="record outputs and /diagnostics into this new bag")
    replay.add_argument("-o", "--output", default="runs/replay")
    replay.set_defaults(func=_cmd_replay)

    compare = sub.add_parser("compare", help="several models on one bag: one Markdown + HTML report")
    compare.add_argument("bag")
    compare.add_argument("--models", nargs="+", required=True)
    bag_evaluation_options(compare)
    compare.add_argument("-o", "--output", default="runs/compare")
    compare.set_defaults(func=_cmd_compare)

    fleet = sub.add_parser("fleet-eval", help="models on many bags offline (no ROS), one Dask task per bag and model; "
                                              "one JSON + Markdown + HTML report")
    fleet.add_argument("bags", nargs="+", metavar="BAG")
    fleet.add_argument("--models", "--model", nargs="+", required=True, help="ONNX model(s)")
    fleet.add_argument("--image-topic", help="image topic (default: each bag's only image topic)")
    fleet.add_argument("--providers", nargs="+", default=["cpu"])
    fleet.add_argument("-p", "--param", action="append", default=[], metavar="NAME=VALUE",
                       help="engine parameter override (score_threshold, nms_threshold, max_detections, "
                            "intra_op_threads, ...), repeatable")
    fleet.add_argument("-o", "--output", default="runs/fleet")
    scale_out_options(fleet, allow_failures=True, what="the bags", local_default=True)
    fleet.set_defaults(func=_cmd_fleet_eval)
    return parser


class _LabelledStderr(logging.Handler):
    """Log records of WARNING and above as 'prune-perception CMD: warning: ...' lines on the current sys.stderr."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.program = "prune-perception"

    def emit(self, record: logging.LogRecord) -> None:
        print(f"{self.program}: {record.levelname.lower()}: {record.getMessage()}", file=sys.stderr)


_STDERR_LOG = _LabelledStderr()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _STDERR_LOG.program = f"prune-perception {args.command}"
    if _STDERR_LOG not in logging.getLogger().handlers:
        logging.getLogger().addHandler(_STDERR_LOG)
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
