"""Sensitivity analysis (one layer group pruned at a time) and the accuracy-budget ratio search."""

import json

import pytest

from prune_perception.cli import main
from prune_perception.config import PruneConfig, load_config
from prune_perception.errors import ConfigError
from prune_perception.models.arch import default_arch
from prune_perception.models.checkpoint import load_checkpoint
from prune_perception.models.detector import Detector, model_widths
from prune_perception.pruning import prune
from prune_perception.pruning.budget import (LATENCY_TIE, BudgetTrial, fastest_within_budget, search_budget,
                                             validate_budget_settings)
from prune_perception.pruning.importance import make_importance
from prune_perception.pruning.sensitivity import run_sensitivity, select_groups
from prune_perception.pruning.structured import PruneSpec, StructuredPruner, prunable_groups

INPUT_HW = (96, 160)


def stub_evaluation(map50_at):
    """evaluate_candidate stub from a ratio -> mAP50 function; records the ratios it was asked for."""
    asked = []

    def evaluate(ratio):
        asked.append(ratio)
        return map50_at(ratio), f"model@{ratio}"
    return evaluate, asked


# ------------------------------------------------------------------ groups and the zero-channel guard
def test_coupled_layers_form_one_group_and_only_that_group_is_pruned():
    model = Detector(default_arch("nano", 3)).eval()
    groups = prunable_groups(model, INPUT_HW)
    assert ("stage1.down", "stage1.block0.cv2") in groups
    assert ("stem",) in groups and all("cls_pred" not in name for group in groups for name in group)
    dense = model_widths(model)
    StructuredPruner(model, INPUT_HW, make_importance("l1"),
                     PruneSpec(ratio=0.0, layer_ratios={"stage1.block0.cv2": 0.5})).step()
    widths = model_widths(model)
    changed = {name for name in dense if widths[name] != dense[name]}
    assert changed == {"stage1.down", "stage1.block0.cv2"} and widths["stage1.down"] == dense["stage1.down"] // 2


def test_ratio_that_empties_a_layer_is_a_config_error_naming_it():
    model = Detector(default_arch("nano", 3))
    with pytest.raises(ConfigError, match="stem .*every channel"):
        StructuredPruner(model, INPUT_HW, make_importance("l1"),
                         PruneSpec(ratio=0.0, max_layer_ratio=0.95, layer_ratios={"stem": 0.95}))
    with pytest.raises(ConfigError, match="round_to 32"):
        StructuredPruner(model, INPUT_HW, make_importance("l1"), PruneSpec(ratio=0.5, round_to=32))


def test_unknown_sensitivity_layer_is_a_config_error():
    groups = [("stem",), ("stage1.down", "stage1.block0.cv2")]
    assert select_groups(groups, ["stage1.down"]) == [("stage1.down", "stage1.block0.cv2")]
    with pytest.raises(ConfigError, match="neck.nope"):
        select_groups(groups, ["stem", "neck.nope"])


# ------------------------------------------------------------------ sensitivity analysis
def test_sensitivity_writes_table_plot_and_json(random_checkpoint, tiny_synth, tmp_path):
    dense, points = run_sensitivity(random_checkpoint, str(tiny_synth), tmp_path, ratios=[0.5, 0.25],
                                    layers=["stage1.block0.cv2"], val_images=3, progress=False)
    group = "stage1.down+stage1.block0.cv2"
    assert [(p.group, p.ratio) for p in points] == [(group, 0.25), (group, 0.5)]
    assert dense.macs > points[0].macs > points[1].macs
    saved = json.loads((tmp_path / "sensitivity.json").read_text())
    assert saved["val_images"] == 3 and saved["groups"] == [group.split("+")] and len(saved["points"]) == 2
    assert f"| {group} |" in (tmp_path / "sensitivity.md").read_text()
    assert (tmp_path / "sensitivity.png").stat().st_size > 0


def test_sensitivity_cli_bad_layer_exits_2_with_one_line(random_checkpoint, tiny_synth, tmp_path, capsys):
    code = main(["-q", "sensitivity", "--checkpoint", str(random_checkpoint), "--data", str(tiny_synth),
                 "--layers", "neck.nope", "-o", str(tmp_path)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err and "neck.nope" in err


# ------------------------------------------------------------------ budget search (stubbed evaluation)
def test_steps_search_stops_at_first_ratio_over_budget():
    evaluate, asked = stub_evaluation(lambda r: 0.80 - 0.04 * r)   # drop = 4 points x ratio
    trials, best = search_budget(evaluate, 0.80, budget=1.5, search="steps", ratios=[0.5, 0.2, 0.3, 0.4, 0.6])
    assert asked == [0.2, 0.3, 0.4]            # 0.4 drops 1.6 points: stop there
    assert best.ratio == 0.3 and best.extra == "model@0.3"
    assert [t.within_budget for t in trials] == [True, True, False]


def test_descending_search_stops_at_the_first_ratio_within_budget_from_the_largest_down():
    evaluate, asked = stub_evaluation(lambda r: 0.80 - 0.04 * r)   # drop = 4 points x ratio
    trials, best = search_budget(evaluate, 0.80, budget=1.5, search="descending", ratios=[0.2, 0.6, 0.3, 0.5])
    assert asked == [0.6, 0.5, 0.3]            # 0.6 and 0.5 drop 2.4 / 2.0 points; 0.3 (1.2) passes: stop there
    assert best.ratio == 0.3 and [t.within_budget for t in trials] == [False, False, True]
    evaluate, asked = stub_evaluation(lambda r: 0.80)
    assert search_budget(evaluate, 0.80, budget=0.5, search="descending", ratios=[0.3, 0.5])[1].ratio == 0.5
    assert asked == [0.5]                      # the hardest cut passed: nothing else is fine-tuned


def test_bisect_converges_to_largest_ratio_within_budget():
    evaluate, asked = stub_evaluation(lambda r: 0.80 if r <= 0.37 else 0.70)   # within budget up to 0.37
    trials, best = search_budget(evaluate, 0.80, budget=1.5, search="bisect", max_ratio=0.8, tolerance=0.02)
    assert asked[0] == 0.8
    assert 0.37 - 0.02 <= best.ratio <= 0.37
    assert all(t.within_budget == (t.ratio <= 0.37) for t in trials)
    evaluate, asked = stub_evaluation(lambda r: 0.80)
    assert search_budget(evaluate, 0.80, budget=0.0, search="bisect", max_ratio=0.6)[1].ratio == 0.6 and asked == [0.6]


def test_the_fastest_measured_candidate_within_budget_wins():
    trials = [BudgetTrial(r, 0.8, 0.0, within) for r, within in ((0.3, True), (0.4, True), (0.5, False))]
    macs = [300, 250, 200]
    # 0.3 measured 10 % faster than 0.4 (e.g. aligned widths vs not): latency decides, not MACs or ratio
    assert fastest_within_budget(trials, [5.0, 5.6, 3.0], macs).ratio == 0.3
    # within 3 % of each other: noise; the fewer MACs win
    assert fastest_within_budget(trials, [5.5, 5.6, 3.0], macs).ratio == 0.4
    assert fastest_within_budget(trials[2:], [3.0], macs[2:]) is None          # over budget is never chosen


def test_no_ratio_within_budget_keeps_nothing():
    evaluate, _ = stub_evaluation(lambda r: 0.5)
    for search in ("steps", "descending", "bisect"):
        trials, best = search_budget(evaluate, 0.8, budget=1.0, search=search, ratios=[0.2, 0.4], max_ratio=0.5)
        assert best is None and trials and not any(t.within_budget for t in trials)


def test_bad_budget_settings():
    def settings(**overrides):
        return load_config(PruneConfig, None, [f"prune.{k}={v}" for k, v in overrides.items()]).prune
    with pytest.raises(ConfigError, match="budget must be >= 0"):
        validate_budget_settings(settings(budget=-1))
    with pytest.raises(ConfigError, match=r"in \[0, 1\), got 1.0"):
        validate_budget_settings(settings(budget=1, budget_ratios=[0.2, 1.0]))
    with pytest.raises(ConfigError, match="budget_search"):
        validate_budget_settings(settings(budget=1, budget_search="golden"))


# ------------------------------------------------------------------ budget search end to end
@pytest.mark.slow
def test_budget_pruning_end_to_end(random_checkpoint, tiny_synth, tmp_path):
    config = load_config(PruneConfig, None, [
        f"checkpoint={random_checkpoint}", f"data.train={tiny_synth}", f"data.val={tiny_synth}",
        "prune.budget=100", "prune.budget_ratios=[0.25, 0.5]", "finetune.epochs=1", "finetune.batch_size=8",
        f"output={tmp_path}"])
    result = prune(config, progress=False)
    path, candidates, ratio = result.path, result.candidates, result.chosen_ratio
    assert result.mode == "budget" and result.final.macs == candidates[1].macs and not result.kept_dense
    assert [c.ratio for c in candidates] == [0.25, 0.5] and ratio == 0.5 and all(c.within_budget for c in candidates)
    checkpoint = load_checkpoint(path)
    assert checkpoint.meta["pruning"]["ratio"] == 0.5 and checkpoint.meta["pruning"]["macs"] == candidates[1].macs
    saved = json.loads((tmp_path / "history.json").read_text())
    assert saved["chosen_ratio"] == 0.5 and len(saved["candidates"]) == 2
    assert "Chosen ratio: **0.5**" in (tmp_path / "summary.md").read_text()
    # ranked by measured latency: every candidate and the dense model timed (ms), the chosen one not slower
    assert saved["dense"]["latency_p50_ms"] > 0 and all(c["latency_p50_ms"] > 0 for c in saved["candidates"])
    assert candidates[1].latency_p50_ms <= candidates[0].latency_p50_ms * (1 + LATENCY_TIE)
    assert checkpoint.meta["pruning"]["latency_p50_ms"] == candidates[1].latency_p50_ms
    assert "speed-up" in (tmp_path / "summary.md").read_text()
