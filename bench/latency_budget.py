"""Pruning beyond the anchors, measured: elastic vs iterative vs one-shot, and latency-budget pruning.

Every run starts from the same dense checkpoint with the same fine-tuning budget (--epochs in total).

  schedules  one-shot, iterative (3 steps, --epochs split across them) and elastic (soft pruning while
             fine-tuning, --epochs in total, the last one on the hard-pruned network), l1, the same
             --ratio per layer (>= 50 % of the MACs removed at 0.35 on the nano model)
  latency    `prune --latency-ms T` with T = --latency-fraction x the dense model's measured p50 on this CPU
             (or --latency-ms), then a plain uniform-ratio model of equal measured latency: the uniform ratio
             whose network measures closest to the latency-budget network (timed together, round-robin),
             pruned one-shot with the same fine-tuning
  bench      a separate `prune-perception bench` process times the exported ONNX models round-robin
             (--runs timed runs, --threads ONNX Runtime threads, the dataset's val images): is the target met?

Writes results.json, results.md and report.md / report.html (Pareto front with the latency target) to --output.

    .venv/bin/python bench/latency_budget.py --checkpoint runs/demo_full/train/best.pt --data runs/demo_full/synth \\
        --ratio 0.35 --epochs 6 --latency-fraction 0.5 --threads 1 -o runs/bench_latency
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from prune_perception.config import PruneConfig, load_config
from prune_perception.errors import PrunePerceptionError
from prune_perception.evaluation.html_report import write_pruning_report
from prune_perception.export.onnx_export import export_onnx
from prune_perception.models.checkpoint import load_checkpoint
from prune_perception.pruning.latency_model import LatencyMeter, MeasureSettings, WidthSpace, time_models
from prune_perception.pruning import prune
from prune_perception.pruning.structured import prunable_groups

CONFIG = Path(__file__).resolve().parents[1] / "config" / "prune_synth.yaml"
"""The shipped prune config (its `finetune:` section): `load_config(PruneConfig, CONFIG, ["finetune.epochs=6"])` would
fill the other finetune keys from the training defaults (lr 0.002, 1 warm-up epoch) instead."""


def schedule_runs(args: argparse.Namespace) -> dict[str, list[str]]:
    base = [f"prune.ratio={args.ratio}", "prune.method=l1"]
    return {"oneshot": base + [f"finetune.epochs={args.epochs}"],
            "iterative": base + ["prune.schedule=iterative", "prune.iterative_steps=3",
                                 f"finetune.epochs={max(1, round(args.epochs / 3))}"],
            "elastic": base + ["prune.schedule=elastic", f"finetune.epochs={args.epochs}",
                               "prune.elastic_hard_epochs=1"]}


def summary_of(history: list) -> dict:
    dense, final = history[0], history[-1]
    return {"dense_mAP50": round(dense.mAP50, 4), "mAP50": round(final.mAP50, 4), "mAP50_95": round(final.mAP50_95, 4),
            "drop_points": round(100 * (dense.mAP50 - final.mAP50), 2), "params": final.params, "macs": final.macs,
            "dense_macs": dense.macs, "macs_cut": round(1 - final.macs / dense.macs, 4)}


def equal_latency_ratio(checkpoint_path: Path, widths: dict[str, int], threads: int, runs: int,
                        output: Path) -> tuple[float, list[dict]]:
    """The uniform ratio whose network measures closest to `widths` (timed together, round-robin, this machine)."""
    checkpoint = load_checkpoint(checkpoint_path)
    groups = prunable_groups(checkpoint.model, checkpoint.input_hw)
    space = WidthSpace(checkpoint.model.arch, groups, 0.9)
    target = np.array([widths[g[0]] for g in space.groups])
    ratios = [round(r, 2) for r in np.arange(0.15, 0.76, 0.05)]
    meter = LatencyMeter(space, checkpoint.classes, checkpoint.input_hw, MeasureSettings("cpu", threads, runs),
                         output / "equal_latency_cache.json")
    stats = meter.measure([target] + [space.uniform(r) for r in ratios], progress=True, desc="equal latency")
    rows = [{"ratio": r, "p50_ms": round(s.p50, 4)} for r, s in zip(ratios, stats[1:])]
    best = min(rows, key=lambda row: abs(row["p50_ms"] - stats[0].p50))
    return best["ratio"], [{"latency_budget_widths_p50_ms": round(stats[0].p50, 4)}] + rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--ratio", type=float, default=0.35, help="channel ratio of the schedule comparison")
    parser.add_argument("--epochs", type=int, default=6, help="fine-tune epochs per run (total)")
    parser.add_argument("--latency-ms", type=float, help="latency target (default: --latency-fraction x dense p50)")
    parser.add_argument("--latency-fraction", type=float, default=0.5)
    parser.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads (search and bench)")
    parser.add_argument("--latency-runs", type=int, default=50, help="timed runs per candidate in the search")
    parser.add_argument("--runs", type=int, default=300, help="timed runs of the separate bench")
    parser.add_argument("--parts", nargs="+", default=["schedules", "latency", "bench"],
                        choices=["schedules", "latency", "bench"])
    parser.add_argument("--schedules", nargs="+", default=["oneshot", "iterative", "elastic"],
                        choices=["oneshot", "iterative", "elastic"], help="which schedules the schedules part runs")
    parser.add_argument("-o", "--output", default="runs/bench_latency")
    args = parser.parse_args()
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    shared = [f"checkpoint={args.checkpoint}", f"data.train={args.data}", f"data.val={args.data}"]
    results_path = output / "results.json"
    results = json.loads(results_path.read_text()) if results_path.is_file() else {}

    def save() -> None:
        results_path.write_text(json.dumps(results, indent=2, default=str))

    try:
        if "schedules" in args.parts:
            for name, overrides in schedule_runs(args).items():
                if name not in args.schedules:
                    continue
                started = time.monotonic()
                config = load_config(PruneConfig, CONFIG, shared + overrides + [f"output={output / name}"])
                history = prune(config, progress=True).history
                results[name] = dict(summary_of(history), seconds=round(time.monotonic() - started, 1))
                if name == "elastic":
                    records = history[-1].elastic or []
                    results[name]["revived_filters"] = sum(r["revived"] for r in records)
                    results[name]["elastic_epochs"] = records
                export_onnx(output / name / "pruned.pt", output / f"{name}.onnx")
                print(f"{name}: {json.dumps(results[name], default=str)[:400]}", flush=True)
                save()
        if "latency" in args.parts:
            target = args.latency_ms
            if target is None:
                dense_onnx = export_onnx(Path(args.checkpoint), output / "dense.onnx").path
                (dense,) = time_models([dense_onnx], MeasureSettings("cpu", args.threads, 200, 20))
                target = round(args.latency_fraction * dense.p50, 2)
                results["dense_p50_ms_for_target"] = round(dense.p50, 4)
                print(f"dense p50 {dense.p50:.2f} ms -> target {target} ms", flush=True)
            started = time.monotonic()
            config = load_config(PruneConfig, CONFIG, shared + [
                f"prune.latency_ms={target}", f"prune.latency_threads={args.threads}",
                f"prune.latency_runs={args.latency_runs}", f"finetune.epochs={args.epochs}",
                f"output={output / 'latency'}"])
            result = prune(config, progress=True)
            print("\n".join(result.summary), flush=True)
            outcome = result.details
            history = json.loads((output / "latency" / "history.json").read_text())
            results["latency"] = {"target_ms": target, "search_p50_ms": outcome.p50_ms, "search_p99_ms": outcome.p99_ms,
                                  "dense_p50_ms": outcome.dense_p50_ms, "met_in_search": outcome.met,
                                  "bound": outcome.bound, "mAP50": round(outcome.mAP50, 4),
                                  "dense_mAP50": round(outcome.dense_mAP50, 4), "macs": outcome.macs,
                                  "dense_macs": outcome.dense_macs, "latency_model": history["latency"]["model"],
                                  "widths": history["latency"]["widths"],
                                  "seconds": round(time.monotonic() - started, 1)}
            save()
            ratio, table = equal_latency_ratio(Path(args.checkpoint), history["latency"]["widths"], args.threads,
                                               args.latency_runs, output)
            print(f"uniform ratio of equal measured latency: {ratio} ({table[:3]}...)", flush=True)
            started = time.monotonic()
            config = load_config(PruneConfig, CONFIG, shared + [f"prune.ratio={ratio}", "prune.method=l1",
                                                              f"finetune.epochs={args.epochs}",
                                                              f"output={output / 'uniform_equal_latency'}"])
            uniform_history = prune(config, progress=True).history
            results["uniform_equal_latency"] = dict(summary_of(uniform_history), ratio=ratio, equal_latency=table,
                                                    seconds=round(time.monotonic() - started, 1))
            export_onnx(output / "uniform_equal_latency" / "pruned.pt", output / "uniform_equal_latency.onnx")
            (output / "latency.onnx").write_bytes((output / "latency" / "pruned.onnx").read_bytes())
            save()
        if "bench" in args.parts:
            models = [output / "latency" / "dense.onnx", output / "latency.onnx", output / "uniform_equal_latency.onnx",
                      output / "oneshot.onnx"]
            models = [m for m in models if m.is_file()]
            command = [sys.executable, "-m", "prune_perception.cli", "bench", *map(str, models), "--threads",
                       str(args.threads), "--runs", str(args.runs), "--data", args.data, "-o", str(output / "bench")]
            print(" ".join(command), flush=True)
            subprocess.run(command, check=True)
            bench = json.loads((output / "bench" / "bench.json").read_text())
            results["bench"] = {m["path"]: {"inference_p50_ms": m["latency_ms"]["inference"]["p50"],
                                            "inference_p99_ms": m["latency_ms"]["inference"]["p99"],
                                            "total_p50_ms": m["latency_ms"]["total"]["p50"], "macs": m["macs"]}
                                for m in bench["models"]}
            if "latency" in results:
                measured = results["bench"].get(str(output / "latency.onnx"))
                if measured:
                    results["latency"]["bench_p50_ms"] = measured["inference_p50_ms"]
                    results["latency"]["bench_p99_ms"] = measured["inference_p99_ms"]
                    results["latency"]["met_in_bench"] = measured["inference_p50_ms"] <= results["latency"]["target_ms"]
            save()
        runs = [output / name for name in ("oneshot", "iterative", "elastic", "latency", "uniform_equal_latency")
                if (output / name / "history.json").is_file()]
        if runs:
            report = write_pruning_report(runs, output)
            print(f"wrote {report[1]}")
        (output / "results.md").write_text(results_markdown(results, output))
        print((output / "results.md").read_text())
    except PrunePerceptionError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


def results_markdown(results: dict, output: Path) -> str:
    lines = ["# Elastic / latency-budget pruning benchmark", ""]
    rows = [(name, results[name]) for name in ("oneshot", "iterative", "elastic") if name in results]
    if rows:
        lines += ["| schedule | MACs (M) | MACs cut | params | mAP50 | Δ mAP50 (points) |",
                  "|---|---|---|---|---|---|"]
        for name, r in rows:
            lines.append(f"| {name} | {r['macs'] / 1e6:.1f} | {r['macs_cut']:.1%} | {r['params']:,} | "
                         f"{r['mAP50']:.3f} | {-r['drop_points']:+.2f} |")
        if "elastic" in results:
            lines += ["", f"elastic: {results['elastic'].get('revived_filters', 0)} zeroed filters came back over the "
                          "soft epochs"]
        lines.append("")
    if "latency" in results:
        lat, uni = results["latency"], results.get("uniform_equal_latency")
        bench = results.get("bench", {})

        def bench_p50(name):
            row = bench.get(str(output / name))
            return f"{row['inference_p50_ms']:.2f} / {row['inference_p99_ms']:.2f}" if row else "-"
        lines += [f"Latency target {lat['target_ms']} ms (dense p50 {lat['dense_p50_ms']:.2f} ms in the search); "
                  f"bound: {lat['bound']}; met in the separate bench: {lat.get('met_in_bench', '-')}", "",
                  "| model | MACs (M) | mAP50 | p50 / p99 in search (ms) | p50 / p99 separate bench (ms) |",
                  "|---|---|---|---|---|",
                  f"| dense | {lat['dense_macs'] / 1e6:.1f} | {lat['dense_mAP50']:.3f} | {lat['dense_p50_ms']:.2f} | "
                  f"{bench_p50('latency/dense.onnx')} |",
                  f"| latency-budget | {lat['macs'] / 1e6:.1f} | {lat['mAP50']:.3f} | {lat['search_p50_ms']:.2f} / "
                  f"{lat['search_p99_ms']:.2f} | {bench_p50('latency.onnx')} |"]
        if uni:
            lines.append(f"| uniform ratio {uni['ratio']} (equal latency) | {uni['macs'] / 1e6:.1f} | "
                         f"{uni['mAP50']:.3f} | - | {bench_p50('uniform_equal_latency.onnx')} |")
        lines.append("")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
