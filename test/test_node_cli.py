"""`prune-perception node`: the in-process runner for pip installs (real nodes, real DDS, subprocess)."""

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("rclpy")
pytest.importorskip("vision_msgs.msg")

REPO = Path(__file__).resolve().parents[1]
COUNTS = re.compile(r"detector (\d+): received (\d+), processed (\d+), dropped (\d+), failed (\d+)")


def run_cli(*args, timeout=120):
    return subprocess.run([sys.executable, "-m", "prune_perception.cli", "node", *args], capture_output=True,
                          text=True, timeout=timeout, cwd=REPO)


def assert_counts(stdout: str, detectors: int, context) -> None:
    """One counts line per detector, each with frames received and processed, none failed, none lost."""
    counts = [tuple(map(int, m.groups()[1:])) for m in COUNTS.finditer(stdout)]
    assert len(counts) == detectors, context
    for received, processed, dropped, failed in counts:
        assert received > 0 and processed > 0 and failed == 0
        assert received == processed + dropped + failed


@pytest.mark.slow
@pytest.mark.parametrize("cameras, detectors", [(None, 1), ("front,rear", 2)])
def test_node_runs_with_synthetic_cameras(tiny_onnx_model, cameras, detectors):
    args = ["--config", str(REPO / "config" / "detector.yaml"), "--model", str(tiny_onnx_model),
            "--camera", "synthetic", "--camera-size", "320x192", "--camera-fps", "10", "--duration", "4",
            "-p", "providers=[cpu]"]
    if cameras:
        args += ["--cameras", cameras]
    result = run_cli(*args)
    assert result.returncode == 0, result.stderr[-2000:]
    assert_counts(result.stdout, detectors, result.stdout)


@pytest.mark.parametrize("args, message", [
    (["--model", "/nonexistent/model.onnx"], None),
    (["--model", "MODEL", "-p", "score_threshold=2.0"], "parameter 'score_threshold': 2.0 is out of range"),
    (["--model", "MODEL", "-p", "colour=red"], "unknown parameter(s) colour"),
    (["--config", "/nonexistent/detector.yaml"], "cannot read the parameters file"),
    (["--config", str(REPO / "config" / "detector.yaml")], "model_path is empty"),
])
def test_bad_input_is_one_line_and_exit_2(tiny_onnx_model, args, message):
    args = [str(tiny_onnx_model) if a == "MODEL" else a for a in args]
    result = run_cli(*args, "--duration", "1", timeout=60)
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("prune-perception node: error:"), result.stderr
    if message:
        assert message in lines[0]


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_node_stops_cleanly_on_a_signal(tiny_onnx_model, stop):
    """Ctrl-C and a supervisor's SIGTERM end `node` the same way: the spin loop stops, the detector's worker
    is joined and the nodes destroyed before rclpy shuts down; exit 0 with the frame counts printed."""
    proc = subprocess.Popen([sys.executable, "-m", "prune_perception.cli", "node", "--model", str(tiny_onnx_model),
                             "--camera", "synthetic", "--camera-size", "320x192", "--camera-fps", "10",
                             "-p", "providers=[cpu]"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=REPO)
    stderr_lines: list[str] = []
    reader = threading.Thread(target=lambda: stderr_lines.extend(iter(proc.stderr.readline, "")), daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 90
        while not any("model loaded" in line for line in stderr_lines) and proc.poll() is None \
                and time.monotonic() < deadline:
            time.sleep(0.2)
        assert proc.poll() is None, "".join(stderr_lines)[-2000:]
        time.sleep(2.0)   # frames flow at 10 fps
        proc.send_signal(stop)
        returncode = proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    reader.join(5)
    stdout = proc.stdout.read()
    stderr = "".join(stderr_lines)[-2000:]
    assert returncode == 0, stderr
    assert_counts(stdout, 1, (stdout, stderr))


def test_stop_on_signals_sets_its_event_and_restores_the_handlers():
    from prune_perception.ros.entry import stop_on_signals

    before = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    for sig in before:
        with stop_on_signals() as stop:
            assert not stop.is_set()
            os.kill(os.getpid(), sig)
            assert stop.wait(5), f"{sig.name} did not set the stop event"
        assert {s: signal.getsignal(s) for s in before} == before
