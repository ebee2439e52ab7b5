"""The detector node's core, ROS-free: frame pipeline, hot-swappable model and health report.

Both node variants (``ros/detector_node.py``: plain and lifecycle) map topics and parameters onto
one :class:`DetectorCore` and nothing more (Autoware's split: core library + thin node):

- frames: ``put_frame`` (from a subscription callback, never blocks) stores the newest frame in a
  one-slot mailbox (a replaced frame counts as dropped); a worker thread converts it, runs the
  engine and hands the result to ``publish``. While the core is inactive (``set_active(False)``,
  the lifecycle node's inactive state) frames are counted as ``frames_inactive`` and not processed.
- models: ``check_reload`` (cheap checks, in the parameter callback) stages a load, ``start_staged_load``
  runs it in a loader thread, ``load`` runs it in the caller's thread (lifecycle configure). A new
  engine is swapped in between two frames; on failure the old one keeps serving and ``revert`` is
  called with the previous parameter values. Every load obeys the swap policy (``allowed_model_dirs``,
  ``model_manifest``): the model path is a remote-control channel for anyone on the DDS domain.
- health: ``diagnostic_report`` gives the level, message and key/values for /diagnostics.

Frames are duck-typed messages: ``header.stamp.sec/nanosec`` and the fields of sensor_msgs/Image or
CompressedImage (see :mod:`.image_msg`).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from prune_perception.errors import ConfigError, ModelLoadError, PrunePerceptionError
from prune_perception.node_params import DETECTOR_PARAMS
from prune_perception.runtime.engine import DetectorEngine, Thresholds, validate_model_file
from prune_perception.runtime.frame_mailbox import FrameMailbox
from prune_perception.runtime.health import LEVEL_NAMES, ModelState, assess, report_values
from prune_perception.runtime.image_msg import check_encoded_image_size, compressed_data, image_from_msg
from prune_perception.runtime.labels import read_labels
from prune_perception.runtime.model_metadata import ModelInfo, file_sha256
from prune_perception.runtime.pipeline_stats import PipelineStats, StatsSnapshot
from prune_perception.runtime.postprocess import Detections
from prune_perception.runtime.providers import provider_name

RELOAD_PARAMS = tuple(spec.name for spec in DETECTOR_PARAMS if spec.update == "reload")
THRESHOLD_PARAMS = ("score_threshold", "nms_threshold", "max_detections", "class_agnostic_nms")
WORKER_POLL_S = 0.1
LOG_THROTTLE_S = 2.0


@dataclass(frozen=True)
class FrameResult:
    """What the worker hands to ``publish`` for one processed frame."""

    msg: Any
    """The input message (its header goes on the outputs)."""
    detections: Detections
    image: np.ndarray
    color_order: str
    info: ModelInfo


class SwapPolicy:
    """Which model files may be loaded: inside ``allowed_dirs`` (symlinks resolved; empty: anywhere) and, with
    a ``manifest`` (``sha256sum`` output: '<sha256>  <name>' per line), only files whose sha256 is listed."""

    def __init__(self, allowed_dirs: list[str], manifest: str) -> None:
        self.allowed_dirs = tuple(Path(d).expanduser().resolve() for d in allowed_dirs)
        self.manifest = manifest
        self.allowed_sha256: frozenset[str] | None = None
        if manifest:
            self.allowed_sha256 = frozenset(self._read_manifest(Path(manifest)))

    @staticmethod
    def _read_manifest(path: Path) -> list[str]:
        try:
            lines = path.read_text().splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"model_manifest {path}: cannot read it ({getattr(exc, 'strerror', None) or exc})") \
                from None
        digests = []
        for number, line in enumerate(lines, 1):
            fields = line.split()
            if not fields or line.lstrip().startswith("#"):
                continue
            digest = fields[0].lower()
            if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
                raise ConfigError(f"model_manifest {path} line {number}: expected '<sha256>  <file name>', "
                                  f"got {line.strip()[:80]!r}")
            digests.append(digest)
        if not digests:
            raise ConfigError(f"model_manifest {path}: lists no sha256")
        return digests

    def check_path(self, model_path: str) -> None:
        """ConfigError unless ``model_path`` (resolved) is inside an allowed directory."""
        if not self.allowed_dirs:
            return
        resolved = Path(model_path).expanduser().resolve()
        if not any(resolved.is_relative_to(d) for d in self.allowed_dirs):
            raise ConfigError(f"model swap refused: {model_path} (resolved: {resolved}) is outside "
                              f"allowed_model_dirs {[str(d) for d in self.allowed_dirs]}")

    def check_digest(self, model_path: str, sha256: str) -> None:
        """ConfigError unless the manifest (if any) lists ``sha256``."""
        if self.allowed_sha256 is not None and sha256 not in self.allowed_sha256:
            raise ConfigError(f"model swap refused: {model_path} has sha256 {sha256}, which is not in "
                              f"model_manifest {self.manifest}")


def check_input_size(request: dict[str, Any]) -> tuple[int, int]:
    """(input_width, input_height): both set, or both 0 (the model's own); ConfigError otherwise."""
    width, height = request["input_width"], request["input_height"]
    if (width == 0) != (height == 0):
        raise ConfigError(f"input_width and input_height must both be set or both be 0, got {width}x{height}")
    return width, height


class DetectorCore:
    """Frames in, detections out, one hot-swappable model. See the module docstring.

    ``params``: validated detector parameters (:func:`~prune_perception.node_params.validate_params`).
    ``publish(result)``: called from the worker thread for every processed frame.
    ``now_ns()``: the node's clock (pipeline latency = now - header.stamp; sim time works).
    ``logger``: ``info`` / ``warning`` / ``error`` methods taking one string (rclpy's or logging's).
    ``revert(previous)``: called from the loader thread when a staged load failed; the node sets the
    reload parameters back to ``previous``.
    ``on_model(info)``: called after every successful load/swap (e.g. to publish the label map).
    """

    def __init__(self, params: dict[str, Any], publish: Callable[[FrameResult], None], now_ns: Callable[[], int],
                 logger, revert: Callable[[dict[str, Any]], None] | None = None,
                 on_model: Callable[[ModelInfo], None] | None = None, name: str = "detector") -> None:
        self.params = dict(params)
        self._publish, self._now_ns, self._logger = publish, now_ns, logger
        self._revert, self._on_model, self._name = revert, on_model, name
        self.policy = SwapPolicy(self.params["allowed_model_dirs"], self.params["model_manifest"])
        self._lock = threading.Lock()
        self.stats = PipelineStats()
        self._mailbox: FrameMailbox[Any] = FrameMailbox()
        self._engine: DetectorEngine | None = None
        self._serving: dict[str, Any] | None = None
        self._thresholds = Thresholds(*(self.params[name] for name in THRESHOLD_PARAMS))
        self._loading = ""
        self._load_error = ""
        self._load_error_at: float | None = None
        self._swaps_done = self._swaps_failed = 0
        self._frames_inactive = 0
        self._active = True
        self._loader: threading.Thread | None = None
        self._staged: tuple[dict[str, Any], dict[str, Any]] | None = None
        self._last_frame_log = -LOG_THROTTLE_S
        self._worker = threading.Thread(target=self._work, name=f"{name}_worker", daemon=True)
        self._worker.start()

    # ------------------------------------------------------------------ parameters ----
    def reload_request(self, params: dict[str, Any] | None = None) -> dict[str, Any]:
        """The parameters a model load depends on."""
        params = self.params if params is None else params
        return {name: params[name] for name in RELOAD_PARAMS}

    def apply_parameters(self, changes: dict[str, Any]) -> None:
        """Take validated parameter ``changes``: thresholds live; a changed reload parameter stages a load
        (cheap checks here; ConfigError, recorded for /diagnostics, when refused). Nothing changes on error."""
        params = {**self.params, **changes}
        thresholds = Thresholds(*(params[name] for name in THRESHOLD_PARAMS))
        reload, current = self.reload_request(params), self.reload_request()
        with self._lock:
            if reload != current:
                try:
                    self._check_reload(reload)
                except ConfigError as exc:
                    self._load_failed(str(exc))
                    raise
                self._loading = reload["model_path"]
                self._staged = (reload, current)
            self._thresholds = thresholds
            if self._engine is not None:
                self._engine.set_thresholds(thresholds.score, thresholds.nms, thresholds.max_detections,
                                            thresholds.class_agnostic)
        self.params = params

    def _check_reload(self, reload: dict[str, Any]) -> None:
        """Cheap checks in the parameter callback; the full ones (sha256, ONNX, layout) happen in the loader."""
        if self._loading:
            raise ConfigError(f"a model is being loaded ({self._loading}); set parameters again when it is done")
        if not reload["model_path"]:
            raise ConfigError("model_path must not be empty (a running node keeps its model)")
        self.policy.check_path(reload["model_path"])
        check_input_size(reload)
        try:
            validate_model_file(reload["model_path"])
            for name in reload["providers"]:
                provider_name(name)
        except PrunePerceptionError as exc:
            raise ConfigError(str(exc)) from None

    @property
    def load_staged(self) -> bool:
        """A model load waits for :meth:`start_staged_load`."""
        return self._staged is not None

    def start_staged_load(self) -> bool:
        """Start the load staged by :meth:`apply_parameters` in a loader thread (False: none staged)."""
        with self._lock:
            staged, self._staged = self._staged, None
            if staged is None:
                return False
            self._loader = threading.Thread(target=self._load_staged, args=staged, name=f"{self._name}_loader",
                                            daemon=True)
        self._logger.info(f"loading model {staged[0]['model_path']} in the background")
        self._loader.start()
        return True

    def _load_staged(self, request: dict[str, Any], previous: dict[str, Any]) -> None:
        if not self.load(request) and self._revert is not None:
            self._revert(previous)
            self.params.update(previous)

    # ------------------------------------------------------------------ model loading ----
    def load(self, request: dict[str, Any] | None = None) -> bool:
        """Build an engine for ``request`` (default: the current parameters) in this thread and swap it in.

        False when it failed: the reason is logged and on /diagnostics, the old engine (if any) keeps serving."""
        request = self.reload_request() if request is None else request
        started = time.perf_counter()
        try:
            engine = self._build_engine(request)
        except Exception as exc:  # keep serving whatever went wrong; the reason goes to /diagnostics
            reason = str(exc) if isinstance(exc, PrunePerceptionError) else f"{type(exc).__name__}: {exc}"
            with self._lock:
                self._loading = ""
                self._load_failed(reason)
                serving = self._serving
            self._logger.error(f"model load failed, {'keeping ' + serving['model_path'] if serving else 'no model loaded'}"
                               f": {reason}")
            return False
        with self._lock:
            engine.set_thresholds(self._thresholds.score, self._thresholds.nms, self._thresholds.max_detections,
                                  self._thresholds.class_agnostic)
            swapped = self._engine is not None
            self._engine, self._serving = engine, request
            self._loading, self._load_error, self._load_error_at = "", "", None
            self._swaps_done += swapped
        self._logger.info(
            f"model {'swapped' if swapped else 'loaded'}: {request['model_path']} (sha256 "
            f"{engine.info.file_sha256[:12]}, {engine.info.output_format}, {len(engine.info.classes)} classes, "
            f"providers {','.join(engine.active_providers)}) in {(time.perf_counter() - started) * 1e3:.0f} ms")
        if self._on_model is not None:
            self._on_model(engine.info)
        return True

    def _build_engine(self, request: dict[str, Any]) -> DetectorEngine:
        path = request["model_path"]
        if not path:
            raise ConfigError("model_path is empty: set it to an ONNX model")
        self.policy.check_path(path)
        validate_model_file(path)
        digest = file_sha256(Path(path)) if self.policy.allowed_sha256 is not None else None
        if digest is not None:
            self.policy.check_digest(path, digest)
        class_names = request["class_names"] or (read_labels(request["labels_path"]) if request["labels_path"]
                                                  else None)
        width, height = check_input_size(request)
        engine = DetectorEngine(path, model_format=request["model_format"], providers=request["providers"],
                                strict_provider=request["strict_provider"],
                                intra_op_threads=request["intra_op_threads"], warmup_runs=self.params["warmup_runs"],
                                score_threshold=self._thresholds.score, nms_threshold=self._thresholds.nms,
                                max_detections=self._thresholds.max_detections,
                                class_agnostic_nms=self._thresholds.class_agnostic,
                                input_size=(height, width) if width else None, class_names=class_names)
        if digest is not None and engine.info.file_sha256 != digest:
            raise ModelLoadError(f"model swap refused: {path} changed while it was being loaded")
        return engine

    def release(self) -> None:
        """Drop the model (lifecycle cleanup/shutdown); frames fail as 'no model loaded' until the next load."""
        with self._lock:
            self._engine, self._serving = None, None

    def load_refused(self, reason: str) -> None:
        """Record a model change refused before it was staged (e.g. a bad parameter value) for /diagnostics."""
        with self._lock:
            self._load_failed(reason)

    def _load_failed(self, reason: str) -> None:
        """Record a rejected or failed model load (caller holds the lock)."""
        self._load_error, self._load_error_at = reason, time.monotonic()
        self._swaps_failed += self._engine is not None
        self.stats.record_error(f"model load: {reason}")

    @property
    def model_info(self) -> ModelInfo | None:
        engine = self._engine
        return None if engine is None else engine.info

    # ------------------------------------------------------------------ frames ----
    def set_active(self, active: bool) -> None:
        """Inactive: frames are counted (``frames_inactive``) and not processed."""
        self._active = active

    @property
    def frames_inactive(self) -> int:
        return self._frames_inactive

    def put_frame(self, msg: Any) -> None:
        """Subscription callback: count the frame and leave it for the worker (never blocks)."""
        if not self._active:
            self._frames_inactive += 1
            return
        self.stats.frame_received()
        if self._mailbox.put(msg) is not None:
            self.stats.frames_dropped()

    def _work(self) -> None:
        while not self._mailbox.closed:
            msg = self._mailbox.take(WORKER_POLL_S)
            if msg is None:
                continue
            try:
                self._process(msg)
            except Exception as exc:  # a bad frame must never stop the node
                if self._mailbox.closed:  # shut down mid-frame: the frame never got out
                    self.stats.frames_dropped()
                elif isinstance(exc, PrunePerceptionError):
                    self._frame_failed(str(exc))
                else:
                    self._frame_failed(f"internal error: {type(exc).__name__}: {exc}")

    def _frame_failed(self, reason: str) -> None:
        self.stats.frame_failed(reason)
        now = time.monotonic()
        if now - self._last_frame_log >= LOG_THROTTLE_S:
            self._last_frame_log = now
            self._logger.warning(f"frame failed: {reason}")

    def _process(self, msg: Any) -> None:
        engine = self._engine
        if engine is None:
            raise ConfigError(f"no model loaded ({self._load_error})")
        max_pixels = self.params["max_image_pixels"]
        start = time.perf_counter()
        if self.params["input_transport"] == "compressed":
            data = compressed_data(msg)
            check_encoded_image_size(data, max_pixels)   # before a decompression bomb
            image, color_order, _ = engine.decode(data)
            height, width = image.shape[:2]
            if height * width > max_pixels:
                raise ConfigError(f"decoded image is {width}x{height}, over max_image_pixels {max_pixels}")
        else:
            image, color_order = image_from_msg(msg, max_pixels)
        decode_ms = (time.perf_counter() - start) * 1e3
        detections, times = engine.detect(image, color_order)
        self._publish(FrameResult(msg, detections, image, color_order, engine.info))
        stamp = msg.header.stamp
        stamp_ns = stamp.sec * 10**9 + stamp.nanosec
        timings = {"decode": decode_ms, "preprocess": times.preprocess_ms, "inference": times.inference_ms,
                   "postprocess": times.postprocess_ms,
                   "total": decode_ms + times.preprocess_ms + times.inference_ms + times.postprocess_ms}
        if stamp_ns:
            timings["pipeline"] = (self._now_ns() - stamp_ns) / 1e6
        self.stats.frame_processed(timings)

    # ------------------------------------------------------------------ health ----
    def model_state(self) -> ModelState:
        with self._lock:
            engine, serving = self._engine, self._serving
            state = dict(loading=self._loading, load_error=self._load_error, swaps_done=self._swaps_done,
                         swaps_failed=self._swaps_failed,
                         seconds_since_load_error=None if self._load_error_at is None
                         else time.monotonic() - self._load_error_at)
        if engine is None:
            return ModelState(requested_providers=tuple(self.params["providers"]), **state)
        requested = tuple(serving["providers"])
        active = engine.active_providers
        fallback = ""
        if active and provider_name(requested[0]) != active[0]:
            fallback = f"preferred provider {requested[0]} is not active, running on {active[0]}"
        info = engine.info
        return ModelState(path=str(serving["model_path"]), file_sha256=info.file_sha256,
                          model_hash=info.model_hash or "", output_format=info.output_format,
                          input_size=f"{info.input_hw[1]}x{info.input_hw[0]}", requested_providers=requested,
                          active_providers=active, provider_fallback=fallback, **state)

    def diagnostic_report(self, extra: dict[str, str] | None = None) -> tuple[int, str, dict[str, str]]:
        """(level, message, key/values) for /diagnostics; resets the per-window counts."""
        snapshot = self.stats.snapshot()
        model = self.model_state()
        level, message = assess(snapshot, model, self.params["latency_warn_ms"], self.params["input_timeout"])
        values = report_values(snapshot, model, {
            "level": LEVEL_NAMES[level], "input_transport": self.params["input_transport"],
            "frames_inactive": str(self._frames_inactive),
            **{name: str(self.params[name]) for name in THRESHOLD_PARAMS}, **(extra or {})})
        return level, message, values

    def snapshot(self) -> StatsSnapshot:
        """Frame counts and latencies now (also resets the per-window counts)."""
        return self.stats.snapshot()

    # ------------------------------------------------------------------ shutdown ----
    def close(self, timeout: float = 5.0) -> None:
        """Stop the worker (an unread frame counts as dropped) and wait for a running model load."""
        if self._mailbox.close() is not None:
            self.stats.frames_dropped()
        self._worker.join(timeout)
        loader = self._loader
        if loader is not None and loader is not threading.current_thread() and loader.is_alive():
            loader.join(timeout)

