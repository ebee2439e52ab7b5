"""Benchmark: prune detectors we did not write, with no labels, and check them the way a user would (issue 16).

For every `--model FILE.onnx:FORMAT` (e.g. a YOLOX and a YOLOv8 made by bench/external_models/make_models.sh)
and, with `--native-checkpoint`, our own detector exported to ONNX:

1. the *train* split of `--data` is written as a rosbag2 bag (`bag from-dataset`); its images are the only
   fine-tuning data and its labels are never read;
2. `prune(ExternalPruneConfig)`: import, prune at the model's ratio (`:RATIO`, `--native-ratio`, else `--ratio`;
   widths rounded to 8), fine-tune by label-free
   distillation from the dense model, agreement (pruned vs dense detections) on held-out bag frames;
3. dense and pruned ONNX timed round-robin through the runtime engine (ONNX Runtime CPU, `--threads`,
   warm-up, `--runs` timed runs, p50 / p99 of inference);
4. labeled mAP50 of both on the *val* split (scoring only: labels never reach pruning or fine-tuning);
5. the pruned ONNX replayed through the real detector node at max-rate with the dense model's
   `model_format`, against the engine offline on the same val bag: the mAPs must be equal.

For the native model the same ratio is also pruned *with* labels (`prune()` on the checkpoint, same epochs):
what the labels buy. Writes results.json and summary.md to --output.

    make env && .venv/bin/python bench/external_prune.py --data runs/ext/synth \\
        --model runs/ext/yolox_nano.onnx:yolox:0.4 --model runs/ext/yolov8n.onnx:yolov8:0.3 \\
        --native-checkpoint runs/demo/train/best.pt --native-ratio 0.25 --epochs 12 -o runs/bench_external
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

from prune_perception.errors import PrunePerceptionError

TARGETS = {"macs_cut": 0.40, "speedup": 1.5, "labeled_drop_points": 2.0}


FORMATS = ("yolox", "yolov8", "native", "auto")


def model_argument(text: str) -> tuple[Path, str, float | None]:
    """FILE.onnx:FORMAT[:RATIO] -> (path, format, ratio or None for --ratio)."""
    path, _, last = text.rpartition(":")
    ratio = None
    if last not in FORMATS and path.rpartition(":")[2] in FORMATS:
        try:
            ratio = float(last)
        except ValueError:
            ratio = -1.0
        path, _, last = path.rpartition(":")
    if not path or last not in FORMATS or (ratio is not None and not 0 < ratio < 1):
        raise argparse.ArgumentTypeError(f"expected FILE.onnx:FORMAT[:RATIO] (yolox, yolov8, native, auto; ratio in "
                                         f"(0, 1)), got {text!r}")
    return Path(path), last, ratio


def split_bag(data: Path, split: str, output: Path) -> Path:
    """A split of the dataset as a bag (`bag from-dataset`), reused when present: the train bag's images are the
    unlabeled fine-tuning frames (its labels are never read), the val bag is replayed."""
    from prune_perception.bags.dataset_bag import write_dataset_bag

    bag = output / f"{split}_bag"
    if not (bag / "metadata.yaml").is_file():
        write_dataset_bag(data, split, bag, progress=False)
    return bag


def prune_label_free(name: str, model: Path, model_format: str, ratio: float, args: argparse.Namespace, bag: Path,
                     output: Path) -> dict:
    from prune_perception.config import ExternalPruneConfig, load_config
    from prune_perception.pruning import prune

    overrides = [f"external.model={model}", f"external.model_format={model_format}", f"external.images=[{bag}]",
                 f"external.class_names={json.dumps(args.class_names)}",
                 f"external.max_frames={args.max_frames}", f"external.labeled_data={args.data}",
                 "external.labeled_split=val", f"prune.ratio={ratio}", f"prune.method={args.method}",
                 f"finetune.epochs={args.epochs}", f"output={output / name}", *args.set]
    config = load_config(ExternalPruneConfig, None, overrides)
    started = time.monotonic()
    if args.guided:
        from prune_perception.external.sensitivity import run_imported_sensitivity

        sensitivity = output / name / "sensitivity"
        if not (sensitivity / "sensitivity.json").is_file():   # reused: it depends on the model and frames only
            run_imported_sensitivity(dataclasses.replace(config, output=str(sensitivity)), args.guided)
        config.external.sensitivity = str(sensitivity)
    result = prune(config, progress=True)
    dense, final = result.history[0], result.history[-1]
    return {"dense_onnx": str(model), "pruned_onnx": str(result.path), "format": model_format, "ratio": ratio,
            "guided": bool(args.guided), "settings": args.set,
            "params": [dense.params, final.params], "macs": [dense.macs, final.macs],
            "agreement_mAP50": final.mAP50, "agreement_mAP50_95": final.mAP50_95,
            "labeled_mAP50": [dense.labeled_mAP50, final.labeled_mAP50],
            "prune_seconds": round(time.monotonic() - started, 1)}


def prune_with_labels(checkpoint: Path, ratio: float, args: argparse.Namespace, output: Path) -> dict:
    """Our own detector pruned at the same ratio with its labels (the checkpoint path), exported to ONNX."""
    from prune_perception.config import PruneConfig, load_config
    from prune_perception.evaluation.evaluate import evaluate_onnx
    from prune_perception.export.onnx_export import export_onnx
    from prune_perception.pruning import prune

    config = load_config(PruneConfig, None, [
        f"checkpoint={checkpoint}", f"data.train={args.data}", f"data.val={args.data}", f"prune.ratio={ratio}",
        f"prune.method={args.method}", "prune.round_to=8", f"finetune.epochs={args.epochs}",
        f"output={output / 'native_labeled'}"])
    result = prune(config, progress=True)
    onnx_path = output / "native_labeled" / "pruned.onnx"
    export_onnx(result.path, onnx_path)
    labeled, _ = evaluate_onnx(onnx_path, str(args.data), "val")
    return {"pruned_onnx": str(onnx_path), "macs": result.history[-1].macs, "labeled_mAP50": labeled.map50}


def time_models(paths: list[Path], args: argparse.Namespace) -> list[dict]:
    """Inference p50 / p99 (ms) of every model, round-robin on the same val images through the engine."""
    from prune_perception.evaluation.latency_bench import BenchSettings, bench_images, run_bench

    results, _ = run_bench(paths, bench_images(str(args.data), "val", 32),
                           BenchSettings(threads=args.threads, runs=args.runs), progress=True)
    return [{"p50": round(r.stages["inference"].p50, 3), "p99": round(r.stages["inference"].p99, 3)}
            for r in results]


def replay_check(pruned: Path, model_format: str, class_names: list[str], bag: Path) -> dict:
    """mAP50 of the pruned model replayed through the detector node at max-rate vs offline on the same bag (the
    dense model's model_format; the dataset's class names, which YOLOX exports do not carry)."""
    from prune_perception.evaluation.bag_eval import evaluate_bag_offline
    from prune_perception.ros.replay import ReplaySettings, replay_bag

    options = {"model_format": model_format, "class_names": class_names}
    replay = replay_bag(bag, pruned, ReplaySettings(rate=None, params=options, progress=False))
    offline = evaluate_bag_offline(bag, pruned, engine_options=options, progress=False)
    return {"replay_mAP50": round(replay.map.map50, 4) if replay.map else None,
            "offline_mAP50": round(offline.map.map50, 4) if offline.map else None,
            "frames": replay.frames, "answered": replay.answered, "failed": replay.failed}


def _points(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def summary_markdown(rows: dict[str, dict], args: argparse.Namespace) -> str:
    lines = ["# Pruning detectors we did not write, without labels", "",
             f"Channel ratio per model ({args.method}, widths rounded to 8"
             + (", sensitivity-guided per group at the uniform ratio's MACs" if args.guided else "")
             + (f"; {', '.join(args.set)}" if args.set else "") + f"), {args.epochs} label-free fine-tuning epochs "
             f"on the frames of a bag of the synthetic *train* split (labels unused); scored on the *val* split. "
             f"ONNX Runtime CPU, {args.threads} thread(s), {args.runs} timed runs round-robin (inference).", "",
             "| model | ratio | params | MACs (M) | MACs cut | p50 (ms) | p99 (ms) | speed-up | agreement mAP50 | "
             "labeled mAP50 dense → pruned | Δ points | replay = offline mAP50 | targets met |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in rows.items():
        (dense_params, params), (dense_macs, macs) = r["params"], r["macs"]
        dense_map, pruned_map = r["labeled_mAP50"]
        drop = None if dense_map is None or pruned_map is None else 100 * (dense_map - pruned_map)
        check = r.get("replay", {})
        lines.append(
            f"| {name} | {r['ratio']:g} | {dense_params:,} → {params:,} | {dense_macs / 1e6:.0f} → {macs / 1e6:.0f} | "
            f"{1 - macs / dense_macs:.0%} | {r['p50_ms'][0]:.2f} → {r['p50_ms'][1]:.2f} | "
            f"{r['p99_ms'][0]:.2f} → {r['p99_ms'][1]:.2f} | {r['speedup']:.2f}x | {_points(r['agreement_mAP50'])} | "
            f"{_points(dense_map)} → {_points(pruned_map)} | {'-' if drop is None else f'{-drop:+.1f}'} | "
            f"{_points(check.get('replay_mAP50'))} / {_points(check.get('offline_mAP50'))} | "
            f"{'yes' if r['targets_met'] else 'no'} |")
    native = rows.get("native", {}).get("labeled")
    if native:
        lines += ["", f"Native model pruned at the same ratio *with* labels: labeled mAP50 "
                      f"{native['labeled_mAP50']:.3f} ({native['macs'] / 1e6:.0f} M MACs) against "
                      f"{_points(rows['native']['labeled_mAP50'][1])} without."]
    failed = getattr(args, "failed", {})
    lines += [""] + [f"- {name}: **failed**: {message}" for name, message in failed.items()] if failed else []
    lines += ["", f"Targets: MACs cut ≥ {TARGETS['macs_cut']:.0%}, speed-up ≥ {TARGETS['speedup']}x, labeled mAP50 "
                  f"within {TARGETS['labeled_drop_points']} points of the dense model."]
    return "\n".join(lines) + "\n"


def targets_met(row: dict) -> bool:
    dense_map, pruned_map = row["labeled_mAP50"]
    return (1 - row["macs"][1] / row["macs"][0] >= TARGETS["macs_cut"] and row["speedup"] >= TARGETS["speedup"]
            and dense_map is not None and pruned_map is not None
            and 100 * (dense_map - pruned_map) <= TARGETS["labeled_drop_points"])


def write_results(rows: dict[str, dict], args: argparse.Namespace) -> str:
    """results.json and summary.md in --output; returns the Markdown."""
    (args.output / "results.json").write_text(json.dumps({
        "method": args.method, "epochs": args.epochs, "threads": args.threads, "runs": args.runs,
        "targets": TARGETS, "models": rows, "failed": getattr(args, "failed", {})}, indent=2))
    markdown = summary_markdown(rows, args)
    (args.output / "summary.md").write_text(markdown)
    return markdown


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="synthetic dataset (train + val splits)")
    parser.add_argument("--model", type=model_argument, action="append", default=[],
                        metavar="FILE.onnx:FORMAT[:RATIO]",
                        help="an external ONNX detector, its output format and its channel ratio (default --ratio; "
                             "repeatable)")
    parser.add_argument("--native-checkpoint", type=Path, help="our own detector's dense checkpoint (train's best.pt)")
    parser.add_argument("--ratio", type=float, default=0.4, help="channel ratio of models given without one")
    parser.add_argument("--native-ratio", type=float, help="the native model's ratio (default --ratio)")
    parser.add_argument("--method", default="l1")
    parser.add_argument("--epochs", type=int, default=6, help="fine-tuning epochs (label-free and labeled)")
    parser.add_argument("--max-frames", type=int, default=1000, help="unlabeled frames read from the train bag")
    parser.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads (node default 1)")
    parser.add_argument("--runs", type=int, default=300, help="timed runs per model")
    parser.add_argument("--guided", type=float, nargs="+", metavar="RATIO",
                        help="sensitivity-guided ratios: measure each model's sensitivity (`sensitivity --model`) at "
                             "these ratios first, then cut the MACs of its ratio where agreement drops least")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override a value of every label-free run's config, e.g. prune.schedule=elastic")
    parser.add_argument("--no-replay", action="store_true", help="skip the replays through the detector node")
    parser.add_argument("-o", "--output", type=Path, default=Path("runs/bench_external"))
    args = parser.parse_args()
    if not args.model and args.native_checkpoint is None:
        parser.error("give at least one --model FILE.onnx:FORMAT or --native-checkpoint")
    args.output.mkdir(parents=True, exist_ok=True)
    try:
        from prune_perception.data.dataset import load_dataset

        args.class_names = list(load_dataset(args.data, "val").classes)   # the models' classes, in category order
        bag = split_bag(args.data, "train", args.output)
        models = {path.stem: (path, model_format, ratio or args.ratio) for path, model_format, ratio in args.model}
        if args.native_checkpoint is not None:
            from prune_perception.export.onnx_export import export_onnx

            native = args.output / "native_dense.onnx"
            export_onnx(args.native_checkpoint, native, dynamic_batch=True)   # our export's Resize sizes fix batch 1
            models["native"] = (native, "native", args.native_ratio or args.ratio)
        rows, failed = {}, {}
        for name, (path, model_format, ratio) in models.items():
            try:
                rows[name] = prune_label_free(name, path, model_format, ratio, args, bag, args.output)
                (args.output / "pruned_so_far.json").write_text(json.dumps(rows, indent=2))
            except PrunePerceptionError as exc:   # one model that cannot be pruned does not stop the others
                failed[name] = str(exc)
                print(f"external_prune: {name}: {exc}", file=sys.stderr)
        args.failed = failed
        if "native" in rows:
            rows["native"]["labeled"] = prune_with_labels(args.native_checkpoint, rows["native"]["ratio"], args,
                                                          args.output)
        paths = [Path(p) for r in rows.values() for p in (r["dense_onnx"], r["pruned_onnx"])]
        timings = time_models(paths, args)
        for index, row in enumerate(rows.values()):
            dense_ms, pruned_ms = timings[2 * index], timings[2 * index + 1]
            row.update(p50_ms=[dense_ms["p50"], pruned_ms["p50"]], p99_ms=[dense_ms["p99"], pruned_ms["p99"]],
                       speedup=round(dense_ms["p50"] / pruned_ms["p50"], 3))
            row["targets_met"] = targets_met(row)
        write_results(rows, args)   # before the replays: what was measured so far is kept whatever happens next
        if not args.no_replay:
            bag_val = split_bag(args.data, "val", args.output)
            for row in rows.values():
                row["replay"] = replay_check(Path(row["pruned_onnx"]), row["format"], args.class_names, bag_val)
    except PrunePerceptionError as exc:
        print(f"external_prune: {exc}", file=sys.stderr)
        return 1
    print(write_results(rows, args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
