"""The README's main command, the whole story on synthetic data:

synth -> train -> prune (accuracy budget, the fastest candidate by measured latency) -> export (ONNX,
float and INT8) -> evaluation bag -> replay the dense and the pruned model through the real detector
node -> comparison report, then a five-line summary. Every timing uses the node's ONNX Runtime
thread setting (the shipped config/detector.yaml default, `node_threads`).

Every expensive stage is reused when it finished earlier with the same inputs: a ``done.json``
beside its output records what it was made from (config, dataset identity, SHA-256 of the input
checkpoint), so changing an option redoes that stage and everything downstream of it, and an
interrupted training resumes from ``last.pt``. The replays, the offline check and the report always
run again (about a minute): they measure latency, which is the point of the demo.

This module is imported by ``cli/demo.py`` and ``cli/node.py`` to build the parser, so it imports nothing heavy
(torch, rclpy) at module level.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from prune_perception.ros_env import loopback_environment

DEFAULT_OUTPUT = "runs/demo"
DEFAULT_NUM_IMAGES = 1000
DEFAULT_BUDGET = 3.0                    # mAP50 points the pruned model may lose
DEFAULT_RATIOS = (0.3, 0.4, 0.5)        # candidate pruning ratios (widths aligned to the CPU's vector block)
DEFAULT_FINETUNE_EPOCHS = 12            # per candidate (hard cuts distil from the dense model: distill.enabled auto)
BENCH_RUNS = 300                        # round-robin inference timings of the four models (node's thread setting)
INT8_CALIBRATION_IMAGES = 64            # training images that calibrate the INT8 copies
DEFAULT_FPS = 10.0                      # evaluation bag frame rate
DEFAULT_RATE = 1.0                      # replay speed (1 = real time)
FOUNDATION_MAP50 = 0.60                 # the dense model's val mAP50 bar
STAGES = 7


def _stage(name: str) -> None:
    print(f"\n== {name} ==", flush=True)


def size_argument(text: str) -> tuple[int, int]:
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT, got {text!r}") from None
    return width, height


def add_demo_arguments(parser: argparse.ArgumentParser) -> None:
    """The `prune-perception demo` options (defaults: the README's numbers, ~20 min on 2 CPU cores)."""
    parser.add_argument("-o", "--output", default=DEFAULT_OUTPUT)
    parser.add_argument("-n", "--num-images", type=int, default=DEFAULT_NUM_IMAGES,
                        help=f"synthetic scenes, 80 %% train / 20 %% val (default {DEFAULT_NUM_IMAGES})")
    parser.add_argument("--image-size", type=size_argument, metavar="WxH", help="synthetic image size (default 640x360)")
    parser.add_argument("--input-size", type=size_argument, metavar="WxH",
                        help="network input, multiples of 32 (default 384x224, config/train_synth.yaml)")
    parser.add_argument("--epochs", type=int, default=None, help="training epochs (default: config/train_synth.yaml)")
    parser.add_argument("--finetune-epochs", type=int, default=DEFAULT_FINETUNE_EPOCHS,
                        help=f"fine-tuning epochs per pruning candidate (default {DEFAULT_FINETUNE_EPOCHS})")
    parser.add_argument("--budget", type=float, default=DEFAULT_BUDGET, metavar="POINTS",
                        help=f"largest mAP50 drop the pruned model may have (default {DEFAULT_BUDGET:g} points)")
    parser.add_argument("--ratios", type=float, nargs="+", default=list(DEFAULT_RATIOS), metavar="RATIO",
                        help="candidate pruning ratios, tried from the largest down until one is within budget; the "
                             "fastest within budget (measured) is kept "
                             f"(default {' '.join(f'{r:g}' for r in DEFAULT_RATIOS)})")
    parser.add_argument("--rate", type=float, default=DEFAULT_RATE, help="replay speed (default 1 = real time)")


def run_demo_from_args(args: argparse.Namespace) -> dict:
    return run_demo(Path(args.output), num_images=args.num_images, epochs=args.epochs, progress=not args.quiet,
                    image_size=args.image_size, input_size=args.input_size, finetune_epochs=args.finetune_epochs,
                    budget=args.budget, ratios=args.ratios, rate=args.rate)


# --- reuse ------------------------------------------------------------------------------------
def _marker_matches(marker: Path, key: dict, outputs: Sequence[Path] = ()) -> bool:
    """Whether `marker` records a finished stage made from `key` and all its `outputs` exist."""
    if not marker.is_file() or not all(path.exists() for path in outputs):
        return False
    try:
        recorded = json.loads(marker.read_text())
    except ValueError:
        return False
    return isinstance(recorded, dict) and all(recorded.get(name) == value for name, value in key.items())


def _write_marker(marker: Path, key: dict, **extra: Any) -> None:
    marker.parent.mkdir(parents=True, exist_ok=True)
    tmp = marker.with_suffix(".tmp")
    tmp.write_text(json.dumps({**key, **extra}, indent=2))
    tmp.replace(marker)


def _sha256(path: Path) -> str:
    from prune_perception.runtime.model_metadata import file_sha256

    return file_sha256(path)


def node_threads() -> int:
    """ONNX Runtime intra-op threads of the detector node as shipped (config/detector.yaml = the schema default):
    the demo's replays, offline runs and round-robin timing all use it."""
    from prune_perception.node_params import PARAMS_BY_NAME

    return PARAMS_BY_NAME["intra_op_threads"].default


# --- stages -----------------------------------------------------------------------------------
def _train(data_dir: Path, train_dir: Path, dataset_identity: dict, epochs: int | None,
           input_size: tuple[int, int] | None, progress: bool) -> dict:
    from prune_perception.config import TrainConfig, load_config, to_dict

    overrides = [f"data.train={data_dir}", f"data.val={data_dir}", f"output={train_dir}"]
    if epochs is not None:
        overrides.append(f"optim.epochs={epochs}")
    if input_size is not None:
        overrides.append(f"model.input_size=[{input_size[1]}, {input_size[0]}]")
    config = load_config(TrainConfig, None, overrides)  # defaults = config/train_synth.yaml
    key = {"config": to_dict(config), "dataset": dataset_identity}
    done, started = train_dir / "done.json", train_dir / "started.json"
    if _marker_matches(done, key, [train_dir / "best.pt"]):
        print(f"reusing {train_dir / 'best.pt'} (training finished earlier)")
        return json.loads(done.read_text())
    from prune_perception.training.trainer import Trainer

    done.unlink(missing_ok=True)
    resume = _marker_matches(started, key, [train_dir / "last.pt"])
    if resume:
        print(f"resuming the interrupted training in {train_dir}")
    else:
        for name in ("last.pt", "best.pt"):
            (train_dir / name).unlink(missing_ok=True)
        _write_marker(started, key)
    result = Trainer(config, progress=progress).fit(resume=resume)
    _write_marker(done, key, best_epoch=result.best_epoch, best_mAP50=round(result.best_map.map50, 4))
    print(f"best epoch {result.best_epoch}: val mAP50 {result.best_map.map50:.3f} "
          f"mAP50-95 {result.best_map.map50_95:.3f}")
    return json.loads(done.read_text())


def _prune(data_dir: Path, dense: Path, prune_dir: Path, budget: float, ratios: Sequence[float],
           finetune_epochs: int, progress: bool) -> dict:
    from prune_perception.config import PruneConfig, load_config, to_dict

    overrides = [f"checkpoint={dense}", f"data.train={data_dir}", f"data.val={data_dir}", f"output={prune_dir}",
                 f"prune.budget={float(budget)}", "prune.budget_search=descending",
                 f"prune.budget_ratios=[{', '.join(str(float(r)) for r in ratios)}]",
                 f"prune.latency_threads={node_threads()}", f"finetune.epochs={finetune_epochs}"]
    config = load_config(PruneConfig, None, overrides)  # defaults = config/prune_synth.yaml
    key = {"config": to_dict(config), "source_sha256": _sha256(dense)}
    done = prune_dir / "done.json"
    if _marker_matches(done, key, [prune_dir / "pruned.pt", prune_dir / "history.json"]):
        print(f"reusing {prune_dir / 'pruned.pt'} (pruning finished earlier)")
        return json.loads(done.read_text())
    from prune_perception.pruning import prune

    done.unlink(missing_ok=True)
    print(f"budget {budget:g} mAP50 points; candidate ratios "
          f"{', '.join(f'{r:g}' for r in sorted(ratios, reverse=True))} (from the largest down, stops at the first "
          f"within budget; widths aligned to the CPU's vector block); {finetune_epochs} fine-tuning epochs each, "
          f"distilled from the dense model when a candidate removes >= {config.distill.auto_min_macs_cut:.0%} of its "
          f"MACs; the fastest within budget is kept")
    result = prune(config, progress=progress)
    path, candidates, ratio = result.path, result.candidates, result.chosen_ratio
    history = json.loads((prune_dir / "history.json").read_text())
    dense_ms = history["dense"]["latency_p50_ms"]
    for c in candidates:
        print(f"ratio {c.ratio:g}: MACs {c.macs / 1e6:.1f}M, inference p50 {c.latency_p50_ms:.2f} ms "
              f"({dense_ms / c.latency_p50_ms:.2f}x dense {dense_ms:.2f} ms), val mAP50 {c.mAP50:.3f} "
              f"({(c.mAP50 - history['dense']['mAP50']) * 100:+.2f} points, "
              f"{'within' if c.within_budget else 'over'} budget, {c.seconds:.0f} s)")
    if ratio is None:
        print(f"no ratio kept val mAP50 within {budget:g} points: the 'pruned' model is the dense one")
    else:
        print(f"chosen ratio {ratio:g} (the fastest within budget) -> {path}")
    _write_marker(done, key, chosen_ratio=ratio, dense_mAP50=round(history["dense"]["mAP50"], 4),
                  candidates=history["candidates"])
    return json.loads(done.read_text())


def _export(checkpoints: dict[str, Path], export_dir: Path, data_dir: Path) -> dict[str, Path]:
    """Float and INT8 ONNX files per name (`name`, `name_int8`); each reused while its checkpoint is unchanged."""
    paths = {}
    for name, checkpoint in checkpoints.items():
        onnx_path, done = export_dir / f"{name}.onnx", export_dir / f"{name}.done.json"
        int8_path = onnx_path.with_suffix(".int8.onnx")
        key = {"source": str(checkpoint), "source_sha256": _sha256(checkpoint),
               "int8_calibration": {"data": str(data_dir), "split": "train", "images": INT8_CALIBRATION_IMAGES}}
        paths[name], paths[f"{name}_int8"] = onnx_path, int8_path
        if _marker_matches(done, key, [onnx_path, int8_path]):
            print(f"reusing {onnx_path} (exported earlier, with {int8_path.name})")
            continue
        from prune_perception.export.onnx_export import export_onnx
        from prune_perception.export.quantize import Int8Calibration

        done.unlink(missing_ok=True)
        report = export_onnx(checkpoint, onnx_path,
                             int8_calibration=Int8Calibration(data_dir, "train", INT8_CALIBRATION_IMAGES))
        _write_marker(done, key, model_hash=report.model_hash)
        print(f"{onnx_path}: {report.size_bytes / 1e6:.2f} MB; parity {report.parity.summary()}; INT8 "
              f"{report.int8.size_bytes / 1e6:.2f} MB, max |scores diff| vs float "
              f"{report.int8.scores_max_abs_diff_vs_float:.3g}")
    return paths


def _bag(data_dir: Path, bag_dir: Path, dataset_identity: dict, fps: float, progress: bool) -> Path:
    bag, done = bag_dir / "val", bag_dir / "done.json"
    key = {"dataset": dataset_identity, "split": "val", "fps": fps}
    if _marker_matches(done, key, [bag]):
        print(f"reusing {bag} (written earlier)")
        return bag
    from prune_perception.bags.dataset_bag import write_dataset_bag

    done.unlink(missing_ok=True)
    if bag.exists():
        shutil.rmtree(bag)
    bag_dir.mkdir(parents=True, exist_ok=True)
    summary = write_dataset_bag(data_dir, "val", bag, fps=fps, progress=progress)
    _write_marker(done, key, frames=summary.frames, boxes=summary.boxes)
    print(f"{bag}: {summary.frames} frames at {fps:g} fps, {summary.boxes} ground-truth boxes")
    return bag


def _replay(bag: Path, models: dict[str, Path], replay_dir: Path, rate: float, progress: bool) -> tuple[dict, dict]:
    """Dense and pruned through the detector node (real time, /clock in bag time), then every model (INT8 too)
    through the engine offline (the reference)."""
    from prune_perception.evaluation.bag_eval import evaluate_bag_offline, write_evaluation

    os.environ.update(loopback_environment())  # the replay starts rclpy here and in the node
    from prune_perception.ros.replay import ReplaySettings, replay_bag

    replays, offline = {}, {}
    for name in ("dense", "pruned"):
        settings = ReplaySettings(rate=rate, params={"providers": ["cpu"], "intra_op_threads": node_threads()},
                                  progress=progress)
        result = replay_bag(bag, models[name], settings)
        write_evaluation(result, replay_dir, name)
        replays[name] = result
        print(f"{name}: replay mAP50 {_map50(result):.3f}, end to end p50 {result.latency.p50:.1f} ms, node "
              f"inference p50 {_node_ms(result, 'latency_inference_ms_p50'):.1f} ms (p90/p50 "
              f"{_node_ms(result, 'latency_inference_p90_over_p50'):.2f}), pipeline latency p50 "
              f"{result.node.get('pipeline_latency_ms_p50', 'nan')} ms, {result.answered}/{result.frames} frames "
              f"answered, node {result.node.get('level', '?')}")
    for name, model in models.items():
        result = evaluate_bag_offline(bag, model, engine_options={"intra_op_threads": node_threads()},
                                      progress=progress)
        write_evaluation(result, replay_dir, f"{name}_offline")
        offline[name] = result
        print(f"{name}: offline mAP50 {_map50(result):.3f}, engine p50 {result.latency.p50:.1f} ms")
    return replays, offline


def _node_ms(result, key: str) -> float:
    """A number the node reported on /diagnostics (nan when missing or unavailable)."""
    try:
        return float(result.node.get(key, "nan"))
    except ValueError:
        return float("nan")


def _map50(result) -> float:
    return result.map.map50 if result.map else float("nan")


def summary_lines(map50: tuple[float, float], macs: tuple[int, int], inference_ms: tuple[float, float],
                  node_inference_ms: tuple[float, float], node_ms: tuple[float, float],
                  int8: tuple[tuple[float, float], tuple[float, float]], threads: int) -> list[str]:
    """The summary: dense vs pruned mAP50 (replays), MACs, inference p50 (round-robin), the node's own inference
    and end-to-end p50 (replays), and the INT8 copies (inference p50, offline mAP50)."""
    (dense_map, pruned_map), (dense_macs, pruned_macs) = map50, macs
    (dense_ms, pruned_ms), (dense_node_ms, pruned_node_ms) = inference_ms, node_ms
    (dense_int8_ms, pruned_int8_ms), (dense_int8_map, pruned_int8_map) = int8

    def ratio(dense: float, pruned: float) -> float:
        return dense / pruned if pruned > 0 else float("nan")

    return [f"mAP50   dense {dense_map:.3f}  pruned {pruned_map:.3f}  ({(pruned_map - dense_map) * 100:+.1f} points)",
            f"MACs    dense {dense_macs / 1e6:.0f} M  pruned {pruned_macs / 1e6:.0f} M  "
            f"({(pruned_macs / dense_macs - 1) * 100:+.0f} %)",
            f"latency dense {dense_ms:.1f} ms  pruned {pruned_ms:.1f} ms inference p50 ({ratio(dense_ms, pruned_ms):.2f}x;"
            f" round-robin, {threads} ONNX Runtime thread(s) like the node)",
            f"node    inference p50 {node_inference_ms[0]:.1f} / {node_inference_ms[1]:.1f} ms "
            f"({ratio(*node_inference_ms):.2f}x); end to end p50 {dense_node_ms:.1f} / {pruned_node_ms:.1f} ms "
            f"(pruned {pruned_node_ms / dense_node_ms:.2f} of dense)",
            f"INT8    dense {dense_int8_ms:.1f} ms  pruned {pruned_int8_ms:.1f} ms inference p50 "
            f"({ratio(dense_ms, pruned_int8_ms):.2f}x float dense); offline mAP50 {dense_int8_map:.3f} / "
            f"{pruned_int8_map:.3f}"]


def bench_settings():
    """The demo's round-robin timing: the node's thread setting, BENCH_RUNS runs."""
    from prune_perception.evaluation.latency_bench import BenchSettings

    return BenchSettings(threads=node_threads(), runs=BENCH_RUNS)


def _bench(data_dir: Path, models: dict[str, Path], bench_dir: Path, progress: bool) -> dict:
    """Every model (float and INT8) timed round-robin through the runtime engine on val images, like the node."""
    from prune_perception.evaluation.latency_bench import bench_images, run_bench, write_bench

    settings = bench_settings()
    results, machine = run_bench(list(models.values()), bench_images(str(data_dir), "val", 50), settings, progress)
    write_bench(results, machine, settings, bench_dir)
    timed = dict(zip(models, results))
    for name, result in timed.items():
        print(f"{name}: inference p50 {result.stages['inference'].p50:.2f} ms, "
              f"p99 {result.stages['inference'].p99:.2f} ms (engine total p50 {result.stages['total'].p50:.2f} ms)")
    return timed


# --- the demo ---------------------------------------------------------------------------------
def run_demo(output: Path, num_images: int = DEFAULT_NUM_IMAGES, epochs: int | None = None, progress: bool = True,
             *, image_size: tuple[int, int] | None = None, input_size: tuple[int, int] | None = None,
             finetune_epochs: int = DEFAULT_FINETUNE_EPOCHS, budget: float = DEFAULT_BUDGET,
             ratios: Sequence[float] = DEFAULT_RATIOS, fps: float = DEFAULT_FPS, rate: float = DEFAULT_RATE) -> dict:
    """Run (or reuse) every stage under `output`; returns the summary (also in output/summary.json)."""
    from prune_perception.data.synth import SynthConfig, generate_dataset

    started = time.monotonic()
    output = output.resolve()
    data_dir, train_dir, prune_dir = output / "synth", output / "train", output / "prune"
    export_dir, bag_dir, replay_dir, compare_dir = (output / "export", output / "bag", output / "replay",
                                                    output / "compare")
    timings: dict[str, float] = {}
    clock = {"t": time.monotonic()}

    def finish(stage: str) -> None:
        now = time.monotonic()
        timings[stage] = round(now - clock["t"], 1)
        clock["t"] = now
        print(f"[{stage}: {timings[stage]:.1f} s]", flush=True)

    _stage(f"1/{STAGES} synthetic driving scenes")
    synth = SynthConfig(num_images=num_images, **(dict(zip(("width", "height"), image_size)) if image_size else {}))
    stats = generate_dataset(data_dir, synth, progress=progress)
    print(f"{data_dir}: {stats.get('num_images', num_images)} images")
    finish("synth")

    _stage(f"2/{STAGES} train the dense detector")
    trained = _train(data_dir, train_dir, synth.identity(), epochs, input_size, progress)
    dense_pt = train_dir / "best.pt"
    finish("train")

    _stage(f"3/{STAGES} prune to the accuracy budget ({budget:g} mAP50 points)")
    pruned = _prune(data_dir, dense_pt, prune_dir, budget, ratios, finetune_epochs, progress)
    pruned_pt = prune_dir / "pruned.pt"
    finish("prune")

    _stage(f"4/{STAGES} export dense and pruned to ONNX (float and INT8)")
    models = _export({"dense": dense_pt, "pruned": pruned_pt}, export_dir, data_dir)
    finish("export")

    _stage(f"5/{STAGES} evaluation bag (val split)")
    bag = _bag(data_dir, bag_dir, synth.identity(), fps, progress)
    finish("bag")

    _stage(f"6/{STAGES} replay dense and pruned through the detector node (x{rate:g})")
    replays, offline = _replay(bag, models, replay_dir, rate, progress)
    finish("replay")

    _stage(f"7/{STAGES} comparison report")
    from prune_perception.evaluation.compare_report import write_compare_report
    from prune_perception.evaluation.onnx_cost import onnx_graph_cost

    written = write_compare_report([replays["dense"], replays["pruned"]], compare_dir)
    report = next(p for p in written if p.suffix == ".html")
    timed = _bench(data_dir, models, compare_dir / "bench", progress)
    costs = {name: onnx_graph_cost(models[name]) for name in ("dense", "pruned")}
    lines = summary_lines((_map50(replays["dense"]), _map50(replays["pruned"])),
                          (costs["dense"].macs, costs["pruned"].macs),
                          (timed["dense"].stages["inference"].p50, timed["pruned"].stages["inference"].p50),
                          (_node_ms(replays["dense"], "latency_inference_ms_p50"),
                           _node_ms(replays["pruned"], "latency_inference_ms_p50")),
                          (replays["dense"].latency.p50, replays["pruned"].latency.p50),
                          ((timed["dense_int8"].stages["inference"].p50, timed["pruned_int8"].stages["inference"].p50),
                           (_map50(offline["dense_int8"]), _map50(offline["pruned_int8"]))), node_threads())
    finish("compare")

    dense_val = pruned.get("dense_mAP50", trained.get("best_mAP50"))
    summary = {
        "summary": lines, "report": str(report), "compare": [str(p) for p in written],
        "dense": {"checkpoint": str(dense_pt), "onnx": str(models["dense"]), "int8": str(models["dense_int8"]),
                  "val_mAP50": dense_val,
                  "meets_foundation_bar": dense_val is not None and dense_val >= FOUNDATION_MAP50,
                  "macs": costs["dense"].macs, "params": costs["dense"].params},
        "pruned": {"checkpoint": str(pruned_pt), "onnx": str(models["pruned"]), "int8": str(models["pruned_int8"]),
                   "ratio": pruned.get("chosen_ratio"),
                   "budget_points": budget, "candidates": pruned.get("candidates"),
                   "macs": costs["pruned"].macs, "params": costs["pruned"].params},
        "bag": str(bag),
        "replay": {name: r.as_dict() for name, r in replays.items()},
        "offline": {name: r.as_dict() for name, r in offline.items()},
        "bench": {name: r.as_dict() for name, r in timed.items()},
        "stage_seconds": timings, "wall_time_s": round(time.monotonic() - started, 1)}
    (output / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")

    print(f"\ndense  {dense_pt}  ->  {models['dense']}")
    print(f"pruned {pruned_pt}  ->  {models['pruned']}"
          + (f"  (ratio {pruned['chosen_ratio']:g})" if pruned.get("chosen_ratio") is not None
             else "  (no ratio within budget: dense kept)"))
    print(f"bag    {bag}")
    if dense_val is not None and dense_val < FOUNDATION_MAP50:
        print(f"WARNING: dense val mAP50 {dense_val:.3f} is below the {FOUNDATION_MAP50:.2f} bar "
              f"(more images or --epochs)")
    print(f"summary {output / 'summary.json'} ({summary['wall_time_s']:.0f} s this run)")
    print(f"\nreport: {report}")
    print("\n".join(lines))
    return summary
