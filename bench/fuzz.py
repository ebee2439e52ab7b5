"""Fuzzing at benchmark size: the generators and checks of bench/fuzz_targets.py with large counts.

Targets (see bench/fuzz_targets.py for what each one generates and checks): node_image, node_cdr,
node_compressed, model_load, adapters, bag, replay_cli, params. Every case must end in a clear error
(a PrunePerceptionError, a frame counted as failed with a reason, a parameter refused with a reason)
or a correct result; a crash (any other exception, a property broken, a dead worker / node thread)
or a hang (a case over --case-timeout) is counted, the run goes on (a target stops after 3 hangs).
The node targets run a real DetectorNode with real rclpy pub/sub in this process and check at the
end that its frames add up exactly and a good frame still gets detections.

Prints a Markdown table (target, cases, accepted, errors as expected, crashes, hangs) and writes
summary.json / summary.md to --output; ROS and library log lines go to <output>/stderr.log.
Exit code 1 when any crash or hang was found.

    PYTHONPATH=. ROS_DOMAIN_ID=105 .venv/bin/python bench/fuzz.py --count 2000 --output runs/fuzz
    ... bench/fuzz.py --count 200 --targets node_image,bag       # a subset
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from prune_perception import ros_env

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))     # node_bench: environment and model helpers

TARGETS = ("node_image", "node_cdr", "node_compressed", "model_load", "adapters", "bag", "replay_cli", "params")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--count", type=int, default=5000, help="cases per target")
    parser.add_argument("--replay-count", type=int, help="cases for replay_cli (default: count / 10; each runs "
                                                         "the whole offline evaluation)")
    parser.add_argument("--targets", default=",".join(TARGETS), help=f"comma-separated subset of {','.join(TARGETS)}")
    parser.add_argument("--model", help="ONNX model (default: a random-initialised nano detector, exported)")
    parser.add_argument("--case-timeout", type=float, default=30.0, help="seconds before a case counts as a hang")
    parser.add_argument("--output", "-o", default="runs/fuzz")
    parser.add_argument("--domain-id", type=int, default=ros_env.domain_id())
    args = parser.parse_args(argv)
    unknown = set(args.targets.split(",")) - set(TARGETS)
    if unknown or args.count < 1:
        parser.error(f"bad settings: unknown targets {sorted(unknown)}, count {args.count} (>= 1)")
    return args


def prepare(args: argparse.Namespace, tmp: Path) -> dict:
    """Model, its bytes + metadata, a small synthetic dataset and its four bags (mcap/sqlite3 x raw/compressed)."""
    import onnx

    from node_bench import export_random_nano
    from prune_perception.bags import write_dataset_bag
    from prune_perception.data.synth import SynthConfig, generate_dataset

    model = Path(args.model).resolve() if args.model else export_random_nano(tmp)
    data = model.read_bytes()
    metadata = {p.key: p.value for p in onnx.load_from_string(data).metadata_props}
    dataset = tmp / "synth"
    generate_dataset(dataset, SynthConfig(num_images=20, width=320, height=192, val_fraction=0.5, seed=3, workers=1),
                     progress=False)
    bags = {f"{storage}_{transport}": write_dataset_bag(dataset, "val", tmp / "bags" / f"{storage}_{transport}",
                                                        storage=storage, transport=transport, progress=False).path
            for storage in ("mcap", "sqlite3") for transport in ("raw", "compressed")}
    other, corrupt = tmp / "other.onnx", tmp / "corrupt.onnx"
    other.write_bytes(data)
    corrupt.write_bytes(data[:1000])
    return {"model": model, "bytes": data, "metadata": metadata, "bags": bags,
            "param_paths": [str(model), str(other), str(corrupt), str(tmp)]}


def run(args: argparse.Namespace, targets: list[str], assets: dict, tmp: Path, output: Path) -> list:
    import fuzz_targets as fz

    worker = fz.Worker(output / "worker.log")
    results = []

    def target(name: str, strategy, check, count: int, live=None) -> None:
        print(f"{name}: {count} cases ...", flush=True)
        tally = fz.run_target(name, strategy, check, count, strict=False)
        if live is not None:   # afterwards: the node serves and its frames add up exactly
            try:
                live.send_good()
                live.check_accounting()
                stats = live.stats()
                tally.final = {"received": stats.received, "processed": stats.processed, "dropped": stats.dropped,
                               "failed": stats.failed, "pending": stats.pending, "good_frame_served": True}
            except Exception as exc:  # counted as a crash of the target
                tally.crashes += 1
                fz.note_failure(tally, f"final check: {type(exc).__name__}: {exc}", None)
                tally.final = {"good_frame_served": False, "error": str(exc)}
        results.append(tally)
        print(f"  {tally.cases} cases, {tally.accepted} accepted, {tally.expected_errors} clear errors, "
              f"{tally.crashes} crashes, {tally.hangs} hangs in {tally.seconds:.0f} s", flush=True)

    model, count = assets["model"], args.count
    try:
        if {"node_image", "node_cdr"} & set(targets):
            live = fz.LiveNode(model)
            try:
                if "node_image" in targets:
                    target("node_image", fz.image_strategy(), lambda c: fz.check_node_image(live, c), count, live)
                if "node_cdr" in targets:
                    target("node_cdr", fz.cdr_strategy(), lambda c: fz.check_node_cdr(live, c), count, live)
            finally:
                live.close()
        if "node_compressed" in targets:
            live = fz.LiveNode(model, input_transport="compressed", max_image_pixels=640 * 480)
            try:
                target("node_compressed", fz.compressed_strategy(), lambda c: fz.check_node_compressed(live, c),
                       count, live)
            finally:
                live.close()
        if "model_load" in targets:
            live = fz.LiveNode(model, warmup_runs=1)      # as the worker loads: the same files must fail
            folder = tmp / "models"
            folder.mkdir(exist_ok=True)
            try:
                target("model_load", fz.model_strategy(),
                       lambda c: fz.check_model(worker, live, folder, assets["bytes"], assets["metadata"], c),
                       count, live)
            finally:
                live.close()
        if "adapters" in targets:
            target("adapters", fz.adapter_strategy(), fz.check_adapter, count)
        names = sorted(assets["bags"])
        if "bag" in targets:
            folder = tmp / "bag_cases"
            folder.mkdir(exist_ok=True)
            target("bag", fz.bag_strategy(names), lambda c: fz.check_bag(worker, folder, assets["bags"], c), count)
        if "replay_cli" in targets:
            folder = tmp / "replay_cases"
            folder.mkdir(exist_ok=True)
            target("replay_cli", fz.bag_strategy(names),
                   lambda c: fz.check_replay_cli(worker, folder, assets["bags"], model, c),
                   args.replay_count or max(count // 10, 1))
        if "params" in targets:
            live = fz.LiveNode(model)
            try:
                from rclpy.parameter import Parameter

                target("params", fz.param_strategy(assets["param_paths"]), lambda c: fz.check_params(live, c),
                       count)
                live.node.set_parameters([Parameter("max_image_pixels", value=7680 * 4320),
                                          Parameter("use_sim_time", value=False)])
                live.send_good()
                results[-1].final = {"good_frame_served": True}
            finally:
                live.close()
    finally:
        worker.close()
    return results


def markdown(results, settings: dict) -> str:
    import fuzz_targets as fz

    lines = ["# Fuzzing", "", f"{settings['count']} cases per target (replay_cli: {settings['replay_count']}), case "
             f"timeout {settings['case_timeout']} s, model {Path(settings['model']).name}. A crash is any exception "
             "other than a clear error, a broken property (frames not adding up, a valid frame failing, the old "
             "model not serving after a failed swap, ...) or a dead thread / worker process; a hang is a case "
             "over the timeout.", "", fz.tally_table(results), ""]
    totals = {key: sum(getattr(t, key) for t in results) for key in ("cases", "crashes", "hangs")}
    lines.append(f"Total: {totals['cases']} cases, {totals['crashes']} crashes, {totals['hangs']} hangs.")
    finals = [(t.target, t.final) for t in results if getattr(t, "final", None)]
    if finals:
        lines += ["", "After each node target:", ""]
        for name, final in finals:
            if "received" in final:
                lines.append(f"- {name}: received {final['received']} = processed {final['processed']} + dropped "
                             f"{final['dropped']} + failed {final['failed']} (pending {final['pending']}); a good "
                             f"frame got detections: {'yes' if final['good_frame_served'] else 'NO'}")
            else:
                lines.append(f"- {name}: a good frame got detections: {'yes' if final['good_frame_served'] else 'NO'}")
    failures = [(t.target, f) for t in results for f in t.failures]
    if failures:
        lines += ["", "First failures:", ""] + [f"- {name}: {text[:400]}" for name, text in failures[:20]]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from node_bench import DEFAULT_PROFILE, ros_environment

    os.environ.update(ros_environment(args.domain_id, DEFAULT_PROFILE))   # before anything starts rclpy
    os.environ["PRUNE_FUZZ_CASE_TIMEOUT"] = str(args.case_timeout)
    output = Path(args.output).resolve()
    output.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("ROS_LOG_DIR", str(output / "ros_log"))
    import fuzz_targets as fz

    fz.CASE_TIMEOUT_S = args.case_timeout
    targets = args.targets.split(",")
    stdout = sys.stdout
    log = open(output / "stderr.log", "w")
    os.dup2(log.fileno(), 2)            # rclpy / ONNX Runtime / libjpeg chatter: thousands of lines
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="fuzz_") as tmp:
        print("preparing model, dataset and bags ...", file=stdout, flush=True)
        assets = prepare(args, Path(tmp))
        results = run(args, targets, assets, Path(tmp), output)
        model_name = str(args.model or "random-initialised nano detector (exported)")
    settings = {"count": args.count, "replay_count": args.replay_count or max(args.count // 10, 1),
                "case_timeout": args.case_timeout, "model": model_name, "targets": targets,
                "seconds": round(time.monotonic() - started, 1), "domain_id": args.domain_id}
    summary = {"settings": settings,
               "targets": [{**t.as_dict(), **({"final": t.final} if getattr(t, "final", None) else {})}
                           for t in results],
               "total": {key: sum(getattr(t, key) for t in results)
                         for key in ("cases", "accepted", "expected_errors", "crashes", "hangs")}}
    (output / "summary.json").write_text(json.dumps(summary, indent=2))
    table = markdown(results, settings)
    (output / "summary.md").write_text(table)
    print(table, file=stdout)
    print(f"wrote {output / 'summary.json'}, {output / 'summary.md'} ({settings['seconds']:.0f} s)", file=stdout)
    shutil.rmtree(output / "ros_log", ignore_errors=True)
    return 1 if summary["total"]["crashes"] or summary["total"]["hangs"] else 0


if __name__ == "__main__":
    sys.exit(main())
