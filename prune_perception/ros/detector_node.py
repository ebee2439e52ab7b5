"""``detector_node``: camera images in, vision_msgs/Detection2DArray + /diagnostics out (docs/design.md §7).

The frame pipeline and the hot-swap state machine live in the ROS-free
:class:`~prune_perception.runtime.detector_core.DetectorCore`; this module maps topics and
parameters onto it, in two variants:

- :class:`DetectorNode`: a plain node, serving from construction on;
- :class:`LifecycleDetectorNode`: a managed node (``rclpy.lifecycle``). configure: validate the
  parameters, load and warm up the model (failure: configure fails, the reason on /diagnostics);
  activate: frames are taken, detections (and the debug image) published; deactivate: frames are no
  longer taken (each one counted as ``frames_inactive``, also while unconfigured); cleanup /
  shutdown: the model is released. Topics exist from construction on (their settings are read-only
  parameters), so no transition creates or destroys an entity under a spinning executor.

Threads: the executor runs the subscription (one-slot mailbox in the core), the parameter callback
and the diagnostics timer — all cheap. The core's worker runs the model and calls back to publish;
its loader thread builds a new engine on a ``model_path`` change. Parameters are specified in
:mod:`prune_perception.node_params`.
"""

from __future__ import annotations

import math
import sys
import threading
import time
from typing import Any

import cv2
import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor, SetParametersResult
from rclpy.clock import Clock, ClockType
from rclpy.executors import ExternalShutdownException
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CompressedImage, Image
from vision_msgs.msg import Detection2DArray, LabelInfo, VisionClass

from prune_perception.errors import ConfigError
from prune_perception.node_params import DETECTOR_PARAMS, PARAMS_BY_NAME, ParamSpec, validate_params
from prune_perception.ros.entry import start_node, stop_on_signals
from prune_perception.ros.messages import detections_to_ros_msg, image_to_msg
from prune_perception.runtime.detector_core import RELOAD_PARAMS, DetectorCore, FrameResult
from prune_perception.runtime.health import ERROR, LEVEL_NAMES, OK
from prune_perception.runtime.model_metadata import ModelInfo
from prune_perception.runtime.pipeline_stats import PipelineStats
from prune_perception.runtime.postprocess import Detections
from prune_perception.runtime.preprocess import as_uint8_color

LOG_THROTTLE_S = 2.0
SPIN_SLICE_S = 0.1
"""Longest wait of the spin loop: a stop asked for by a signal is seen within it."""
ROS_TYPES = {"bool": Parameter.Type.BOOL, "int": Parameter.Type.INTEGER, "float": Parameter.Type.DOUBLE,
             "str": Parameter.Type.STRING, "str_list": Parameter.Type.STRING_ARRAY}
LABEL_INFO_QOS = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                            durability=DurabilityPolicy.TRANSIENT_LOCAL)
"""Latched: a subscriber that joins late still gets the class map (as vision_msgs asks)."""


def parameter_descriptor(spec: ParamSpec, read_only: bool | None = None) -> ParameterDescriptor:
    """Typed descriptor with the spec's range (what `ros2 param describe` and rqt show)."""
    descriptor = ParameterDescriptor(name=spec.name, type=ROS_TYPES[spec.kind].value, description=spec.description,
                                     additional_constraints=spec.constraint_text(),
                                     read_only=spec.update == "read_only" if read_only is None else read_only)
    if spec.kind == "int" and (spec.minimum is not None or spec.maximum is not None):
        descriptor.integer_range = [IntegerRange(from_value=int(spec.minimum), to_value=int(spec.maximum), step=1)]
    elif spec.kind == "float" and (spec.minimum is not None or spec.maximum is not None):
        descriptor.floating_point_range = [FloatingPointRange(
            from_value=-math.inf if spec.minimum is None else float(spec.minimum),
            to_value=math.inf if spec.maximum is None else float(spec.maximum), step=0.0)]
    return descriptor


def ros_parameter(name: str, value: Any) -> Parameter:
    """A Parameter of a detector value; lists are string arrays even when empty (rclpy would guess bytes)."""
    if isinstance(value, list):
        return Parameter(name, Parameter.Type.STRING_ARRAY, value)
    return Parameter(name, value=value)


def label_info_msg(info: ModelInfo, threshold: float, stamp) -> LabelInfo:
    """vision_msgs/LabelInfo: class id (the model's output index) -> class name, as in the detections."""
    msg = LabelInfo(threshold=float(threshold))
    msg.header.stamp = stamp
    msg.class_map = [VisionClass(class_id=index, class_name=name) for index, name in enumerate(info.classes)]
    return msg


class DetectorRos:
    """The ROS side both variants share (mixed into a Node or a LifecycleNode)."""

    core: DetectorCore | None
    POST_SET_CALLBACKS = hasattr(Node, "add_post_set_parameters_callback")
    """rclpy >= Iron; on Humble a one-shot timer starts a staged model load instead."""

    def _declare_detector_parameters(self) -> dict[str, Any]:
        for spec in DETECTOR_PARAMS:
            descriptor = parameter_descriptor(spec)
            if spec.default == []:
                # rclpy infers no type from an empty list (and rcl reads `[]` in a params file as unset):
                # declare the type, give it the empty value, then make it read-only if it is.
                self.declare_parameter(spec.name, ROS_TYPES[spec.kind], parameter_descriptor(spec, read_only=False))
                if self.get_parameter_or(spec.name).type_ == Parameter.Type.NOT_SET:
                    self.set_parameters([ros_parameter(spec.name, [])])
                if descriptor.read_only:
                    self.set_descriptor(spec.name, descriptor)
            else:
                self.declare_parameter(spec.name, spec.default, descriptor)
        self.add_on_set_parameters_callback(self._on_set_parameters)
        if self.POST_SET_CALLBACKS:
            self.add_post_set_parameters_callback(self._after_set_parameters)
        else:   # Humble: a timer (same callback group as the parameter services) starts the load after the set
            self._staged_load_timer = self.create_timer(0.0, self._start_staged_load_once)
            self._staged_load_timer.cancel()
        return self._current_parameters()

    def _current_parameters(self) -> dict[str, Any]:
        """The declared values, validated (ConfigError naming the node and the problem)."""
        values = {spec.name: self.get_parameter(spec.name).value for spec in DETECTOR_PARAMS}
        return validate_params(values, where=f"node '{self.get_fully_qualified_name()}'")

    def _make_core(self, params: dict[str, Any]) -> DetectorCore:
        core = DetectorCore(params, publish=self._publish_result, now_ns=lambda: self.get_clock().now().nanoseconds,
                            logger=self.get_logger(), revert=self._revert, on_model=self._on_model,
                            name=self.get_name())
        self._pipeline_stats = core.stats
        return core

    def _create_outputs(self, create_publisher) -> None:
        """Output publishers (``create_publisher``: the node's, or its lifecycle variant) and the image input."""
        self._detections_pub = create_publisher(Detection2DArray, "~/out/detections", 10)
        self._debug_pub = create_publisher(Image, "~/out/image", QoSProfile(
            depth=1, reliability=ReliabilityPolicy.BEST_EFFORT)) if self._params["publish_debug_image"] else None
        self._label_info_pub = self.create_publisher(LabelInfo, "~/out/label_info", LABEL_INFO_QOS)
        image_qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=self._params["qos_depth"],
                               reliability=ReliabilityPolicy.BEST_EFFORT
                               if self._params["qos_reliability"] == "best_effort" else ReliabilityPolicy.RELIABLE)
        if self._params["input_transport"] == "compressed":
            self._image_sub = self.create_subscription(CompressedImage, "~/in/image/compressed", self._on_image,
                                                       image_qos)
        else:
            self._image_sub = self.create_subscription(Image, "~/in/image", self._on_image, image_qos)

    def _start_diagnostics(self) -> None:
        self._diagnostics_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        # Steady time: health reports keep coming when a simulated /clock stalls.
        self._diagnostics_timer = self.create_timer(self._params["diagnostics_period"], self.publish_diagnostics,
                                                    clock=Clock(clock_type=ClockType.STEADY_TIME))

    # ------------------------------------------------------------------ parameters ----
    def _on_set_parameters(self, parameters: list[Parameter]) -> SetParametersResult:
        if self._reverting:
            return SetParametersResult(successful=True)
        changes = {}
        try:
            try:
                for parameter in parameters:
                    if parameter.name in PARAMS_BY_NAME:
                        changes[parameter.name] = PARAMS_BY_NAME[parameter.name].validate(parameter.value)
            except ConfigError as exc:
                if self.core is not None and any(parameter.name in RELOAD_PARAMS for parameter in parameters):
                    self.core.load_refused(str(exc))
                raise
            if self.core is not None:
                self.core.apply_parameters(changes)   # records a refused model change itself
        except ConfigError as exc:
            self.get_logger().error(f"parameter change rejected: {exc}")
            return SetParametersResult(successful=False, reason=str(exc))
        self._params = {**self._params, **changes}
        if not self.POST_SET_CALLBACKS and self.core is not None and self.core.load_staged:
            self._staged_load_timer.reset()
        if "score_threshold" in changes and self.core is not None and self.core.model_info is not None:
            self._on_model(self.core.model_info)
        return SetParametersResult(successful=True)

    def _after_set_parameters(self, parameters: list[Parameter]) -> None:
        """Start a staged model load once the new values are stored (so a quick failure can revert them)."""
        if self.core is not None:
            self.core.start_staged_load()

    def _start_staged_load_once(self) -> None:
        self._staged_load_timer.cancel()
        self._after_set_parameters([])

    def _revert(self, previous: dict[str, Any]) -> None:
        self._reverting = True
        try:
            self.set_parameters([ros_parameter(name, value) for name, value in previous.items()])
            self._params.update(previous)
        finally:
            self._reverting = False

    # ------------------------------------------------------------------ frames ----
    def _on_image(self, msg: Image | CompressedImage) -> None:
        core = self.core
        if core is None:
            self._frames_without_core += 1
        else:
            core.put_frame(msg)

    def _publish_result(self, result: FrameResult) -> None:
        self._detections_pub.publish(detections_to_ros_msg(result.msg.header, result.detections, result.info.classes))
        debug_pub = self._debug_pub
        if debug_pub is not None and debug_pub.get_subscription_count() > 0:   # drawing costs: only when watched
            self.debug_images_drawn += 1
            debug_pub.publish(image_to_msg(draw_detections(result.image, result.color_order, result.detections,
                                                           result.info.classes), "rgb8", result.msg.header))

    def _on_model(self, info: ModelInfo) -> None:
        self._label_info_pub.publish(label_info_msg(info, self._params["score_threshold"],
                                                    self.get_clock().now().to_msg()))

    # ------------------------------------------------------------------ diagnostics ----
    def diagnostic_status(self) -> DiagnosticStatus:
        name = f"{self.get_fully_qualified_name()}: object detection"
        if self.core is None:
            level, message, values = self._idle_report()
        else:
            level, message, values = self.core.diagnostic_report({"input_topic": self._image_sub.topic_name,
                                                                  **self._extra_diagnostics()})
        return DiagnosticStatus(level=bytes([level]), name=name, message=message, hardware_id="prune_perception",
                                values=[KeyValue(key=key, value=value) for key, value in values.items()])

    def _extra_diagnostics(self) -> dict[str, str]:
        return {}

    def _idle_report(self) -> tuple[int, str, dict[str, str]]:
        raise NotImplementedError

    def publish_diagnostics(self) -> None:
        array = DiagnosticArray()
        array.header.stamp = self.get_clock().now().to_msg()
        array.status.append(self.diagnostic_status())
        self._diagnostics_pub.publish(array)

    def stats(self):
        """Frame counts and latencies now (also resets the per-window counts); a managed node that is not
        configured reports those of its last configuration."""
        return self._pipeline_stats.snapshot()

    def _init_state(self) -> None:
        self.core = None
        self._frames_without_core = 0
        """Frames received while a managed node had no core (unconfigured), plus those of its previous cores
        received while inactive."""
        self._pipeline_stats = PipelineStats()
        self._reverting = False
        self.debug_images_drawn = 0
        """Debug images drawn and published (only while ~/out/image has subscribers)."""


class DetectorNode(DetectorRos, Node):
    """The plain detector node: serving from construction on. ``close()`` stops its threads (call before
    ``destroy_node``)."""

    def __init__(self, node_name: str = "detector_node", **kwargs: Any) -> None:
        Node.__init__(self, node_name, **kwargs)
        self._init_state()
        self._params = self._declare_detector_parameters()
        self._create_outputs(self.create_publisher)
        self.core = self._make_core(self._params)
        if self._params["model_path"]:
            self.core.load()
        else:
            self.core.load_refused("model_path is empty: set it to an ONNX model")
        self._start_diagnostics()

    def _idle_report(self) -> tuple[int, str, dict[str, str]]:  # never idle: the core exists from the start
        raise AssertionError("DetectorNode always has a core")

    def model_state(self):
        return self.core.model_state()

    def close(self, timeout: float = 5.0) -> None:
        """Stop the worker (an unread frame counts as dropped) and wait for a running model load."""
        self.core.close(timeout)


class LifecycleDetectorNode(DetectorRos, LifecycleNode):
    """The managed detector node (see the module docstring). Starts unconfigured; /diagnostics from the start."""

    def __init__(self, node_name: str = "detector_node", **kwargs: Any) -> None:
        LifecycleNode.__init__(self, node_name, **kwargs)
        self._init_state()
        self._configure_error = ""
        self._params = self._declare_detector_parameters()
        self._create_outputs(self.create_lifecycle_publisher)
        self._start_diagnostics()

    # configure: validate parameters, build the core, load + warm up the model.
    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        try:
            self._params = self._current_parameters()
            core = self._make_core(self._params)
        except ConfigError as exc:
            return self._configure_failed(str(exc))
        core.set_active(False)
        if not core.load():
            reason = core.model_state().load_error
            core.close()
            return self._configure_failed(reason)
        self.core = core
        self._configure_error = ""
        self.get_logger().info("configured: model loaded, inactive (frames are counted, not processed)")
        return super().on_configure(state)

    def _configure_failed(self, reason: str) -> TransitionCallbackReturn:
        self._configure_error = reason
        self.get_logger().error(f"configure failed: {reason}")
        self.publish_diagnostics()
        return TransitionCallbackReturn.FAILURE

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        result = super().on_activate(state)   # activates the lifecycle publishers
        self.core.set_active(True)
        self.get_logger().info("activated: processing frames")
        return result

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.core.set_active(False)
        self.get_logger().info("deactivated: frames are counted, not processed")
        return super().on_deactivate(state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._release()
        self.get_logger().info("cleaned up: model released")
        return super().on_cleanup(state)

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._release()
        return super().on_shutdown(state)

    def on_error(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._release()
        return TransitionCallbackReturn.SUCCESS

    def _release(self) -> None:
        """Stop the core's threads and release the model."""
        core, self.core = self.core, None
        if core is not None:
            core.close()
            core.release()
            self._frames_without_core += core.frames_inactive

    def _extra_diagnostics(self) -> dict[str, str]:
        return {"lifecycle_state": self._state_machine.current_state[1],
                "frames_inactive": str(self._frames_without_core + self.core.frames_inactive)}

    def _idle_report(self) -> tuple[int, str, dict[str, str]]:
        state = self._state_machine.current_state[1]
        values = {"lifecycle_state": state, "frames_inactive": str(self._frames_without_core)}
        if self._configure_error:
            return ERROR, f"configure failed: {self._configure_error}", {
                "level": LEVEL_NAMES[ERROR], **values, "last_error": self._configure_error}
        return OK, f"{state}: no model loaded", {"level": LEVEL_NAMES[OK], **values}

    def close(self, timeout: float = 5.0) -> None:
        self._release()


def draw_detections(image: np.ndarray, color_order: str, detections: Detections, class_names) -> np.ndarray:
    """An rgb8 copy of ``image`` with boxes and 'class score' labels drawn."""
    canvas = as_uint8_color(image)
    canvas = np.ascontiguousarray(canvas if color_order == "rgb" else canvas[..., ::-1])
    for (x1, y1, x2, y2), score, label in zip(detections.boxes.astype(int).tolist(), detections.scores.tolist(),
                                              detections.labels.tolist()):
        name = class_names[label] if 0 <= label < len(class_names) else str(label)
        cv2.rectangle(canvas, (x1, y1), (x2, y2), (0, 255, 0), 2)
        cv2.putText(canvas, f"{name} {score:.2f}", (x1, max(y1 - 4, 10)), cv2.FONT_HERSHEY_SIMPLEX, 0.4,
                    (0, 255, 0), 1, cv2.LINE_AA)
    return canvas


def close_nodes(nodes: list[Node]) -> None:
    """Stop the detectors' threads, then destroy every node."""
    for node in nodes:
        if isinstance(node, DetectorRos):
            node.close()
        node.destroy_node()


def spin_resilient(executor: rclpy.executors.Executor, logger, duration: float | None = None,
                   stop: threading.Event | None = None) -> None:
    """Spin ``executor`` until its context is shut down, ``stop`` is set or ``duration`` s have passed,
    surviving an exception raised by a callback.

    rclpy re-raises a callback's exception out of ``spin``: one malformed request from any client on
    the network (e.g. a SetParameters request with an invalid parameter type, which rclpy's own
    parameter service cannot convert) would otherwise stop the node. The error is logged and the
    executor spins on. Waits last at most ``SPIN_SLICE_S``, so ``stop`` (set by a signal handler, which
    Python runs only between waits) is seen within that."""
    end = None if duration is None else time.monotonic() + duration
    while executor.context.ok():
        try:
            while executor.context.ok() and not (stop is not None and stop.is_set()):
                if end is not None and time.monotonic() >= end:
                    return
                executor.spin_once(timeout_sec=SPIN_SLICE_S)
            return
        except ExternalShutdownException:
            raise
        except Exception as exc:  # a callback failed: keep serving
            logger.error(f"a callback raised {type(exc).__name__}: {exc}; the node keeps running",
                         throttle_duration_sec=LOG_THROTTLE_S)


def run_nodes(nodes: list[Node], duration: float | None = None) -> None:
    """Spin ``nodes`` on one executor until SIGINT / SIGTERM / shutdown (or ``duration`` s), then close and
    destroy them and shut rclpy down. Single-threaded: every callback is cheap (the detector works in its
    own thread), and rclpy's multi-threaded executor costs more per message than it saves."""
    executor = rclpy.executors.SingleThreadedExecutor(context=nodes[0].context)
    for node in nodes:
        executor.add_node(node)
    with stop_on_signals() as stop:
        try:
            spin_resilient(executor, nodes[0].get_logger(), duration, stop)
        except ExternalShutdownException:
            pass
        finally:
            executor.shutdown()
            close_nodes(nodes)
            rclpy.try_shutdown(context=nodes[0].context)


def main(args: list[str] | None = None) -> int:
    """Entry point of the ``detector_node`` executable (``--ros-args`` as usual; ``--lifecycle`` before them:
    the managed variant, which starts unconfigured)."""
    argv = list(sys.argv if args is None else args)
    ros_start = argv.index("--ros-args") if "--ros-args" in argv else len(argv)
    lifecycle = "--lifecycle" in argv[:ros_start]
    if lifecycle:
        argv.remove("--lifecycle")
    node = start_node("detector_node", argv, LifecycleDetectorNode if lifecycle else DetectorNode)
    if node is None:
        return 2
    run_nodes([node])
    return 0


if __name__ == "__main__":
    sys.exit(main())
