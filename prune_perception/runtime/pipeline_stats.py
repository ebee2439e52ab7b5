"""Frame accounting and rolling latency statistics of a detector pipeline (thread-safe, ROS-free).

Every frame that arrives is counted once as received and, when its fate is known, once as
processed (detections published), dropped (replaced in the mailbox before the worker took it)
or failed (bad input or an inference error); in between it is pending. Latencies are kept for
the last ``window`` processed frames; rates and per-window counts are deltas between two
:meth:`PipelineStats.snapshot` calls.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass, field

from prune_perception.runtime.latency_stats import LatencyStats

STAGES = ("decode", "preprocess", "inference", "postprocess", "total", "pipeline")
"""Per-frame timings (ms): the engine's stages (decode = message conversion or JPEG decode), their
sum, and pipeline = publish time - header.stamp on the node's clock."""
OFF_CLOCK_S = 10.0
"""An input stamp more than this many seconds behind or ahead of the node's clock is not on that clock
(a bag replayed without /clock, a camera on another time base): publish time - stamp is then no
latency, so it is counted as off-clock instead of recorded. A real pipeline that is 10 s late has
stopped being a perception pipeline; clock skew between synchronised computers is far below it."""


@dataclass(frozen=True)
class StatsSnapshot:
    received: int
    processed: int
    dropped: int
    failed: int
    pending: int
    window_seconds: float
    received_in_window: int
    processed_in_window: int
    dropped_in_window: int
    failed_in_window: int
    seconds_since_input: float | None
    """None: no frame yet."""
    latency: dict[str, LatencyStats] = field(default_factory=dict)
    last_error: str = ""
    off_clock_in_window: int = 0
    """Processed frames whose stamp was more than OFF_CLOCK_S off the node's clock (no pipeline latency)."""
    stamp_offset_s: float | None = None
    """The latest off-clock frame's publish time - stamp (s; negative: stamp in the future); None: none yet."""

    @property
    def fps_in(self) -> float:
        return self.received_in_window / self.window_seconds if self.window_seconds > 0 else 0.0

    @property
    def fps_out(self) -> float:
        return self.processed_in_window / self.window_seconds if self.window_seconds > 0 else 0.0


class PipelineStats:
    def __init__(self, window: int = 300, clock=time.monotonic) -> None:
        self._lock = threading.Lock()
        self._clock = clock
        self._received = self._processed = self._dropped = self._failed = 0
        self._samples = {stage: deque(maxlen=window) for stage in STAGES}
        self._last_error = ""
        self._last_input: float | None = None
        self._off_clock = 0
        self._stamp_offset_s: float | None = None
        self._previous = (clock(), 0, 0, 0, 0, 0)

    def frame_received(self) -> None:
        with self._lock:
            self._received += 1
            self._last_input = self._clock()

    def frames_dropped(self, count: int = 1) -> None:
        with self._lock:
            self._dropped += count

    def frame_failed(self, error: str) -> None:
        with self._lock:
            self._failed += 1
            self._last_error = error

    def frame_processed(self, timings_ms: dict[str, float]) -> None:
        """One published frame; ``timings_ms`` has some or all of :data:`STAGES` (a pipeline time more than
        :data:`OFF_CLOCK_S` off is counted as off-clock, not recorded)."""
        with self._lock:
            self._processed += 1
            for stage, value in timings_ms.items():
                if stage == "pipeline" and abs(value) > OFF_CLOCK_S * 1e3:
                    self._off_clock += 1
                    self._stamp_offset_s = value / 1e3
                else:
                    self._samples[stage].append(value)

    def record_error(self, error: str) -> None:
        """An error that is not a frame's (e.g. a failed model swap) for ``last_error``."""
        with self._lock:
            self._last_error = error

    def snapshot(self) -> StatsSnapshot:
        """Totals, per-window counts since the previous snapshot, and latency percentiles."""
        with self._lock:
            now = self._clock()
            then, received, processed, dropped, failed, off_clock = self._previous
            self._previous = (now, self._received, self._processed, self._dropped, self._failed, self._off_clock)
            samples = {stage: list(values) for stage, values in self._samples.items()}
            return StatsSnapshot(
                received=self._received, processed=self._processed, dropped=self._dropped, failed=self._failed,
                pending=self._received - self._processed - self._dropped - self._failed,
                window_seconds=now - then, received_in_window=self._received - received,
                processed_in_window=self._processed - processed, dropped_in_window=self._dropped - dropped,
                failed_in_window=self._failed - failed,
                seconds_since_input=None if self._last_input is None else now - self._last_input,
                latency={stage: LatencyStats.of(values) for stage, values in samples.items()},
                last_error=self._last_error, off_clock_in_window=self._off_clock - off_clock,
                stamp_offset_s=self._stamp_offset_s)
