"""The node's ROS-free core (runtime/detector_core.py), its labels files and class-aware NMS, without rclpy.

Models are tiny ONNX graphs with constant outputs (test_adapters.py): a YOLOX-layout model whose one
prediction is known, so class ids, names and boxes can be checked exactly.
"""

from __future__ import annotations

import hashlib
import json
import logging
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest

from prune_perception.errors import ConfigError
from prune_perception.node_params import validate_params
from prune_perception.runtime.detector_core import DetectorCore, FrameResult
from prune_perception.runtime.health import ERROR
from prune_perception.runtime.labels import read_labels
from prune_perception.runtime.postprocess import class_aware_nms, select_detections
from node_harness import wait_for
from test_adapters import constant_model, yolox_output

LOGGER = logging.getLogger("test_detector_core")


def yolox_model(path: Path) -> Path:
    """YOLOX layout (grid outputs), 2 classes, one prediction: class 1 at 0.72 in the box (8, 2, 40, 14) of a
    64x64 input."""
    return constant_model(path, {"output": yolox_output(decoded=False)})


def image_msg(image: np.ndarray, stamp_ns: int = 1) -> SimpleNamespace:
    """A duck-typed sensor_msgs/Image (rgb8)."""
    height, width = image.shape[:2]
    return SimpleNamespace(header=SimpleNamespace(stamp=SimpleNamespace(sec=stamp_ns // 10**9,
                                                                        nanosec=stamp_ns % 10**9)),
                           height=height, width=width, encoding="rgb8", step=width * 3, is_bigendian=0,
                           data=image.tobytes())


class Recorder:
    """The callbacks a node gives the core: published frames, reverts, loaded models."""

    def __init__(self):
        self.results: list[FrameResult] = []
        self.reverts: list[dict] = []
        self.models = []

    def core(self, **params) -> DetectorCore:
        settings = validate_params({"providers": ["cpu"], "warmup_runs": 0, **params})
        return DetectorCore(settings, publish=self.results.append, now_ns=time.time_ns, logger=LOGGER,
                            revert=self.reverts.append, on_model=self.models.append)


@pytest.fixture
def recorder():
    made = []

    class Made(Recorder):
        def core(self, **params):
            core = super().core(**params)
            made.append(core)
            return core

    yield Made()
    for core in made:
        core.close()


# ---------------------------------------------------------------------------- labels files ----
@pytest.mark.parametrize("name, text", [
    ("labels.txt", "car\n\n pedestrian \n"),
    ("labels.names", "car\npedestrian"),
    ("labels.yaml", "[car, pedestrian]"),
    ("labels.yaml", "{1: pedestrian, 0: car}"),
    ("data.yaml", "path: x\nnames:\n  0: car\n  1: pedestrian\n"),
    ("labels.json", json.dumps(["car", "pedestrian"])),
    ("labels.json", json.dumps({"names": ["car", "pedestrian"]})),
])
def test_labels_files(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    assert read_labels(path) == ("car", "pedestrian")


@pytest.mark.parametrize("name, text, problem", [
    ("labels.txt", "\n \n", "no class names"),
    ("labels.yaml", "{0: car, 2: bus}", "integer class ids 0..N-1"),
    ("labels.yaml", "[car, 3]", "non-empty strings, got 3"),
    ("labels.yaml", "car: 0", "integer class ids"),
    ("labels.json", "{", "not valid YAML/JSON"),
    ("labels.yaml", "42", "expected a list of class names"),
])
def test_bad_labels_files_name_the_problem(tmp_path, name, text, problem):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(ConfigError, match=problem):
        read_labels(path)
    with pytest.raises(ConfigError, match="cannot read"):
        read_labels(tmp_path / "missing.txt")


# ---------------------------------------------------------------------------- NMS ----
def test_class_aware_nms_keeps_overlapping_boxes_of_other_classes():
    xywh = np.array([[10, 10, 20, 20], [11, 11, 20, 20], [10, 10, 20, 20], [300, 300, 5, 5]], np.float32)
    scores = np.array([0.9, 0.8, 0.7, 0.6], np.float32)
    classes = np.array([0, 0, 1, 0])
    assert sorted(class_aware_nms(xywh, scores, classes, 0.1, 0.5).tolist()) == [0, 2, 3]
    assert class_aware_nms(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, int), 0.1, 0.5).size == 0
    # a huge box of class 0 never reaches into class 1's region
    xywh = np.array([[-500, -500, 3000, 3000], [0, 0, 10, 10]], np.float32)
    assert sorted(class_aware_nms(xywh, np.array([0.9, 0.8], np.float32), np.array([0, 1]), 0.1, 0.1).tolist()) == [0, 1]


def test_select_detections_per_class():
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11]], np.float32)
    scores = np.array([[0.9, 0.8], [0.85, 0.1]], np.float32)   # cell 0: both classes; cell 1: class 0
    selected = select_detections(boxes, scores, 0.5, 0.5, 10)
    assert sorted(zip(selected.labels.tolist(), selected.scores.round(2).astype(float).tolist())) == \
        [(0, pytest.approx(0.9)), (1, pytest.approx(0.8))]


# ---------------------------------------------------------------------------- the core ----
def test_frames_in_detections_out_with_class_names_from_a_labels_file(tmp_path, recorder):
    labels = tmp_path / "labels.txt"
    labels.write_text("car\npedestrian\n")
    core = recorder.core(model_path=str(yolox_model(tmp_path / "yolox.onnx")), labels_path=str(labels))
    assert core.load()
    assert recorder.models[-1].classes == ("car", "pedestrian")
    core.put_frame(image_msg(np.zeros((64, 64, 3), np.uint8)))
    result = wait_for(lambda: recorder.results and recorder.results[-1], "a processed frame")
    assert result.detections.labels.tolist() == [1] and result.info.classes[1] == "pedestrian"
    np.testing.assert_allclose(result.detections.boxes, [[8, 2, 40, 14]], atol=1e-3)
    snapshot = wait_for(lambda: (s := core.snapshot()).processed == 1 and s, "the frame counted")
    assert (snapshot.received, snapshot.failed, snapshot.dropped) == (1, 0, 0)
    # class_names win over labels_path
    core.apply_parameters({"class_names": ["a", "b"]})
    assert core.start_staged_load()
    wait_for(lambda: recorder.models[-1].classes == ("a", "b"), "the reload with class_names")


def test_inactive_core_counts_frames_and_processes_none(tmp_path, recorder):
    core = recorder.core(model_path=str(yolox_model(tmp_path / "yolox.onnx")))
    assert core.load()
    core.set_active(False)
    for stamp in range(1, 6):
        core.put_frame(image_msg(np.zeros((64, 64, 3), np.uint8), stamp))
    time.sleep(0.3)
    assert core.frames_inactive == 5 and not recorder.results and core.snapshot().received == 0
    level, _, values = core.diagnostic_report()
    assert values["frames_inactive"] == "5"
    core.set_active(True)
    core.put_frame(image_msg(np.zeros((64, 64, 3), np.uint8), 9))
    wait_for(lambda: recorder.results, "a frame once active")


def test_failed_load_and_release(tmp_path, recorder):
    core = recorder.core(model_path=str(tmp_path / "missing.onnx"))
    assert not core.load()
    level, message, values = core.diagnostic_report()
    assert level == ERROR and "model file not found" in message
    good = yolox_model(tmp_path / "yolox.onnx")
    assert core.load({**core.reload_request(), "model_path": str(good)})
    assert core.model_info is not None
    core.release()
    assert core.model_info is None
    core.put_frame(image_msg(np.zeros((64, 64, 3), np.uint8)))
    wait_for(lambda: core.snapshot().failed == 1, "the frame to fail without a model")
    with pytest.raises(ConfigError, match="both be set"):
        core.apply_parameters({"input_width": 64})


def test_swap_outside_allowed_dirs_is_refused_and_the_old_model_serves(tmp_path, recorder):
    allowed = tmp_path / "models"
    allowed.mkdir()
    good = yolox_model(allowed / "good.onnx")
    outside = yolox_model(tmp_path / "outside.onnx")
    sneaky = allowed / "link.onnx"
    sneaky.symlink_to(outside)
    core = recorder.core(model_path=str(good), allowed_model_dirs=[str(allowed)])
    assert core.load()
    for path in (outside, sneaky, allowed / ".." / "outside.onnx"):
        with pytest.raises(ConfigError, match="outside allowed_model_dirs"):
            core.apply_parameters({"model_path": str(path)})
    level, message, values = core.diagnostic_report()
    assert level == ERROR and "model swap refused" in message and f"still serving {good}" in message
    assert values["model_path"] == str(good) and values["swaps_failed"] == "3"
    core.put_frame(image_msg(np.zeros((64, 64, 3), np.uint8)))
    wait_for(lambda: recorder.results, "the old model serving")


def test_swap_to_a_model_not_in_the_manifest_is_refused(tmp_path, recorder):
    good = yolox_model(tmp_path / "good.onnx")
    other = constant_model(tmp_path / "other.onnx", {"output": yolox_output(decoded=True)})
    manifest = tmp_path / "SHA256SUMS"
    manifest.write_text(f"{hashlib.sha256(good.read_bytes()).hexdigest()}  good.onnx\n")
    core = recorder.core(model_path=str(good), model_manifest=str(manifest))
    assert core.load()
    core.apply_parameters({"model_path": str(other)})   # cheap checks pass; the loader hashes the file
    assert core.start_staged_load()
    wait_for(lambda: recorder.reverts, "the revert after the refused swap")
    assert recorder.reverts[-1]["model_path"] == str(good)
    level, message, values = core.diagnostic_report()
    assert level == ERROR and "not in model_manifest" in message and values["model_path"] == str(good)
    assert core.params["model_path"] == str(good)
    with pytest.raises(ConfigError, match="line 1"):
        manifest.write_text("not-a-digest  good.onnx\n")
        recorder.core(model_path=str(good), model_manifest=str(manifest))


def test_core_and_its_modules_never_import_rclpy_or_torch(tmp_path):
    import subprocess

    code = ("import sys; import prune_perception.runtime.detector_core, prune_perception.runtime.labels; "
            "bad = [m for m in ('rclpy', 'torch') if m in sys.modules]; assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_frames_are_decoded_with_the_opencv_the_vehicle_has(tmp_path, recorder):
    """Compressed input through the core: IMREAD_COLOR (every OpenCV 4.x), not the 4.11-only IMREAD_COLOR_RGB."""
    core = recorder.core(model_path=str(yolox_model(tmp_path / "yolox.onnx")), input_transport="compressed")
    assert core.load()
    data = cv2.imencode(".png", np.full((64, 64, 3), 7, np.uint8))[1].tobytes()
    core.put_frame(SimpleNamespace(header=SimpleNamespace(stamp=SimpleNamespace(sec=0, nanosec=5)), format="png",
                                   data=data))
    result = wait_for(lambda: recorder.results and recorder.results[-1], "a decoded frame")
    assert result.color_order == "bgr" and result.image.shape == (64, 64, 3)
