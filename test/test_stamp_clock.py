"""Pipeline latency stays true: input stamps that are not on the node's clock (real rclpy, in-process node)."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("rclpy")
pytest.importorskip("vision_msgs.msg")

from builtin_interfaces.msg import Time as TimeMsg  # noqa: E402
from std_msgs.msg import Header  # noqa: E402

from prune_perception.export.onnx_export import export_onnx  # noqa: E402
from prune_perception.ros.messages import image_to_msg  # noqa: E402
from prune_perception.runtime.pipeline_stats import OFF_CLOCK_S  # noqa: E402
from test_detector_node import harness_factory, wait_for  # noqa: E402,F401  (the node harness and its fixture)

YEAR_NS = int(365.25 * 86400 * 1e9)
FRAMES = 3


@pytest.fixture(scope="module")
def onnx_model(random_checkpoint, tmp_path_factory):
    path = tmp_path_factory.mktemp("stamp_clock") / "random.onnx"
    export_onnx(random_checkpoint, path)
    return path


def send_and_collect(harness, offset_ns: int) -> list:
    """FRAMES images stamped `offset_ns` before the node's clock (negative: after), each answered; then the
    /diagnostics statuses from the one covering them to two periods later."""
    image = np.random.default_rng(0).integers(0, 255, (96, 160, 3), dtype=np.uint8)
    first = len(harness.diagnostics)
    for _ in range(FRAMES):
        now = harness.io.get_clock().now().nanoseconds - offset_ns
        harness.send_and_wait(image_to_msg(image, "rgb8", Header(stamp=TimeMsg(sec=now // 10**9,
                                                                              nanosec=now % 10**9))))
    sent = len(harness.diagnostics)
    wait_for(lambda: len(harness.diagnostics) > sent + 1, "two fresh /diagnostics messages")
    return [array.status[0] for array in harness.diagnostics[first:]]


def values_of(status) -> dict[str, str]:
    return {kv.key: kv.value for kv in status.values}


@pytest.mark.parametrize("offset_ns, words", [(3 * YEAR_NS, "3.0 years behind"), (-2 * 3600 * 10**9, "2.0 hours ahead of")])
def test_stamps_far_off_the_node_clock_make_the_latency_unavailable_not_a_warning(harness_factory, onnx_model,
                                                                                   offset_ns, words):
    harness = harness_factory(onnx_model, latency_warn_ms=100.0)
    statuses = send_and_collect(harness, offset_ns)
    assert all(status.level[0] == 0 for status in statuses), [s.message for s in statuses]   # no WARN for stamps
    last = values_of(statuses[-1])
    assert last["frames_processed"] == str(FRAMES)
    assert "pipeline latency unavailable" in statuses[-1].message and words in statuses[-1].message
    assert last["pipeline_latency_ms_p50"] == last["pipeline_latency_ms_p90"] == "unavailable"
    assert words in last["pipeline_latency_note"]
    assert abs(float(last["stamp_offset_s"]) - offset_ns / 1e9) < 60
    assert float(last["latency_inference_ms_p50"]) > 0                  # the node's own timing is still there
    assert float(last["latency_inference_p90_over_p50"]) >= 1.0


def test_stamps_on_the_node_clock_give_a_pipeline_latency(harness_factory, onnx_model):
    harness = harness_factory(onnx_model)
    statuses = send_and_collect(harness, 0)
    assert statuses[-1].level[0] == 0 and statuses[-1].message == "OK", statuses[-1].message
    last = values_of(statuses[-1])
    assert 0 < float(last["pipeline_latency_ms_p50"]) < OFF_CLOCK_S * 1e3
    assert last["pipeline_latency_note"] == "" and last["stamp_offset_s"] == ""
