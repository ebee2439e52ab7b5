"""bench/soak.py, short: the node in its own process at 2x its sustainable rate with hot swaps, 30 s.

Checks what must hold on any machine — exact frame accounting, swaps done without a failed frame, the
RSS / latency series in the JSON — and no timing goals (those are the benchmark's to report).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("rclpy")
pytest.importorskip("vision_msgs.msg")

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_short_soak_accounts_every_frame_and_swaps_cleanly(tiny_onnx_model, tmp_path):
    output = tmp_path / "soak"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run(
        [sys.executable, str(REPO / "bench" / "soak.py"), "--duration", "30", "--swap-every", "8", "--frames", "60",
         "--warmup", "10", "--model", str(tiny_onnx_model), "--output", str(output),
         "--domain-id", os.environ["ROS_DOMAIN_ID"]],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=85)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads((output / "summary.json").read_text())

    frames = result["frames"]
    assert frames["adds_up"] and frames["pending"] == 0
    assert frames["received"] == frames["processed"] + frames["dropped"] + frames["failed"]
    stream = frames["stream"]
    assert stream["received"] == stream["processed"] + stream["dropped"] + stream["failed"]
    assert stream["received"] > 0 and stream["processed"] > 0
    assert frames["failed"] == 0

    swaps = result["swaps"]
    assert swaps["done"] >= 2 and swaps["failed"] == 0, swaps["log"]
    assert swaps["frames_failed_during_swaps"] == 0
    assert result["node_reported"]["swaps_done"] == swaps["done"]

    series = result["series"]
    assert len(series["t_s"]) >= 20 and len(series["rss_mb"]) == len(series["t_s"])
    assert all(value is not None and value > 0 for value in series["rss_mb"])
    assert any(value is not None for value in series["latency_p99_ms"])
    assert result["rss"]["growth_pct"] is not None
    assert (output / "soak.png").stat().st_size > 0 and (output / "summary.md").is_file()
