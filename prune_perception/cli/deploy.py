"""Deployment: `export` a checkpoint to ONNX (optionally INT8) and `bench` ONNX models' latency side by side."""

from __future__ import annotations

import argparse
from pathlib import Path

from prune_perception.cli.common import add_command, add_json_option


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


def add_export_parser(sub) -> None:
    export = add_command(sub, "export", help="export a checkpoint to ONNX (metadata, parity check, optional INT8)")
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


def _cmd_bench(args: argparse.Namespace) -> None:
    from prune_perception.evaluation.latency_bench import BenchSettings, bench_images, bench_markdown, run_bench, write_bench

    given = {"providers": tuple(args.providers) if args.providers else None, "threads": args.threads,
             "runs": args.runs, "warmup": args.warmup}   # what was not given: BenchSettings' defaults
    settings = BenchSettings(**{name: value for name, value in given.items() if value is not None},
                             pin_cores=args.pin_cores)
    images = bench_images(args.data, args.split, args.images)
    results, machine = run_bench([Path(m) for m in args.models], images, settings, progress=not args.quiet)
    paths = write_bench(results, machine, settings, Path(args.output))
    if args.json:   # the document written to bench.json
        print(paths[0].read_text())
        return
    print(bench_markdown(results, machine, settings))
    for path in paths:
        print(f"wrote {path}")
    p50s = [r.stages["inference"].p50 for r in results]
    print("inference p50: " + ", ".join(f"{result.name} {p50:.2f} ms ({p50s[0] / p50:.2f}x)"
                                        for result, p50 in zip(results, p50s)))


def add_bench_parser(sub) -> None:
    bench = add_command(sub, "bench", help="latency of ONNX models side by side (per stage p50/p90/p99)")
    bench.add_argument("models", nargs="+", help="ONNX models; ratios are relative to the first")
    bench.add_argument("-o", "--output", default="runs/bench")
    bench.add_argument("--providers", nargs="+", help="preference list: tensorrt cuda cpu")
    bench.add_argument("--threads", type=int, help="ONNX Runtime intra-op threads")
    bench.add_argument("--runs", type=int)
    bench.add_argument("--warmup", type=int)
    bench.add_argument("--pin-cores", action="store_true", help="pin the process to the first THREADS cores")
    bench.add_argument("--data", help="dataset whose images are timed (default: synthetic 640x360 scenes)")
    bench.add_argument("--split", default="val")
    bench.add_argument("--images", type=int, default=16, help="distinct images cycled through")
    add_json_option(bench, "the timings (the bench.json document)")
    bench.set_defaults(func=_cmd_bench)
