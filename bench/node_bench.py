"""Benchmark: what does the ROS 2 detector node cost on top of the engine and the image transport?

Four measurements in one run, with one ONNX Runtime thread throughout (docs/design.md §9, §10):

1. engine    – ``DetectorEngine.detect`` on a 640x480 rgb8 frame, in this process, pinned to the core the
               node will use (no ROS);
2. floor     – the transport floor: one rgb8 Image at a time to an echo process (an rclpy node that
               subscribes the same way as the node and answers with the image's std_msgs/Header only),
               latency = receive time - header.stamp. Also measured without the Fast DDS shared-memory
               profile (in a child run of this script) to show what the profile buys;
3. node      – the same ping-pong against ``detector_node`` in its own process (pinned to one core, this
               process pinned to the other); ratio node p50 / engine p50 (goal <= 1.10) and the node's
               overhead beyond floor + engine;
4. overload  – images at 2x the node's sustainable rate (1000 / unloaded p50 ms) for --overload-seconds;
               p99 of every output's latency / unloaded p50 (goal <= 2.0), frames published vs outputs,
               and the node's own counters from /diagnostics (received = processed + dropped + failed).

Prints machine info, a Markdown table and a JSON summary; writes summary.md, summary.json, latency.png
and the child processes' logs to --output. Every child process is stopped at exit, every wait has a
timeout.

    make env && PYTHONPATH=. ROS_DOMAIN_ID=61 .venv/bin/python bench/node_bench.py --frames 300 \\
        --output runs/bench_node                      # random-initialised nano detector at 224x384
    ... bench/node_bench.py --model runs/demo/pruned.onnx  # or any exported model
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from prune_perception.evaluation.plots import pyplot, save_figure
from prune_perception import ros_env

REPO = Path(__file__).resolve().parents[1]
DEFAULT_PROFILE = REPO / "config" / "fastdds_shm_localhost.xml"
NAMESPACE = "/bench"
NODE_NAME = "detector_node"
NODE_IMAGE_TOPIC = f"{NAMESPACE}/{NODE_NAME}/in/image"
NODE_DETECTIONS_TOPIC = f"{NAMESPACE}/{NODE_NAME}/out/detections"
ECHO_IMAGE_TOPIC = f"{NAMESPACE}/echo/in/image"
ECHO_HEADER_TOPIC = f"{NAMESPACE}/echo/out/header"
WIDTH, HEIGHT = 640, 480
PARTS = ("engine", "floor", "node", "overload")
GOAL_NODE_OVER_ENGINE = 1.10
GOAL_OVERLOAD_P99_OVER_P50 = 2.0
START_TIMEOUT_S = 90.0       # child process up and matched (imports + model load on a busy machine)
WARMUP_FRAME_TIMEOUT_S = 10.0
FRAME_TIMEOUT_S = 5.0
DRAIN_QUIET_S = 1.0          # after an overload stream: stop waiting when no output came for this long
DRAIN_MAX_S = 10.0
DIAGNOSTICS_PERIOD_S = 0.5
DIAGNOSTICS_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 5.0


# ---------------------------------------------------------------------------------------------- environment ----
def ros_environment(domain_id: int, profile: Path | None, base: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for an rclpy process of this bench: :func:`ros_env.loopback_environment` (DDS on loopback, own
    domain, this venv's ament prefix, the Fast DDS profile or none: Fast DDS defaults), plus this working tree's
    package, unbuffered output and one OpenMP thread."""
    env = ros_env.loopback_environment(base, domain_id, profile)
    import prune_perception

    package_root = str(Path(prune_perception.__file__).resolve().parents[1])  # the same copy as this process
    python_path = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    if package_root not in python_path:
        env["PYTHONPATH"] = os.pathsep.join([package_root, *python_path])
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def pin_process(cores: set[int]) -> None:
    """Pin every thread of this process (os.sched_setaffinity(0) alone pins only the calling thread)."""
    for tid in os.listdir("/proc/self/task"):
        try:
            os.sched_setaffinity(int(tid), cores)
        except OSError:  # a thread that just ended
            pass


def split_cores() -> tuple[int, int]:
    """(node core, bench core): the first two cores this process may use (the same one twice on a 1-core box)."""
    cores = sorted(os.sched_getaffinity(0))
    return cores[0], cores[1] if len(cores) > 1 else cores[0]


class Child:
    """A child process pinned to one core, output to a log file; stopped with SIGINT, then SIGKILL."""

    def __init__(self, name: str, command: list[str], core: int, env: dict[str, str], log_path: Path):
        self.name, self.log_path = name, log_path
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(log_path, "wb")
        taskset = shutil.which("taskset")
        if taskset:
            command = [taskset, "-c", str(core), *command]
            preexec = None
        else:
            def preexec() -> None:
                os.sched_setaffinity(0, {core})
        self.process = subprocess.Popen(command, env=env, stdout=self._log, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL, start_new_session=True, preexec_fn=preexec)

    def check_alive(self) -> None:
        code = self.process.poll()
        if code is not None:
            raise RuntimeError(f"{self.name} exited with code {code}; its output ({self.log_path}):\n{self.log_tail()}")

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(STOP_TIMEOUT_S)
        self._log.close()


# ---------------------------------------------------------------------------------------------- echo node ----
def echo_main(argv: list[str]) -> int:
    """``node_bench.py --echo-node IMAGE_TOPIC HEADER_TOPIC``: subscribe Images like the detector node does
    (reliable, keep last 1) and publish back each image's header only."""
    import rclpy
    from rclpy.executors import ExternalShutdownException
    from rclpy.node import Node
    from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import Image
    from std_msgs.msg import Header

    image_topic, header_topic = argv[:2]
    rclpy.init(args=argv[2:])
    node = Node("node_bench_echo")
    publisher = node.create_publisher(Header, header_topic, 10)
    node.create_subscription(Image, image_topic, lambda msg: publisher.publish(msg.header),
                             QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1,
                                        reliability=ReliabilityPolicy.RELIABLE))
    try:
        rclpy.spin(node)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        node.destroy_node()
        rclpy.try_shutdown()
    return 0


# ---------------------------------------------------------------------------------------------- model ----
def export_random_nano(folder: Path) -> Path:
    """A random-initialised nano detector (6 synthetic classes) at the default input size, exported to ONNX."""
    import torch

    from prune_perception.config import ModelConfig
    from prune_perception.data.classes import SYNTH_CLASSES
    from prune_perception.export.onnx_export import export_onnx
    from prune_perception.models.arch import default_arch
    from prune_perception.models.checkpoint import save_checkpoint
    from prune_perception.models.detector import Detector

    input_hw = tuple(ModelConfig().input_size)
    torch.manual_seed(0)
    model = Detector(default_arch("nano", len(SYNTH_CLASSES))).eval()
    save_checkpoint(folder / "nano_random.pt", model, list(SYNTH_CLASSES), input_hw)
    return export_onnx(folder / "nano_random.pt", folder / "nano_random.onnx").path


def bench_frame() -> np.ndarray:
    """The 640x480 synthetic scene every measurement uses, as an RGB array."""
    from prune_perception.data.synth import render_scene

    bgr, _ = render_scene(np.random.default_rng(0), WIDTH, HEIGHT)
    return np.ascontiguousarray(bgr[..., ::-1])


# ---------------------------------------------------------------------------------------------- 1. engine ----
def bench_engine(model: Path, image: np.ndarray, runs: int, warmup: int, core: int) -> dict:
    import cv2

    from prune_perception.runtime.engine import DetectorEngine
    from prune_perception.runtime.latency_stats import LatencyStats

    previous = os.sched_getaffinity(0)
    pin_process({core})
    cv2.setNumThreads(1)
    try:
        engine = DetectorEngine(model, providers=["cpu"], intra_op_threads=1, warmup_runs=0)
        for _ in tqdm(range(warmup), desc="engine warm-up", leave=False):
            engine.detect(image, "rgb")
        total, stages, detections = [], {"preprocess": [], "inference": [], "postprocess": []}, []
        for _ in tqdm(range(runs), desc="engine", unit="run"):
            start = time.perf_counter()
            found, times = engine.detect(image, "rgb")
            total.append((time.perf_counter() - start) * 1e3)
            stages["preprocess"].append(times.preprocess_ms)
            stages["inference"].append(times.inference_ms)
            stages["postprocess"].append(times.postprocess_ms)
            detections.append(len(found.scores))
        info = engine.info
        return {"latency_ms": LatencyStats.of(total).as_dict(), "samples_ms": total,
                "stages_p50_ms": {name: round(float(np.median(v)), 4) for name, v in stages.items()},
                "detections_per_frame": float(np.mean(detections)), "core": core,
                "providers": list(engine.active_providers), "input_hw": list(info.input_hw),
                "classes": list(info.classes)}
    finally:
        pin_process(previous)


# ---------------------------------------------------------------------------------------------- ROS client ----
def stamp_key(stamp) -> int:
    return stamp.sec * 1_000_000_000 + stamp.nanosec


class Client:
    """The bench's rclpy side: publishes images, records when each stamp comes back, reads /diagnostics."""

    def __init__(self, image):
        import rclpy
        from builtin_interfaces.msg import Time
        from diagnostic_msgs.msg import DiagnosticArray
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
        from std_msgs.msg import Header

        from prune_perception.ros.messages import image_to_msg

        self._time_type = Time
        self.context = rclpy.context.Context()
        rclpy.init(context=self.context)
        self.node = rclpy.create_node("node_bench_client", context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self.image_msg = image_to_msg(image, "rgb8", Header(frame_id="bench_camera"))
        self.image_qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1, reliability=ReliabilityPolicy.RELIABLE)
        self.output_qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=100,
                                     reliability=ReliabilityPolicy.RELIABLE)
        self.received: dict[int, int] = {}  # stamp (ns) -> receive time (ns, system clock)
        self.last_receive = 0.0              # monotonic
        self.diagnostics: dict[str, str] | None = None
        self.diagnostics_stamp = 0
        self.node.create_subscription(DiagnosticArray, "/diagnostics", self._on_diagnostics, 10)

    def _on_output(self, stamp) -> None:
        self.received[stamp_key(stamp)] = time.time_ns()
        self.last_receive = time.monotonic()

    def _on_diagnostics(self, msg) -> None:
        for status in msg.status:
            if status.name.startswith(f"{NAMESPACE}/{NODE_NAME}:"):
                self.diagnostics = {kv.key: kv.value for kv in status.values}
                self.diagnostics_stamp = stamp_key(msg.header.stamp)

    def target(self, image_topic: str, output_topic: str, output_type):
        publisher = self.node.create_publisher(type(self.image_msg), image_topic, self.image_qos)
        callback = (lambda msg: self._on_output(msg.stamp)) if output_type.__name__ == "Header" else \
            (lambda msg: self._on_output(msg.header.stamp))
        subscription = self.node.create_subscription(output_type, output_topic, callback, self.output_qos)
        return publisher, subscription

    def spin(self, timeout_s: float) -> None:
        self.executor.spin_once(timeout_sec=max(timeout_s, 0.0))

    def wait_for(self, predicate, what: str, timeout_s: float, child: Child | None = None) -> None:
        deadline = time.monotonic() + timeout_s
        while not predicate():
            if child is not None:
                child.check_alive()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                tail = f"\n{child.name} output:\n{child.log_tail()}" if child is not None else ""
                raise TimeoutError(f"timed out after {timeout_s:.0f} s waiting for {what}{tail}")
            self.spin(min(remaining, 0.1))

    def publish(self, publisher) -> int:
        now = time.time_ns()
        self.image_msg.header.stamp = self._time_type(sec=now // 1_000_000_000, nanosec=now % 1_000_000_000)
        publisher.publish(self.image_msg)
        return now

    def ping_pong(self, publisher, count: int, warmup: int, desc: str, child: Child) -> dict:
        """One image at a time, each waited for (by stamp); latencies of the `count` frames after `warmup`."""
        from prune_perception.runtime.latency_stats import LatencyStats

        latencies, timeouts = [], 0
        for index in tqdm(range(warmup + count), desc=desc, unit="frame"):
            timed = index >= warmup
            key = self.publish(publisher)
            deadline = time.monotonic() + (FRAME_TIMEOUT_S if timed else WARMUP_FRAME_TIMEOUT_S)
            while key not in self.received:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    child.check_alive()
                    timeouts += timed
                    break
                self.spin(remaining)
            else:
                if timed:
                    latencies.append((self.received[key] - key) / 1e6)
        return {"latency_ms": LatencyStats.of(latencies).as_dict(), "samples_ms": latencies, "frames": count,
                "timeouts": timeouts}

    def fresh_diagnostics(self, child: Child, settled: bool = True) -> dict[str, str]:
        """The first node diagnostics stamped after now (with nothing pending when `settled`)."""
        after = time.time_ns()
        try:
            self.wait_for(lambda: self.diagnostics_stamp > after and (
                not settled or self.diagnostics.get("frames_pending") == "0"),
                "/diagnostics of the node" + (" with frames_pending 0" if settled else ""), DIAGNOSTICS_TIMEOUT_S, child)
        except TimeoutError:
            if self.diagnostics is None:
                raise
        return dict(self.diagnostics)

    def overload(self, publisher, rate_hz: float, seconds: float, child: Child) -> dict:
        """Publish at `rate_hz` for `seconds` (no catch-up bursts when behind), then drain the outputs."""
        from prune_perception.runtime.latency_stats import LatencyStats

        period = 1.0 / rate_hz
        sent: list[int] = []
        start = next_time = time.monotonic()
        end = start + seconds
        with tqdm(total=int(rate_hz * seconds), desc=f"overload {rate_hz:.0f} Hz", unit="frame") as bar:
            while True:
                now = time.monotonic()
                if now >= end:
                    break
                if now >= next_time:
                    sent.append(self.publish(publisher))
                    bar.update()
                    next_time += period
                    if next_time < now:  # fell behind: carry on from now, no burst
                        next_time = now
                else:
                    self.spin(min(next_time, end) - now)
        publish_seconds = time.monotonic() - start
        drain_start = time.monotonic()
        self.last_receive = max(self.last_receive, drain_start)
        while (time.monotonic() - self.last_receive < DRAIN_QUIET_S and time.monotonic() - drain_start < DRAIN_MAX_S
               and not all(key in self.received for key in sent)):
            self.spin(0.05)
        child.check_alive()
        latencies = [(self.received[key] - key) / 1e6 for key in sent if key in self.received]
        return {"target_fps": rate_hz, "achieved_fps": len(sent) / publish_seconds, "seconds": publish_seconds,
                "published": len(sent), "outputs": len(latencies), "latency_ms": LatencyStats.of(latencies).as_dict(),
                "samples_ms": latencies}

    def close(self) -> None:
        import rclpy

        self.executor.shutdown()
        self.node.destroy_node()
        rclpy.try_shutdown(context=self.context)


def start_echo(domain_id: int, profile: Path | None, core: int, output: Path, name: str) -> Child:
    return Child(name, [sys.executable, str(Path(__file__).resolve()), "--echo-node", ECHO_IMAGE_TOPIC,
                        ECHO_HEADER_TOPIC], core, ros_environment(domain_id, profile), output / f"{name}.log")


def start_node(model: Path, domain_id: int, profile: Path | None, core: int, output: Path) -> Child:
    command = [sys.executable, "-m", "prune_perception.ros.detector_node", "--ros-args",
               "-p", f"model_path:={model}", "-p", "providers:=[cpu]", "-p", "intra_op_threads:=1",
               "-p", "qos_reliability:=reliable", "-p", "qos_depth:=1", "-p", f"diagnostics_period:={DIAGNOSTICS_PERIOD_S}",
               "-p", "input_timeout:=0.0", "-r", f"__ns:={NAMESPACE}", "-r", f"__node:={NODE_NAME}"]
    return Child("detector_node", command, core, ros_environment(domain_id, profile), output / "detector_node.log")


def node_reported_latency(diagnostics: dict[str, str]) -> dict[str, float]:
    """The node's own per-stage p50s from /diagnostics (its recent window, warm-up frames included)."""
    reported = {}
    for stage in ("decode", "preprocess", "inference", "postprocess", "total"):
        reported[f"{stage}_p50"] = _number(diagnostics.get(f"latency_{stage}_ms_p50"))
    reported["pipeline_p50"] = _number(diagnostics.get("pipeline_latency_ms_p50"))
    return reported


def _number(text: str | None) -> float | None:
    try:
        return float(text)
    except (TypeError, ValueError):
        return None


def counts(diagnostics: dict[str, str]) -> dict[str, int]:
    return {name: int(diagnostics[f"frames_{name}"]) for name in ("received", "processed", "dropped", "failed", "pending")}


# ---------------------------------------------------------------------------------------------- run ----
def run(args: argparse.Namespace, parts: set[str], model: Path, profile: Path | None, output: Path,
        children: list[Child], model_source: str) -> dict:
    from prune_perception.evaluation.latency_bench import BenchSettings, machine_info

    node_core, bench_core = split_cores()
    machine = machine_info(BenchSettings(threads=1))
    machine.update(node_core=node_core, bench_core=bench_core, load_average_start=list(os.getloadavg()),
                   ros_domain_id=args.domain_id, fastdds_profile=str(profile) if profile else None)
    print("machine:", json.dumps(machine, indent=2))
    if node_core == bench_core:
        print("node_bench: warning: only one core available, node and bench share it", file=sys.stderr)
    if machine["load_average_start"][0] > 0.5 * len(os.sched_getaffinity(0)):
        print(f"node_bench: warning: load average {machine['load_average_start'][0]:.2f} on "
              f"{len(os.sched_getaffinity(0))} cores: other jobs may distort the numbers", file=sys.stderr)
    image = bench_frame()
    result: dict = {"machine": machine, "model": str(model), "model_source": model_source, "parts": sorted(parts),
                    "settings": {"frames": args.frames, "warmup": args.warmup, "overload_seconds": args.overload_seconds,
                                 "overload_factor": args.overload_factor, "image": f"{WIDTH}x{HEIGHT} rgb8",
                                 "ort_threads": 1, "qos": "reliable, keep last 1", "shm_profile": profile is not None}}
    if "engine" in parts:
        result["engine"] = bench_engine(model, image, args.frames, args.warmup, node_core)
    if "floor" in parts and profile is not None and not args.skip_no_shm:
        result["floor_no_shm"] = floor_without_profile(args, model, output / "no_shm")
    pin_process({bench_core})
    client = Client(image)
    try:
        if "floor" in parts:
            echo = start_echo(args.domain_id, profile, node_core, output, "echo")
            children.append(echo)
            publisher, subscription = client.target(ECHO_IMAGE_TOPIC, ECHO_HEADER_TOPIC, _header_type())
            client.wait_for(lambda: publisher.get_subscription_count() > 0 and subscription.get_publisher_count() > 0,
                            "the echo process", START_TIMEOUT_S, echo)
            result["floor"] = client.ping_pong(publisher, args.frames, args.warmup, "floor (echo)", echo)
            echo.stop()
        if parts & {"node", "overload"}:
            node = start_node(model, args.domain_id, profile, node_core, output)
            children.append(node)
            publisher, subscription = client.target(NODE_IMAGE_TOPIC, NODE_DETECTIONS_TOPIC, _detections_type())
            client.wait_for(lambda: publisher.get_subscription_count() > 0 and subscription.get_publisher_count() > 0
                            and client.diagnostics is not None and client.diagnostics.get("model_path"),
                            "the detector node (matched, model loaded)", START_TIMEOUT_S, node)
            result["node"] = client.ping_pong(publisher, args.frames, args.warmup, "node", node)
            diagnostics = client.fresh_diagnostics(node)
            result["node"]["node_reported_ms"] = node_reported_latency(diagnostics)
            if "overload" in parts:
                before = counts(diagnostics)
                if not math.isfinite(result["node"]["latency_ms"]["p50"]):
                    raise RuntimeError("no unloaded node latency (every frame timed out): cannot set the overload rate")
                rate = args.overload_factor * 1000.0 / result["node"]["latency_ms"]["p50"]
                overload = client.overload(publisher, rate, args.overload_seconds, node)
                after = counts(client.fresh_diagnostics(node))
                delta = {name: after[name] - before[name] for name in after if name != "pending"}
                overload.update(node_counters_total=after, node_counters_stream=delta,
                                lost_before_node=overload["published"] - delta["received"],
                                counts_consistent=bool(after["pending"] == 0 and after["received"] == after["processed"]
                                                       + after["dropped"] + after["failed"]
                                                       and delta["received"] == delta["processed"] + delta["dropped"]
                                                       + delta["failed"]))
                result["overload"] = overload
            node.stop()
    finally:
        client.close()
    result["machine"]["load_average_end"] = list(os.getloadavg())
    result["ratios"] = ratios(result)
    return result


def _header_type():
    from std_msgs.msg import Header

    return Header


def _detections_type():
    from vision_msgs.msg import Detection2DArray

    return Detection2DArray


def floor_without_profile(args: argparse.Namespace, model: Path, output: Path) -> dict | None:
    """The floor measured by a child run of this script with Fast DDS defaults (a process reads its profile
    once, so the comparison needs its own processes). None (and a warning) if it fails."""
    command = [sys.executable, str(Path(__file__).resolve()), "--parts", "floor", "--no-shm", "--model", str(model),
               "--frames", str(args.frames), "--warmup", str(args.warmup), "--output", str(output),
               "--domain-id", str(args.domain_id), "--quiet"]
    timeout = START_TIMEOUT_S + 60 + (args.frames + args.warmup) * FRAME_TIMEOUT_S / 10
    print("floor without the shared-memory profile (child run) ...", flush=True)
    try:
        subprocess.run(command, env=ros_environment(args.domain_id, None), timeout=timeout, check=True,
                       stdin=subprocess.DEVNULL)
        return json.loads((output / "summary.json").read_text())["floor"]
    except (subprocess.SubprocessError, OSError, KeyError, json.JSONDecodeError) as exc:
        print(f"node_bench: warning: floor without the profile failed: {exc}", file=sys.stderr)
        return None


def _p50(result: dict, part: str) -> float:
    entry = result.get(part)
    return entry["latency_ms"]["p50"] if entry else math.nan


def ratios(result: dict) -> dict:
    engine, floor, node = _p50(result, "engine"), _p50(result, "floor"), _p50(result, "node")
    out = {"node_p50_over_engine_p50": node / engine, "goal_node_p50_over_engine_p50": GOAL_NODE_OVER_ENGINE,
           "node_overhead_beyond_floor_and_engine_ms": node - floor - engine,
           "node_p50_minus_engine_p50_ms": node - engine}
    reported = (result.get("node") or {}).get("node_reported_ms") or {}
    if reported.get("total_p50"):  # the node's own processing time, measured in the same frames: less sensitive
        out["node_p50_over_node_processing_p50"] = node / reported["total_p50"]  # to load drifting between parts
    if result.get("overload"):
        out["overload_p99_over_node_p50"] = result["overload"]["latency_ms"]["p99"] / node
        out["goal_overload_p99_over_node_p50"] = GOAL_OVERLOAD_P99_OVER_P50
    if result.get("floor_no_shm"):
        out["floor_no_shm_p50_over_floor_shm_p50"] = _p50(result, "floor_no_shm") / floor
    return {key: round(value, 4) if isinstance(value, float) and math.isfinite(value) else value
            for key, value in out.items()}


# ---------------------------------------------------------------------------------------------- report ----
ROWS = (("engine", "engine.detect, in process (no ROS)", "engine"),
        ("floor", "transport floor: echo process, SHM profile", "floor (SHM)"),
        ("floor_no_shm", "transport floor: echo process, Fast DDS defaults", "floor (no SHM)"),
        ("node", "detector node end-to-end, unloaded", "node"),
        ("overload", "detector node end-to-end, overload", "node, overload"))


def markdown(result: dict) -> str:
    machine, settings = result["machine"], result["settings"]
    shm = "with" if settings["shm_profile"] else "without"
    lines = ["# Detector node benchmark", "",
             f"{machine['cpu']} ({machine['cores']} cores; node on core {machine['node_core']}, bench on core "
             f"{machine['bench_core']}), ONNX Runtime {machine['onnxruntime']}, 1 thread; load average "
             f"{machine['load_average_start'][0]:.2f} at start, {machine['load_average_end'][0]:.2f} at end. "
             f"{settings['image']} frames, reliable QoS (keep last 1), {shm} the Fast DDS shared-memory profile. "
             f"Model {Path(result['model']).name} ({result['model_source']}). {settings['frames']} timed frames after {settings['warmup']} warm-up "
             "frames; latency = receive time - header.stamp (engine: wall time of detect()). Milliseconds.", "",
             "| measurement | frames | timeouts / lost | p50 | p90 | p99 | max |", "|---|---|---|---|---|---|---|"]
    for key, label, _ in ROWS:
        entry = result.get(key)
        if not entry:
            continue
        if key == "floor" and not settings["shm_profile"]:
            label = "transport floor: echo process, Fast DDS defaults"
        stats = entry["latency_ms"]
        if key == "overload":
            label += f" ({entry['achieved_fps']:.0f} fps in for {entry['seconds']:.1f} s)"
            frames, lost = entry["published"], entry["published"] - entry["outputs"]
        else:
            frames, lost = stats["count"], entry.get("timeouts", 0)
        lines.append(f"| {label} | {frames} | {lost} | {stats['p50']:.2f} | {stats['p90']:.2f} | {stats['p99']:.2f} "
                     f"| {stats['max']:.2f} |")
    reported = (result.get("node") or {}).get("node_reported_ms")
    if reported:
        lines += ["", "Node's own /diagnostics p50 (ms, its recent window): " + ", ".join(
            f"{name.removesuffix('_p50')} {value:.2f}" for name, value in reported.items() if value is not None)
            + " (pipeline = its publish time - header.stamp)."]
    r = result["ratios"]

    def goal(value, limit):
        return "" if not isinstance(value, (int, float)) or not math.isfinite(value) else \
            ("met" if value <= limit else "missed")

    lines += ["", "| ratio | value | goal |", "|---|---|---|"]
    if result.get("node") and result.get("engine"):
        lines.append(f"| node p50 / engine p50 | {r['node_p50_over_engine_p50']:.2f} | ≤ {GOAL_NODE_OVER_ENGINE:.2f} "
                     f"{goal(r['node_p50_over_engine_p50'], GOAL_NODE_OVER_ENGINE)} |")
        if "node_p50_over_node_processing_p50" in r:
            lines.append(f"| node p50 / node's own processing p50 (same frames) | "
                         f"{r['node_p50_over_node_processing_p50']:.2f} | |")
        if result.get("floor"):
            lines.append(f"| node overhead beyond floor + engine (p50, ms) | "
                         f"{r['node_overhead_beyond_floor_and_engine_ms']:.2f} | |")
    if "overload_p99_over_node_p50" in r:
        lines.append(f"| overload p99 / unloaded node p50 | {r['overload_p99_over_node_p50']:.2f} | "
                     f"≤ {GOAL_OVERLOAD_P99_OVER_P50:.1f} {goal(r['overload_p99_over_node_p50'], GOAL_OVERLOAD_P99_OVER_P50)} |")
    if "floor_no_shm_p50_over_floor_shm_p50" in r:
        lines.append(f"| floor p50 without / with SHM profile | {r['floor_no_shm_p50_over_floor_shm_p50']:.2f} | |")
    overload = result.get("overload")
    if overload:
        stream, total = overload["node_counters_stream"], overload["node_counters_total"]
        lines += ["", "Overload stream, frames:", "",
                  "| published | node received | lost before node | node processed | node dropped (mailbox) "
                  "| node failed | outputs received | counts consistent |", "|---|---|---|---|---|---|---|---|",
                  f"| {overload['published']} | {stream['received']} | {overload['lost_before_node']} | "
                  f"{stream['processed']} | {stream['dropped']} | {stream['failed']} | {overload['outputs']} | "
                  f"{'yes' if overload['counts_consistent'] else 'NO'} |", "",
                  f"Node totals after the stream: received {total['received']} = processed {total['processed']} + "
                  f"dropped {total['dropped']} + failed {total['failed']} (pending {total['pending']})."]
    return "\n".join(lines) + "\n"


def plot(result: dict, path: Path) -> Path:
    plt = pyplot()

    entries = [(short, result[key]["samples_ms"]) for key, _, short in ROWS
               if result.get(key) and result[key].get("samples_ms")]
    fig, ax = plt.subplots(figsize=(10, 4.5))
    if entries:
        ax.boxplot([samples for _, samples in entries], whis=(1, 99), showfliers=False)
        ax.set_xticks(np.arange(1, len(entries) + 1), [name for name, _ in entries], rotation=15)
    ax.set(ylabel="ms", title="Latency (box: p25-p75, whiskers: p1-p99)")
    ax.grid(axis="y", alpha=0.3)
    save_figure(fig, path, dpi=100)
    return path


def write(result: dict, output: Path) -> list[Path]:
    output.mkdir(parents=True, exist_ok=True)
    paths = [output / "summary.json", output / "summary.md", output / "latency.png"]
    paths[0].write_text(json.dumps(json_safe(result), indent=2))
    paths[1].write_text(markdown(result))
    plot(result, paths[2])
    return paths


def json_safe(value):
    """Strict JSON: NaN / inf (a measurement that has no samples) become null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(item) for item in value]
    return value


def without_samples(result: dict) -> dict:
    return {key: ({k: v for k, v in value.items() if k != "samples_ms"} if isinstance(value, dict) else value)
            for key, value in result.items()}


# ---------------------------------------------------------------------------------------------- main ----
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--model", help="ONNX model (default: a random-initialised nano detector, exported to a temp dir)")
    parser.add_argument("--frames", type=int, default=300, help="timed frames (and engine runs) per measurement")
    parser.add_argument("--warmup", type=int, default=30)
    parser.add_argument("--overload-seconds", type=float, default=10.0)
    parser.add_argument("--overload-factor", type=float, default=2.0, help="overload input rate / sustainable rate")
    parser.add_argument("--output", "-o", default="runs/bench_node")
    parser.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated subset of {','.join(PARTS)}")
    parser.add_argument("--fastdds-profile", default=os.environ.get("FASTDDS_DEFAULT_PROFILES_FILE") or str(DEFAULT_PROFILE),
                        help="Fast DDS XML profile for every process (default: $FASTDDS_DEFAULT_PROFILES_FILE, "
                             "else the package's shared-memory profile)")
    parser.add_argument("--no-shm", action="store_true", help="run without any Fast DDS profile (Fast DDS defaults)")
    parser.add_argument("--skip-no-shm", action="store_true",
                        help="don't also measure the transport floor without the profile")
    parser.add_argument("--domain-id", type=int, default=ros_env.domain_id())
    parser.add_argument("--quiet", action="store_true", help="print only the Markdown table")
    args = parser.parse_args(argv)
    unknown = set(args.parts.split(",")) - set(PARTS)
    if unknown or args.frames < 1 or args.warmup < 0 or args.overload_seconds <= 0 or args.overload_factor <= 0:
        parser.error(f"bad settings: parts {sorted(unknown) or 'ok'}, frames {args.frames} (>= 1), warmup "
                     f"{args.warmup} (>= 0), overload-seconds {args.overload_seconds} (> 0), overload-factor "
                     f"{args.overload_factor} (> 0)")
    if "overload" in args.parts.split(",") and "node" not in args.parts.split(","):
        args.parts += ",node"  # the overload rate comes from the unloaded node latency
    return args


def prepare_bench_process(domain_id: int, profile: Path | None, output: Path) -> Path:
    """Before this process starts rclpy: ROS environment, the output folder (absolute, created) holding the ROS
    logs, and SIGTERM turned into an exit so that `finally` blocks stop the child processes."""
    os.environ.update(ros_environment(domain_id, profile))
    output = output.resolve()
    output.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("ROS_LOG_DIR", str(output / "ros_log"))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    return output


def bench_model(model_arg: str | None, tmp: Path, program: str) -> Path | None:
    """--model as an absolute path (None and one line on stderr when missing), else a random nano exported to tmp."""
    model = Path(model_arg).resolve() if model_arg else export_random_nano(tmp)
    if not model.is_file():
        print(f"{program}: error: model not found: {model}", file=sys.stderr)
        return None
    return model


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--echo-node"]:
        return echo_main(argv[1:])
    args = parse_args(argv)
    profile = None if args.no_shm else Path(args.fastdds_profile).resolve()
    if profile is not None and not profile.is_file():
        print(f"node_bench: error: Fast DDS profile not found: {profile} (use --fastdds-profile or --no-shm)",
              file=sys.stderr)
        return 2
    output = prepare_bench_process(args.domain_id, profile, Path(args.output))
    if profile is None:
        os.environ.pop("FASTDDS_DEFAULT_PROFILES_FILE", None)
    children: list[Child] = []
    with tempfile.TemporaryDirectory(prefix="node_bench_") as tmp:
        try:
            model = bench_model(args.model, Path(tmp), "node_bench")
            if model is None:
                return 2
            source = "--model" if args.model else "random-initialised nano detector, exported to a temporary file"
            result = run(args, set(args.parts.split(",")), model, profile, output, children, source)
        finally:
            for child in children:
                child.stop()
        paths = write(result, output)
    table = markdown(result)
    if not args.quiet:
        print(json.dumps(json_safe(without_samples(result)), indent=2))
    print(table)
    print("wrote " + ", ".join(str(p) for p in paths))
    return 0


if __name__ == "__main__":
    sys.exit(main())
