"""Latency-budget pruning: measured latency model, width search, impossible targets, and the combined budget."""

import json

import numpy as np
import onnxruntime as ort
import pytest
import torch

from prune_perception.cli import main
from prune_perception.config import PruneConfig, load_config
from prune_perception.data.dataset import load_dataset
from prune_perception.errors import ConfigError
from prune_perception.models.arch import default_arch
from prune_perception.models.checkpoint import load_checkpoint, save_checkpoint
from prune_perception.models.detector import Detector, model_widths
from prune_perception.pruning.importance import make_importance
from prune_perception.pruning import prune
from prune_perception.pruning.latency_budget import (GroupSensitivity, allocate_widths,
                                                     search_latency_ladder)
from prune_perception.pruning.latency_model import (CostFeatures, LatencyMeter, LatencyModel, MeasureSettings,
                                                    WidthSpace, check_device, spearman)
from prune_perception.pruning.structured import PruneSpec, StructuredPruner, prunable_groups

INPUT_HW = (128, 192)


def _space(classes: int = 3, round_to=None) -> WidthSpace:
    arch = default_arch("nano", classes)
    return WidthSpace(arch, prunable_groups(Detector(arch), INPUT_HW), 0.9, round_to)


@pytest.fixture(scope="module")
def random_checkpoint(tiny_synth, tmp_path_factory):
    torch.manual_seed(0)
    classes = load_dataset(str(tiny_synth), "train").classes
    path = tmp_path_factory.mktemp("latency_dense") / "dense.pt"
    save_checkpoint(path, Detector(default_arch("nano", len(classes))).eval(), classes, INPUT_HW)
    return path


def _config(checkpoint, data, output, *extra):
    return load_config(PruneConfig, None, [
        f"checkpoint={checkpoint}", f"data.train={data}", f"data.val={data}", "finetune.epochs=1",
        "finetune.batch_size=8", "prune.latency_runs=5", "prune.latency_val_images=6", f"output={output}", *extra])


# ------------------------------------------------------------------ the latency model
def test_latency_model_predictions_rank_like_measurements(tmp_path):
    space = _space()
    model = LatencyModel(CostFeatures(space, INPUT_HW))
    meter = LatencyMeter(space, ["a", "b", "c"], INPUT_HW, MeasureSettings(runs=15, warmup=3), tmp_path / "cache.json")
    calibration = [space.dense, space.floor, space.uniform(0.5) // 8 * 8, space.keep(np.linspace(0.2, 1, 29))]
    for candidate, stats in zip(calibration, meter.measure(calibration)):
        model.add(candidate, stats.p50)
    model.fit()
    candidates = [space.uniform(r) for r in (0.1, 0.35, 0.6, 0.85)]   # not among the calibration points
    measured = [s.p50 for s in meter.measure(candidates)]
    predicted = [model.predict(c) for c in candidates]
    assert spearman(predicted, measured) >= 0.8, (predicted, measured)
    assert model.quality()["points"] == 4 and model.block in (1, 4, 8, 16)
    cached = json.loads((tmp_path / "cache.json").read_text())
    assert len(cached) == 8 and meter.measured == 8
    meter.measure(candidates[:1])
    assert meter.measured == 8   # served from the cache


def test_cost_features_count_the_real_macs():
    space = _space()
    features = CostFeatures(space, INPUT_HW)
    from prune_perception.models.cost import model_cost
    for candidate, tolerance in ((space.dense, 0.05), (space.uniform(0.5), 0.05), (space.floor, 0.15)):
        counted = model_cost(Detector(space.arch_of(candidate)), INPUT_HW).macs   # also counts BatchNorm, adds
        assert features(candidate)[1] * 1e9 == pytest.approx(counted, rel=tolerance)
    assert features(space.uniform(0.3), block=8)[1] > features(space.uniform(0.3))[1]   # padded to SIMD blocks


@pytest.mark.parametrize("round_to", [None, 8])
def test_layer_ratios_make_torch_pruning_keep_exactly_the_searched_widths(round_to):
    space = _space(round_to=round_to)
    space.set_block(8)
    candidate = space.keep(np.linspace(0.05, 1.0, len(space.groups)))
    candidate[3] = space.narrower(space.dense, 3)
    model = Detector(space.arch)
    StructuredPruner(model, INPUT_HW, make_importance("l1"),
                     PruneSpec(0.0, max_layer_ratio=0.9, layer_ratios=space.layer_ratios(candidate))).step()
    assert model_widths(model) == space.widths(candidate)
    assert all(w % round_to == 0 for w in candidate) if round_to else True


def test_greedy_search_narrows_the_cheap_groups_first():
    arch = default_arch("nano", 3)
    space = WidthSpace(arch, [("stem",), ("neck.td3",)], 0.9)
    space.set_block(8)
    sensitive = GroupSensitivity(("stem",), [16, 8, 1], [0.0, 0.5, 0.9])
    robust = GroupSensitivity(("neck.td3",), [64, 32, 6], [0.0, 0.01, 0.05])

    def predict(widths):   # both groups cost the same per channel
        return float(widths[0] + widths[1] / 4)

    widths, predicted = allocate_widths(space, predict, [sensitive, robust], goal_ms=20.0)
    assert list(widths) == [16, 16] and predicted <= 20.0
    widths, _ = allocate_widths(space, predict, [sensitive, robust], goal_ms=0.0)   # unreachable: both at floor
    assert list(widths) == [1, 6]


def test_ladder_says_which_constraint_bound():
    def evaluate(drops):
        return lambda target: (0.8 - drops[target] / 100, f"model@{target}")

    trials, chosen, bound = search_latency_ladder(evaluate({4.0: 0.5}), 0.8, None, [4.0, 3.0])
    assert bound == "latency" and chosen.target_ms == 4.0 and len(trials) == 1        # no budget: the target only
    trials, chosen, bound = search_latency_ladder(evaluate({4.0: 0.5, 3.4: 2.0}), 0.8, 1.0, [4.0, 3.4, 2.8])
    assert bound == "latency" and chosen.target_ms == 4.0 and len(trials) == 2
    trials, chosen, bound = search_latency_ladder(evaluate({4.0: 0.2, 3.4: 0.6, 2.8: 3.0}), 0.8, 1.0, [2.8, 4.0, 3.4])
    assert bound == "budget" and chosen.target_ms == 3.4 and [t.target_ms for t in trials] == [4.0, 3.4, 2.8]
    trials, chosen, bound = search_latency_ladder(evaluate({4.0: 2.5}), 0.8, 1.0, [4.0, 3.4])
    assert bound == "infeasible" and chosen.target_ms == 4.0 and not chosen.within_budget


# ------------------------------------------------------------------ clear errors
def test_impossible_target_is_a_clear_error(random_checkpoint, tiny_synth, tmp_path):
    config = _config(random_checkpoint, tiny_synth, tmp_path, "prune.latency_ms=0.001")
    with pytest.raises(ConfigError, match="below what the smallest network") as error:
        prune(config, progress=False)
    assert "\n" not in str(error.value) and "max_layer_ratio 0.9" in str(error.value)


def test_impossible_target_from_the_cli_is_one_line_exit_2(random_checkpoint, tiny_synth, tmp_path, capsys):
    code = main(["-q", "prune", "--checkpoint", str(random_checkpoint), "--set", f"data.train={tiny_synth}",
                 "--set", f"data.val={tiny_synth}", "--set", "prune.latency_runs=3", "--latency-ms", "0.001",
                 "--threads", "1", "-o", str(tmp_path)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "below what the smallest network" in err


@pytest.mark.skipif("CUDAExecutionProvider" in ort.get_available_providers(), reason="a CUDA provider is present")
def test_cuda_without_a_cuda_provider_is_a_clear_error(random_checkpoint, tmp_path, capsys):
    with pytest.raises(ConfigError, match="no CUDA execution provider"):
        check_device("cuda")
    code = main(["prune", "--checkpoint", str(random_checkpoint), "--latency-ms", "4", "--device", "cuda",
                 "-o", str(tmp_path)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "--device cuda" in err


def test_bad_latency_settings(random_checkpoint, tiny_synth, tmp_path):
    for extra, message in ((["prune.latency_ms=-1"], "must be > 0"),
                           (["prune.latency_ms=4", "prune.method=taylor"], "without loss gradients"),
                           (["prune.latency_ms=4", "prune.global_pruning=true"], "chooses every layer"),
                           (["prune.latency_ms=4", "prune.latency_margin=0.7"], "latency_margin"),
                           (["prune.latency_ms=4", "prune.granularity=weight"], "must be channel")):
        with pytest.raises(ConfigError, match=message):
            prune(_config(random_checkpoint, tiny_synth, tmp_path, *extra), progress=False)


# ------------------------------------------------------------------ end to end
@pytest.mark.slow
def test_latency_pruning_end_to_end(random_checkpoint, tiny_synth, tmp_path):
    checkpoint = load_checkpoint(random_checkpoint)
    groups = prunable_groups(checkpoint.model, INPUT_HW)
    space = WidthSpace(checkpoint.model.arch, groups, 0.9)
    meter = LatencyMeter(space, checkpoint.classes, INPUT_HW, MeasureSettings(runs=5), tmp_path / "latency_cache.json")
    dense, smallest = meter.measure([space.dense, space.floor])
    target = round(smallest.p50 + 0.6 * (dense.p50 - smallest.p50), 3)
    config = _config(random_checkpoint, tiny_synth, tmp_path, f"prune.latency_ms={target}",
                     "prune.latency_margin=0.1")
    result = prune(config, progress=False)
    outcome = result.details
    assert result.mode == "latency" and result.path == outcome.path and result.final.macs == outcome.macs
    assert outcome.bound == "latency" and outcome.macs < outcome.dense_macs
    history = json.loads((tmp_path / "history.json").read_text())
    latency = history["latency"]
    assert latency["target_ms"] == target and latency["search"] and latency["model"]["points"] >= 4
    assert latency["search"][-1]["measured_p50_ms"] <= target or any(
        r["measured_p50_ms"] <= target for r in latency["search"])
    assert history["steps"][-1]["latency_p50_ms"] == pytest.approx(outcome.p50_ms, abs=1e-3)
    pruned = load_checkpoint(outcome.path)
    assert pruned.model.arch["widths"] == latency["widths"]
    assert pruned.meta["pruning"]["latency_target_ms"] == target and pruned.meta["pruning"]["bound"] == "latency"
    assert (tmp_path / "pruned.onnx").is_file() and (tmp_path / "dense.onnx").is_file()
    summary = (tmp_path / "summary.md").read_text()
    assert "latency target" in summary and "bound by the latency target" in summary


def test_report_draws_the_latency_target(tmp_path):
    from dataclasses import asdict

    from prune_perception.config import to_dict
    from prune_perception.evaluation.html_report import write_pruning_report
    from prune_perception.models.cost import model_cost
    from prune_perception.pruning.history import PruneStep

    model = Detector(default_arch("nano", 3)).eval()
    dense = model_cost(model, INPUT_HW)
    StructuredPruner(model, INPUT_HW, make_importance("l1"), PruneSpec(0.4)).step()
    pruned = model_cost(model, INPUT_HW)
    run = tmp_path / "latency_run"
    save_checkpoint(run / "pruned.pt", model, ["a", "b", "c"], INPUT_HW)
    steps = [PruneStep(0, 0.0, dense.params, dense.macs, 0.6, 0.3, 0.6, 0.3, 0.0, latency_p50_ms=8.0,
                       latency_p99_ms=9.0),
             PruneStep(1, 0.4, pruned.params, pruned.macs, 0.5, 0.25, 0.55, 0.28, 1.0, latency_p50_ms=3.9,
                       latency_p99_ms=4.4)]
    config = load_config(PruneConfig, None, ["prune.latency_ms=4.0"])
    latency = {"target_ms": 4.0, "device": "cpu", "threads": 1, "p50_ms": 3.9, "p99_ms": 4.4, "met": True,
               "bound": "latency"}
    (run / "history.json").write_text(json.dumps({"config": to_dict(config), "steps": [asdict(s) for s in steps],
                                                  "latency": latency}))
    md_path, html_path = write_pruning_report([run], tmp_path / "report")
    markdown, page = md_path.read_text(), html_path.read_text()
    assert "l1 latency ≤ 4 ms" in markdown and "3.90 / 4.40" in markdown and "4 ms (cpu): met, latency" in markdown
    assert (md_path.parent / "latency.png").is_file() and page.count('src="data:image/png;base64,') == 3
