"""`demo`: the whole story on synthetic data (its options live with the stages in prune_perception/demo.py)."""

from __future__ import annotations

import argparse

from prune_perception.cli.common import add_command


def _cmd_demo(args: argparse.Namespace) -> None:
    from prune_perception.demo import run_demo_from_args

    run_demo_from_args(args)


def add_demo_parser(sub) -> None:
    demo = add_command(sub, "demo", help="the whole story on synthetic data: synth, train, prune to a budget, "
                                         "export, bag, replay dense and pruned, compare; reuses finished stages")
    from prune_perception.demo import add_demo_arguments  # light: stages are imported lazily

    add_demo_arguments(demo)
    demo.set_defaults(func=_cmd_demo)
