"""Pruning report: tables, embedded plots, no external references; the Pareto front drops dominated points."""

import json
import re
from dataclasses import asdict

import pytest
import torch

from prune_perception.cli import main
from prune_perception.config import PruneConfig, load_config, to_dict
from prune_perception.evaluation.html_report import pareto_front, write_pruning_report
from prune_perception.models.arch import default_arch
from prune_perception.models.checkpoint import save_checkpoint
from prune_perception.models.cost import model_cost
from prune_perception.models.detector import Detector
from prune_perception.pruning.importance import make_importance
from prune_perception.pruning.history import PruneStep
from prune_perception.pruning.structured import PruneSpec, StructuredPruner
from prune_perception.pruning.unstructured import prune_unstructured

INPUT_HW = (96, 160)


def _fake_run(folder, granularity: str, ratio: float, mAP50s: list[float]):
    """A prune output folder from real pruning of a random-init model; the mAP values are made up."""
    torch.manual_seed(0)
    model = Detector(default_arch("nano", 3)).eval()
    dense = model_cost(model, INPUT_HW)
    steps = [PruneStep(0, 0.0, dense.params, dense.macs, mAP50s[0], mAP50s[0] / 2, mAP50s[0], mAP50s[0] / 2, 0.0)]
    if granularity == "channel":
        pruner = StructuredPruner(model, INPUT_HW, make_importance("l1"), PruneSpec(ratio, iterative_steps=2))
        for step in (1, 2):
            pruner.step()
            cost = model_cost(model, INPUT_HW)
            steps.append(PruneStep(step, ratio * step / 2, cost.params, cost.macs, mAP50s[step], 0.3, mAP50s[step],
                                   mAP50s[step] / 2, 0.1))
    else:
        _, sparsity = prune_unstructured(model, ratio, granularity)
        steps.append(PruneStep(1, ratio, dense.params, dense.macs, mAP50s[1], 0.3, mAP50s[1], mAP50s[1] / 2, 0.1,
                               sparsity.overall))
    config = load_config(PruneConfig, None, [f"prune.granularity={granularity}", f"prune.ratio={ratio}"])
    save_checkpoint(folder / "pruned.pt", model, ["a", "b", "c"], INPUT_HW)
    (folder / "history.json").write_text(json.dumps({"config": to_dict(config), "steps": [asdict(s) for s in steps],
                                                     "seconds": 1.0}))
    return folder


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    (root / "channel").mkdir()
    (root / "weight").mkdir()
    return [_fake_run(root / "channel", "channel", 0.5, [0.60, 0.58, 0.50]),
            _fake_run(root / "weight", "weight", 0.5, [0.60, 0.59])]


def test_pareto_front_excludes_dominated_points():
    points = [(10, 0.5), (5, 0.4), (8, 0.3), (5, 0.45), (12, 0.5), (3, 0.1), (20, 0.6)]
    assert pareto_front(points) == [5, 3, 0, 6]   # (8,0.3), (5,0.4), (12,0.5) are dominated


def test_report_has_tables_and_only_embedded_images(two_runs, tmp_path):
    sensitivity = tmp_path / "sens"
    sensitivity.mkdir()
    (sensitivity / "sensitivity.json").write_text(json.dumps({
        "dense": {"group": "dense", "ratio": 0.0, "params": 1, "macs": 100, "mAP50": 0.6},
        "points": [{"group": "neck.td3", "ratio": r, "macs": 90, "mAP50": 0.6 - r / 2} for r in (0.25, 0.5)]}))
    md_path, html_path = write_pruning_report(two_runs, tmp_path / "report", sensitivity)
    markdown, page = md_path.read_text(), html_path.read_text()
    assert "| dense |" in markdown and "| channel | l1 channel local |" in markdown
    assert "| weight | l1 weight local |" in markdown and "50.0%" in markdown   # zero weights of the masked run
    assert "![Kept channels per layer](widths.png)" in markdown and (md_path.parent / "pareto.png").is_file()
    assert page.count("<table") == 1 and "<td>channel</td>" in page
    assert page.count('src="data:image/png;base64,') == 3   # Pareto, sensitivity, widths
    references = re.findall(r"""(?:src|href)\s*=\s*["']?([^"'\s>]+)""", page)
    assert references and all(ref.startswith("data:image/png;base64,") for ref in references)
    assert "<link" not in page and "<script" not in page


def test_report_cli_prints_paths(two_runs, tmp_path, capsys):
    assert main(["report", *map(str, two_runs), "-o", str(tmp_path / "out")]) == 0
    printed = capsys.readouterr().out
    assert "report.md" in printed and "report.html" in printed
    assert main(["report", str(tmp_path), "-o", str(tmp_path / "out")]) == 2   # not a pruning run


def test_accuracy_budget_run_is_reported_with_its_chosen_candidate(two_runs, tmp_path):
    """pruning/budget.py's history.json (dense + candidates, no `steps`): the chosen ratio is the run's final row."""
    run = tmp_path / "budget"
    run.mkdir()
    (run / "pruned.pt").write_bytes((two_runs[0] / "pruned.pt").read_bytes())
    config = load_config(PruneConfig, None, ["prune.budget=3", "prune.ratio=0.9"])
    dense = {"params": 1000, "macs": 2_000_000, "mAP50": 0.6, "mAP50_95": 0.3}
    candidates = [{"ratio": r, "params": 800 - 100 * i, "macs": 1_500_000 - 300_000 * i, "mAP50": m, "mAP50_95": 0.2,
                   "seconds": 1.0, "within_budget": m >= 0.57} for i, (r, m) in enumerate([(0.2, 0.59), (0.4, 0.58),
                                                                                          (0.6, 0.40)])]
    (run / "history.json").write_text(json.dumps({"config": to_dict(config), "dense": dense,
                                                  "candidates": candidates, "chosen_ratio": 0.4, "seconds": 3.0}))
    md_path, _ = write_pruning_report([run, two_runs[0]], tmp_path / "report")
    row = next(line for line in md_path.read_text().splitlines() if line.startswith("| budget |"))
    assert row.split(" | ")[1:6] == ["l1 budget ≤ 3 mAP50 points", "0.4", "700", "1.2", "40.0%"], row

    history = json.loads((run / "history.json").read_text())
    history["chosen_ratio"] = None   # no ratio met the budget: the dense model was kept
    (run / "history.json").write_text(json.dumps(history))
    md_path, _ = write_pruning_report([run], tmp_path / "kept_dense")
    row = next(line for line in md_path.read_text().splitlines() if line.startswith("| budget |"))
    assert row.split(" | ")[2:6] == ["0", "1,000", "2.0", "0.0%"], row


def test_a_broken_history_is_one_clear_error(two_runs, tmp_path, capsys):
    run = tmp_path / "broken"
    run.mkdir()
    (run / "pruned.pt").write_bytes((two_runs[0] / "pruned.pt").read_bytes())
    (run / "history.json").write_text(json.dumps({"config": {"prune": {}}, "rows": []}))
    assert main(["report", str(run), "-o", str(tmp_path / "out")]) == 2
    assert "is not a history.json of `prune`" in capsys.readouterr().err
