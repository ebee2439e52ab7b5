"""What several commands share: the global options, Dask scale-out options, parameter overrides, JSON output."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

GLOBAL_OPTIONS = argparse.ArgumentParser(add_help=False)
"""Options accepted before and after the sub-command (`prune-perception -q train` = `prune-perception train -q`);
a sub-command parser takes them through ``parents=[GLOBAL_OPTIONS]``."""
GLOBAL_OPTIONS.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS, help="no progress bars")


def add_global_options(parser: argparse.ArgumentParser) -> None:
    """The top-level parser's copy of GLOBAL_OPTIONS, with real defaults (a sub-command only sets what it was given)."""
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars")


def add_command(sub, name: str, **kwargs) -> argparse.ArgumentParser:
    """A sub-command parser that also accepts the global options."""
    return sub.add_parser(name, parents=[GLOBAL_OPTIONS], **kwargs)


def add_json_option(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("--json", action="store_true", help=f"print {what} as JSON instead of text")


def print_json(document) -> None:
    print(json.dumps(document, indent=2, default=str))


def add_scale_out_options(command: argparse.ArgumentParser, allow_failures: bool, what: str = "the evaluations",
                          local_default: bool = False) -> None:
    """--scheduler / --workers / --retries (/ --allow-failures): fan the command's tasks out on Dask."""
    group = command.add_argument_group("scale-out (Dask; docs/scale-out.md)")
    group.add_argument("--scheduler", metavar="ADDRESS",
                       help=f"fan out {what} on this existing Dask cluster (e.g. tcp://10.0.0.5:8786)")
    group.add_argument("--workers", type=int, metavar="N",
                       help=(f"fan out {what} on a local Dask cluster of N processes on 127.0.0.1; 0: one "
                             "after the other in this process "
                             + ("(default: as many processes as usable cores)" if local_default
                                else "(default without --scheduler/--workers: serially here, no Dask)")))
    group.add_argument("--retries", type=int, default=1, help="retries of a failed task (default 1; errors of the "
                                                              "input itself are reported at once)")
    if allow_failures:
        group.add_argument("--allow-failures", action="store_true",
                           help="exit 0 even if tasks failed (they are still listed in the outputs and on stderr)")


def report_failures(failures, what: str) -> None:
    """Print each failed task on stderr (they were allowed with --allow-failures)."""
    for failure in failures:
        print(f"prune-perception {what}: FAILED {failure.line()}", file=sys.stderr)


def node_overrides(texts: list[str]) -> dict:
    """{parameter name: value} of `-p NAME=VALUE` options (values parsed as YAML)."""
    from prune_perception.config import parse_override

    return {".".join(key): value for key, value in map(parse_override, texts)}


MODEL_OVERRIDES = ("class_names", "input_size", "input_color_order", "input_scale", "yolox_decoded")
"""DetectorEngine settings for external models without our metadata (runtime/model_metadata.py)."""
CLASS_AGNOSTIC_HELP = ("one NMS over all classes (YOLOX's and many external pipelines' own post-processing) "
                       "instead of one per class (the parameter class_agnostic_nms)")


def nms_override(args: argparse.Namespace) -> dict:
    """{'class_agnostic_nms': True} when --class-agnostic-nms is given."""
    return {"class_agnostic_nms": True} if getattr(args, "class_agnostic_nms", False) else {}


def engine_options(args: argparse.Namespace) -> dict:
    """Runtime-engine options of --providers, --class-agnostic-nms and the -p overrides (offline evaluation)."""
    params = {"providers": args.providers, **node_overrides(args.param), **nms_override(args)}
    return {k: v for k, v in params.items() if k in (
        "providers", "score_threshold", "nms_threshold", "max_detections", "model_format", "intra_op_threads",
        "class_agnostic_nms", *MODEL_OVERRIDES)}


def evaluation_line(result) -> str:
    """One line of a BagEvaluation: model, bag, frames answered, mAP50, latency p50."""
    accuracy = f"mAP50 {result.map.map50:.3f}" if result.map is not None else "no ground truth"
    return (f"{Path(result.model).name} on {result.bag} ({result.mode}): {result.answered}/{result.frames} frames "
            f"answered, {accuracy}, latency p50 {result.latency.p50:.2f} ms")
