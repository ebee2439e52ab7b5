"""Benchmark: is the pruned detector really faster on the target, and what does it cost in mAP?

dense checkpoint -> structured pruning (+ fine-tuning) -> ONNX float + INT8 for both -> mAP of all
four through the runtime engine -> round-robin latency benchmark in one run (ratios within one run).
Prints a Markdown table and writes everything (JSON, Markdown, plot) to --output.

    make env && .venv/bin/python bench/deploy_pruned.py --checkpoint runs/demo/train/best.pt --data runs/demo/synth \
        --ratio 0.5 --finetune-epochs 8 --threads 1 --runs 300 -o runs/bench_deploy
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from prune_perception.config import PruneConfig, load_config
from prune_perception.errors import PrunePerceptionError
from prune_perception.evaluation.latency_bench import BenchSettings, bench_images, bench_markdown, run_bench, write_bench
from prune_perception.evaluation.evaluate import evaluate_onnx
from prune_perception.export.onnx_export import export_onnx
from prune_perception.export.quantize import Int8Calibration
from prune_perception.pruning import prune


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--ratio", type=float, default=0.5)
    parser.add_argument("--method", default="l1")
    parser.add_argument("--finetune-epochs", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--runs", type=int, default=300)
    parser.add_argument("--warmup", type=int, default=30)
    parser.add_argument("-o", "--output", default="runs/bench_deploy")
    args = parser.parse_args()
    output = Path(args.output)
    try:
        config = load_config(PruneConfig, None, [
            f"checkpoint={args.checkpoint}", f"data.train={args.data}", f"data.val={args.data}",
            f"prune.method={args.method}", f"prune.ratio={args.ratio}", f"finetune.epochs={args.finetune_epochs}",
            f"output={output / 'prune'}"])
        result = prune(config)
        pruned_checkpoint, history = result.path, result.history
        calibration = Int8Calibration(args.data, "train", 64)
        models = {}
        for name, checkpoint in (("dense", Path(args.checkpoint)), ("pruned", pruned_checkpoint)):
            report = export_onnx(checkpoint, output / f"{name}.onnx", int8_calibration=calibration)
            models[name], models[f"{name}.int8"] = report.path, report.int8.path
        accuracy = {name: evaluate_onnx(path, args.data)[0] for name, path in models.items()}
        settings = BenchSettings(threads=args.threads, runs=args.runs, warmup=args.warmup, pin_cores=True)
        results, machine = run_bench(list(models.values()), bench_images(None, "val", 16), settings)
    except PrunePerceptionError as exc:
        print(f"deploy_pruned: error: {exc}", file=sys.stderr)
        return 2
    write_bench(results, machine, settings, output)
    rows = ["| model | mAP50 | mAP50-95 | MACs (M) | inference p50 ms | p99 ms | speed-up vs dense |", "|---|---|---|---|---|---|---|"]
    dense_p50 = results[0].stages["inference"].p50
    for result in results:
        acc, inference = accuracy[result.name], result.stages["inference"]
        rows.append(f"| {result.name} | {acc.map50:.3f} | {acc.map50_95:.3f} | {result.macs / 1e6:.1f} | "
                    f"{inference.p50:.2f} | {inference.p99:.2f} | {dense_p50 / inference.p50:.2f}× |")
    summary = "\n".join(rows) + "\n"
    (output / "summary.md").write_text(summary + "\n" + bench_markdown(results, machine, settings))
    (output / "summary.json").write_text(json.dumps({
        "pruning_history": [step.__dict__ for step in history],
        "accuracy": {name: acc.as_dict() for name, acc in accuracy.items()},
        "bench": json.loads((output / "bench.json").read_text())}, indent=2))
    print(summary)
    print(f"wrote {output / 'summary.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
