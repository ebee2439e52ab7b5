"""``detector_node``: camera images in, vision_msgs/Detection2DArray + /diagnostics out (DESIGN §7).

Threads: the executor runs the subscription (stores the newest frame in a one-slot mailbox, a
replaced frame counts as dropped), the parameter callback and the diagnostics timer — all cheap.
A worker thread takes frames from the mailbox, runs the ONNX Runtime engine and publishes. A
loader thread builds a new engine when ``model_path`` (or another ``reload`` parameter) changes
and swaps it in between two frames; on failure the old engine keeps serving and the parameters
revert. Parameters are specified in :mod:`prune_perception.node_params`.
"""

from __future__ import annotations

import signal
import sys
import threading
import time
from typing import Any

import cv2
import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rcl_interfaces.msg import ParameterDescriptor, SetParametersResult
from rclpy.clock import Clock, ClockType
from rclpy.executors import ExternalShutdownException
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
from rclpy.task import Future
from rclpy.time import Time
from sensor_msgs.msg import CompressedImage, Image
from vision_msgs.msg import Detection2DArray

from prune_perception.errors import ConfigError, PrunePerceptionError
from prune_perception.node_params import DETECTOR_PARAMS, PARAMS_BY_NAME, validate_params
from prune_perception.ros.entry import start_node
from prune_perception.ros.messages import detections_to_msg, image_to_msg
from prune_perception.runtime.engine import DetectorEngine, Thresholds, validate_model_file
from prune_perception.runtime.frame_mailbox import FrameMailbox
from prune_perception.runtime.health import LEVEL_NAMES, ModelState, assess, report_values
from prune_perception.runtime.image_msg import check_encoded_image_size, compressed_data, image_from_msg
from prune_perception.runtime.pipeline_stats import PipelineStats
from prune_perception.runtime.postprocess import Detections
from prune_perception.runtime.preprocess import as_uint8_color
from prune_perception.runtime.providers import provider_name

RELOAD_PARAMS = tuple(spec.name for spec in DETECTOR_PARAMS if spec.update == "reload")
THRESHOLD_PARAMS = ("score_threshold", "nms_threshold", "max_detections", "class_agnostic_nms")
WORKER_POLL_S = 0.1
LOG_THROTTLE_S = 2.0


class DetectorNode(Node):
    """The detector node. ``close()`` stops its threads (call before ``destroy_node``)."""

    def __init__(self, node_name: str = "detector_node", **kwargs: Any) -> None:
        super().__init__(node_name, **kwargs)
        self._params = self._declare_parameters()
        self._lock = threading.Lock()
        self._stats = PipelineStats()
        self._mailbox: FrameMailbox[Image | CompressedImage] = FrameMailbox()
        self._engine: DetectorEngine | None = None
        self._serving: dict[str, Any] | None = None
        self._thresholds = Thresholds(*(self._params[name] for name in THRESHOLD_PARAMS))
        self._loading = ""
        self._load_error = ""
        self._load_error_at: float | None = None
        self._swaps_done = self._swaps_failed = 0
        self._reverting = False
        self._loader: threading.Thread | None = None
        self._pending_load: tuple[dict[str, Any], dict[str, Any]] | None = None

        self._detections_pub = self.create_publisher(Detection2DArray, "~/out/detections", 10)
        self._debug_pub = (self.create_publisher(Image, "~/out/image", QoSProfile(
            depth=1, reliability=ReliabilityPolicy.BEST_EFFORT)) if self._params["publish_debug_image"] else None)
        self._diagnostics_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        image_qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=self._params["qos_depth"],
                               reliability=ReliabilityPolicy.BEST_EFFORT
                               if self._params["qos_reliability"] == "best_effort" else ReliabilityPolicy.RELIABLE)
        self._compressed = self._params["input_transport"] == "compressed"
        if self._compressed:
            self._image_sub = self.create_subscription(CompressedImage, "~/in/image/compressed", self._on_image,
                                                       image_qos)
        else:
            self._image_sub = self.create_subscription(Image, "~/in/image", self._on_image, image_qos)

        if self._params["model_path"]:
            self._load_model({name: self._params[name] for name in RELOAD_PARAMS}, previous=None)
        else:
            self._load_failed("model_path is empty: set it to an ONNX model")
        self.add_on_set_parameters_callback(self._on_set_parameters)
        self.add_post_set_parameters_callback(self._after_set_parameters)
        self._worker = threading.Thread(target=self._work, name=f"{node_name}_worker", daemon=True)
        self._worker.start()
        # Steady time: health reports keep coming when a simulated /clock stalls.
        self._diagnostics_timer = self.create_timer(self._params["diagnostics_period"], self.publish_diagnostics,
                                                    clock=Clock(clock_type=ClockType.STEADY_TIME))

    # ------------------------------------------------------------------ parameters ----
    def _declare_parameters(self) -> dict[str, Any]:
        for spec in DETECTOR_PARAMS:
            self.declare_parameter(spec.name, spec.default, ParameterDescriptor(
                description=spec.description, additional_constraints=spec.constraint_text(),
                read_only=spec.update == "read_only", dynamic_typing=True))
        values = {spec.name: self.get_parameter(spec.name).value for spec in DETECTOR_PARAMS}
        return validate_params(values, where=f"node '{self.get_name()}'")

    def _on_set_parameters(self, parameters: list[Parameter]) -> SetParametersResult:
        if self._reverting:
            return SetParametersResult(successful=True)
        changes = {}
        try:
            for parameter in parameters:
                if parameter.name in PARAMS_BY_NAME:
                    changes[parameter.name] = PARAMS_BY_NAME[parameter.name].validate(parameter.value)
            params = {**self._params, **changes}
            thresholds = Thresholds(*(params[name] for name in THRESHOLD_PARAMS))
            reload = {name: params[name] for name in RELOAD_PARAMS}
            current = {name: self._params[name] for name in RELOAD_PARAMS}
            with self._lock:
                if reload != current:
                    self._check_reload(reload)
                    self._loading = reload["model_path"]
                    self._pending_load = (reload, current)
                self._thresholds = thresholds
                if self._engine is not None:
                    self._engine.set_thresholds(*(params[name] for name in THRESHOLD_PARAMS))
        except ConfigError as exc:
            with self._lock:
                if any(name in RELOAD_PARAMS for name in changes):
                    self._load_failed(str(exc))
            self.get_logger().error(f"parameter change rejected: {exc}")
            return SetParametersResult(successful=False, reason=str(exc))
        self._params = params
        return SetParametersResult(successful=True)

    def _after_set_parameters(self, parameters: list[Parameter]) -> None:
        """Start a staged model load once the new values are stored (so a quick failure can revert them)."""
        with self._lock:
            pending, self._pending_load = self._pending_load, None
            if pending is None:
                return
            self._loader = threading.Thread(target=self._load_model, args=pending, name=f"{self.get_name()}_loader",
                                            daemon=True)
        self.get_logger().info(f"loading model {pending[0]['model_path']} in the background")
        self._loader.start()

    def _check_reload(self, reload: dict[str, Any]) -> None:
        """Cheap checks in the parameter callback; the full ones (ONNX, layout) happen in the loader."""
        if self._loading:
            raise ConfigError(f"a model is being loaded ({self._loading}); set parameters again when it is done")
        if not reload["model_path"]:
            raise ConfigError("model_path must not be empty (a running node keeps its model)")
        try:
            validate_model_file(reload["model_path"])
            for name in reload["providers"]:
                provider_name(name)
        except PrunePerceptionError as exc:
            raise ConfigError(str(exc)) from None

    # ------------------------------------------------------------------ model loading ----
    def _load_model(self, request: dict[str, Any], previous: dict[str, Any] | None) -> None:
        """Build an engine for ``request`` and swap it in; on failure keep the old one and revert to ``previous``."""
        started = time.perf_counter()
        try:
            engine = DetectorEngine(request["model_path"], model_format=request["model_format"],
                                    providers=request["providers"], strict_provider=request["strict_provider"],
                                    intra_op_threads=request["intra_op_threads"],
                                    warmup_runs=self._params["warmup_runs"],
                                    score_threshold=self._thresholds.score, nms_threshold=self._thresholds.nms,
                                    max_detections=self._thresholds.max_detections,
                                    class_agnostic_nms=self._thresholds.class_agnostic)
        except Exception as exc:  # keep serving whatever went wrong; the reason goes to /diagnostics
            reason = str(exc) if isinstance(exc, PrunePerceptionError) else f"{type(exc).__name__}: {exc}"
            with self._lock:
                self._loading = ""
                self._load_failed(reason)
            self.get_logger().error(f"model load failed, {'keeping ' + self._serving['model_path'] if self._serving else 'no model loaded'}: {reason}")
            if previous is not None:
                self._revert(previous)
            return
        with self._lock:
            engine.set_thresholds(self._thresholds.score, self._thresholds.nms, self._thresholds.max_detections,
                                  self._thresholds.class_agnostic)
            swapped = self._engine is not None
            self._engine, self._serving = engine, request
            self._loading, self._load_error, self._load_error_at = "", "", None
            self._swaps_done += swapped
        self.get_logger().info(
            f"model {'swapped' if swapped else 'loaded'}: {request['model_path']} (sha256 "
            f"{engine.info.file_sha256[:12]}, {engine.info.output_format}, providers "
            f"{','.join(engine.active_providers)}) in {(time.perf_counter() - started) * 1e3:.0f} ms")

    def _load_failed(self, reason: str) -> None:
        """Record a rejected or failed model load (caller holds the lock or is the constructor)."""
        self._load_error, self._load_error_at = reason, time.monotonic()
        self._swaps_failed += self._engine is not None
        self._stats.record_error(f"model load: {reason}")

    def _revert(self, previous: dict[str, Any]) -> None:
        self._reverting = True
        try:
            self.set_parameters([Parameter(name, value=value) for name, value in previous.items()])
            self._params.update(previous)
        finally:
            self._reverting = False

    # ------------------------------------------------------------------ frames ----
    def _on_image(self, msg: Image | CompressedImage) -> None:
        self._stats.frame_received()
        if self._mailbox.put(msg) is not None:
            self._stats.frames_dropped()

    def _work(self) -> None:
        while not self._mailbox.closed:
            msg = self._mailbox.take(WORKER_POLL_S)
            if msg is None:
                continue
            try:
                self._process(msg)
            except Exception as exc:  # a bad frame must never stop the node
                if not self.context.ok():  # shut down mid-frame: the frame never got out
                    self._stats.frames_dropped()
                elif isinstance(exc, PrunePerceptionError):
                    self._frame_failed(str(exc))
                else:
                    self._frame_failed(f"internal error: {type(exc).__name__}: {exc}")

    def _frame_failed(self, reason: str) -> None:
        self._stats.frame_failed(reason)
        self.get_logger().warning(f"frame failed: {reason}", throttle_duration_sec=LOG_THROTTLE_S)

    def _process(self, msg: Image | CompressedImage) -> None:
        engine = self._engine
        if engine is None:
            raise ConfigError(f"no model loaded ({self._load_error})")
        start = time.perf_counter()
        if self._compressed:
            data = compressed_data(msg)
            check_encoded_image_size(data, self._params["max_image_pixels"])   # before a decompression bomb
            image, color_order, _ = engine.decode(data)
            height, width = image.shape[:2]
            if height * width > self._params["max_image_pixels"]:
                raise ConfigError(f"decoded image is {width}x{height}, over max_image_pixels "
                                  f"{self._params['max_image_pixels']}")
        else:
            image, color_order = image_from_msg(msg, self._params["max_image_pixels"])
        decode_ms = (time.perf_counter() - start) * 1e3
        detections, times = engine.detect(image, color_order)
        self._detections_pub.publish(detections_to_msg(msg.header, detections, engine.info.classes))
        pipeline_ms = None
        stamp = Time.from_msg(msg.header.stamp, clock_type=self.get_clock().clock_type)
        if stamp.nanoseconds:
            pipeline_ms = (self.get_clock().now() - stamp).nanoseconds / 1e6
        if self._debug_pub is not None:
            self._debug_pub.publish(image_to_msg(draw_detections(image, color_order, detections, engine.info.classes),
                                                 "rgb8", msg.header))
        timings = {"decode": decode_ms, "preprocess": times.preprocess_ms, "inference": times.inference_ms,
                   "postprocess": times.postprocess_ms,
                   "total": decode_ms + times.preprocess_ms + times.inference_ms + times.postprocess_ms}
        if pipeline_ms is not None:
            timings["pipeline"] = pipeline_ms
        self._stats.frame_processed(timings)

    # ------------------------------------------------------------------ diagnostics ----
    def model_state(self) -> ModelState:
        with self._lock:
            engine, serving = self._engine, self._serving
            state = dict(loading=self._loading, load_error=self._load_error, swaps_done=self._swaps_done,
                         swaps_failed=self._swaps_failed,
                         seconds_since_load_error=None if self._load_error_at is None
                         else time.monotonic() - self._load_error_at)
        if engine is None:
            return ModelState(requested_providers=tuple(self._params["providers"]), **state)
        requested = tuple(serving["providers"])
        active = engine.active_providers
        fallback = ""
        if active and provider_name(requested[0]) != active[0]:
            fallback = f"preferred provider {requested[0]} is not active, running on {active[0]}"
        info = engine.info
        return ModelState(path=str(serving["model_path"]), file_sha256=info.file_sha256,
                          model_hash=info.model_hash or "", output_format=info.output_format,
                          input_size=f"{info.input_hw[1]}x{info.input_hw[0]}", requested_providers=requested,
                          active_providers=active, provider_fallback=fallback, **state)

    def diagnostic_status(self) -> DiagnosticStatus:
        snapshot = self._stats.snapshot()
        model = self.model_state()
        level, message = assess(snapshot, model, self._params["latency_warn_ms"], self._params["input_timeout"])
        values = report_values(snapshot, model, {
            "level": LEVEL_NAMES[level], "input_transport": self._params["input_transport"],
            "input_topic": self._image_sub.topic_name,
            **{name: str(self._params[name]) for name in THRESHOLD_PARAMS}})
        return DiagnosticStatus(level=bytes([level]), name=f"{self.get_fully_qualified_name()}: object detection",
                                message=message, hardware_id="prune_perception",
                                values=[KeyValue(key=key, value=value) for key, value in values.items()])

    def publish_diagnostics(self) -> None:
        array = DiagnosticArray()
        array.header.stamp = self.get_clock().now().to_msg()
        array.status.append(self.diagnostic_status())
        self._diagnostics_pub.publish(array)

    # ------------------------------------------------------------------ shutdown ----
    def close(self, timeout: float = 5.0) -> None:
        """Stop the worker (an unread frame counts as dropped) and wait for a running model load."""
        if self._mailbox.close() is not None:
            self._stats.frames_dropped()
        self._worker.join(timeout)
        loader = self._loader
        if loader is not None and loader.is_alive():
            loader.join(timeout)

    def stats(self):
        """Frame counts and latencies now (also resets the per-window counts)."""
        return self._stats.snapshot()


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
        if isinstance(node, DetectorNode):
            node.close()
        node.destroy_node()


def spin_resilient(executor: rclpy.executors.Executor, logger, duration: float | None = None) -> None:
    """``executor.spin()`` (or for ``duration`` s) that survives an exception raised by a callback.

    rclpy re-raises a callback's exception out of ``spin``: one malformed request from any client on
    the network (e.g. a SetParameters request with an invalid parameter type, which rclpy's own
    parameter service cannot convert) would otherwise stop the node. The error is logged and the
    executor spins on; Ctrl-C and shutdown end it as before."""
    end = None if duration is None else time.monotonic() + duration
    while executor.context.ok():
        try:
            if end is None:
                executor.spin()
            else:
                remaining = end - time.monotonic()
                if remaining <= 0:
                    return
                executor.spin_until_future_complete(Future(), timeout_sec=remaining)
            return
        except (KeyboardInterrupt, ExternalShutdownException):
            raise
        except Exception as exc:  # a callback failed: keep serving
            logger.error(f"a callback raised {type(exc).__name__}: {exc}; the node keeps running",
                         throttle_duration_sec=LOG_THROTTLE_S)


def run_nodes(nodes: list[Node], duration: float | None = None) -> None:
    """Spin ``nodes`` on one executor until Ctrl-C / shutdown (or ``duration`` s), then close and destroy them
    and shut rclpy down. Single-threaded: every callback is cheap (the detector works in its own thread),
    and rclpy's multi-threaded executor costs more per message than it saves."""
    executor = rclpy.executors.SingleThreadedExecutor(context=nodes[0].context)
    for node in nodes:
        executor.add_node(node)
    try:
        spin_resilient(executor, nodes[0].get_logger(), duration)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, signal.SIG_IGN)   # a second Ctrl-C must not break the clean-up
        executor.shutdown()
        close_nodes(nodes)
        rclpy.try_shutdown(context=nodes[0].context)


def main(args: list[str] | None = None) -> int:
    """Entry point of the ``detector_node`` executable (``--ros-args`` as usual)."""
    node = start_node("detector_node", args, DetectorNode)
    if node is None:
        return 2
    run_nodes([node])
    return 0


if __name__ == "__main__":
    sys.exit(main())
