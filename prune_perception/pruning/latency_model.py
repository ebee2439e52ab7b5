"""Latency of candidate networks on the target device: measured through export + runtime engine, and modelled.

**Measured.** A candidate is a choice of width per coupled layer group. It is built as a Detector of
those widths (random weights: latency does not depend on the weight values), exported the way
`export` does it (legacy tracer, onnxslim, native metadata) and timed with the engine the detector node
uses (`DetectorEngine.infer`, i.e. the inference stage) on the real input size, on the chosen execution
provider with a fixed intra-op thread count. Candidates measured together are timed round-robin after a
warm-up, so background load on a shared machine hits all of them alike. Results are cached in a JSON
file keyed by the widths, input size, classes, device, threads, runs and the machine (CPU, cores,
onnxruntime version).

**Modelled.** latency ≈ a + b·MACs + c·activations (elements written by all convs), the coefficients
non-negative, fitted to the measured candidates by least squares on the relative error. MACs carry
the compute-bound part, activations the memory-bound high-resolution layers, `a` the fixed part
(decode tail, framework overhead). Channel counts are first rounded up to a SIMD block (ONNX Runtime's
CPU convolutions work on blocks of 8 channels with AVX2, 16 with AVX-512: a layer of 50 channels costs
what one of 56 costs); the block (1, 4, 8 or 16) is fitted too, as the one that explains the
measurements best. Predictions are cheap (no export), so a search can rank thousands of width
choices; whatever it picks is then measured for real.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from torch import nn
from tqdm import tqdm

from prune_perception.errors import ConfigError, ProviderError
from prune_perception.export.metadata import build_metadata, model_hash, set_metadata
from prune_perception.export.onnx_export import (ExportableDetector, slim_model, trace_to_onnx,
                                                 write_model_atomically)
from prune_perception.models.detector import Detector, spec_layers
from prune_perception.pruning.structured import ratio_keeping
from prune_perception.runtime.engine import DetectorEngine
from prune_perception.runtime.latency_stats import LatencyStats
from prune_perception.machine import cpu_flags, cpu_model
from prune_perception.pruning.choices import LATENCY_DEVICES

FEATURES = ("constant", "GMACs", "M activations")
BLOCKS = (1, 4, 8, 16)   # candidate SIMD channel blocks the latency model may fit
DEFAULT_BLOCK = 8        # channel block where none is detected (AVX/AVX2 fp32, NEON, CUDA tensor cores)


@dataclass(frozen=True)
class MeasureSettings:
    """How candidates are timed: execution provider, ONNX Runtime intra-op threads, timed runs, warm-up runs."""

    device: str = "cpu"
    threads: int = 1
    runs: int = 50
    warmup: int = 5

    def validate(self) -> None:
        if self.device not in LATENCY_DEVICES:
            raise ConfigError(f"latency device must be one of {', '.join(LATENCY_DEVICES)}, got {self.device!r}")
        if self.threads < 0 or self.runs < 1 or self.warmup < 0:
            raise ConfigError(f"latency measurement needs threads >= 0, runs >= 1, warmup >= 0; got threads="
                              f"{self.threads} runs={self.runs} warmup={self.warmup}")


def check_device(device: str) -> None:
    """ConfigError (one line) unless ONNX Runtime here can run on `device`."""
    if device not in LATENCY_DEVICES:
        raise ConfigError(f"latency device must be one of {', '.join(LATENCY_DEVICES)}, got {device!r}")
    available = ort.get_available_providers()
    if device == "cuda" and "CUDAExecutionProvider" not in available:
        raise ConfigError(f"--device cuda: this onnxruntime build has no CUDA execution provider (available: "
                          f"{', '.join(available)}); measure on a machine with an NVIDIA GPU and onnxruntime-gpu "
                          f"(not installed beside onnxruntime), or use --device cpu")


def vector_block(device: str = "cpu") -> int:
    """The channel block convolutions run in on `device` here, what plain ratio pruning aligns widths to.

    CPU: 16 with AVX-512 (ONNX Runtime's blocked NCHWc convolutions), else 8 (AVX/AVX2, and the default
    for other CPUs); CUDA: 8 (tensor-core tiles). The latency-budget search fits the block from
    measurements instead (LatencyModel.fit).
    """
    if device == "cpu" and "avx512f" in cpu_flags():
        return 16
    return DEFAULT_BLOCK


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    """Spearman rank correlation (average ranks for ties)."""
    def ranks(values):
        values = np.asarray(values, dtype=np.float64)
        order = values.argsort(kind="stable")
        result = np.empty(len(values))
        result[order] = np.arange(len(values), dtype=np.float64)
        for value in np.unique(values):
            tied = values == value
            result[tied] = result[tied].mean()
        return result
    ra, rb = ranks(a), ranks(b)
    if ra.std() == 0 or rb.std() == 0:
        return 0.0
    return float(np.corrcoef(ra, rb)[0, 1])


class WidthSpace:
    """The widths a latency search may give each coupled group: from dense down to `max_layer_ratio` removed.

    A candidate is an int array, one width per group (the group's layers share it). Widths are multiples of
    `round_to` when set; the smallest is what torch-pruning keeps at `max_layer_ratio` (at least 1).
    """

    def __init__(self, arch: dict, groups: Sequence[tuple[str, ...]], max_layer_ratio: float,
                 round_to: int | None = None):
        self.arch, self.groups, self.round_to = arch, [tuple(g) for g in groups], round_to
        self.dense = np.array([arch["widths"][g[0]] for g in self.groups], dtype=np.int64)
        self.floor = np.array([self._round(max(1, int(c * (1 - max_layer_ratio)))) for c in self.dense],
                              dtype=np.int64)
        self.step = np.array([max(round_to or 1, int(np.ceil(c / 16))) for c in self.dense], dtype=np.int64)

    def _round(self, width: int) -> int:
        if not self.round_to:
            return width
        return max(self.round_to, width - width % self.round_to)

    def uniform(self, ratio: float) -> np.ndarray:
        """Every group at the same ratio (what `prune --ratio` keeps per layer), within the floor."""
        return np.maximum(self.floor, [self._round(max(1, int(c * (1 - ratio)))) for c in self.dense])

    def group_width(self, group: int, removed: float) -> int:
        """The width of one group with a `removed` share of its channels gone (within the floor)."""
        return int(max(self.floor[group], self._round(max(1, int(self.dense[group] * (1 - removed))))))

    def keep(self, fractions: Sequence[float]) -> np.ndarray:
        """Per-group kept fractions -> widths."""
        return np.clip([self._round(max(1, int(round(c * f)))) for c, f in zip(self.dense, fractions)],
                       self.floor, self.dense)

    def set_block(self, block: int) -> None:
        """Search widths in multiples of `block` (the SIMD block the latency model found; with round_to, the larger)."""
        grid = max(block, self.round_to or 1)
        self.step = np.array([grid if grid > 1 else max(1, int(np.ceil(c / 16))) for c in self.dense], dtype=np.int64)

    def narrower(self, widths: np.ndarray, group: int) -> int | None:
        """The next smaller width of `group` on its grid (multiples of its step), None at the floor."""
        width, step = int(widths[group]), int(self.step[group])
        if width <= self.floor[group]:
            return None
        return max(int(self.floor[group]), (width - 1) // step * step)

    def widths(self, candidate: Sequence[int]) -> dict[str, int]:
        """Arch-spec widths of a candidate."""
        widths = dict(self.arch["widths"])
        for group, width in zip(self.groups, candidate):
            for name in group:
                widths[name] = int(width)
        return widths

    def arch_of(self, candidate: Sequence[int]) -> dict:
        return dict(self.arch, widths=self.widths(candidate))

    def layer_ratios(self, candidate: Sequence[int]) -> dict[str, float]:
        """`PruneSpec.layer_ratios` that make torch-pruning keep exactly these widths (every group listed)."""
        return {group[0]: ratio_keeping(width, dense) for group, width, dense in zip(self.groups, candidate, self.dense)}


class CostFeatures:
    """Analytic cost features of a candidate: [1, GMACs, M activations] of all convs at the input size,
    channel counts rounded up to a multiple of `block` (the image's 3 input channels are left alone)."""

    def __init__(self, space: WidthSpace, input_hw: tuple[int, int]):
        self.space = space
        dense = Detector(space.arch).eval()
        sizes: dict[str, int] = {}
        hooks = [module.register_forward_hook(
            lambda m, i, o, name=name: sizes.__setitem__(name, o.shape[-2] * o.shape[-1]))
            for name, module in dense.named_modules() if isinstance(module, nn.Conv2d)]
        with torch.no_grad():
            dense(torch.zeros(1, 3, *input_hw))
        for hook in hooks:
            hook.remove()
        self.names = list(sizes)
        self.pixels = np.array([sizes[n] for n in self.names], dtype=np.float64)
        convs = {n: m for n, m in dense.named_modules() if isinstance(m, nn.Conv2d)}
        self.kernel = np.array([convs[n].kernel_size[0] * convs[n].kernel_size[1] for n in self.names], np.float64)
        # out channels: the width of a group, or fixed (the head's prediction convs)
        conv_layer = {f"{layer_name}": layer.conv for layer_name, layer in spec_layers(dense).items()}
        group_of = {name: g for g, group in enumerate(space.groups) for name in group}
        module_group = {id(conv): group_of.get(layer) for layer, conv in conv_layer.items()}
        self.out_group = np.array([-1 if module_group.get(id(convs[n])) is None else module_group[id(convs[n])]
                                   for n in self.names])
        self.out_fixed = np.array([convs[n].out_channels for n in self.names], dtype=np.float64)
        # in channels are linear in the group widths: c_in = base + A @ widths (found by widening each group by 1)
        base_in = self._in_channels(space.dense)
        self.in_matrix = np.zeros((len(self.names), len(space.groups)))
        for g in range(len(space.groups)):
            wider = space.dense.copy()
            wider[g] += 1
            self.in_matrix[:, g] = self._in_channels(wider) - base_in
        self.in_base = base_in - self.in_matrix @ space.dense

    def _in_channels(self, candidate: np.ndarray) -> np.ndarray:
        with torch.device("meta"):
            model = Detector(self.space.arch_of(candidate))
        convs = dict(model.named_modules())
        return np.array([convs[n].in_channels for n in self.names], dtype=np.float64)

    def __call__(self, candidate: Sequence[int], block: int = 1) -> np.ndarray:
        widths = np.asarray(candidate, dtype=np.float64)
        c_in = self.in_base + self.in_matrix @ widths
        c_out = np.where(self.out_group >= 0, widths[np.maximum(self.out_group, 0)], self.out_fixed)
        if block > 1:
            c_in = np.where(c_in <= 4, c_in, np.ceil(c_in / block) * block)
            c_out = np.ceil(c_out / block) * block
        macs = float(np.sum(self.kernel * c_in * c_out * self.pixels))
        activations = float(np.sum(c_out * self.pixels))
        return np.array([1.0, macs / 1e9, activations / 1e6])


class LatencyModel:
    """latency_ms ≈ features(candidate, block) · coefficients, coefficients >= 0, fitted on measured candidates."""

    def __init__(self, features: CostFeatures, blocks: Sequence[int] = BLOCKS):
        self.features, self.blocks = features, tuple(blocks)
        self.block = 1
        self.coefficients = np.zeros(len(FEATURES))
        self.points: list[tuple[np.ndarray, float]] = []

    def add(self, candidate: Sequence[int], measured_ms: float) -> None:
        self.points.append((np.asarray(candidate, dtype=np.int64), float(measured_ms)))

    def fit(self) -> np.ndarray:
        """The block and non-negative coefficients with the least squared relative error."""
        if len(self.points) < 2:
            raise ValueError("the latency model needs at least two measured candidates")
        y = np.array([ms for _, ms in self.points])
        best = None
        for block in self.blocks:
            x = np.stack([self.features(c, block) for c, _ in self.points])
            coefficients, error = self._nnls(x, y)
            if best is None or error < best[0] - 1e-12:
                best = (error, block, coefficients)
        _, self.block, self.coefficients = best
        return self.coefficients

    @staticmethod
    def _nnls(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, float]:
        """Non-negative least squares on relative error (every subset of features, the best admissible fit)."""
        weighted_x, weighted_y = x / y[:, None], np.ones_like(y)
        best, best_error = None, np.inf
        columns = range(x.shape[1])
        for size in range(1, x.shape[1] + 1):
            for subset in itertools.combinations(columns, size):
                solution, *_ = np.linalg.lstsq(weighted_x[:, subset], weighted_y, rcond=None)
                if np.any(solution < 0):
                    continue
                error = float(np.sum((weighted_x[:, subset] @ solution - weighted_y) ** 2))
                if error < best_error - 1e-12:
                    best, best_error = (subset, solution), error
        coefficients = np.zeros(x.shape[1])
        if best is not None:
            coefficients[list(best[0])] = best[1]
        return coefficients, best_error

    def predict(self, candidate: Sequence[int]) -> float:
        return float(self.features(candidate, self.block) @ self.coefficients)

    def quality(self) -> dict:
        """How well the fit explains its own measurements: rank correlation and mean |relative error|."""
        predicted = [self.predict(f) for f, _ in self.points]
        measured = [ms for _, ms in self.points]
        return {"points": len(measured), "spearman": round(spearman(predicted, measured), 4),
                "mean_abs_rel_error": round(float(np.mean([abs(p / m - 1) for p, m in zip(predicted, measured)])), 4),
                "block": self.block,
                "coefficients": dict(zip(FEATURES, (round(float(c), 6) for c in self.coefficients)))}


def machine_fingerprint() -> str:
    return f"{cpu_model()}|{os.cpu_count()}|{len(os.sched_getaffinity(0))}|onnxruntime {ort.__version__}"


def export_candidate(arch: dict, classes: Sequence[str], input_hw: tuple[int, int], path: Path,
                     model: Detector | None = None) -> Path:
    """Export a network of `arch` (random weights unless `model` is given) the way `export` does: native ONNX."""
    if model is None:
        torch.manual_seed(0)
        model = Detector(arch)
    wrapper = ExportableDetector(model.eval(), input_hw).eval()
    onnx_model = slim_model(trace_to_onnx(wrapper, input_hw, dynamic_batch=False, opset=17))
    set_metadata(onnx_model, build_metadata(list(classes), input_hw, {"method": "latency-candidate"},
                                            model_hash(onnx_model)))
    write_model_atomically(onnx_model, Path(path))
    return Path(path)


def _engine(path: Path, settings: MeasureSettings) -> DetectorEngine:
    try:
        return DetectorEngine(path, providers=(settings.device,), strict_provider=True,
                              intra_op_threads=settings.threads, warmup_runs=0)
    except ProviderError as exc:
        raise ConfigError(f"--device {settings.device}: {exc}") from None


def time_models(paths: Sequence[Path], settings: MeasureSettings, runs: int | None = None, progress: bool = False,
                desc: str = "latency") -> list[LatencyStats]:
    """Inference latency (ms) of ONNX models through the runtime engine, timed round-robin after a warm-up."""
    settings.validate()
    engines = [_engine(Path(p), settings) for p in paths]
    runs = runs or settings.runs
    rng = np.random.default_rng(0)
    batches = [rng.random((1, 3, *e.info.input_hw), dtype=np.float32) for e in engines]
    samples: list[list[float]] = [[] for _ in engines]
    for round_index in tqdm(range(settings.warmup + runs), desc=desc, unit="round", disable=not progress,
                            leave=False):
        for engine, batch, timings in zip(engines, batches, samples):
            start = time.perf_counter()
            engine.infer(batch)
            if round_index >= settings.warmup:
                timings.append((time.perf_counter() - start) * 1e3)
    return [LatencyStats.of(s) for s in samples]


RANKING_RUNS = 200   # timed runs (each model, round-robin) when finished candidates are ranked by latency


def time_detectors(models: Sequence[Detector], classes: Sequence[str], input_hw: tuple[int, int],
                   settings: MeasureSettings, runs: int = RANKING_RUNS, progress: bool = False,
                   desc: str = "latency") -> list[LatencyStats]:
    """Inference latency of trained networks, each exported the way `export` does it and timed round-robin."""
    with tempfile.TemporaryDirectory(prefix="latency_models_") as folder:
        paths = [export_candidate(model.arch, classes, input_hw, Path(folder) / f"model_{index}.onnx", model)
                 for index, model in enumerate(models)]
        return time_models(paths, settings, max(runs, settings.runs), progress, desc)


class LatencyMeter:
    """Measures candidates (per-group widths) of a WidthSpace on this machine, with a JSON cache."""

    def __init__(self, space: WidthSpace, classes: Sequence[str], input_hw: tuple[int, int],
                 settings: MeasureSettings, cache_path: Path | None = None):
        settings.validate()
        check_device(settings.device)
        self.space, self.classes, self.input_hw, self.settings = space, list(classes), tuple(input_hw), settings
        self.cache_path = Path(cache_path) if cache_path else None
        self.cache: dict[str, dict] = {}
        if self.cache_path and self.cache_path.is_file():
            try:
                self.cache = json.loads(self.cache_path.read_text())
            except (OSError, json.JSONDecodeError):
                self.cache = {}
        self.fingerprint = machine_fingerprint()
        self.measured = 0   # candidates exported and timed by this meter (cache misses)

    def key(self, candidate: Sequence[int]) -> str:
        s = self.settings
        payload = json.dumps([[int(w) for w in candidate], [list(g) for g in self.space.groups], self.space.arch,
                              self.input_hw, len(self.classes), s.device, s.threads, s.runs, s.warmup,
                              self.fingerprint], sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:24]

    def measure(self, candidates: Sequence[Sequence[int]], progress: bool = False, desc: str = "latency",
                fresh: bool = False) -> list[LatencyStats]:
        """Latency stats of each candidate, timed together round-robin; cached ones are not measured again
        unless `fresh` (then all are, and the cache is updated)."""
        keys = [self.key(c) for c in candidates]
        missing = list(dict.fromkeys(k for k in keys if fresh or k not in self.cache))
        if missing:
            todo = {k: c for k, c in zip(keys, candidates) if k in missing}
            with tempfile.TemporaryDirectory(prefix="latency_") as folder:
                paths = [export_candidate(self.space.arch_of(todo[k]), self.classes, self.input_hw,
                                          Path(folder) / f"{k}.onnx")
                         for k in tqdm(missing, desc=f"{desc}: export", unit="net", disable=not progress, leave=False)]
                stats = time_models(paths, self.settings, progress=progress, desc=f"{desc}: time")
            for k, s in zip(missing, stats):
                self.cache[k] = {"widths": [int(w) for w in todo[k]], **s.as_dict()}
            self.measured += len(missing)
            self._save()
        return [LatencyStats(**{f: self.cache[k][f] for f in ("count", "mean", "p50", "p90", "p99", "min", "max")})
                for k in keys]

    def _save(self) -> None:
        if self.cache_path is None:
            return
        self.cache_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.cache_path.with_name(self.cache_path.name + ".tmp")
        tmp.write_text(json.dumps(self.cache, indent=1))
        tmp.replace(self.cache_path)
