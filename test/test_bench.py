"""Benchmark and graph cost: real ONNX models exported from (pruned) detectors."""

import json

import pytest
import torch

from prune_perception.cli import main as cli_main
from prune_perception.evaluation.latency_bench import BenchSettings, bench_images, run_bench, write_bench
from prune_perception.runtime.latency_stats import LatencyStats
from prune_perception.evaluation.onnx_cost import onnx_graph_cost
from prune_perception.export.onnx_export import export_onnx
from prune_perception.models.arch import default_arch
from prune_perception.models.checkpoint import save_checkpoint
from prune_perception.models.detector import Detector
from prune_perception.pruning.importance import make_importance
from prune_perception.models.cost import model_cost
from prune_perception.pruning.structured import PruneSpec, StructuredPruner

INPUT_HW = (96, 160)


@pytest.fixture(scope="module")
def dense_and_pruned(tmp_path_factory):
    """ONNX files of a dense nano detector and the same detector with half its channels removed."""
    root = tmp_path_factory.mktemp("bench")
    torch.manual_seed(0)
    model = Detector(default_arch("nano", 6)).eval()
    paths = []
    for name in ("dense", "pruned"):
        if name == "pruned":
            StructuredPruner(model, INPUT_HW, make_importance("l1"), PruneSpec(ratio=0.5)).step()
        save_checkpoint(root / f"{name}.pt", model, [f"c{i}" for i in range(6)], INPUT_HW)
        export_onnx(root / f"{name}.pt", root / f"{name}.onnx")
        paths.append((root / f"{name}.onnx", model_cost(model, INPUT_HW)))
    return paths


def test_graph_cost_matches_torch_count(dense_and_pruned):
    for path, torch_cost in dense_and_pruned:
        cost = onnx_graph_cost(path)
        # BatchNorm is folded into the convs on export: ONNX has slightly fewer params and MACs
        assert cost.params == pytest.approx(torch_cost.params, rel=0.02)
        assert cost.macs == pytest.approx(torch_cost.macs, rel=0.03)
    assert onnx_graph_cost(dense_and_pruned[1][0]).macs < 0.5 * onnx_graph_cost(dense_and_pruned[0][0]).macs


def test_latency_percentiles():
    stats = LatencyStats.of(list(range(1, 101)))
    assert stats.count == 100 and stats.p50 == pytest.approx(50.5) and stats.p99 == pytest.approx(99.01)
    assert stats.min == 1 and stats.max == 100


def test_bench_times_every_stage_of_every_model(dense_and_pruned, tmp_path):
    settings = BenchSettings(runs=8, warmup=2, threads=1)
    results, machine = run_bench([p for p, _ in dense_and_pruned], bench_images(None, "val", 2), settings,
                                 progress=False)
    assert [r.name for r in results] == ["dense", "pruned"]
    for result in results:
        assert result.providers[0] == "CPUExecutionProvider"
        assert result.stages["inference"].count == 8
        assert result.stages["decode"].p50 > 0 and result.stages["total"].p50 >= result.stages["inference"].p50
    assert results[1].macs < results[0].macs and results[1].file_bytes < results[0].file_bytes
    assert machine["ort_threads"] == 1 and machine["cores"] >= 1
    paths = write_bench(results, machine, settings, tmp_path / "out")
    report = json.loads(paths[0].read_text())
    assert {m["name"] for m in report["models"]} == {"dense", "pruned"}
    assert "| pruned |" in paths[1].read_text() and paths[2].stat().st_size > 0


def test_bench_cli_rejects_a_non_onnx_file(tmp_path, capsys):
    bogus = tmp_path / "bogus.onnx"
    bogus.write_bytes(b"definitely not protobuf")
    assert cli_main(["-q", "bench", str(bogus), "--runs", "1", "-o", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "bogus.onnx" in err[0]
