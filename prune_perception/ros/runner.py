"""In-process launcher for pip-only installs (no ``ros2 launch``): ``prune-perception node``.

Starts the same nodes as ``launch/detector.launch.py`` / ``multi_camera.launch.py`` in one
process: one detector per camera (namespace ``/<camera>``, reading ``/<camera>/image_raw``; no
camera names: one un-namespaced detector reading ``image_topic``), parameters from a ROS 2
params file (``/**`` for all, ``detector_node`` or ``/<ns>/detector_node`` for one) plus
overrides, optional synthetic/file cameras, and the shipped Fast DDS shared-memory profile unless
the environment already names one.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from prune_perception.errors import ConfigError, ModelLoadError
from prune_perception.node_params import read_params_file, split_ros_node_params, validate_params
from prune_perception.ros.dds_profile import apply_profile
from prune_perception.runtime.engine import validate_model_file

NODE_NAME = "detector_node"


@dataclass
class RunnerConfig:
    params_file: str | None = None
    overrides: dict[str, Any] = field(default_factory=dict)
    cameras: list[str] = field(default_factory=list)
    """Namespaces, one detector each; empty: one detector without namespace."""
    image_topic: str = "/image_raw"
    camera_source: str | None = None
    """Also publish frames in-process ('synthetic', a video or a folder) on each image topic."""
    camera_params: dict[str, Any] = field(default_factory=dict)
    lifecycle: bool = False
    """Managed detectors (LifecycleDetectorNode): they start unconfigured; a lifecycle manager or
    `ros2 lifecycle set` drives them."""
    fastdds_profile: str | None = ""
    """'' = the shipped shared-memory profile (unless the environment sets one), None = leave DDS alone."""
    duration: float | None = None


def detector_params(params_file: str | None, namespace: str, overrides: dict[str, Any]) -> dict[str, Any]:
    """Validated parameters of the detector in ``namespace``: file sections ``/**``, then the node's own, then
    overrides. A file written by ``ros2 param dump`` works too: of the parameters every node has, only
    ``use_sim_time`` is kept (passed on to the node), the others are rclpy's business."""
    merged: dict[str, Any] = {}
    if params_file:
        sections = read_params_file(params_file)
        fqn = f"{namespace.rstrip('/')}/{NODE_NAME}" if namespace else f"/{NODE_NAME}"
        for key in ("/**", NODE_NAME, fqn.lstrip("/"), fqn):
            merged.update(sections.get(key, {}))
    merged.update(overrides)
    where = f"{params_file or 'parameters'} ({namespace or '/'}{'/' if namespace else ''}{NODE_NAME})"
    ours, ros = split_ros_node_params(merged, where)
    params = validate_params(ours, where)
    if "use_sim_time" in ros:
        params["use_sim_time"] = ros["use_sim_time"]
    return params


def _topic_for(namespace: str, image_topic: str) -> str:
    return f"{namespace}/image_raw" if namespace else image_topic


def run(config: RunnerConfig, on_started=None) -> list[dict[str, int]]:
    """Run until Ctrl-C or ``duration`` s; return each detector's final frame counts."""
    namespaces = [f"/{name.strip('/')}" for name in config.cameras] or [""]
    all_params = {ns: detector_params(config.params_file, ns, config.overrides) for ns in namespaces}
    for ns, params in all_params.items():
        if not params["model_path"]:
            raise ConfigError(f"detector {ns or '/'}{NODE_NAME}: model_path is empty (set it in the params file "
                              "or with --model)")
        validate_model_file(params["model_path"])
    if config.fastdds_profile is not None:
        apply_profile(config.fastdds_profile or None, os.environ)

    import rclpy
    from rclpy.parameter import Parameter
    from rclpy.signals import SignalHandlerOptions

    from prune_perception.ros.camera_publisher import CameraPublisher
    from prune_perception.ros.detector_node import (DetectorNode, LifecycleDetectorNode, close_nodes, ros_parameter,
                                                    run_nodes)

    rclpy.init(args=[], signal_handler_options=SignalHandlerOptions.NO)   # see ros/entry.py
    nodes, detectors = [], []
    try:
        for ns, params in all_params.items():
            topic = _topic_for(ns, config.image_topic)
            node_class = LifecycleDetectorNode if config.lifecycle else DetectorNode
            detector = node_class(NODE_NAME, namespace=ns or None, cli_args=[
                "--ros-args", "-r", f"~/in/image:={topic}", "-r", f"~/in/image/compressed:={topic}/compressed"],
                # an empty list is the default of the parameters that may be empty, and rclpy cannot declare
                # a typed parameter from an empty override
                parameter_overrides=[ros_parameter(name, value) for name, value in params.items() if value != []])
            nodes.append(detector)
            detectors.append(detector)
            if config.camera_source:
                camera_params = {"source": config.camera_source, "transport": params["input_transport"],
                                 **config.camera_params}
                nodes.append(CameraPublisher(
                    "camera_publisher", namespace=ns or None,
                    cli_args=["--ros-args", "-r", f"image_raw:={topic}",
                              "-r", f"image_raw/compressed:={topic}/compressed"],
                    parameter_overrides=[Parameter(name, value=value) for name, value in camera_params.items()]))
        failed = [] if config.lifecycle else [d for d in detectors if d.model_state().load_error]
        if failed:
            raise ModelLoadError(f"{failed[0].get_fully_qualified_name()}: {failed[0].model_state().load_error}")
    except Exception:
        close_nodes(nodes)
        rclpy.try_shutdown()
        raise
    if on_started is not None:
        on_started(detectors)
    try:
        run_nodes(nodes, config.duration)
    finally:
        counts = [detector.stats() for detector in detectors]
    return [{"received": s.received, "processed": s.processed, "dropped": s.dropped, "failed": s.failed}
            for s in counts]
