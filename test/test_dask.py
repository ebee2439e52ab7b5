"""Fan-out on Dask: the runner's retry/failure rules, sensitivity and budget candidates equal to the serial
run, fleet bag evaluation equal to serial per bag with a broken bag reported (never dropped).

Every cluster here is a LocalCluster on 127.0.0.1 without a dashboard: nothing leaves loopback.
One module-wide cluster serves most tests through its address (the `--scheduler` path); the CLI test
starts its own local cluster (the default path).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict

import pytest
import torch

from prune_perception.errors import BagError, ConfigError
from prune_perception.scaleout.runner import FanOutSettings, TaskFailures, local_cluster, map_tasks

pytest.importorskip("distributed")

INPUT_HW = (96, 160)


# ------------------------------------------------------------------------------- the runner
def _square(x):
    return x * x


def _flaky(x):
    """Fails on odd items: input errors for 1, a bug for 3."""
    if x == 1:
        raise BagError("item 1 is broken")
    if x == 3:
        raise RuntimeError("bug on 3")
    return x


def test_settings_are_checked():
    with pytest.raises(ConfigError, match="--workers"):
        FanOutSettings(workers=-1)
    with pytest.raises(ConfigError, match="--retries"):
        FanOutSettings(retries=-1)
    with pytest.raises(ConfigError, match="--scheduler"):
        FanOutSettings(scheduler="tcp://127.0.0.1:1", workers=2)


def test_in_process_fan_out_keeps_order_retries_bugs_and_reports_every_failure():
    settings = FanOutSettings(workers=0, retries=2, progress=False)
    results, failures = map_tasks(_flaky, [0, 1, 2, 3, 4], [f"item {i}" for i in range(5)], settings)
    assert results == [0, None, 2, None, 4]
    assert [(f.task, f.attempts) for f in failures] == [("item 1", 1), ("item 3", 3)]   # input errors: no retry
    assert failures[0].error == "BagError: item 1 is broken" and "RuntimeError: bug on 3" in failures[1].error
    message = str(TaskFailures("demo", failures, 5))
    assert "2 of 5 demo task(s) failed" in message and "item 1" in message and "item 3" in message


def test_unreachable_scheduler_is_a_config_error():
    with pytest.raises(ConfigError, match="cannot reach the Dask scheduler"):
        map_tasks(_square, [1], ["one"], FanOutSettings(scheduler="tcp://127.0.0.1:9", progress=False,
                                                        connect_timeout_s=2))


@pytest.fixture(scope="module")
def cluster():
    """Two worker processes on loopback, no dashboard; tests use it through its address (--scheduler)."""
    import psutil
    from distributed import Client

    local = local_cluster(2)
    with Client(local) as client:
        addresses = [local.scheduler_address, *client.scheduler_info()["workers"]]
        pids = [os.getpid(), *client.run(os.getpid).values()]
    assert all(a.startswith("tcp://127.0.0.1:") for a in addresses), addresses
    listening = {c.laddr.ip for pid in pids for c in psutil.Process(pid).net_connections("inet")
                 if c.status == psutil.CONN_LISTEN}
    assert listening <= {"127.0.0.1"}, listening          # scheduler, workers, nannies: loopback only
    yield local.scheduler_address
    local.close()


@pytest.mark.slow
def test_dask_tasks_keep_order_and_failures_are_reported(cluster):
    settings = FanOutSettings(scheduler=cluster, retries=1, progress=False)
    results, failures = map_tasks(_flaky, [0, 1, 2, 3, 4], [f"item {i}" for i in range(5)], settings, "flaky")
    assert results == [0, None, 2, None, 4]
    assert [(f.task, f.attempts) for f in failures] == [("item 1", 1), ("item 3", 2)]
    assert "bug on 3" in failures[1].error and "_flaky" in failures[1].traceback


# -------------------------------------------------------------------------------- sensitivity
def _points(points):
    return [{k: v for k, v in asdict(p).items() if k != "seconds"} for p in points]


def test_random_sensitivity_points_are_seeded_per_point(random_checkpoint, tiny_synth):
    """So that a fanned-out `random` sweep gives the serial table too, whatever the order of the points."""
    import dataclasses

    from prune_perception.data.dataset import load_dataset
    from prune_perception.models.checkpoint import load_checkpoint
    from prune_perception.models.torch_eval import LetterboxedImages
    from prune_perception.pruning.sensitivity import sensitivity_point

    model = load_checkpoint(random_checkpoint).model
    val = load_dataset(str(tiny_synth), "val")
    val = dataclasses.replace(val, samples=val.samples[:2])
    images = LetterboxedImages(val, INPUT_HW)
    first = sensitivity_point(model, INPUT_HW, ["neck.td3"], 0.5, "random", images, val)
    torch.rand(100)   # whatever happened to the global RNG in between
    again = sensitivity_point(model, INPUT_HW, ["neck.td3"], 0.5, "random", images, val)
    assert dataclasses.replace(first, seconds=0) == dataclasses.replace(again, seconds=0)


@pytest.mark.slow
def test_dask_sensitivity_sweep_gives_the_serial_table(random_checkpoint, tiny_synth, tmp_path, cluster):
    from prune_perception.pruning.sensitivity import run_sensitivity
    from prune_perception.scaleout.sensitivity_points import DaskSensitivity

    common = dict(ratios=(0.25, 0.5), method="l1", layers=["stage1.down", "neck.td3"], val_images=6, progress=False)
    dense, serial = run_sensitivity(random_checkpoint, str(tiny_synth), tmp_path / "serial", **common)
    fan_out = DaskSensitivity(FanOutSettings(scheduler=cluster, progress=False))
    dense_dask, fanned = run_sensitivity(random_checkpoint, str(tiny_synth), tmp_path / "dask", fan_out=fan_out,
                                         **common)
    assert fan_out.failures == []
    assert len(serial) == 4 and _points(fanned) == _points(serial) and dense_dask == dense
    assert (tmp_path / "dask" / "sensitivity.md").read_text() == (tmp_path / "serial" / "sensitivity.md").read_text()
    serial_json = json.loads((tmp_path / "serial" / "sensitivity.json").read_text())
    dask_json = json.loads((tmp_path / "dask" / "sensitivity.json").read_text())
    assert "failed" not in dask_json and _points_json(dask_json) == _points_json(serial_json)


def _points_json(data):
    return [{k: v for k, v in p.items() if k != "seconds"} for p in data["points"]]


# ------------------------------------------------------------------------- budget candidates
@pytest.mark.slow
def test_dask_budget_candidates_give_the_serial_search(random_checkpoint, tiny_synth, tmp_path, cluster):
    from prune_perception.config import PruneConfig, load_config
    from prune_perception.pruning import prune

    def config(output):
        return load_config(PruneConfig, None, [
            f"checkpoint={random_checkpoint}", f"data.train={tiny_synth}", f"data.val={tiny_synth}",
            f"output={output}", "finetune.epochs=0", "prune.budget=100", "prune.budget_ratios=[0.2, 0.4]"])

    serial = prune(config(tmp_path / "serial"), progress=False)
    fanned = prune(config(tmp_path / "dask"), progress=False, fan_out=FanOutSettings(scheduler=cluster, progress=False))
    measured = ("seconds", "latency_p50_ms", "latency_p99_ms")   # timings differ from run to run
    strip = [{k: v for k, v in asdict(c).items() if k not in measured} for c in serial.candidates]
    assert [{k: v for k, v in asdict(c).items() if k not in measured} for c in fanned.candidates] == strip
    assert fanned.chosen_ratio == serial.chosen_ratio == 0.4
    def head(run: str) -> str:   # the summary above the table, measured milliseconds left out
        return re.sub(r"[\d.]+ ms", "? ms", (tmp_path / run / "summary.md").read_text().split("| ratio")[0])

    assert head("dask") == head("serial")


# ----------------------------------------------------------------------------- fleet bag eval
@pytest.fixture(scope="module")
def bags(tiny_synth, tmp_path_factory):
    """Two good bags (val and train splits) and one whose storage file is garbage."""
    from prune_perception.bags.dataset_bag import write_dataset_bag

    root = tmp_path_factory.mktemp("bags")
    write_dataset_bag(tiny_synth, "val", root / "val", progress=False)
    write_dataset_bag(tiny_synth, "train", root / "train", progress=False)
    write_dataset_bag(tiny_synth, "val", root / "broken", progress=False)
    for data in (root / "broken").glob("*.mcap"):
        data.write_bytes(b"this is not an mcap file" * 10)
    return [root / "val", root / "train", root / "broken"]


@pytest.mark.slow
def test_fleet_eval_matches_serial_per_bag_and_reports_the_broken_bag(bags, tiny_onnx_model, tmp_path):
    from prune_perception.cli import main
    from prune_perception.evaluation.bag_eval import evaluate_bag_offline

    serial = [evaluate_bag_offline(bag, tiny_onnx_model, progress=False) for bag in bags[:2]]
    output = tmp_path / "fleet"
    code = main(["-q", "fleet-eval", *map(str, bags), "--models", str(tiny_onnx_model), "--workers", "2",
                 "-o", str(output)])
    assert code == 2                                             # a failed bag fails the command...
    report = json.loads((output / "fleet.json").read_text())     # ...after the report was written
    assert [e["bag"] for e in report["evaluations"]] == [str(b) for b in bags[:2]]
    for got, want in zip(report["evaluations"], serial):
        assert (got["frames"], got["answered"], got["missed"], got["failed"]) == \
            (want.frames, want.answered, want.missed, want.failed)
        assert got["map"] == want.map.as_dict()
    [failed] = report["failed"]
    assert str(bags[2]) in failed["task"] and failed["error"]
    assert "FAILED" in (output / "fleet.md").read_text() and str(bags[2]) in (output / "fleet.html").read_text()
    pooled = report["pooled"][str(tiny_onnx_model)]
    assert pooled["frames"] == sum(e.frames for e in serial) and pooled["bags"] == 2


@pytest.mark.slow
def test_fleet_eval_allow_failures_in_process(bags, tiny_onnx_model, tmp_path, capsys):
    from prune_perception.cli import main

    code = main(["-q", "fleet-eval", str(bags[0]), str(bags[2]), "--models", str(tiny_onnx_model), "--workers", "0",
                 "--allow-failures", "-o", str(tmp_path / "fleet")])
    assert code == 0
    assert f"FAILED bag {bags[2]}" in capsys.readouterr().err
    report = json.loads((tmp_path / "fleet" / "fleet.json").read_text())
    assert len(report["evaluations"]) == 1 and len(report["failed"]) == 1


def test_fleet_report_lists_failures(tmp_path):
    from prune_perception.scaleout.fleet import FleetResult, write_fleet_report
    from prune_perception.scaleout.runner import TaskFailure

    result = FleetResult(["a", "b"], ["m.onnx"], [], [TaskFailure("bag a (model m.onnx)", "BagError: x", 1),
                                                     TaskFailure("bag b (model m.onnx)", "BagError: y", 1)])
    md, html, js = write_fleet_report(result, tmp_path)
    assert "2 task(s) FAILED" in md.read_text() and "BagError: y" in html.read_text()
    assert [f["task"] for f in json.loads(js.read_text())["failed"]] == ["bag a (model m.onnx)", "bag b (model m.onnx)"]


def test_sensitivity_markdown_marks_missing_points():
    from prune_perception.pruning.sensitivity import SensitivityPoint, sensitivity_markdown

    dense = SensitivityPoint("dense", 0.0, 100, 1000, 0.5, 0.3, 0.0)
    points = [SensitivityPoint("a", 0.25, 90, 900, 0.4, 0.2, 1.0), SensitivityPoint("a", 0.5, 80, 800, 0.3, 0.1, 1.0),
              SensitivityPoint("b", 0.25, 90, 950, 0.45, 0.2, 1.0)]
    table = sensitivity_markdown(dense, points, "l1", "val mAP50 on 4 images")
    assert "| b | 0.450 (-5.0, 5.0%) | failed |" in table
