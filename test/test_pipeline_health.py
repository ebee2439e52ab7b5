"""The detector pipeline's plumbing: FrameMailbox, PipelineStats and the health assessment/report on /diagnostics."""

import math
import re
import threading
import time

import numpy as np
import pytest

from prune_perception.runtime.frame_mailbox import FrameMailbox
from prune_perception.runtime.health import (ERROR, ERROR_HOLD_S, LEVEL_NAMES, OK, WARN, ModelState, assess,
                                             report_values)
from prune_perception.runtime.pipeline_stats import STAGES, PipelineStats

WAIT_S = 10.0
YEAR_MS = 365.25 * 86400e3
"""Generous bound for anything that should happen at once (loaded CI machines)."""


class ManualClock:
    """A monotonic clock that only moves when told (PipelineStats takes any clock callable)."""

    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def _start(target, *args):
    result = {}
    thread = threading.Thread(target=lambda: result.setdefault("value", target(*args)), daemon=True)
    thread.start()
    return thread, result


# ---------------------------------------------------------------------------------------- FrameMailbox ----
def test_mailbox_put_replaces_the_unread_item_and_returns_it():
    mailbox = FrameMailbox()
    assert mailbox.put("frame 1") is None
    assert mailbox.put("frame 2") == "frame 1"
    assert mailbox.put("frame 3") == "frame 2"
    assert mailbox.take(timeout=0) == "frame 3"
    assert mailbox.put("frame 4") is None, "a taken item is not replaced"


def test_mailbox_take_on_empty_returns_none_after_the_timeout():
    mailbox = FrameMailbox()
    start = time.monotonic()
    assert mailbox.take(timeout=0.2) is None
    assert time.monotonic() - start < WAIT_S


def test_mailbox_take_removes_the_item():
    mailbox = FrameMailbox()
    mailbox.put("frame")
    assert mailbox.take(timeout=0) == "frame"
    assert mailbox.take(timeout=0) is None


def test_mailbox_put_wakes_a_blocked_taker():
    mailbox = FrameMailbox()
    taker, result = _start(mailbox.take, 60.0)
    time.sleep(0.2)
    assert taker.is_alive(), "take() returned before anything was put"
    mailbox.put("frame")
    taker.join(WAIT_S)
    assert not taker.is_alive() and result["value"] == "frame"


def test_mailbox_close_wakes_a_blocked_taker_for_good():
    mailbox = FrameMailbox()
    taker, result = _start(mailbox.take, 60.0)
    time.sleep(0.2)
    assert taker.is_alive(), "take() returned before close()"
    assert mailbox.close() is None
    taker.join(WAIT_S)
    assert not taker.is_alive(), "close() did not wake the taker"
    assert result["value"] is None and mailbox.closed
    start = time.monotonic()
    assert mailbox.take(timeout=60.0) is None, "take() after close() must not wait"
    assert time.monotonic() - start < WAIT_S


def test_mailbox_close_returns_the_unread_item():
    mailbox = FrameMailbox()
    mailbox.put("frame")
    assert not mailbox.closed
    assert mailbox.close() == "frame"
    assert mailbox.take(timeout=0) is None


# ---------------------------------------------------------------------------------------- PipelineStats ----
def record(stats, received=0, processed=0, dropped=0, failed=0, timings=None, error="bad frame"):
    """Count frames in ``stats`` (processed frames with ``timings`` ms, all stages at 10 ms by default)."""
    for _ in range(received):
        stats.frame_received()
    for _ in range(processed):
        stats.frame_processed(timings or {stage: 10.0 for stage in STAGES})
    if dropped:
        stats.frames_dropped(dropped)
    for _ in range(failed):
        stats.frame_failed(error)


def test_every_received_frame_is_processed_dropped_failed_or_pending():
    stats = PipelineStats()
    record(stats, received=10, processed=4, dropped=3, failed=2)
    snap = stats.snapshot()
    assert (snap.received, snap.processed, snap.dropped, snap.failed, snap.pending) == (10, 4, 3, 2, 1)
    assert snap.received == snap.processed + snap.dropped + snap.failed + snap.pending


def test_snapshot_counts_and_rates_are_deltas_since_the_previous_snapshot():
    clock = ManualClock()
    stats = PipelineStats(clock=clock)
    record(stats, received=20, processed=16, dropped=2, failed=2)
    clock.now += 2.0
    first = stats.snapshot()
    assert (first.window_seconds, first.received_in_window, first.processed_in_window) == (2.0, 20, 16)
    assert (first.fps_in, first.fps_out) == (10.0, 8.0)
    record(stats, received=5, processed=4, dropped=1)
    clock.now += 0.5
    second = stats.snapshot()
    assert second.window_seconds == 0.5
    assert (second.received_in_window, second.processed_in_window, second.dropped_in_window,
            second.failed_in_window) == (5, 4, 1, 0)
    assert (second.received, second.processed, second.dropped, second.failed) == (25, 20, 3, 2)
    assert (second.fps_in, second.fps_out) == (10.0, 8.0)


def test_rates_of_an_empty_window_are_zero():
    stats = PipelineStats(clock=ManualClock())
    snap = stats.snapshot()
    assert snap.window_seconds == 0.0 and (snap.fps_in, snap.fps_out) == (0.0, 0.0)


def test_seconds_since_input_is_none_until_a_frame_arrives():
    clock = ManualClock()
    stats = PipelineStats(clock=clock)
    assert stats.snapshot().seconds_since_input is None
    stats.frame_received()
    clock.now += 2.5
    assert stats.snapshot().seconds_since_input == 2.5


def test_latency_percentiles_of_known_samples():
    """1..100 ms: linear-interpolated percentiles p50 50.5, p90 90.1, p99 99.01; stages never timed are empty."""
    stats = PipelineStats()
    for value in range(100, 0, -1):
        stats.frame_processed({"inference": float(value)})
    latency = stats.snapshot().latency
    inference = latency["inference"]
    assert (inference.count, inference.min, inference.max) == (100, 1.0, 100.0)
    assert (inference.mean, inference.p50, inference.p90, inference.p99) == pytest.approx((50.5, 50.5, 90.1, 99.01))
    assert latency["decode"].count == 0 and math.isnan(latency["decode"].p50)


def test_latency_is_kept_for_the_last_window_frames_only():
    stats = PipelineStats(window=10)
    for value in range(1, 101):
        stats.frame_processed({"total": float(value)})
    total = stats.snapshot().latency["total"]
    assert (total.count, total.min, total.max) == (10, 91.0, 100.0)


def test_last_error_is_the_latest_frame_or_model_error():
    stats = PipelineStats()
    assert stats.snapshot().last_error == ""
    stats.frame_failed("frame 1: truncated")
    assert stats.snapshot().last_error == "frame 1: truncated"
    stats.record_error("model load: not an ONNX file")
    snap = stats.snapshot()
    assert snap.last_error == "model load: not an ONNX file" and snap.failed == 1


def test_concurrent_counting_loses_nothing():
    """Several threads count frames while another takes snapshots: totals and summed window counts are exact."""
    stats = PipelineStats()
    per_thread, workers = 3000, 4
    snapshots, stop = [], threading.Event()

    def count():
        for i in range(per_thread):
            stats.frame_received()
            [lambda: stats.frame_processed({"total": 1.0}), stats.frames_dropped,
             lambda: stats.frame_failed("x")][i % 3]()

    def observe():
        while not stop.is_set():
            snapshots.append(stats.snapshot())
            time.sleep(0.001)

    observer = threading.Thread(target=observe)
    threads = [threading.Thread(target=count) for _ in range(workers)]
    observer.start()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    stop.set()
    observer.join()
    final = stats.snapshot()
    snapshots.append(final)
    assert (final.received, final.processed, final.dropped, final.failed, final.pending) == (
        per_thread * workers, per_thread * workers // 3, per_thread * workers // 3, per_thread * workers // 3, 0)
    assert sum(s.received_in_window for s in snapshots) == final.received
    assert sum(s.failed_in_window for s in snapshots) == final.failed
    assert all(s.pending >= 0 for s in snapshots)


# ---------------------------------------------------------------------------------------- health ----
SERVING = ModelState(path="/models/det.onnx", file_sha256="ab" * 32, model_hash="cd" * 8, output_format="native",
                     input_size="640x384", requested_providers=("cpu",), active_providers=("CPUExecutionProvider",))


def window_snapshot(received=10, processed=None, dropped=0, failed=0, pipeline_ms=20.0, idle_s=0.0):
    """A 1 s window of PipelineStats: frames in it (all processed by default), then ``idle_s`` without input."""
    clock = ManualClock()
    stats = PipelineStats(clock=clock)
    record(stats, received, received - dropped - failed if processed is None else processed, dropped, failed,
           timings={stage: pipeline_ms for stage in STAGES}, error="truncated image")
    clock.now += 1.0 + idle_s
    return stats.snapshot()


def with_model(**changes):
    return ModelState(**{**SERVING.__dict__, **changes})


HEALTH_CASES = [
    ("healthy", window_snapshot(), SERVING, OK, r"^OK$"),
    ("no-model", window_snapshot(), ModelState(), ERROR, r"^no model loaded$"),
    ("no-model-load-error", window_snapshot(), ModelState(load_error="model.onnx: no such file"), ERROR,
     r"^no model loaded: model.onnx: no such file"),
    ("recent-load-error", window_snapshot(), with_model(load_error="bad.onnx: not ONNX", seconds_since_load_error=0.0),
     ERROR, r"^model load failed, still serving /models/det.onnx: bad.onnx: not ONNX$"),
    ("load-error-just-before-hold", window_snapshot(),
     with_model(load_error="bad.onnx: not ONNX", seconds_since_load_error=ERROR_HOLD_S - 0.01), ERROR,
     r"^model load failed"),
    ("load-error-after-hold", window_snapshot(),
     with_model(load_error="bad.onnx: not ONNX", seconds_since_load_error=ERROR_HOLD_S), OK, r"^OK$"),
    ("all-failed", window_snapshot(received=5, failed=5), SERVING, ERROR,
     r"^all 5 frame\(s\) handled in the last 1.0 s failed: truncated image$"),
    ("all-failed-others-dropped", window_snapshot(received=10, dropped=6, failed=4), SERVING, ERROR,
     r"^all 4 frame\(s\) handled in the last 1.0 s failed: truncated image; 6 frame\(s\) dropped"),
    ("some-failed", window_snapshot(received=5, failed=2), SERVING, WARN,
     r"^2 frame\(s\) failed in the last 1.0 s: truncated image$"),
    ("some-dropped", window_snapshot(received=5, dropped=2), SERVING, WARN,
     r"^2 frame\(s\) dropped in the last 1.0 s \(input faster than inference\)$"),
    ("latency-over-limit", window_snapshot(pipeline_ms=150.0), SERVING, WARN,
     r"^pipeline latency p90 150.0 ms over 100 ms$"),
    ("input-timeout", window_snapshot(idle_s=4.0), SERVING, WARN, r"^no input images for 5.0 s$"),
    ("no-input-yet", window_snapshot(received=0), SERVING, WARN, r"^no input images yet$"),
    ("provider-fallback", window_snapshot(),
     with_model(provider_fallback="preferred provider cuda is not active, running on CPUExecutionProvider"), WARN,
     r"^preferred provider cuda is not active, running on CPUExecutionProvider$"),
    ("stamps-years-behind", window_snapshot(pipeline_ms=3 * YEAR_MS), SERVING, OK,
     r"^pipeline latency unavailable: input stamps are 3.0 years behind the node's clock \(more than 10 s off\): "
     r"replay with /clock"),
    ("stamps-ahead", window_snapshot(pipeline_ms=-90_000.0), SERVING, OK,
     r"^pipeline latency unavailable: input stamps are 1.5 minutes ahead of the node's clock"),
    ("stamps-off-and-dropped", window_snapshot(received=5, dropped=2, pipeline_ms=3 * YEAR_MS), SERVING, WARN,
     r"^2 frame\(s\) dropped .*; pipeline latency unavailable"),
    ("errors-before-warnings", window_snapshot(received=5, dropped=1, failed=4, pipeline_ms=500.0),
     with_model(path="", provider_fallback="cuda not active"), ERROR,
     r"^no model loaded; all 4 frame\(s\) .*; 1 frame\(s\) dropped .*; cuda not active$"),
]


@pytest.mark.parametrize("snapshot, model, level, message", [case[1:] for case in HEALTH_CASES],
                         ids=[case[0] for case in HEALTH_CASES])
def test_assess_level_and_reasons(snapshot, model, level, message):
    got_level, got_message = assess(snapshot, model, latency_warn_ms=100.0, input_timeout=2.0)
    assert LEVEL_NAMES[got_level] == LEVEL_NAMES[level], got_message
    assert re.search(message, got_message), got_message


@pytest.mark.parametrize("snapshot, setting", [
    (window_snapshot(pipeline_ms=5e3), {"latency_warn_ms": 0.0}),
    (window_snapshot(idle_s=1e6), {"input_timeout": 0.0}),
    (window_snapshot(received=0), {"input_timeout": 0.0}),
], ids=["latency-check-off", "input-timeout-off", "no-input-timeout-off"])
def test_a_zero_limit_disables_its_check(snapshot, setting):
    limits = {"latency_warn_ms": 100.0, "input_timeout": 2.0, **setting}
    assert assess(snapshot, SERVING, **limits) == (OK, "OK")


def test_latency_is_not_judged_in_a_window_without_processed_frames():
    """Old samples of a stalled pipeline do not raise a latency warning (the missing input does)."""
    clock = ManualClock()
    stats = PipelineStats(clock=clock)
    record(stats, received=3, processed=3, timings={"pipeline": 900.0})
    stats.snapshot()
    clock.now += 1.0
    stats.frame_received()
    assert assess(stats.snapshot(), SERVING, latency_warn_ms=100.0, input_timeout=2.0) == (OK, "OK")


REQUIRED_REPORT_KEYS = {
    "model_path", "model_sha256", "model_hash", "active_provider", "frames_received", "frames_processed",
    "frames_dropped", "frames_failed", "fps_in", "fps_out", "last_error",
    *(f"latency_{stage}_ms_{p}" for stage in ("decode", "preprocess", "inference", "postprocess", "total")
      for p in ("p50", "p90", "p99")),
    *(f"pipeline_latency_ms_{p}" for p in ("p50", "p90", "p99")),
}


def test_report_has_every_diagnostics_key_as_strings():
    snapshot = window_snapshot(received=12, dropped=1, failed=1, pipeline_ms=42.0)
    values = report_values(snapshot, SERVING, {"level": "WARN"})
    assert REQUIRED_REPORT_KEYS <= set(values), sorted(REQUIRED_REPORT_KEYS - set(values))
    assert all(isinstance(key, str) and isinstance(value, str) for key, value in values.items())
    assert {key: values[key] for key in ("model_path", "model_sha256", "model_hash", "active_provider",
                                         "frames_received", "frames_processed", "frames_dropped", "frames_failed",
                                         "fps_in", "fps_out", "pipeline_latency_ms_p90", "latency_total_ms_p50",
                                         "last_error", "level")} == {
        "model_path": "/models/det.onnx", "model_sha256": "ab" * 32, "model_hash": "cd" * 8,
        "active_provider": "CPUExecutionProvider", "frames_received": "12", "frames_processed": "10",
        "frames_dropped": "1", "frames_failed": "1", "fps_in": "12.00", "fps_out": "10.00",
        "pipeline_latency_ms_p90": "42.000", "latency_total_ms_p50": "42.000", "last_error": "truncated image",
        "level": "WARN"}


def test_report_without_model_or_samples_is_still_complete():
    """Before the first frame and without a model: empty strings and 'nan', never a missing key."""
    values = report_values(PipelineStats(clock=ManualClock()).snapshot(), ModelState())
    assert REQUIRED_REPORT_KEYS <= set(values)
    assert all(isinstance(value, str) for value in values.values())
    assert (values["model_path"], values["active_provider"], values["last_error"]) == ("", "", "")
    assert values["pipeline_latency_ms_p50"] == "nan" and values["frames_received"] == "0"
    assert float(values["fps_in"]) == 0.0 and np.isnan(float(values["latency_inference_ms_p99"]))


def test_off_clock_stamps_are_counted_not_recorded_and_reported_unavailable():
    clock = ManualClock()
    stats = PipelineStats(clock=clock)
    record(stats, received=4, processed=4, timings={"inference": 8.0, "pipeline": 3 * YEAR_MS})
    clock.now += 1.0
    snapshot = stats.snapshot()
    assert snapshot.off_clock_in_window == 4 and snapshot.latency["pipeline"].count == 0
    assert snapshot.stamp_offset_s == pytest.approx(3 * YEAR_MS / 1e3)
    values = report_values(snapshot, SERVING)
    assert values["pipeline_latency_ms_p50"] == values["pipeline_latency_ms_p99"] == "unavailable"
    assert values["pipeline_latency_note"].startswith("pipeline latency unavailable: input stamps are 3.0 years")
    assert values["latency_inference_p90_over_p50"] == "1.000"
    clock.now += 1.0                 # a window without frames: still unavailable, still said why
    values = report_values(stats.snapshot(), SERVING)
    assert values["pipeline_latency_ms_p50"] == "unavailable" and values["pipeline_latency_note"]
    # back on the node's clock: real samples, no note in the next window
    record(stats, received=2, processed=2, timings={"pipeline": 30.0})
    clock.now += 1.0
    values = report_values(stats.snapshot(), SERVING)
    assert values["pipeline_latency_ms_p50"] == "30.000" and values["pipeline_latency_note"] == ""
