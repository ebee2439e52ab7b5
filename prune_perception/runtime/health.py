"""Health of a running detector: the level (OK / WARN / ERROR), its reasons and the key/value report
that the node publishes on /diagnostics (ROS-free).

ERROR: no model is loaded, a model load/swap failed less than ``ERROR_HOLD_S`` ago, or frames failed
in the last window and none was processed (the others, if any, dropped). WARN: some frames failed or
were dropped in the last window, the p90 pipeline latency is over ``latency_warn_ms``, no input for
``input_timeout`` s, or the first preferred execution provider is not the one running. OK otherwise.
Input stamps that are not on the node's clock (pipeline_stats.OFF_CLOCK_S) raise no level: the
message says so and the pipeline latency is reported as unavailable.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from prune_perception.runtime.pipeline_stats import OFF_CLOCK_S, STAGES, StatsSnapshot

OK, WARN, ERROR = 0, 1, 2
LEVEL_NAMES = {OK: "OK", WARN: "WARN", ERROR: "ERROR"}
ERROR_HOLD_S = 10.0
"""A failed model load keeps the level at ERROR this long (at least one report), then the node,
still serving its previous model, can return to OK."""


@dataclass(frozen=True)
class ModelState:
    """What the node is serving and how it got there."""

    path: str = ""
    file_sha256: str = ""
    model_hash: str = ""
    output_format: str = ""
    input_size: str = ""
    requested_providers: tuple[str, ...] = ()
    active_providers: tuple[str, ...] = ()
    provider_fallback: str = ""
    """Non-empty when the first preferred provider is not the one running (e.g. 'cuda not active')."""
    loading: str = ""
    """Path of a model being loaded right now."""
    load_error: str = ""
    seconds_since_load_error: float | None = None
    swaps_done: int = 0
    swaps_failed: int = 0


def assess(snapshot: StatsSnapshot, model: ModelState, latency_warn_ms: float,
           input_timeout: float) -> tuple[int, str]:
    """(level, message): the worst condition's level and every condition in words, '; '-joined."""
    errors, warnings = [], []
    if not model.path:
        errors.append("no model loaded" + (f": {model.load_error}" if model.load_error else ""))
    if model.load_error and model.path and model.seconds_since_load_error is not None \
            and model.seconds_since_load_error < ERROR_HOLD_S:
        errors.append(f"model load failed, still serving {model.path}: {model.load_error}")
    # Not failed == received: frames dropped in the mailbox (input faster than a failing worker) or
    # received in the previous window must not turn "nothing gets published" into a mere WARN.
    if snapshot.failed_in_window and not snapshot.processed_in_window:
        errors.append(f"all {snapshot.failed_in_window} frame(s) handled in the last {snapshot.window_seconds:.1f} s "
                      f"failed: {snapshot.last_error}")
    elif snapshot.failed_in_window:
        warnings.append(f"{snapshot.failed_in_window} frame(s) failed in the last {snapshot.window_seconds:.1f} s: "
                        f"{snapshot.last_error}")
    if snapshot.dropped_in_window:
        warnings.append(f"{snapshot.dropped_in_window} frame(s) dropped in the last {snapshot.window_seconds:.1f} s "
                        "(input faster than inference)")
    pipeline_p90 = snapshot.latency["pipeline"].p90 if "pipeline" in snapshot.latency else math.nan
    if latency_warn_ms > 0 and snapshot.processed_in_window and pipeline_p90 > latency_warn_ms:
        warnings.append(f"pipeline latency p90 {pipeline_p90:.1f} ms over {latency_warn_ms:g} ms")
    if input_timeout > 0 and (snapshot.seconds_since_input is None or snapshot.seconds_since_input > input_timeout):
        since = "yet" if snapshot.seconds_since_input is None else f"for {snapshot.seconds_since_input:.1f} s"
        warnings.append(f"no input images {since}")
    if model.provider_fallback:
        warnings.append(model.provider_fallback)
    notes = [note for note in [off_clock_note(snapshot)] if note]
    level = ERROR if errors else WARN if warnings else OK
    return level, "; ".join(errors + warnings + notes) or "OK"


def off_clock_note(snapshot: StatsSnapshot) -> str:
    """Why the pipeline latency is unavailable, in words: input stamps off the node's clock in the last window,
    or earlier with no frame on the clock since ('' otherwise)."""
    offset = snapshot.stamp_offset_s
    pipeline = snapshot.latency.get("pipeline")
    if offset is None or not (snapshot.off_clock_in_window or pipeline is None or pipeline.count == 0):
        return ""
    where = "behind" if offset > 0 else "ahead of"
    return (f"pipeline latency unavailable: input stamps are {_duration(abs(offset))} {where} the node's clock "
            f"(more than {OFF_CLOCK_S:g} s off): replay with /clock or give the node the camera's time base")


def _duration(seconds: float) -> str:
    for unit, length in (("years", 365.25 * 86400), ("days", 86400), ("hours", 3600), ("minutes", 60)):
        if seconds >= length:
            return f"{seconds / length:.1f} {unit}"
    return f"{seconds:.1f} s"


def _ms(value: float) -> str:
    return "nan" if math.isnan(value) else f"{value:.3f}"


def report_values(snapshot: StatsSnapshot, model: ModelState, extra: dict[str, str] | None = None) -> dict[str, str]:
    """Every /diagnostics key (strings), in a fixed order."""
    values = {
        "model_path": model.path,
        "model_sha256": model.file_sha256,
        "model_hash": model.model_hash,
        "model_format": model.output_format,
        "input_size": model.input_size,
        "active_provider": model.active_providers[0] if model.active_providers else "",
        "active_providers": ",".join(model.active_providers),
        "requested_providers": ",".join(model.requested_providers),
        "model_loading": model.loading,
        "swaps_done": str(model.swaps_done),
        "swaps_failed": str(model.swaps_failed),
        "frames_received": str(snapshot.received),
        "frames_processed": str(snapshot.processed),
        "frames_dropped": str(snapshot.dropped),
        "frames_failed": str(snapshot.failed),
        "frames_pending": str(snapshot.pending),
        "window_s": f"{snapshot.window_seconds:.3f}",
        "fps_in": f"{snapshot.fps_in:.2f}",
        "fps_out": f"{snapshot.fps_out:.2f}",
        "dropped_in_window": str(snapshot.dropped_in_window),
        "failed_in_window": str(snapshot.failed_in_window),
    }
    note = off_clock_note(snapshot)
    pipeline_unavailable = bool(note) and not (snapshot.latency.get("pipeline") and snapshot.latency["pipeline"].count)
    for stage in STAGES:
        stats = snapshot.latency.get(stage)
        prefix = "pipeline_latency" if stage == "pipeline" else f"latency_{stage}"
        for name in ("p50", "p90", "p99"):
            values[f"{prefix}_ms_{name}"] = ("unavailable" if stage == "pipeline" and pipeline_unavailable
                                             else _ms(getattr(stats, name) if stats else math.nan))
    values["pipeline_latency_note"] = note
    values["stamp_offset_s"] = "" if snapshot.stamp_offset_s is None else f"{snapshot.stamp_offset_s:.3f}"
    inference = snapshot.latency.get("inference")
    values["latency_inference_p90_over_p50"] = (_ms(inference.p90 / inference.p50)
                                                if inference and inference.count and inference.p50 > 0 else "nan")
    values["latency_samples"] = str(snapshot.latency["total"].count if "total" in snapshot.latency else 0)
    values["seconds_since_input"] = "" if snapshot.seconds_since_input is None else f"{snapshot.seconds_since_input:.3f}"
    values["last_error"] = snapshot.last_error
    values.update(extra or {})
    return values
