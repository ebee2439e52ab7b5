"""Replay an evaluation bag through the real detector node and score what comes back.

The node runs as its own process (``python -m prune_perception.ros.detector_node``, the same
executable as on the vehicle, with the shipped Fast DDS shared-memory profile unless the
environment names one). This process plays the bag's image messages (their stored CDR bytes) on
the bag's image topic, timed by the bag's log times divided by ``rate`` — or, with ``rate=None``
(max-rate), each frame after the previous one's output arrived. At a rate it publishes ``/clock`` in
bag time and runs the node with ``use_sim_time`` (by default), so the node's pipeline latency
(publish time - header.stamp) is measured on the bag's time base, not wall clock minus a stamp
recorded years ago. Outputs and /diagnostics are recorded into a new bag when asked.
Each input frame is matched to its output by header stamp; every wait has a timeout.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import rclpy
import yaml
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.executors import SingleThreadedExecutor
from rclpy.qos import QoSProfile, ReliabilityPolicy
from rclpy.serialization import serialize_message
from rosgraph_msgs.msg import Clock
from sensor_msgs.msg import CompressedImage, Image
from tqdm import tqdm
from vision_msgs.msg import Detection2DArray

from prune_perception.bags.serialized_writer import BagWriter
from prune_perception.bags.detections import detections_from_bag_msg
from prune_perception.bags.reader import open_bag
from prune_perception.errors import BagError, ConfigError, ModelLoadError
from prune_perception.evaluation.bag_eval import BagEvaluation, FrameRecord, bag_classes, summarize
from prune_perception.node_params import validate_params
from prune_perception.ros.dds_profile import LOOPBACK_PROFILE, apply_profile
from prune_perception.runtime.engine import validate_model_file

NODE_NAME = "detector_node"
DETECTIONS_TYPE = "vision_msgs/msg/Detection2DArray"
DIAGNOSTICS_TYPE = "diagnostic_msgs/msg/DiagnosticArray"
CLOCK_PERIOD_S = 0.002
"""/clock ticks between frames: the resolution of the node's pipeline latency in a replay."""
RECORDED_DETECTIONS_TOPIC = f"/{NODE_NAME}/out/detections"
"""Outputs are recorded under the node's default name, whatever namespace the replay used."""


@dataclass
class ReplaySettings:
    rate: float | None = 1.0
    """Bag time scale (2.0 = twice as fast); None = max-rate: each frame waits for the previous output."""
    clock: bool | None = None
    """Publish /clock in bag time and run the node with use_sim_time; None: when playing at a rate (max-rate has
    no time base to play: the node then says its input stamps are not on its clock)."""
    record: Path | None = None
    image_topic: str | None = None
    params: dict[str, Any] = field(default_factory=dict)
    """Detector parameter overrides (model_path and the input transport are set here)."""
    startup_timeout: float = 60.0
    frame_timeout: float = 10.0
    """max-rate: longest wait for one frame's output before going on (the frame counts as missed)."""
    drain_timeout: float = 5.0
    """After the last frame: wait this long for outstanding outputs."""
    progress: bool = True


def _last_values(array: DiagnosticArray, node_fqn: str) -> dict[str, str] | None:
    for status in array.status:
        if status.name.startswith(f"{node_fqn}:"):
            return {kv.key: kv.value for kv in status.values}
    return None


class _Player:
    """The replay's own rclpy node: publishes frames (+ /clock), collects outputs and diagnostics."""

    def __init__(self, context, image_topic: str, compressed: bool, node_fqn: str, record: BagWriter | None):
        self.node = rclpy.create_node(f"replay_player_{os.getpid()}", context=context)
        reliable = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE)
        self.images = self.node.create_publisher(CompressedImage if compressed else Image, image_topic, reliable)
        self.clock = self.node.create_publisher(Clock, "/clock", 10)
        self.node_fqn = node_fqn
        self.record = record
        self.lock = threading.Condition()
        self.outputs: dict[int, tuple[Detection2DArray, float]] = {}
        self.published: dict[int, float] = {}
        self.diagnostics: dict[str, str] | None = None
        self.node.create_subscription(Detection2DArray, f"{node_fqn}/out/detections", self._on_detections, reliable)
        self.node.create_subscription(DiagnosticArray, "/diagnostics", self._on_diagnostics, 50)

    def _on_detections(self, msg: Detection2DArray) -> None:
        received = time.perf_counter()
        stamp = msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec
        with self.lock:
            self.outputs[stamp] = (msg, received)
            self.lock.notify_all()
        if self.record is not None:
            self.record.write(RECORDED_DETECTIONS_TOPIC, DETECTIONS_TYPE, serialize_message(msg),
                              time.time_ns())

    def _on_diagnostics(self, msg: DiagnosticArray) -> None:
        values = _last_values(msg, self.node_fqn)
        if values is None:
            return
        with self.lock:
            self.diagnostics = values
            self.lock.notify_all()
        if self.record is not None:
            self.record.write("/diagnostics", DIAGNOSTICS_TYPE, serialize_message(msg), time.time_ns())

    def wait(self, predicate, timeout: float) -> bool:
        with self.lock:
            return self.lock.wait_for(predicate, timeout)

    def publish(self, stamp_ns: int, data: bytes) -> None:
        self.published[stamp_ns] = time.perf_counter()
        self.images.publish(data)


def _start_node(model: Path, params: dict[str, Any], namespace: str, image_topic: str, clock: bool,
                workdir: Path) -> subprocess.Popen:
    params_file = workdir / "detector_params.yaml"
    params_file.write_text(yaml.safe_dump({"/**": {"ros__parameters": params}}))
    command = [sys.executable, "-m", "prune_perception.ros.detector_node", "--ros-args",
               "-r", f"__ns:={namespace}", "-r", f"__node:={NODE_NAME}", "--params-file", str(params_file),
               "-r", f"~/in/image:={image_topic}", "-r", f"~/in/image/compressed:={image_topic}",
               "-p", f"use_sim_time:={'true' if clock else 'false'}"]
    log = open(workdir / "detector_node.log", "w")
    return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def _stop(process: subprocess.Popen, timeout: float = 10.0) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout)


def _log_tail(workdir: Path, lines: int = 5) -> str:
    text = (workdir / "detector_node.log").read_text(errors="replace").strip().splitlines()
    return " | ".join(text[-lines:]) or "(no output)"


def replay_bag(bag_path: str | Path, model: str | Path, settings: ReplaySettings = ReplaySettings()) -> BagEvaluation:
    """Play ``bag_path`` into a detector node running ``model``; score its outputs (see module doc)."""
    model = validate_model_file(model).resolve()
    if settings.rate is not None and not settings.rate > 0:
        raise ConfigError(f"replay rate must be > 0, got {settings.rate}")
    apply_profile(LOOPBACK_PROFILE, os.environ)   # bag replay runs on one machine
    bag = open_bag(bag_path, settings.image_topic)
    compressed = bag.transport == "compressed"
    params = validate_params({**settings.params, "model_path": str(model),
                              "input_transport": "compressed" if compressed else "raw",
                              "qos_reliability": "reliable"}, where="replay detector parameters")
    namespace = f"/replay_{os.getpid()}"
    node_fqn = f"{namespace}/{NODE_NAME}"
    image_topic = f"{namespace}/camera/image_raw" + ("/compressed" if compressed else "")
    context = rclpy.Context()
    rclpy.init(context=context)
    record = BagWriter(settings.record) if settings.record else None
    mode = "replay max-rate" if settings.rate is None else f"replay x{settings.rate:g}"
    with tempfile.TemporaryDirectory(prefix="replay_") as tmp, bag:
        workdir = Path(tmp)
        clock = settings.rate is not None if settings.clock is None else settings.clock
        process = _start_node(model, params, namespace, image_topic, clock, workdir)
        player = _Player(context, image_topic, compressed, node_fqn, record)
        executor = SingleThreadedExecutor(context=context)
        executor.add_node(player.node)
        spinner = threading.Thread(target=executor.spin, daemon=True)
        spinner.start()
        try:
            _wait_ready(player, process, workdir, model, settings.startup_timeout)
            frames, wall = _play(bag, player, settings, clock)
            player.wait(lambda: all(f.stamp_ns in player.outputs for f in frames if f.error is None),
                        settings.drain_timeout)
            seen = player.diagnostics
            player.wait(lambda: player.diagnostics is not seen, 3 * float(params["diagnostics_period"]) + 1)
        finally:
            _stop(process)
            executor.shutdown()
            player.node.destroy_node()
            rclpy.try_shutdown(context=context)
            spinner.join(5)
            if record is not None:
                record.close()
        answers = {frame.stamp_ns: detections_from_bag_msg(player.outputs[frame.stamp_ns][0]) for frame in frames
                   if frame.error is None and frame.stamp_ns in player.outputs}
        classes = bag_classes(bag, sorted({name for boxes in answers.values() for name in boxes.class_names}))
        for frame in frames:
            if frame.stamp_ns in answers:
                frame.detections = answers[frame.stamp_ns].to_detections(classes)
                frame.latency_ms = (player.outputs[frame.stamp_ns][1] - player.published[frame.stamp_ns]) * 1e3
        return summarize(bag, str(model), mode, frames, classes, wall, player.diagnostics)


def _wait_ready(player: _Player, process: subprocess.Popen, workdir: Path, model: Path, timeout: float) -> None:
    """Until the node subscribes to the image topic and reports its model on /diagnostics."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise ModelLoadError(f"detector node exited with code {process.returncode}: {_log_tail(workdir)}")
        diagnostics = player.diagnostics
        if diagnostics and diagnostics.get("model_sha256") and player.images.get_subscription_count() > 0:
            return
        if diagnostics and diagnostics.get("level") == "ERROR" and not diagnostics.get("model_path"):
            raise ModelLoadError(f"detector node could not load {model}: {diagnostics.get('last_error')}")
        time.sleep(0.05)
    raise ModelLoadError(f"detector node not ready after {timeout:.0f} s: {_log_tail(workdir)}")


class _BagClock:
    """/clock in bag time: before every frame (its log time) and every CLOCK_PERIOD_S in between while
    playing at a rate; never goes backwards."""

    def __init__(self, publisher, rate: float | None):
        self._publisher, self._rate = publisher, rate
        self._lock = threading.Lock()
        self._last = 0
        self._origin: tuple[float, int] | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._tick, daemon=True) if rate is not None else None

    def start(self, wall: float, bag_ns: int) -> None:
        self._origin = (wall, bag_ns)
        if self._thread is not None:
            self._thread.start()

    def publish(self, ns: int) -> None:
        with self._lock:
            if ns > self._last:
                self._last = ns
                self._publisher.publish(Clock(clock=_time_msg(ns)))

    def _tick(self) -> None:
        while not self._stop.wait(CLOCK_PERIOD_S):
            wall, bag_ns = self._origin
            self.publish(bag_ns + int((time.perf_counter() - wall) * self._rate * 1e9))

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None and self._thread.is_alive():
            self._thread.join(1)


def _play(bag, player: _Player, settings: ReplaySettings, publish_clock: bool) -> tuple[list[FrameRecord], float]:
    frames: list[FrameRecord] = []
    started = time.perf_counter()
    first_log: int | None = None
    clock = _BagClock(player.clock, settings.rate) if publish_clock else None
    try:
        for frame in tqdm(bag.frames(), total=bag.frame_count, desc="replay", unit="frame",
                          disable=not settings.progress):
            record = FrameRecord(frame.stamp_ns, error=frame.error)
            if frame.msg is not None and hasattr(frame.msg, "width"):
                record.width, record.height = int(frame.msg.width), int(frame.msg.height)
            frames.append(record)
            if frame.error is not None:
                continue
            if first_log is None:
                first_log = frame.log_time_ns
                started = time.perf_counter()
                if clock is not None:
                    clock.start(started, first_log)
            if settings.rate is not None:
                delay = started + (frame.log_time_ns - first_log) / 1e9 / settings.rate - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
            if clock is not None:
                clock.publish(frame.log_time_ns)
            player.publish(frame.stamp_ns, frame.data)
            if settings.rate is None:
                player.wait(lambda: frame.stamp_ns in player.outputs, settings.frame_timeout)
    finally:
        if clock is not None:
            clock.stop()
    if not frames:
        raise BagError(f"{bag.path}: no image frames")
    return frames, time.perf_counter() - started


def _time_msg(ns: int):
    from builtin_interfaces.msg import Time

    return Time(sec=ns // 10**9, nanosec=ns % 10**9)
