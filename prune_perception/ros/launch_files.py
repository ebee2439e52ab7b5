"""Helpers the shipped launch files share (no rclpy, no launch import: they run inside `ros2 launch`)."""

from __future__ import annotations

import importlib.util
import os
from types import ModuleType


def load_launch_module(path: str | os.PathLike) -> ModuleType:
    """A launch file loaded as a module, e.g. detector.launch.py for its arguments and actions."""
    path = os.fspath(path)
    name = "prune_perception_launch_" + os.path.basename(path).replace(".", "_")
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
