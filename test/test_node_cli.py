"""`prune-perception node`: the in-process runner for pip installs (real nodes, real DDS, subprocess)."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("rclpy")
pytest.importorskip("vision_msgs.msg")

REPO = Path(__file__).resolve().parents[1]
COUNTS = re.compile(r"detector (\d+): received (\d+), processed (\d+), dropped (\d+), failed (\d+)")


def run_cli(*args, timeout=120):
    return subprocess.run([sys.executable, "-m", "prune_perception.cli", "node", *args], capture_output=True,
                          text=True, timeout=timeout, cwd=REPO)


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
    counts = [tuple(map(int, m.groups()[1:])) for m in COUNTS.finditer(result.stdout)]
    assert len(counts) == detectors, result.stdout
    for received, processed, dropped, failed in counts:
        assert received > 0 and processed > 0 and failed == 0
        assert received == processed + dropped + failed


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
