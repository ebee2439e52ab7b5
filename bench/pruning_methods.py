"""Benchmark of the pruning engine on the synthetic set: criteria, schedules, distillation, budget search.

Every run starts from the same dense checkpoint with the same fine-tune budget (epochs), so the
numbers compare methods, not luck. Runs (each in its own folder under --output):

  criteria:   l1, l2, taylor, bn_scale, random   one-shot, --ratio, --epochs fine-tuning
  iterative:  l1 in 3 steps, --epochs split across the steps (same total budget)
  distill:    l1 one-shot + logit KD from the dense model
  budget:     accuracy-budget search (--budget points of mAP50) over --budget-ratios

Ends with report.md / report.html (Pareto front, kept channels per layer) and results.json.

    make env && .venv/bin/python bench/pruning_methods.py --checkpoint runs/demo/train/best.pt --data runs/demo/synth \
        --ratio 0.3 --epochs 8 -o runs/bench_pruning
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from prune_perception.config import PruneConfig, load_config
from prune_perception.errors import PrunePerceptionError
from prune_perception.evaluation.html_report import write_pruning_report
from prune_perception.pruning import prune

CRITERIA = ("l1", "l2", "taylor", "bn_scale", "random")


def planned_runs(args: argparse.Namespace) -> dict[str, list[str]]:
    """Run name -> config overrides (on top of the shared ones)."""
    one_shot = [f"prune.ratio={args.ratio}", f"finetune.epochs={args.epochs}"]
    runs = {f"oneshot_{method}": one_shot + [f"prune.method={method}"] for method in args.criteria}
    runs["iterative_l1"] = [f"prune.ratio={args.ratio}", "prune.iterative_steps=3",
                            f"finetune.epochs={max(1, round(args.epochs / 3))}"]
    runs["distill_l1"] = one_shot + ["distill.enabled=true", "distill.mode=logit"]
    runs["budget_l1"] = [f"prune.budget={args.budget}", f"prune.budget_ratios={args.budget_ratios}",
                         f"finetune.epochs={args.epochs}"]
    return runs


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--ratio", type=float, default=0.3, help="channel ratio (0.3 removes ~50 %% of MACs)")
    parser.add_argument("--epochs", type=int, default=8, help="fine-tune epochs per run (total)")
    parser.add_argument("--criteria", nargs="+", default=list(CRITERIA))
    parser.add_argument("--budget", type=float, default=1.0)
    parser.add_argument("--budget-ratios", default="[0.2, 0.3, 0.4]")
    parser.add_argument("--only", nargs="+", help="run only these run names")
    parser.add_argument("-o", "--output", default="runs/bench_pruning")
    args = parser.parse_args()
    output = Path(args.output)
    shared = [f"checkpoint={args.checkpoint}", f"data.train={args.data}", f"data.val={args.data}"]
    results = {}
    try:
        for name, overrides in planned_runs(args).items():
            if args.only and name not in args.only:
                continue
            config = load_config(PruneConfig, None, shared + overrides + [f"output={output / name}"])
            started = time.monotonic()
            result = prune(config, progress=False)
            if name.startswith("budget"):
                results[name] = {"chosen_ratio": result.chosen_ratio,
                                 "candidates": [c.__dict__ for c in result.candidates]}
            else:
                history = result.history
                dense, final = history[0], history[-1]
                results[name] = {"dense_mAP50": dense.mAP50, "mAP50": final.mAP50, "mAP50_95": final.mAP50_95,
                                 "drop_points": round(100 * (dense.mAP50 - final.mAP50), 2),
                                 "params": final.params, "macs": final.macs, "dense_macs": dense.macs,
                                 "macs_cut": round(1 - final.macs / dense.macs, 4)}
            results[name]["seconds"] = round(time.monotonic() - started, 1)
            print(f"{name}: {json.dumps(results[name], default=str)[:300]}", flush=True)
            (output / "results.json").write_text(json.dumps(results, indent=2, default=str))
        report = write_pruning_report([output / name for name in results if not name.startswith("budget")], output)
    except PrunePerceptionError as exc:
        print(f"pruning_methods: error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {output / 'results.json'}, {report[0]}, {report[1]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
