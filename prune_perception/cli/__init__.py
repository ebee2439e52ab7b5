"""`prune-perception <command>`: the offline tool. Bad input ends with one readable line and exit code 2."""

from __future__ import annotations

import argparse
import logging
import sys

from prune_perception.cli import bag_eval, dataset, demo, deploy, node, prune, train
from prune_perception.cli.common import add_global_options
from prune_perception.errors import PrunePerceptionError

COMMAND_PARSERS = (dataset.add_synth_parser, train.add_train_parser, train.add_eval_parser, prune.add_prune_parser,
                   prune.add_sensitivity_parser, deploy.add_export_parser, deploy.add_bench_parser,
                   prune.add_report_parser, demo.add_demo_parser, node.add_node_parser, dataset.add_bag_parser,
                   bag_eval.add_replay_parser, bag_eval.add_compare_parser, bag_eval.add_fleet_eval_parser)
"""One function per sub-command (in `--help` order), each next to its command."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="prune-perception", description=__doc__)
    add_global_options(parser)
    sub = parser.add_subparsers(dest="command", required=True)
    for add_parser in COMMAND_PARSERS:
        add_parser(sub)
    return parser


class _LabelledStderr(logging.Handler):
    """Log records of WARNING and above as 'prune-perception CMD: warning: ...' lines on the current sys.stderr."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.program = "prune-perception"

    def emit(self, record: logging.LogRecord) -> None:
        print(f"{self.program}: {record.levelname.lower()}: {record.getMessage()}", file=sys.stderr)


_STDERR_LOG = _LabelledStderr()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _STDERR_LOG.program = f"prune-perception {args.command}"
    if _STDERR_LOG not in logging.getLogger().handlers:
        logging.getLogger().addHandler(_STDERR_LOG)
    try:
        args.func(args)
    except PrunePerceptionError as exc:
        print(f"prune-perception {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"prune-perception {args.command}: error: {exc.strerror or exc}: {exc.filename or ''}".rstrip(": "),
              file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"prune-perception {args.command}: interrupted", file=sys.stderr)
        return 130
    return 0
