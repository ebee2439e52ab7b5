"""Launch files, node executables and the shipped Fast DDS profile, run for real (docs/design.md §7, §9).

The launch files run through ``launch.LaunchService`` (what ``ros2 launch`` does inside) in a
subprocess of their own, from the installed share/ (``make env`` installs the package); an rclpy
subscriber in this process checks what the nodes publish. Every wait has a timeout and every
subprocess is stopped (SIGINT, then SIGKILL of its process group) however the test ends.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import re
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from contextlib import contextmanager
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = "prune_perception"
PROFILE = "fastdds_shm_localhost.xml"
VEHICLE_PROFILE = "fastdds_shm.xml"   # the default of launch and `prune-perception node`: reaches other computers
PROFILE_ENV = "FASTDDS_DEFAULT_PROFILES_FILE"
NS = "{http://www.eprosima.com}"
SEGMENT = 16 * 1024 * 1024

LAUNCH_SCRIPT = """
import sys
import launch
from launch.actions import IncludeLaunchDescription
from launch.launch_description_sources import AnyLaunchDescriptionSource
path, argv = sys.argv[1], sys.argv[2:]
service = launch.LaunchService(argv=argv, noninteractive=True)
service.include_launch_description(IncludeLaunchDescription(
    AnyLaunchDescriptionSource(path), launch_arguments=[tuple(a.split(':=', 1)) for a in argv]))
sys.exit(service.run())
"""


def _prefix() -> Path:
    try:
        from ament_index_python.packages import get_package_prefix
    except ImportError:
        return Path(sys.prefix)
    try:
        return Path(get_package_prefix(PACKAGE))
    except Exception:  # package not installed into AMENT_PREFIX_PATH
        return Path(sys.prefix)


def _share() -> Path:
    return _prefix() / "share" / PACKAGE


def _ros_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """The test run's ROS environment (conftest/Makefile: LOCALHOST, domain id, profile) + a log dir."""
    env = dict(os.environ, ROS_LOG_DIR=str(tmp_path / "roslog"), PYTHONUNBUFFERED="1")
    env.update(extra)
    return env


def _load(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _stop(proc: subprocess.Popen, timeout: float = 20.0) -> int:
    """SIGINT (a clean launch shutdown), then SIGKILL to the process group; returns the exit code."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            return proc.wait(timeout)
        except subprocess.TimeoutExpired:
            pass
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return proc.wait(10)


# ------------------------------------------------------------------------ Fast DDS profile ----
def _transports(path: Path) -> dict[str, ET.Element]:
    root = ET.parse(path).getroot()
    assert root.tag == f"{NS}dds", f"{path}: root must be <dds xmlns='http://www.eprosima.com'>"
    return {t.findtext(f"{NS}transport_id"): t for t in root.iter(f"{NS}transport_descriptor")}


@pytest.mark.parametrize("name", ["fastdds_shm_localhost.xml", "fastdds_shm.xml"])
def test_shipped_profiles_shape(name):
    path = REPO / "config" / name
    transports = _transports(path)
    root = ET.parse(path).getroot()
    participants = list(root.iter(f"{NS}participant"))
    assert len(participants) == 1 and participants[0].get("is_default_profile") == "true"
    rtps = participants[0].find(f"{NS}rtps")
    assert rtps.findtext(f"{NS}useBuiltinTransports") == "false"
    used = [t.text for t in rtps.find(f"{NS}userTransports")]
    assert set(used) == set(transports), "every transport is used, every used one is defined"
    kinds = {transports[t].findtext(f"{NS}type"): transports[t] for t in used}
    assert set(kinds) == {"SHM", "UDPv4"}
    assert int(kinds["SHM"].findtext(f"{NS}segment_size")) == SEGMENT
    allow = [i.get("name") for i in kinds["UDPv4"].iter(f"{NS}interface")]
    assert kinds["UDPv4"].find(f"{NS}interfaceWhiteList") is None, "Fast DDS 3 syntax: <interfaces><allowlist>"
    if name == PROFILE:
        assert allow == ["127.0.0.1"]
    else:  # the vehicle profile: all interfaces, and says so
        assert allow == []
        assert "other computers" in path.read_text()


_SHM_PROBE = """
import rclpy
rclpy.init()
node = rclpy.create_node("shm_probe")
sizes = {}
for line in open("/proc/self/maps"):
    parts = line.split()
    if len(parts) >= 6 and parts[5].startswith("/dev/shm/fastdds_"):
        start, end = (int(x, 16) for x in parts[0].split("-"))
        sizes[parts[5]] = sizes.get(parts[5], 0) + end - start
print("LARGEST_SEGMENT", max(sizes.values(), default=0))
node.destroy_node()
rclpy.shutdown()
"""


def test_fastdds_loads_the_localhost_profile(tmp_path):
    """Fast DDS parses the profile (no XMLPARSER error) and really uses it (a 16 MB SHM segment).

    A profile Fast DDS cannot parse is reported on stderr and then ignored: the broken copy
    shows that this test would notice."""
    pytest.importorskip("rclpy")
    broken = tmp_path / "broken.xml"
    broken.write_text((REPO / "config" / PROFILE).read_text().replace("segment_size>", "segmentsize>"))
    results = {}
    for label, profile in (("shipped", REPO / "config" / PROFILE), ("broken", broken)):
        proc = subprocess.run([sys.executable, "-c", _SHM_PROBE], env=_ros_env(tmp_path, **{PROFILE_ENV: str(profile)}),
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
        largest = int(re.search(r"LARGEST_SEGMENT (\d+)", proc.stdout).group(1))
        results[label] = (largest, re.sub(r"\x1b\[[0-9;]*m", "", proc.stderr))  # Fast DDS colours its log
    largest, stderr = results["shipped"]
    assert "XMLPARSER" not in stderr and "Error" not in stderr, stderr
    assert largest >= SEGMENT, f"no {SEGMENT}-byte shared-memory segment: profile not in effect ({largest})"
    largest, stderr = results["broken"]
    assert "XMLPARSER Error" in stderr
    assert largest < SEGMENT


_PUBLISH = """
import sys, time
import numpy as np
import rclpy
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import Image
count = int(sys.argv[1])
rclpy.init()
node = rclpy.create_node("frames_out")
pub = node.create_publisher(Image, "/profile_test/image_raw", qos_profile_sensor_data)
deadline = time.monotonic() + 20
while pub.get_subscription_count() < 1 and time.monotonic() < deadline:
    time.sleep(0.05)
time.sleep(0.5)
data = np.random.default_rng(0).integers(0, 255, 640 * 480 * 3, dtype=np.uint8).tobytes()
msg = Image(height=480, width=640, encoding="rgb8", step=640 * 3, data=data)
next_t = time.monotonic()
for i in range(count):
    msg.header.frame_id = str(i)
    pub.publish(msg)
    next_t += 1 / 30
    time.sleep(max(0.0, next_t - time.monotonic()))
time.sleep(1.0)
node.destroy_node()
rclpy.shutdown()
"""

_SUBSCRIBE = """
import sys, time
import rclpy
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import Image
rclpy.init()
node = rclpy.create_node("frames_in")
count, deadline = int(sys.argv[1]), time.monotonic() + float(sys.argv[2])
got, last = set(), [time.monotonic()]
def on_image(msg):
    got.add(msg.header.frame_id)
    last[0] = time.monotonic()
node.create_subscription(Image, "/profile_test/image_raw", on_image, qos_profile_sensor_data)
print("READY", flush=True)
while time.monotonic() < deadline and len(got) < count and not (got and time.monotonic() - last[0] > 1.5):
    rclpy.spin_once(node, timeout_sec=0.05)
print("RECEIVED", len(got), flush=True)
node.destroy_node()
rclpy.shutdown()
"""


@pytest.mark.slow
def test_localhost_profile_delivers_raw_frames_between_processes(tmp_path):
    """640x480 rgb8 at 30 Hz, best effort, process to process: (nearly) all arrive with the profile.

    Without it, on these machines, 0-90 of 150 arrive (docs/design.md §9)."""
    pytest.importorskip("rclpy")
    count = 60
    env = _ros_env(tmp_path, **{PROFILE_ENV: str(REPO / "config" / PROFILE)})
    sub = subprocess.Popen([sys.executable, "-c", _SUBSCRIBE, str(count), "30"], env=env, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        pub = subprocess.run([sys.executable, "-c", _PUBLISH, str(count)], env=env, capture_output=True, text=True,
                             timeout=60)
        out, err = sub.communicate(timeout=30)
    finally:
        _stop(sub)
    assert pub.returncode == 0, pub.stderr
    received = int(re.search(r"RECEIVED (\d+)", out).group(1))
    assert received >= 0.9 * count, f"only {received}/{count} frames arrived\n{err}"
    assert "XMLPARSER" not in pub.stderr + err


def test_apply_profile_sets_the_shipped_one_unless_the_user_did(tmp_path):
    from prune_perception.errors import ConfigError
    from prune_perception.ros.dds_profile import apply_profile, shipped_profile

    shipped = shipped_profile()
    assert shipped.name == VEHICLE_PROFILE and shipped.is_file()
    environ: dict[str, str] = {}
    assert apply_profile(None, environ) == str(shipped.resolve()) == environ[PROFILE_ENV]
    user = tmp_path / "mine.xml"
    user.write_text("<dds/>")
    environ = {PROFILE_ENV: str(user)}
    assert apply_profile(None, environ) == str(user)  # the user's setting wins
    assert apply_profile(str(shipped), environ) == str(user)
    environ = {}
    assert apply_profile(str(user), environ) == str(user.resolve())
    with pytest.raises(ConfigError, match="missing.xml"):
        apply_profile(str(tmp_path / "missing.xml"), {})
    with pytest.raises(ConfigError, match="searched"):
        shipped_profile("no_such_profile.xml")


# --------------------------------------------------------------------- launch descriptions ----
def test_launch_files_declare_their_arguments():
    launch = pytest.importorskip("launch")
    pytest.importorskip("launch_ros")
    detector = _load(REPO / "launch" / "detector.launch.py", "detector_launch")
    ld = detector.generate_launch_description()
    assert isinstance(ld, launch.LaunchDescription)
    args = {a.name: a for a in ld.get_launch_arguments()}
    expected = {"model_path", "params_file", "namespace", "image_topic", "output_topic", "node_name", "lifecycle",
                "input_transport", "fastdds_profile", "use_sim_time", "camera", "camera_fps", "camera_count"}
    assert expected <= set(args)

    def default(name):
        return "".join(s.perform(None) for s in args[name].default_value)

    assert default("params_file").endswith(os.path.join("config", "detector.yaml"))
    assert default("image_topic") == "/image_raw" and default("namespace") == ""
    assert default("fastdds_profile") == (os.environ.get(PROFILE_ENV) or str(_share() / "config" / VEHICLE_PROFILE))
    environ = dict(os.environ)
    os.environ.pop(PROFILE_ENV, None)
    try:   # without a user setting, the vehicle gets the profile that still talks to other computers
        assert detector.default_profile().endswith(os.path.join("config", VEHICLE_PROFILE))
    finally:
        os.environ.clear()
        os.environ.update(environ)
    assert detector.resolve_profile("") == ""
    assert detector.resolve_profile(PROFILE).endswith(os.path.join("config", PROFILE))
    with pytest.raises(FileNotFoundError, match="fastdds_profile"):
        detector.resolve_profile("/nonexistent/profile.xml")

    multi = _load(REPO / "launch" / "multi_camera.launch.py", "multi_camera_launch")
    margs = {a.name for a in multi.generate_launch_description().get_launch_arguments()}
    assert margs == (expected - {"namespace", "image_topic", "output_topic"}) | {"cameras"}
    assert multi.camera_names(" front, rear ,/left") == ["front", "rear", "left"]
    for bad in ("", " , ", "front,front", "1cam", "front-left"):
        with pytest.raises(ValueError, match="cameras"):
            multi.camera_names(bad)


@pytest.mark.parametrize("launch_file, args, message", [
    ("detector.launch.py", ["fastdds_profile:=/nonexistent/profile.xml"], "fastdds_profile:=/nonexistent"),
    ("detector.launch.py", ["params_file:=/nonexistent/detector.yaml"], "params_file:=/nonexistent"),
    ("multi_camera.launch.py", ["cameras:=front,front"], "front given more than once"),
])
def test_launch_refuses_bad_arguments(tmp_path, launch_file, args, message):
    """Bad arguments stop the launch with one clear error before any node starts."""
    pytest.importorskip("launch")
    pytest.importorskip("launch_ros")
    proc = subprocess.run([sys.executable, "-c", LAUNCH_SCRIPT, str(REPO / "launch" / launch_file), *args],
                          env=_ros_env(tmp_path), capture_output=True, text=True, timeout=60)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out
    assert message in out and "process started" not in out, out


# ------------------------------------------------------------------ launch, run for real ----
class _Probe:
    """An rclpy subscriber (own context) counting detections per topic and collecting /diagnostics."""

    def __init__(self, detection_topics: list[str]):
        import rclpy
        from diagnostic_msgs.msg import DiagnosticArray
        from rclpy.context import Context
        from rclpy.executors import SingleThreadedExecutor
        from vision_msgs.msg import Detection2DArray

        self._rclpy = rclpy
        self.context = Context()
        rclpy.init(args=[], context=self.context)
        self.node = rclpy.create_node("test_launch_probe", context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self.detections = {topic: [] for topic in detection_topics}
        self.diagnostics: dict[str, dict[str, str]] = {}
        for topic in detection_topics:
            self.node.create_subscription(Detection2DArray, topic,
                                          lambda msg, topic=topic: self.detections[topic].append(msg), 10)
        self.node.create_subscription(DiagnosticArray, "/diagnostics", self._on_diagnostics, 10)

    def _on_diagnostics(self, msg) -> None:
        for status in msg.status:
            self.diagnostics[status.name] = {kv.key: kv.value for kv in status.values}

    def spin_until(self, done, timeout: float, alive=lambda: True) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.executor.spin_once(timeout_sec=0.1)
            if done():
                return True
            if not alive():
                return False
        return False

    def close(self) -> None:
        self.executor.shutdown()
        self.node.destroy_node()
        self._rclpy.try_shutdown(context=self.context)


def _default_sigint() -> None:
    """In the launch child before exec: SIGINT handled and unblocked whatever this test process did to it (a
    library earlier in the session may leave it ignored or blocked, and both are inherited), so that `_stop`'s
    SIGINT is the clean shutdown a user's Ctrl-C is."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


@contextmanager
def _launched(tmp_path: Path, launch_file: str, args: list[str]):
    """Runs an installed launch file in a subprocess; yields (process, log path); always stops it."""
    path = _share() / "launch" / launch_file
    assert path.is_file(), f"{path} missing: run `make env`"
    log = tmp_path / f"{launch_file}.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-c", LAUNCH_SCRIPT, str(path), *args], env=_ros_env(tmp_path),
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                preexec_fn=_default_sigint)
    try:
        yield proc, log
    finally:
        _stop(proc)


def _started_pids(log_text: str) -> dict[str, int]:
    """{'detector_node-1': pid, ...} from launch's 'process started with pid [N]' lines."""
    return {name: int(pid) for name, pid in
            re.findall(r"\[INFO\] \[([\w.-]+)\]: process started with pid \[(\d+)\]", log_text)}


def _environ_of(pid: int) -> dict[str, str]:
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return {}
    return dict(item.split("=", 1) for item in raw.decode(errors="replace").split("\0") if "=" in item)


def _run_and_check(tmp_path, launch_file, args, namespaces, model, expect_profile):
    pytest.importorskip("launch")
    pytest.importorskip("launch_ros")
    pytest.importorskip("vision_msgs.msg")
    sha256 = hashlib.sha256(Path(model).read_bytes()).hexdigest()
    topics = [f"{ns}/detector_node/out/detections" for ns in namespaces]
    statuses = [f"{ns}/detector_node: object detection" for ns in namespaces]
    probe = _Probe(topics)
    try:
        with _launched(tmp_path, launch_file, args) as (proc, log):
            def done():
                return (all(len(probe.detections[t]) >= 2 for t in topics)
                        and all(probe.diagnostics.get(s, {}).get("model_sha256") == sha256
                                and int(probe.diagnostics[s].get("frames_processed", "0")) > 0 for s in statuses))

            ok = probe.spin_until(done, timeout=45, alive=lambda: proc.poll() is None)
            text = log.read_text()
            assert ok, (f"launch exit {proc.poll()}; detections "
                        f"{ {t: len(m) for t, m in probe.detections.items()} }; diagnostics "
                        f"{ {s: probe.diagnostics.get(s, {}).get('model_sha256') for s in statuses} }\n{text[-6000:]}")
            pids = _started_pids(text)
            detector_pids = [pid for name, pid in pids.items() if name.startswith("detector_node")]
            assert len(detector_pids) == len(namespaces), text
            if sys.platform.startswith("linux"):  # the launch set the profile for the processes it started
                for name, pid in pids.items():
                    assert _environ_of(pid).get(PROFILE_ENV) == expect_profile, name
            rc = _stop(proc)
        text = log.read_text()
    finally:
        probe.close()
    for status in statuses:
        values = probe.diagnostics[status]
        assert values["model_path"] == str(model)
        assert values["model_hash"], "the exported model's metadata hash is reported"
    for topic in topics:
        msg = probe.detections[topic][-1]
        assert msg.header.frame_id == "camera"
        for det in msg.detections:
            assert det.results and det.results[0].hypothesis.class_id
    assert rc == 0, text[-4000:]
    assert "Traceback" not in text and "XMLPARSER" not in text, text[-6000:]
    assert text.count("process has finished cleanly") == len(pids), text[-4000:]


@pytest.mark.slow
@pytest.mark.parametrize("transport", ["raw", "compressed"])
def test_detector_launch_runs_detector_and_camera(tmp_path, tiny_onnx_model, transport):
    # fastdds_profile left at its default: the environment's profile (Makefile/conftest set one).
    expected = os.environ.get(PROFILE_ENV) or str(_share() / "config" / PROFILE)
    _run_and_check(tmp_path, "detector.launch.py",
                   [f"model_path:={tiny_onnx_model}", "camera:=true", "camera_fps:=10.0",
                    f"input_transport:={transport}"],
                   [""], tiny_onnx_model, os.path.abspath(expected))


@pytest.mark.slow
def test_multi_camera_launch_runs_one_detector_per_camera(tmp_path, tiny_onnx_model):
    _run_and_check(tmp_path, "multi_camera.launch.py",
                   [f"model_path:={tiny_onnx_model}", "camera:=true", "camera_fps:=8.0",
                    f"fastdds_profile:={PROFILE}"],
                   ["/front", "/rear"], tiny_onnx_model, str(_share() / "config" / PROFILE))


@pytest.mark.slow
def test_lifecycle_example_launch_configures_and_activates_the_managed_node(tmp_path):
    """lifecycle_example.launch.py starts the managed node and drives it to active; detections flow on the
    output_topic argument, /diagnostics says which state it is in."""
    pytest.importorskip("launch_ros")
    pytest.importorskip("vision_msgs.msg")
    from test_adapters import constant_model, yolox_output

    model = constant_model(tmp_path / "yolox.onnx", {"output": yolox_output(decoded=False)})
    status = "/detector_node: object detection"
    probe = _Probe(["/vehicle/detections"])
    try:
        with _launched(tmp_path, "lifecycle_example.launch.py",
                       [f"model_path:={model}", "camera:=true", "camera_fps:=10.0", "output_topic:=/vehicle/detections",
                        f"fastdds_profile:={PROFILE}"]) as (proc, log):
            ok = probe.spin_until(lambda: len(probe.detections["/vehicle/detections"]) >= 2
                                  and probe.diagnostics.get(status, {}).get("lifecycle_state") == "active",
                                  timeout=45, alive=lambda: proc.poll() is None)
            text = log.read_text()
            assert ok, f"launch exit {proc.poll()}; diagnostics {probe.diagnostics.get(status)}\n{text[-6000:]}"
            rc = _stop(proc)
        text = log.read_text()
    finally:
        probe.close()
    assert text.index("configured: model loaded") < text.index("activated: processing frames"), text[-3000:]
    assert probe.diagnostics[status]["model_path"] == str(model)
    assert rc == 0 and "Traceback" not in text, text[-4000:]


# ------------------------------------------------------------------- executables, errors ----
def _node_exe(name: str) -> Path:
    exe = _prefix() / "lib" / PACKAGE / name
    assert os.access(exe, os.X_OK), f"{exe} missing or not executable: run `make env`"
    return exe


def _assert_one_line_error(proc: subprocess.CompletedProcess, *needles: str) -> None:
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2, f"exit {proc.returncode}\n{proc.stderr}"
    assert "Traceback" not in proc.stderr, proc.stderr
    assert len(lines) == 1, proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_detector_node_rejects_an_invalid_parameter(tmp_path):
    pytest.importorskip("vision_msgs.msg")
    proc = subprocess.run([str(_node_exe("detector_node")), "--ros-args", "-p", "score_threshold:=2.0"],
                          env=_ros_env(tmp_path), capture_output=True, text=True, timeout=60)
    _assert_one_line_error(proc, "detector_node", "score_threshold")


def test_detector_node_reports_a_missing_params_file(tmp_path):
    pytest.importorskip("vision_msgs.msg")
    missing = tmp_path / "missing.yaml"
    proc = subprocess.run([str(_node_exe("detector_node")), "--ros-args", "--params-file", str(missing)],
                          env=_ros_env(tmp_path), capture_output=True, text=True, timeout=60)
    _assert_one_line_error(proc, "detector_node", str(missing))


def test_camera_publisher_executable_finishes_after_count(tmp_path):
    pytest.importorskip("rclpy")
    proc = subprocess.run([str(_node_exe("camera_publisher")), "--ros-args", "-p", "count:=3", "-p", "fps:=50.0",
                           "-p", "width:=64", "-p", "height:=48", "-p", "distinct_frames:=1",
                           "-r", "image_raw:=/camera_exe_test/image_raw"],
                          env=_ros_env(tmp_path), capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "3 frames published" in proc.stdout + proc.stderr
