"""Benchmark: is the detector node's inference latency steady at light load on a shared computer?

The node (its own process, the shipped parameters except those named here) serves an evaluation bag
replayed in real time (light load: --fps frames/s, far below what it sustains) while another process
keeps one core busy (a spinning Python loop pinned to the last core: another node on the same
computer). Measured twice, one after the other, with the same load: the shipped default
`intra_op_threads` and ONNX Runtime's own default (0: a thread per core). Reported: the node's own
inference p50 / p90 / p99 and p90/p50 (from its /diagnostics; goal p90/p50 <= 1.3 with the default)
and the end-to-end p50 / p90 the replay measured (image published -> detections received).

    make env && PYTHONPATH=. ROS_DOMAIN_ID=61 ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST \\
        .venv/bin/python bench/node_steady.py --model runs/demo/export/pruned.onnx --data runs/demo/synth \\
        -o runs/bench_steady
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from prune_perception.errors import PrunePerceptionError
from prune_perception.machine import cpu_model
from prune_perception.node_params import PARAMS_BY_NAME

GOAL_P90_OVER_P50 = 1.3
SPIN = "import os, sys\nos.sched_setaffinity(0, {int(sys.argv[1])})\nwhile True:\n    pass\n"


def start_load(core: int) -> subprocess.Popen:
    """A process that keeps `core` busy until stopped."""
    return subprocess.Popen([sys.executable, "-c", SPIN, str(core)])


def node_numbers(result) -> dict:
    def number(key: str) -> float:
        try:
            return round(float(result.node.get(key, "nan")), 3)
        except ValueError:
            return float("nan")
    return {"inference_p50_ms": number("latency_inference_ms_p50"), "inference_p90_ms": number("latency_inference_ms_p90"),
            "inference_p99_ms": number("latency_inference_ms_p99"),
            "inference_p90_over_p50": number("latency_inference_p90_over_p50"),
            "end_to_end_p50_ms": round(result.latency.p50, 3), "end_to_end_p90_ms": round(result.latency.p90, 3),
            "pipeline_p50_ms": result.node.get("pipeline_latency_ms_p50"), "level": result.node.get("level"),
            "answered": result.answered, "frames": result.frames}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="ONNX model (export)")
    parser.add_argument("--data", help="dataset whose --split becomes the replayed bag")
    parser.add_argument("--bag", help="an evaluation bag instead of --data")
    parser.add_argument("--split", default="val")
    parser.add_argument("--fps", type=float, default=10.0, help="bag frame rate when written from --data")
    parser.add_argument("--threads", type=int, nargs="+",
                        default=[PARAMS_BY_NAME["intra_op_threads"].default, 0],
                        help="intra_op_threads settings to measure (default: the shipped default, then 0)")
    parser.add_argument("--no-load", action="store_true", help="leave the other core idle")
    parser.add_argument("-o", "--output", default="runs/bench_steady")
    args = parser.parse_args()
    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    from prune_perception.ros.replay import ReplaySettings, replay_bag

    try:
        bag = Path(args.bag) if args.bag else None
        if bag is None:
            from prune_perception.bags.dataset_bag import write_dataset_bag

            bag = output / "bag"
            if not bag.exists():
                write_dataset_bag(args.data, args.split, bag, fps=args.fps, progress=False)
        cores = sorted(os.sched_getaffinity(0))
        load = None if args.no_load else start_load(cores[-1])
        results = {}
        try:
            for threads in args.threads:
                settings = ReplaySettings(rate=1.0, params={"providers": ["cpu"], "intra_op_threads": threads},
                                          progress=False)
                results[f"intra_op_threads={threads}"] = node_numbers(replay_bag(bag, args.model, settings))
                print(f"intra_op_threads={threads}: {results[f'intra_op_threads={threads}']}", flush=True)
        finally:
            if load is not None:
                load.kill()
                load.wait(10)
    except PrunePerceptionError as exc:
        print(f"node_steady: {exc}", file=sys.stderr)
        return 1
    summary = {"cpu": cpu_model(), "cores": len(cores), "load": "none" if args.no_load else f"core {cores[-1]} busy",
               "model": args.model, "bag": str(bag), "goal_p90_over_p50": GOAL_P90_OVER_P50, "results": results}
    (output / "summary.json").write_text(json.dumps(summary, indent=2))
    lines = [f"# Node inference at light load ({summary['cpu']}, {len(cores)} cores; {summary['load']})", "",
             "| intra_op_threads | inference p50 | p90 | p99 | p90/p50 | end to end p50 | p90 | level |",
             "|---|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        lines.append(f"| {name.split('=')[1]} | {r['inference_p50_ms']:.2f} | {r['inference_p90_ms']:.2f} | "
                     f"{r['inference_p99_ms']:.2f} | {r['inference_p90_over_p50']:.2f} | {r['end_to_end_p50_ms']:.2f} | "
                     f"{r['end_to_end_p90_ms']:.2f} | {r['level']} |")
    markdown = "\n".join(lines) + f"\n\nGoal: p90/p50 <= {GOAL_P90_OVER_P50} with the default setting.\n"
    (output / "summary.md").write_text(markdown)
    print(markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
