"""Replay of evaluation bags through the real detector node (a separate process), offline evaluation, compare."""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("rclpy")
pytest.importorskip("vision_msgs.msg")

from prune_perception.bags.serialized_writer import BagWriter  # noqa: E402
from prune_perception.bags.detections import detections_to_bag_msg  # noqa: E402
from prune_perception.bags.info import bag_info  # noqa: E402
from prune_perception.bags.messages import header_msg, image_msg  # noqa: E402
from prune_perception.bags.reader import open_bag  # noqa: E402
from prune_perception.bags.topics import GT_TOPIC, IMAGE_TOPIC  # noqa: E402
from prune_perception.bags.dataset_bag import write_dataset_bag  # noqa: E402
from prune_perception.evaluation.bag_eval import evaluate_bag_offline, summarize  # noqa: E402
from prune_perception.runtime.engine import DetectorEngine  # noqa: E402
from prune_perception.ros.replay import RECORDED_DETECTIONS_TOPIC, ReplaySettings, replay_bag  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SCORE = 0.005   # the 4-epoch tiny model scores ~0.01: enough boxes to compare replay and offline
PARAMS = {"providers": ["cpu"], "score_threshold": SCORE}


@pytest.fixture(scope="module")
def val_bag(tiny_synth, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("replay") / "val_raw"
    write_dataset_bag(tiny_synth, "val", path, fps=10.0, progress=False)
    return path


@pytest.fixture(scope="module")
def offline(val_bag, tiny_onnx_model):
    return evaluate_bag_offline(val_bag, tiny_onnx_model, engine_options={"score_threshold": SCORE}, progress=False)


def replay(bag, model, **settings):
    return replay_bag(bag, model, ReplaySettings(params=PARAMS, progress=False, **settings))


def assert_same_detections(a, b, atol=1e-3):
    assert [r.stamp_ns for r in a.records] == [r.stamp_ns for r in b.records]
    for x, y in zip(a.records, b.records):
        assert (x.detections is None) == (y.detections is None)
        if x.detections is not None:
            np.testing.assert_allclose(x.detections.boxes, y.detections.boxes, atol=atol)
            np.testing.assert_allclose(x.detections.scores, y.detections.scores, atol=1e-6)
            np.testing.assert_array_equal(x.detections.labels, y.detections.labels)


@pytest.mark.slow
def test_max_rate_replays_are_identical_and_match_offline(val_bag, tiny_onnx_model, offline):
    first = replay(val_bag, tiny_onnx_model, rate=None)
    second = replay(val_bag, tiny_onnx_model, rate=None)
    assert first.frames == offline.frames == 10 and first.missed == 0 and second.missed == 0
    assert sum(len(r.detections) for r in first.records) > 0
    assert_same_detections(first, second, atol=0)
    assert_same_detections(first, offline)
    assert first.map.map50 == pytest.approx(offline.map.map50, abs=0.01)
    assert first.map.map50_95 == pytest.approx(offline.map.map50_95, abs=0.01)
    node = first.node
    assert node["frames_received"] == node["frames_processed"] == "10" and node["frames_failed"] == "0"


def offline_with_misses(val_bag, model, offline, result):
    """The offline evaluation scored as if the node had missed exactly the frames ``result`` missed."""
    answered = {r.stamp_ns for r in result.records if r.detections is not None}
    emptied = [dataclasses.replace(r, detections=r.detections if r.stamp_ns in answered else None)
               for r in offline.records]
    with open_bag(val_bag) as bag:
        classes = DetectorEngine(model, providers=("cpu",)).info.classes
        return summarize(bag, offline.model, "offline, missed frames emptied", emptied, classes, 0.0)


@pytest.mark.slow
def test_replay_at_bag_rate_with_clock_records_outputs(val_bag, tiny_onnx_model, offline, tmp_path):
    record = tmp_path / "outputs"
    result = replay(val_bag, tiny_onnx_model, rate=1.0, clock=True, record=record)
    assert result.mode == "replay x1"
    assert result.frames == 10 and result.answered + result.missed == result.frames
    # whatever was dropped at real time: the offline detections with exactly the missed frames emptied (all of
    # them when nothing was missed) give the replay's mAP, within one point
    expected = offline_with_misses(val_bag, tiny_onnx_model, offline, result)
    assert result.map.map50 == pytest.approx(expected.map.map50, abs=0.01)
    assert result.map.map50_95 == pytest.approx(expected.map.map50_95, abs=0.01)
    # sim time: /clock in bag time, so latency = bag-time difference (resolution CLOCK_PERIOD_S), never
    # wall clock minus a 2023 stamp
    assert 0 <= float(result.node["pipeline_latency_ms_p50"]) < 5_000
    topics = {t.name: t.count for t in bag_info(record).topics}
    assert topics[RECORDED_DETECTIONS_TOPIC] == result.answered
    assert topics["/diagnostics"] >= 1


@pytest.mark.slow
def test_drops_under_overload_are_misses(val_bag, tiny_onnx_model, offline):
    result = replay(val_bag, tiny_onnx_model, rate=200.0)   # 2,000 frames/s: far beyond the node
    node = result.node
    received, processed, dropped, failed = (int(node[k]) for k in (
        "frames_received", "frames_processed", "frames_dropped", "frames_failed"))
    assert received == processed + dropped + failed
    assert result.missed > 0 and result.answered == processed
    # the missed frames are scored as frames without output: the offline detections with exactly those frames
    # emptied give the replay's mAP (dropping a weak model's frames may raise or lower mAP, this is what holds)
    expected = offline_with_misses(val_bag, tiny_onnx_model, offline, result)
    assert result.map.map50 == pytest.approx(expected.map.map50, abs=1e-3)
    assert result.map.map50_95 == pytest.approx(expected.map.map50_95, abs=1e-3)


def _broken_bag(tiny_synth, path: Path) -> Path:
    """The val bag plus, between its frames, images with a wrong step and with truncated data."""
    with open_bag(write_dataset_bag(tiny_synth, "val", path.with_name("src"), progress=False).path) as source, \
            BagWriter(path) as writer:
        frames = list(source.frames())
        for frame in frames:
            writer.write(IMAGE_TOPIC, "sensor_msgs/msg/Image", frame.data, frame.log_time_ns)
        for stamp, log, boxes in source.iter_ground_truth():
            writer.write_message(GT_TOPIC, detections_to_bag_msg(stamp, "camera", boxes.boxes, boxes.class_names), log)
        for i, problem in enumerate(("step", "truncated")):
            stamp = frames[i].stamp_ns + 1
            msg = image_msg(np.zeros((48, 64, 3), np.uint8), "rgb8", header_msg(stamp, "camera"))
            if problem == "step":
                msg.step = 10
            else:
                msg.data = msg.data[:100]
            writer.write_message(IMAGE_TOPIC, msg, frames[i].log_time_ns + 1)
    return path


@pytest.mark.slow
def test_broken_images_in_a_good_bag_are_counted_failed(tiny_synth, tiny_onnx_model, tmp_path):
    bag = _broken_bag(tiny_synth, tmp_path / "broken")
    offline = evaluate_bag_offline(bag, tiny_onnx_model, engine_options={"score_threshold": SCORE}, progress=False)
    assert (offline.frames, offline.failed, offline.answered) == (12, 2, 10)
    result = replay(bag, tiny_onnx_model, rate=None, frame_timeout=2.0)
    assert (result.frames, result.answered, result.missed) == (12, 10, 2)
    assert result.node["frames_failed"] == "2" and result.node["frames_processed"] == "10"
    assert "step 10 is smaller than one row" in result.node["last_error"] or "truncated" in result.node["last_error"]


@pytest.mark.slow
def test_compressed_sqlite3_bag_without_ground_truth(tiny_synth, tiny_onnx_model, tmp_path):
    full = write_dataset_bag(tiny_synth, "val", tmp_path / "full", transport="compressed", storage="sqlite3",
                             progress=False).path
    bag = tmp_path / "no_gt"
    with open_bag(full) as source, BagWriter(bag, storage="sqlite3") as writer:
        for frame in source.frames():
            writer.write(source.image_topic, "sensor_msgs/msg/CompressedImage", frame.data, frame.log_time_ns)
    result = replay(bag, tiny_onnx_model, rate=None)
    assert result.map is None and result.answered == result.frames == 10
    assert any("no ground truth" in note for note in result.notes)
    assert result.latency.p50 > 0


def run_cli(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "prune_perception.cli", "-q", *args], capture_output=True,
                          text=True, timeout=timeout, cwd=REPO)


@pytest.mark.slow
def test_compare_report_has_every_model(val_bag, tiny_onnx_model, tmp_path):
    second = tmp_path / "copy.onnx"
    second.write_bytes(Path(tiny_onnx_model).read_bytes())
    out = tmp_path / "compare"
    result = run_cli("compare", str(val_bag), "--models", str(tiny_onnx_model), str(second), "--max-rate",
                     "-p", f"score_threshold={SCORE}", "-o", str(out))
    assert result.returncode == 0, result.stderr[-2000:]
    html = (out / "compare.html").read_text()
    assert "tiny.onnx" in html and "copy.onnx" in html and "data:image/png;base64" in html
    rows = json.loads((out / "compare.json").read_text())
    assert [Path(r["model"]).name for r in rows] == ["tiny.onnx", "copy.onnx"]
    assert rows[0]["map"]["mAP50"] == pytest.approx(rows[1]["map"]["mAP50"])   # same weights, same bag


def _truncated(val_bag: Path, folder: Path) -> Path:
    copy = folder / "truncated"
    shutil.copytree(val_bag, copy)
    storage = next(copy.glob("*.mcap"))
    storage.write_bytes(storage.read_bytes()[: storage.stat().st_size // 2])
    return copy


@pytest.mark.parametrize("make_bag, message", [
    (lambda bag, folder: folder / "missing", "bag not found"),
    (_truncated, "truncated"),
])
def test_replay_cli_bad_bags_fail_in_one_line(val_bag, tiny_onnx_model, tmp_path, make_bag, message):
    for mode in ("--offline", "--max-rate"):
        bag = make_bag(val_bag, tmp_path / mode.strip("-"))
        result = run_cli("replay", str(bag), "--model", str(tiny_onnx_model), mode, "-o", str(tmp_path / "out"),
                         timeout=120)
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 2 and len(lines) == 1, result.stderr
        assert lines[0].startswith("prune-perception replay: error:") and message in lines[0]


@pytest.mark.slow
def test_class_agnostic_nms_flag_reaches_the_node_and_the_engine(val_bag, tiny_onnx_model, tmp_path):
    uncapped = {"score_threshold": SCORE, "max_detections": 10000}  # the counts must not hit the cap
    aware = evaluate_bag_offline(val_bag, tiny_onnx_model, progress=False, engine_options=uncapped)
    agnostic = evaluate_bag_offline(val_bag, tiny_onnx_model, progress=False,
                                    engine_options={**uncapped, "class_agnostic_nms": True})
    assert 0 < agnostic.map.num_detections < aware.map.num_detections
    for mode in ("--max-rate", "--offline"):
        out = tmp_path / mode.strip("-")
        result = run_cli("replay", str(val_bag), "--model", str(tiny_onnx_model), mode, "--class-agnostic-nms",
                         "-p", f"score_threshold={SCORE}", "-p", "max_detections=10000", "-o", str(out))
        assert result.returncode == 0, result.stderr[-2000:]
        written = json.loads(next(out.glob("*.json")).read_text())["map"]
        assert written["num_detections"] == agnostic.map.num_detections, mode
        assert written["mAP50"] == pytest.approx(agnostic.map.map50, abs=1e-6), mode
