"""Models on bags: `replay` (through the node, or --offline through the engine), `compare` several models on one
bag, `fleet-eval` models on many bags with Dask."""

from __future__ import annotations

import argparse
from pathlib import Path

from prune_perception.cli.common import (CLASS_AGNOSTIC_HELP, add_command, add_json_option, add_scale_out_options,
                                         engine_options, evaluation_line, nms_override, node_overrides, print_json,
                                         report_failures)


def _evaluate_on_bag(bag: str, model: str, args: argparse.Namespace):
    """One model on one bag: replay through the node, or --offline through the engine."""
    params = {"providers": args.providers, **node_overrides(args.param), **nms_override(args)}
    if args.offline:
        from prune_perception.evaluation.bag_eval import evaluate_bag_offline

        return evaluate_bag_offline(bag, model, args.image_topic, engine_options(args), progress=not args.quiet)
    from prune_perception.ros.replay import ReplaySettings, replay_bag

    record = Path(args.record) if getattr(args, "record", None) else None
    settings = ReplaySettings(rate=None if args.max_rate else args.rate, clock=args.clock, record=record,
                              image_topic=args.image_topic, params=params, progress=not args.quiet)
    return replay_bag(bag, model, settings)


def _add_bag_evaluation_options(command: argparse.ArgumentParser) -> None:
    command.add_argument("--rate", type=float, default=1.0, help="bag time scale (2 = twice as fast)")
    command.add_argument("--max-rate", action="store_true",
                         help="each frame waits for the previous output (deterministic, nothing dropped)")
    command.add_argument("--clock", action=argparse.BooleanOptionalAction, default=None,
                         help="publish /clock in bag time and run the node on sim time (default: on when "
                              "playing at a rate, off with --max-rate)")
    command.add_argument("--offline", action="store_true", help="run the runtime engine over the bag, no ROS")
    command.add_argument("--image-topic", help="image topic (default: the bag's only image topic)")
    command.add_argument("--providers", nargs="+", default=["cpu"])
    command.add_argument("--class-agnostic-nms", action="store_true", help=CLASS_AGNOSTIC_HELP)
    command.add_argument("-p", "--param", action="append", default=[], metavar="NAME=VALUE",
                         help="detector parameter override (YAML value), repeatable")


def _cmd_replay(args: argparse.Namespace) -> None:
    from prune_perception.evaluation.bag_eval import evaluation_markdown, write_evaluation

    result = _evaluate_on_bag(args.bag, args.model, args)
    paths = write_evaluation(result, Path(args.output), "offline" if args.offline else "replay")
    if args.json:
        print_json(result.as_dict())
        return
    print(evaluation_markdown(result))
    for path in paths:
        print(f"wrote {path}")
    if args.record and not args.offline:
        print(f"recorded outputs and /diagnostics to {args.record}")
    print(evaluation_line(result))


def add_replay_parser(sub) -> None:
    replay = add_command(sub, "replay", help="play a bag through the detector node; mAP + latency")
    replay.add_argument("bag")
    replay.add_argument("--model", required=True)
    _add_bag_evaluation_options(replay)
    replay.add_argument("--record", metavar="BAG", help="record outputs and /diagnostics into this new bag")
    replay.add_argument("-o", "--output", default="runs/replay")
    add_json_option(replay, "the evaluation (the document written to OUTPUT)")
    replay.set_defaults(func=_cmd_replay)


def _cmd_compare(args: argparse.Namespace) -> None:
    from prune_perception.evaluation.compare_report import summary_table, write_compare_report
    from prune_perception.evaluation.html_report import markdown_table

    results = [_evaluate_on_bag(args.bag, model, args) for model in args.models]
    paths = write_compare_report(results, Path(args.output))
    if args.json:
        print_json([result.as_dict() for result in results])
        return
    print(markdown_table(*summary_table(results)))
    for path in paths:
        print(f"wrote {path}")
    for result in results:
        print(evaluation_line(result))


def add_compare_parser(sub) -> None:
    compare = add_command(sub, "compare", help="several models on one bag: one Markdown + HTML report")
    compare.add_argument("bag")
    compare.add_argument("--models", nargs="+", required=True)
    _add_bag_evaluation_options(compare)
    compare.add_argument("-o", "--output", default="runs/compare")
    add_json_option(compare, "the evaluations (the compare.json document)")
    compare.set_defaults(func=_cmd_compare)


def _cmd_fleet_eval(args: argparse.Namespace) -> None:
    from prune_perception.evaluation.html_report import markdown_table
    from prune_perception.scaleout.fleet import fleet_evaluate, fleet_tables, write_fleet_report
    from prune_perception.scaleout.runner import FanOutSettings, TaskFailures

    settings = FanOutSettings(scheduler=args.scheduler, workers=args.workers, retries=args.retries,
                              allow_failures=args.allow_failures, progress=not args.quiet)
    result = fleet_evaluate(args.bags, args.models, args.image_topic, engine_options(args), settings)
    for header, rows in fleet_tables(result)[:1]:
        print(markdown_table(header, rows))
    for path in write_fleet_report(result, Path(args.output)):
        print(f"wrote {path}")
    report_failures(result.failures, "fleet-eval")
    print(f"{len(result.evaluations)} evaluation(s) of {len(args.models)} model(s) on {len(args.bags)} bag(s), "
          f"{len(result.failures)} failed")
    if result.failures and not args.allow_failures:
        raise TaskFailures("bag evaluation", result.failures, len(args.bags) * len(args.models))


def add_fleet_eval_parser(sub) -> None:
    fleet = add_command(sub, "fleet-eval", help="models on many bags offline (no ROS), one Dask task per bag and "
                                                "model; one JSON + Markdown + HTML report")
    fleet.add_argument("bags", nargs="+", metavar="BAG")
    fleet.add_argument("--models", "--model", nargs="+", required=True, help="ONNX model(s)")
    fleet.add_argument("--image-topic", help="image topic (default: each bag's only image topic)")
    fleet.add_argument("--providers", nargs="+", default=["cpu"])
    fleet.add_argument("-p", "--param", action="append", default=[], metavar="NAME=VALUE",
                       help="engine parameter override (score_threshold, nms_threshold, max_detections, "
                            "intra_op_threads, ...), repeatable")
    fleet.add_argument("-o", "--output", default="runs/fleet")
    add_scale_out_options(fleet, allow_failures=True, what="the bags", local_default=True)
    fleet.set_defaults(func=_cmd_fleet_eval)
