"""Benchmark: plain ratio pruning with and without hardware-aligned widths (MACs, measured latency, mAP50).

For each ratio (default 0.3 / 0.4 / 0.5) the dense checkpoint is pruned once per --variants entry with the
same method and the same fine-tuning: by default with widths aligned to the CPU's vector block (the
default, `round_to: null`) and without (`round_to: 1`), distillation as configured (`distill.enabled:
auto`: on when a run removes >= half the MACs); `aligned_kd` / `aligned_no_kd` force distillation on /
off to measure what it buys. The dense model gets the same fine-tuning too (ratio 0):
mAP50 losses are taken against it, so an under-trained dense model that keeps improving while
fine-tuning does not make pruning look free. Then the dense model and every pruned one are exported the way
`export` does it and timed together round-robin through the runtime engine (the node's inference
path): --threads ONNX Runtime threads (1 = the node's default), warm-up, --runs timed runs each,
p50 / p90 / p99. Ends with the best point (the lowest measured p50) within --budget mAP50 points of the
dense model fine-tuned alike, and of the dense model as trained, with its speed-up. Writes results.json
and summary.md to --output.

    make env && .venv/bin/python bench/aligned_widths.py --checkpoint runs/demo/train/best.pt \\
        --data runs/demo/synth --epochs 6 -o runs/bench_aligned
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from prune_perception.config import PruneConfig, load_config
from prune_perception.errors import PrunePerceptionError
from prune_perception.machine import cpu_model
from prune_perception.models.checkpoint import load_checkpoint
from prune_perception.models.detector import model_widths
from prune_perception.pruning.latency_model import MeasureSettings, time_detectors, vector_block
from prune_perception.pruning import prune

# name -> overrides: widths aligned (round_to null) or not (1); distillation as configured (auto) or forced
VARIANTS = {
    "aligned": ["prune.round_to=null"],
    "unaligned": ["prune.round_to=1"],
    "aligned_kd": ["prune.round_to=null", "distill.enabled=true"],
    "aligned_no_kd": ["prune.round_to=null", "distill.enabled=false"],
}


def distilled(run_dir: Path) -> bool:
    """Whether a run's fine-tuning distilled from the dense model (its epochs record a distillation loss)."""
    return any(epoch.get("loss_distill", 0) > 0 for history in run_dir.glob("finetune_step*/history.json")
               for epoch in json.loads(history.read_text()))


def prune_all(args: argparse.Namespace, output: Path) -> dict[str, dict]:
    """The dense model fine-tuned alike ("dense_finetuned"), then every (ratio, variant) pruned and fine-tuned;
    name -> its record (checkpoint, MACs, mAP50...)."""
    shared = [f"checkpoint={args.checkpoint}", f"data.train={args.data}", f"data.val={args.data}",
              f"prune.method={args.method}", f"finetune.epochs={args.epochs}", f"prune.latency_threads={args.threads}"]
    runs = {}
    plan = [("dense_finetuned", 0.0, "dense", [])] + [
        (f"{variant}_{ratio:g}", ratio, variant, VARIANTS[variant]) for ratio in args.ratios
        for variant in args.variants]
    for name, ratio, variant, overrides in plan:
        config = load_config(PruneConfig, None, shared + overrides + [f"prune.ratio={ratio}",
                                                                      f"output={output / name}"])
        started = time.monotonic()
        result = prune(config, progress=False)
        path, history = result.path, result.history
        dense, final = history[0], history[-1]
        runs[name] = {"ratio": ratio, "variant": variant, "checkpoint": str(path), "macs": final.macs,
                      "dense_macs": dense.macs, "params": final.params, "dense_mAP50": round(dense.mAP50, 4),
                      "mAP50_pruned": round(final.mAP50_pruned, 4), "mAP50": round(final.mAP50, 4),
                      "drop_points": round(100 * (runs.get("dense_finetuned", {}).get("mAP50", final.mAP50)
                                                  - final.mAP50), 2),
                      "drop_points_vs_dense": round(100 * (dense.mAP50 - final.mAP50), 2),
                      "distilled": distilled(output / name),
                      "widths": model_widths(load_checkpoint(path).model),
                      "seconds": round(time.monotonic() - started, 1)}
        print(f"{name}: MACs {final.macs / 1e6:.0f}M, mAP50 {final.mAP50:.3f} "
              f"({runs[name]['drop_points']:+.2f} points lost) in {runs[name]['seconds']:.0f} s", flush=True)
    return runs


def best_within(runs: dict[str, dict], drop_key: str, budget: float) -> str | None:
    """The pruned run with the lowest measured p50 among those that lost at most `budget` points (`drop_key`)."""
    within = [name for name, r in runs.items() if r["variant"] != "dense" and r[drop_key] <= budget]
    return min(within, key=lambda name: runs[name]["p50_ms"]) if within else None


def summary_markdown(runs: dict[str, dict], dense_ms: dict, settings: MeasureSettings, budget: float,
                     block: int) -> str:
    any_run = next(iter(runs.values()))
    lines = ["# Aligned widths: ratio pruning with and without the vector block", "",
             f"{cpu_model()}; vector block {block}; ONNX Runtime {settings.threads} thread(s), "
             f"{settings.warmup} warm-up + {settings.runs} timed runs each, all models round-robin. "
             f"Dense: {any_run['dense_macs'] / 1e6:.0f} M MACs, p50 {dense_ms['p50']:.2f} ms "
             f"(p90 {dense_ms['p90']:.2f}, p99 {dense_ms['p99']:.2f}), mAP50 {any_run['dense_mAP50']:.3f}.", "",
             "Δ points: against the dense model fine-tuned alike (the budget's reference) / against the dense "
             "model as trained. KD: fine-tuning distilled from the dense model.", "",
             "| run | KD | MACs (M) | MACs cut | p50 (ms) | p90 | p99 | speed-up | mAP50 | Δ points | Δ vs dense |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in runs.items():
        lines.append(f"| {name} | {'yes' if r['distilled'] else 'no'} | {r['macs'] / 1e6:.0f} | "
                     f"{1 - r['macs'] / r['dense_macs']:.0%} | {r['p50_ms']:.2f} | {r['p90_ms']:.2f} | "
                     f"{r['p99_ms']:.2f} | {r['speedup']:.2f}x | {r['mAP50']:.3f} | {-r['drop_points']:+.2f} | "
                     f"{-r['drop_points_vs_dense']:+.2f} |")
    lines.append("")
    for reference, key in (("the dense model fine-tuned alike", "drop_points"),
                           ("the dense model as trained", "drop_points_vs_dense")):
        best = best_within(runs, key, budget)
        lines.append(f"Best within {budget:g} mAP50 point(s) of {reference}: " + (
            f"**{best}**, {runs[best]['speedup']:.2f}x ({runs[best]['p50_ms']:.2f} ms p50, {-runs[best][key]:+.2f} "
            f"points)" if best else "none (every run lost more)") + ".")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True, help="dense checkpoint (train's best.pt)")
    parser.add_argument("--data", required=True, help="dataset (train + val splits) of the checkpoint")
    parser.add_argument("--ratios", type=float, nargs="+", default=[0.3, 0.4, 0.5])
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=["aligned", "unaligned"],
                        help="runs per ratio: aligned / unaligned widths (distillation as configured: auto), aligned "
                             "with distillation forced on (aligned_kd) or off (aligned_no_kd)")
    parser.add_argument("--method", default="l1")
    parser.add_argument("--epochs", type=int, default=6, help="fine-tuning epochs of every run")
    parser.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads (node default 1)")
    parser.add_argument("--runs", type=int, default=300, help="timed runs per model (>= 200)")
    parser.add_argument("--budget", type=float, default=1.0, help="mAP50 points the best point may lose")
    parser.add_argument("-o", "--output", default="runs/bench_aligned")
    args = parser.parse_args()
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    try:
        runs = prune_all(args, output)
        dense = load_checkpoint(Path(args.checkpoint))
        models = [dense.model] + [load_checkpoint(Path(r["checkpoint"])).model for r in runs.values()]
        settings = MeasureSettings("cpu", args.threads, max(200, args.runs), warmup=20)
        stats = time_detectors(models, dense.classes, dense.input_hw, settings, settings.runs, progress=True,
                               desc="round-robin")
    except PrunePerceptionError as exc:
        print(f"aligned_widths: {exc}", file=sys.stderr)
        return 1
    dense_ms = {"p50": stats[0].p50, "p90": stats[0].p90, "p99": stats[0].p99}
    for r, s in zip(runs.values(), stats[1:]):
        r.update(p50_ms=round(s.p50, 4), p90_ms=round(s.p90, 4), p99_ms=round(s.p99, 4),
                 speedup=round(stats[0].p50 / s.p50, 3))
    best = best_within(runs, "drop_points", args.budget)
    block = vector_block("cpu")
    (output / "results.json").write_text(json.dumps({
        "cpu": cpu_model(), "vector_block": block, "threads": args.threads, "runs": settings.runs,
        "epochs": args.epochs, "method": args.method, "checkpoint": args.checkpoint, "dense_latency_ms": dense_ms,
        "budget_points": args.budget, "best": best,
        "best_vs_dense_as_trained": best_within(runs, "drop_points_vs_dense", args.budget), "runs": runs}, indent=2))
    markdown = summary_markdown(runs, dense_ms, settings, args.budget, block)
    (output / "summary.md").write_text(markdown)
    print(markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
