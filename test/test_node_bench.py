"""bench/node_bench.py end to end with tiny settings: every number is there, counts add up, ratios are finite.

No timing assertions: the machines are shared and noisy; the real numbers come from a full run.
"""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "bench" / "node_bench.py"
LATENCY_KEYS = ("count", "mean", "p50", "p90", "p99", "min", "max")


def assert_latency(entry: dict, expected_count: int | None = None) -> None:
    stats = entry["latency_ms"]
    for key in LATENCY_KEYS:
        assert isinstance(stats[key], (int, float)) and math.isfinite(stats[key]), (key, stats)
    assert 0 < stats["min"] <= stats["p50"] <= stats["p90"] <= stats["p99"] <= stats["max"]
    assert len(entry["samples_ms"]) == stats["count"]
    if expected_count is not None:
        assert stats["count"] == expected_count


@pytest.mark.slow
def test_node_bench_tiny_run(tiny_onnx_model, tmp_path):
    output = tmp_path / "bench_node"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep))
    env.setdefault("FASTDDS_DEFAULT_PROFILES_FILE", str(REPO / "config" / "fastdds_shm_localhost.xml"))
    proc = subprocess.run([sys.executable, str(SCRIPT), "--model", str(tiny_onnx_model), "--frames", "20",
                           "--warmup", "5", "--overload-seconds", "2", "--output", str(output), "--quiet"],
                          env=env, cwd=REPO, capture_output=True, text=True, timeout=85)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for name in ("summary.json", "summary.md", "latency.png", "detector_node.log", "echo.log"):
        assert (output / name).is_file(), name
    result = json.loads((output / "summary.json").read_text())

    assert_latency(result["engine"], 20)
    assert result["engine"]["providers"][0] == "CPUExecutionProvider"
    for part in ("floor", "floor_no_shm", "node"):
        assert result[part]["frames"] == 20
        assert_latency(result[part], 20 - result[part]["timeouts"])
        assert result[part]["timeouts"] == 0, part  # reliable QoS, one frame at a time: nothing may be lost
    assert all(value is not None and value > 0 for value in result["node"]["node_reported_ms"].values())

    overload = result["overload"]
    assert overload["published"] > 0 and 0 < overload["outputs"] <= overload["published"]
    assert_latency(overload, overload["outputs"])
    assert overload["target_fps"] > 0 and overload["achieved_fps"] > 0
    stream, total = overload["node_counters_stream"], overload["node_counters_total"]
    assert total["pending"] == 0
    assert total["received"] == total["processed"] + total["dropped"] + total["failed"]
    assert stream["received"] == stream["processed"] + stream["dropped"] + stream["failed"]
    assert overload["lost_before_node"] == overload["published"] - stream["received"] >= 0
    assert stream["failed"] == 0 and total["failed"] == 0
    assert overload["outputs"] == stream["processed"]  # every processed frame's detections came back
    assert overload["counts_consistent"] is True
    # frames the node saw before the stream: warm-up + timed ping-pong frames, all processed
    assert total["received"] - stream["received"] == 25

    ratios = result["ratios"]
    for key in ("node_p50_over_engine_p50", "node_overhead_beyond_floor_and_engine_ms", "overload_p99_over_node_p50",
                "floor_no_shm_p50_over_floor_shm_p50"):
        assert isinstance(ratios[key], float) and math.isfinite(ratios[key]), key
    assert ratios["node_p50_over_engine_p50"] > 0 and ratios["overload_p99_over_node_p50"] > 0
    machine = result["machine"]
    assert machine["node_core"] in machine["affinity"] and machine["bench_core"] in machine["affinity"]
    table = (output / "summary.md").read_text()
    assert "| node p50 / engine p50 |" in table and "transport floor" in table
    assert "| node p50 / engine p50 |" in proc.stdout
