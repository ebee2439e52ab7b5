"""Side-by-side latency benchmark of ONNX models through the runtime engine (the node's inference path).

Fair comparison on a shared, noisy machine: all models are loaded first, warmed up, then timed
round-robin (one call per model in turn, same image) so that background load hits every model
alike; ratios are taken within one run. ONNX Runtime threads are fixed (`threads`), OpenCV runs
single-threaded, and the process can be pinned to the first `threads` cores.
"""

from __future__ import annotations

import json
import os
import platform
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import onnxruntime as ort
from tqdm import tqdm

from prune_perception.errors import ConfigError
from prune_perception.runtime.latency_stats import LatencyStats
from prune_perception.evaluation.onnx_cost import onnx_graph_cost
from prune_perception.evaluation.plots import pyplot, save_figure
from prune_perception.machine import cpu_model
from prune_perception.runtime.engine import DetectorEngine

STAGES = ("decode", "preprocess", "inference", "postprocess", "total")


@dataclass
class BenchSettings:
    providers: tuple[str, ...] = ("cpu",)
    threads: int = 1
    runs: int = 200
    warmup: int = 20
    pin_cores: bool = False

    def validate(self) -> None:
        if self.runs < 1 or self.warmup < 0 or self.threads < 1:
            raise ConfigError(f"bench needs runs >= 1, warmup >= 0, threads >= 1; got runs={self.runs} "
                              f"warmup={self.warmup} threads={self.threads}")


@dataclass
class ModelBench:
    name: str
    path: str
    file_bytes: int
    params: int
    macs: int
    providers: list[str]
    quantization: dict | None
    pruning: dict | None
    stages: dict[str, LatencyStats] = field(default_factory=dict)
    inference_ms: list[float] = field(default_factory=list, repr=False)   # raw samples, for the plot

    @property
    def throughput_fps(self) -> float:
        return 1000.0 / self.stages["total"].mean

    def as_dict(self) -> dict:
        return {"name": self.name, "path": self.path, "file_bytes": self.file_bytes, "params": self.params,
                "macs": self.macs, "providers": self.providers, "quantization": self.quantization,
                "pruning": self.pruning, "throughput_fps": round(self.throughput_fps, 2),
                "latency_ms": {stage: stats.as_dict() for stage, stats in self.stages.items()}}


def machine_info(settings: BenchSettings) -> dict:
    return {"cpu": cpu_model(), "cores": os.cpu_count(), "affinity": sorted(os.sched_getaffinity(0)),
            "platform": platform.platform(), "python": platform.python_version(),
            "onnxruntime": ort.__version__, "available_providers": ort.get_available_providers(),
            "opencv": cv2.__version__, "numpy": np.__version__, "ort_threads": settings.threads}


def _display_name(path: Path, taken: set[str]) -> str:
    name = path.stem if path.stem not in taken else f"{path.parent.name}/{path.stem}"
    taken.add(name)
    return name


def bench_images(data: str | None, split: str, count: int) -> list[bytes]:
    """Encoded images to time: the first `count` files of a dataset, or synthetic 640x360 scenes as JPEG."""
    if data:
        from prune_perception.data.dataset import load_dataset

        return [sample.image_path.read_bytes() for sample in load_dataset(data, split).samples[:count]]
    from prune_perception.data.synth import render_scene

    encoded = []
    for index in range(count):
        image, _ = render_scene(np.random.default_rng([12345, index]), 640, 360)
        encoded.append(cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes())
    return encoded


def run_bench(model_paths: list[Path], images: list[bytes], settings: BenchSettings,
              progress: bool = True) -> tuple[list[ModelBench], dict]:
    """Time every model on the same encoded images; returns per-model results and machine info."""
    settings.validate()
    if not images:
        raise ConfigError("bench needs at least one image")
    if settings.pin_cores:
        os.sched_setaffinity(0, set(sorted(os.sched_getaffinity(0))[:settings.threads]))
    cv2.setNumThreads(1)
    engines, results, taken = [], [], set()
    for path in model_paths:
        engine = DetectorEngine(path, providers=settings.providers, intra_op_threads=settings.threads,
                                warmup_runs=0)
        cost = onnx_graph_cost(path)
        engines.append(engine)
        results.append(ModelBench(_display_name(Path(path), taken), str(path), Path(path).stat().st_size,
                                  cost.params, cost.macs, list(engine.active_providers),
                                  engine.info.quantization, engine.info.pruning))
    samples = {id(engine): {stage: [] for stage in STAGES} for engine in engines}
    total_calls = settings.warmup + settings.runs
    for call in tqdm(range(total_calls), desc="bench", unit="round", disable=not progress):
        data = images[call % len(images)]
        for engine in engines:
            _, times = engine.detect_encoded(data)
            if call < settings.warmup:
                continue
            timings = samples[id(engine)]
            timings["decode"].append(times.decode_ms)
            timings["preprocess"].append(times.preprocess_ms)
            timings["inference"].append(times.inference_ms)
            timings["postprocess"].append(times.postprocess_ms)
            timings["total"].append(times.total_ms)
    for engine, result in zip(engines, results):
        result.stages = {stage: LatencyStats.of(values) for stage, values in samples[id(engine)].items()}
        result.inference_ms = samples[id(engine)]["inference"]
    return results, machine_info(settings)


def bench_markdown(results: list[ModelBench], machine: dict, settings: BenchSettings) -> str:
    base = results[0]
    lines = ["# Latency benchmark", "",
             f"{machine['cpu']} ({machine['cores']} cores), ONNX Runtime {machine['onnxruntime']}, "
             f"{settings.threads} thread(s), {settings.runs} timed runs after {settings.warmup} warm-up runs per model, "
             "round-robin. Latencies in ms; ratios are relative to the first model, measured in the same run.", "",
             "| model | provider | params | MACs (M) | size (KB) | inference p50 | p90 | p99 | total p50 | total p99 "
             "| fps | speed-up (inference p50) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        inf, tot = r.stages["inference"], r.stages["total"]
        lines.append(f"| {r.name} | {r.providers[0].replace('ExecutionProvider', '')} | {r.params:,} | "
                     f"{r.macs / 1e6:.1f} | {r.file_bytes / 1024:.0f} | {inf.p50:.2f} | {inf.p90:.2f} | {inf.p99:.2f} | "
                     f"{tot.p50:.2f} | {tot.p99:.2f} | {r.throughput_fps:.1f} | "
                     f"{base.stages['inference'].p50 / inf.p50:.2f}× |")
    lines += ["", "Per-stage p50 / p99 (ms):", "", "| model | " + " | ".join(STAGES) + " |",
              "|---|" + "---|" * len(STAGES)]
    for r in results:
        lines.append(f"| {r.name} | " + " | ".join(f"{r.stages[s].p50:.2f} / {r.stages[s].p99:.2f}" for s in STAGES)
                     + " |")
    return "\n".join(lines) + "\n"


def bench_plot(results: list[ModelBench], samples_path: Path) -> Path:
    plt = pyplot()

    fig, (ax_stages, ax_dist) = plt.subplots(1, 2, figsize=(12, 4.5))
    names = [r.name for r in results]
    bottom = np.zeros(len(results))
    for stage in STAGES[:-1]:
        values = np.array([r.stages[stage].p50 for r in results])
        ax_stages.bar(names, values, bottom=bottom, label=stage)
        bottom += values
    ax_stages.set(ylabel="ms (p50 per stage)", title="Latency per stage")
    ax_stages.legend()
    ax_stages.tick_params(axis="x", rotation=20)
    ax_dist.boxplot([r.inference_ms for r in results], whis=(1, 99), showfliers=False)
    ax_dist.set_xticks(np.arange(1, len(results) + 1), names, rotation=20)
    ax_dist.set(ylabel="ms", title="Inference latency (box: p25-p75, whiskers: p1-p99)")
    save_figure(fig, samples_path, dpi=100)
    return samples_path


def write_bench(results: list[ModelBench], machine: dict, settings: BenchSettings, output: Path) -> list[Path]:
    output.mkdir(parents=True, exist_ok=True)
    payload = {"machine": machine, "settings": {"providers": list(settings.providers), "threads": settings.threads,
                                                "runs": settings.runs, "warmup": settings.warmup,
                                                "pin_cores": settings.pin_cores},
               "models": [r.as_dict() for r in results]}
    paths = [output / "bench.json", output / "bench.md", output / "bench.png"]
    paths[0].write_text(json.dumps(payload, indent=2))
    paths[1].write_text(bench_markdown(results, machine, settings))
    bench_plot(results, paths[2])
    return paths
