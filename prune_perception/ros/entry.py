"""Start-up of the node executables: argument checks rcl would only report with a traceback, then rclpy.init;
and their stop on SIGINT / SIGTERM.

rclpy's own signal handlers are not installed: on a signal they shut every ROS context down at once, from a
thread of their own, while a detector's worker thread may still be publishing into it. Here a signal only
asks the spin loop to stop (:func:`stop_on_signals`); the nodes are then closed in order (worker joined,
nodes destroyed) and rclpy is shut down last."""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TypeVar

import rclpy
import yaml
from rclpy.node import Node
from rclpy.signals import SignalHandlerOptions

from prune_perception.errors import PrunePerceptionError

NodeT = TypeVar("NodeT", bound=Node)


def params_files(args: Sequence[str]) -> list[str]:
    """Values of ``--params-file`` inside ``--ros-args ... [--]`` sections."""
    files, in_ros_args = [], False
    for index, arg in enumerate(args):
        if arg == "--ros-args":
            in_ros_args = True
        elif arg == "--":
            in_ros_args = False
        elif in_ros_args and arg == "--params-file" and index + 1 < len(args):
            files.append(args[index + 1])
    return files


def params_file_problem(path: str) -> str | None:
    """Why rcl would fail on this params file (missing, unreadable, not YAML), or None."""
    try:
        yaml.safe_load(Path(path).read_text())
    except OSError as exc:
        return f"params file {path}: {exc.strerror or exc}"
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        return f"params file {path}: not valid YAML ({str(exc).splitlines()[0]})"
    return None


def init_rclpy(program: str, args: Sequence[str] | None) -> bool:
    """rclpy.init(args) after checking the params files; False (one line on stderr) when it cannot start."""
    argv = list(sys.argv if args is None else args)
    for path in params_files(argv):
        problem = params_file_problem(path)
        if problem:
            print(f"{program}: error: {problem}", file=sys.stderr)
            return False
    try:
        rclpy.init(args=argv, signal_handler_options=SignalHandlerOptions.NO)
    except Exception as exc:  # rcl argument errors: already logged by rcl, say what failed in one line
        print(f"{program}: error: cannot start ROS 2 with these arguments ({type(exc).__name__}: {exc})",
              file=sys.stderr)
        return False
    return True


def start_node(program: str, args: Sequence[str] | None, make_node: Callable[[], NodeT]) -> NodeT | None:
    """rclpy.init + the node; None (one line on stderr, rclpy shut down) when either is refused."""
    if not init_rclpy(program, args):
        return None
    try:
        return make_node()
    except (PrunePerceptionError, rclpy.exceptions.ParameterException) as exc:
        print(f"{program}: error: {exc}", file=sys.stderr)
        rclpy.try_shutdown()
        return None


@contextlib.contextmanager
def stop_on_signals() -> Iterator[threading.Event]:
    """An event that SIGINT or SIGTERM sets while the block runs (Python's handlers are restored after it).

    Outside the main thread no handler can be installed and the event is never set. A spin loop checks it
    between short waits, so a second Ctrl-C during the clean-up only sets it again."""
    stop = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    for sig in previous:
        signal.signal(sig, lambda _signum, _frame: stop.set())
    try:
        yield stop
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, signal.SIG_DFL if handler is None else handler)
