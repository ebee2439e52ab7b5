"""Output adapters and format detection: tiny ONNX graphs with constant outputs encoding known boxes.

Each graph returns fixed tensors (plus 0 * mean(input), so the outputs depend on the input), so the
expected boxes in original image pixels can be computed by hand. Also home of the graph/metadata
helpers that test_runtime.py reuses.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from prune_perception.errors import ConfigError, ModelLoadError
from prune_perception.runtime.adapters import YoloxAdapter, Yolov8Adapter, expected_anchors, matching_formats
from prune_perception.runtime.coco_classes import COCO80_CLASSES
from prune_perception.runtime.engine import DetectorEngine
from prune_perception.runtime.preprocess import preprocess_batch

# --------------------------------------------------------------------------- helpers (shared)


def native_metadata(classes, input_hw, /, **changes) -> dict[str, str]:
    """metadata_props of a native export (docs/design.md §5); ``changes`` replace (or, with None, drop) keys."""
    props = {
        "prune_perception.format": "prune_perception.onnx/1",
        "classes": json.dumps(list(classes)),
        "input_size": json.dumps(list(input_hw)),
        "color_order": "RGB",
        "normalization": json.dumps({"scale": 1 / 255, "mean": [0, 0, 0], "std": [1, 1, 1]}),
        "letterbox": json.dumps({"pad_value": 114, "centered": True}),
        "output_layout": json.dumps({"name": "native", "boxes": "xyxy", "scores": "sigmoid"}),
        "model_hash": "0123abcd",
        "pruning": json.dumps({"method": None, "ratio": 0.0}),
        "created": "2026-01-01T00:00:00Z",
    }
    props.update(changes)
    return {key: value for key, value in props.items() if value is not None}


def save_with_metadata(model: onnx.ModelProto, path: Path, metadata: dict[str, str] | None) -> Path:
    """Replace the model's metadata_props and save it."""
    del model.metadata_props[:]
    for key, value in (metadata or {}).items():
        model.metadata_props.add(key=key, value=value)
    onnx.save(model, str(path))
    return path


def constant_model(path: Path, outputs: dict[str, np.ndarray], input_shape=(1, 3, 64, 64),
                   input_type=TensorProto.FLOAT, metadata: dict[str, str] | None = None) -> Path:
    """An ONNX model whose outputs are the given constants (+ 0 * mean(input))."""
    nodes = [helper.make_node("Cast", ["images"], ["images_f"], to=TensorProto.FLOAT),
             helper.make_node("ReduceMean", ["images_f"], ["mean"], keepdims=0),
             helper.make_node("Mul", ["mean", "zero"], ["nothing"])]
    initializers = [numpy_helper.from_array(np.array(0.0, dtype=np.float32), "zero")]
    graph_outputs = []
    for name, value in outputs.items():
        value = np.asarray(value, dtype=np.float32)
        initializers.append(numpy_helper.from_array(value, f"{name}_value"))
        nodes.append(helper.make_node("Add", [f"{name}_value", "nothing"], [name]))
        graph_outputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, value.shape))
    graph = helper.make_graph(nodes, "constant", [helper.make_tensor_value_info("images", input_type, input_shape)],
                              graph_outputs, initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return save_with_metadata(model, path, metadata)


def engine(path: Path, **kwargs) -> DetectorEngine:
    return DetectorEngine(path, warmup_runs=0, **kwargs)


# --------------------------------------------------------------------------- known boxes

YOLO_HW = (64, 64)
ANCHORS_64 = expected_anchors(YOLO_HW)  # 8*8 + 4*4 + 2*2 = 84
YOLOX_CELL = 64 + 0 * 4 + 1  # stride-16 level, row 0, column 1


def yolox_output(decoded: bool) -> np.ndarray:
    """One YOLOX prediction: centre (24, 8), size 32x12 in input px -> xyxy (8, 2, 40, 14); class 1 at 0.9*0.8."""
    output = np.zeros((1, ANCHORS_64, 7), dtype=np.float32)
    box = [24, 8, 32, 12] if decoded else [0.5, 0.5, math.log(2.0), math.log(0.75)]
    output[0, YOLOX_CELL] = [*box, 0.9, 0.1, 0.8]
    return output


def yolov8_output(num_classes: int = 2, anchors: int = ANCHORS_64) -> np.ndarray:
    """One YOLOv8 prediction at anchor 5: cx, cy, w, h = 32, 20, 16, 8 -> xyxy (24, 16, 40, 24); class 1 at 0.9."""
    output = np.zeros((1, 4 + num_classes, anchors), dtype=np.float32)
    output[0, :4, 5] = [32, 20, 16, 8]
    output[0, 4 + 1, 5] = 0.9
    return output


@pytest.mark.parametrize("decoded", [False, True])
def test_yolox_adapter_decodes_grid_or_pixel_boxes(decoded):
    adapter = YoloxAdapter(YOLO_HW, ["output"], {"name": "yolox", "decoded": decoded})
    boxes, scores = adapter([yolox_output(decoded)])
    assert boxes.shape == (1, ANCHORS_64, 4) and scores.shape == (1, ANCHORS_64, 2)
    np.testing.assert_allclose(boxes[0, YOLOX_CELL], [8, 2, 40, 14], atol=1e-5)
    np.testing.assert_allclose(scores[0, YOLOX_CELL], [0.09, 0.72], atol=1e-6)
    assert scores.sum() == pytest.approx(0.81)


def test_yolox_raw_decode_uses_each_levels_grid_and_stride():
    """Unit offsets on every anchor: boxes sit at (cell + 1) * stride with size e * stride."""
    raw = np.zeros((1, ANCHORS_64, 6), dtype=np.float32)
    raw[..., :4] = 1.0
    boxes, _ = YoloxAdapter(YOLO_HW, ["output"], {"name": "yolox"})([raw])
    last = boxes[0, -1]  # stride 32, cell (1, 1): centre 64, size e*32
    np.testing.assert_allclose(last, [64 - 16 * math.e, 64 - 16 * math.e, 64 + 16 * math.e, 64 + 16 * math.e],
                               rtol=1e-6)
    first_of_level2 = boxes[0, 64]  # stride 16, cell (0, 0): centre 16
    np.testing.assert_allclose(first_of_level2[:2], [16 - 8 * math.e, 16 - 8 * math.e], rtol=1e-6)


def test_yolov8_adapter_transposes_and_converts_centres():
    boxes, scores = Yolov8Adapter(YOLO_HW, ["output0"], {"name": "yolov8"})([yolov8_output()])
    np.testing.assert_allclose(boxes[0, 5], [24, 16, 40, 24])
    np.testing.assert_allclose(scores[0, 5], [0.0, 0.9], atol=1e-7)


@pytest.mark.parametrize("decoded", [False, True])
def test_yolox_model_gives_boxes_in_original_pixels(tmp_path, decoded):
    """YOLOX input: BGR, raw 0..255, letterbox top-left; a 48x96 image is scaled by 2/3 with no offset."""
    path = constant_model(tmp_path / "yolox.onnx", {"output": yolox_output(decoded)})
    detector = engine(path, yolox_decoded=decoded)
    info = detector.info
    assert (info.output_format, info.format_source, info.output_layout["decoded"]) == ("yolox", "output shapes",
                                                                                          decoded)
    assert (info.preprocess.color_order, info.preprocess.normalization.scale, info.preprocess.centered) == \
        ("BGR", 1.0, False)
    detections, _ = detector.detect(np.zeros((48, 96, 3), np.uint8), color_order="bgr")
    assert detections.labels.tolist() == [1]
    np.testing.assert_allclose(detections.scores, [0.72], atol=1e-6)
    np.testing.assert_allclose(detections.boxes, [[12, 3, 60, 21]], atol=1e-3)


def test_yolox_preprocessing_matches_the_official_demo(tmp_path):
    """BGR pixels unscaled, image at the top-left, grey 114 below it (YOLOX preproc)."""
    path = constant_model(tmp_path / "yolox.onnx", {"output": yolox_output(False)})
    image = np.zeros((32, 64, 3), np.uint8)
    image[..., 0] = 10  # blue in a BGR image
    tensor, _ = preprocess_batch([image], "bgr", engine(path).info.preprocess)
    assert tensor[0, 0, :32].max() == tensor[0, 0, :32].min() == 10.0  # channel 0 = B, unscaled
    assert (tensor[0, 1:, :32] == 0).all() and (tensor[0, :, 32:] == 114).all()


@pytest.mark.parametrize("image_hw, expected", [
    ((300, 500), [187.5, 23.4375, 312.5, 85.9375]),  # scale 0.128, fitted 38x64, pad_y (64-38)//2 = 13
    ((500, 300), [23.4375, 187.5, 85.9375, 312.5]),  # fitted 64x38, pad_x 13; the box is transposed below
])
def test_yolov8_model_gives_boxes_in_original_pixels(tmp_path, image_hw, expected):
    output = yolov8_output()
    if image_hw == (500, 300):
        output[0, :4, 5] = [20, 32, 8, 16]  # the same box with x and y swapped
    path = constant_model(tmp_path / "yolov8.onnx", {"output0": output})
    detector = engine(path)
    assert (detector.info.output_format, detector.info.preprocess.color_order) == ("yolov8", "RGB")
    assert detector.info.preprocess.normalization.scale == pytest.approx(1 / 255)
    detections, _ = detector.detect(np.zeros((*image_hw, 3), np.uint8))
    assert detections.labels.tolist() == [1]
    np.testing.assert_allclose(detections.boxes, [expected], atol=1e-3)


def test_class_agnostic_nms_in_the_engine(tmp_path):
    """Two overlapping boxes of different classes: both kept per class, the better one alone across classes."""
    output = yolov8_output()
    output[0, :4, 6] = [33, 20, 16, 8]  # next to anchor 5's box (IoU 0.88), class 0 at 0.8
    output[0, 4, 6] = 0.8
    path = constant_model(tmp_path / "yolov8.onnx", {"output0": output})
    image = np.zeros((64, 64, 3), np.uint8)
    detector = engine(path, score_threshold=0.5, nms_threshold=0.5)
    assert detector.detect(image)[0].labels.tolist() == [1, 0]
    detector.set_thresholds(0.5, 0.5, 100, class_agnostic_nms=True)
    assert detector.detect(image)[0].labels.tolist() == [1]
    assert engine(path, score_threshold=0.5, nms_threshold=0.5, class_agnostic_nms=True).detect(image)[0].labels \
        .tolist() == [1]
    with pytest.raises(ConfigError, match="class_agnostic_nms must be true or false, got 'yes'"):
        detector.set_thresholds(0.5, 0.5, 100, class_agnostic_nms="yes")


@pytest.mark.parametrize("image_hw, expected", [
    ((300, 500), [156.25, 87.5, 312.5, 243.75]),  # scale 0.64, fitted 192x320, pad_y 64
    ((500, 300), [56.25, 187.5, 212.5, 343.75]),  # fitted 320x192, pad_x 64
])
def test_native_model_maps_boxes_back_to_non_square_images(tmp_path, image_hw, expected):
    boxes = np.array([[[100, 120, 200, 220], [0, 0, 50, 50]]], np.float32)
    scores = np.array([[[0.9, 0.0], [0.2, 0.1]]], np.float32)
    path = constant_model(tmp_path / "native.onnx", {"boxes": boxes, "scores": scores}, input_shape=(1, 3, 320, 320),
                          metadata=native_metadata(["car", "truck"], (320, 320)))
    detector = engine(path)
    assert (detector.info.output_format, detector.info.format_source) == ("native", "metadata")
    detections, _ = detector.detect(np.zeros((*image_hw, 3), np.uint8))
    assert detections.labels.tolist() == [0]
    np.testing.assert_allclose(detections.boxes, [expected], atol=1e-3)


def test_auto_detection_needs_our_metadata_for_native_layout(tmp_path):
    outputs = {"boxes": np.zeros((1, 84, 4)), "scores": np.zeros((1, 84, 3))}
    path = constant_model(tmp_path / "bare.onnx", outputs)
    with pytest.raises(ModelLoadError) as error:
        engine(path)
    message = str(error.value)
    for part in ("bare.onnx", "no prune_perception metadata found", "native layout", "boxes [1, 84, 4]",
                 "scores [1, 84, 3]", "yolox", "yolov8", "model_format"):
        assert part in message
    forced = engine(path, model_format="native")  # docs/design.md §5 defaults
    assert forced.info.classes == ("class_0", "class_1", "class_2")
    assert (forced.info.preprocess.color_order, forced.info.preprocess.centered) == ("RGB", True)


@pytest.mark.parametrize("shape, problem", [
    ((1, 10, 10), "not recognised"),
    ((1, ANCHORS_64, ANCHORS_64), "fit several layouts (yolox, yolov8)"),
])
def test_unknown_or_ambiguous_layout_errors_name_the_shapes(tmp_path, shape, problem):
    path = constant_model(tmp_path / "odd.onnx", {"out": np.zeros(shape)})
    with pytest.raises(ModelLoadError) as error:
        engine(path)
    message = str(error.value)
    assert problem in message and f"out [{', '.join(map(str, shape))}]" in message
    assert "yolox: one output [N,A,5+C]" in message and "yolov8: one output [N,4+C,A]" in message


def test_forced_format_that_does_not_fit_errors(tmp_path):
    path = constant_model(tmp_path / "v8.onnx", {"output0": yolov8_output()})
    with pytest.raises(ModelLoadError, match=r"outputs output0 \[1, 6, 84\] do not fit the yolox layout"):
        engine(path, model_format="yolox")
    with pytest.raises(ConfigError, match="model_format 'ssd' unknown; known: auto, native, yolox, yolov8"):
        engine(path, model_format="ssd")
    with pytest.raises(ConfigError, match="yolox_decoded applies to yolox models only"):
        engine(path, yolox_decoded=True)


def test_matching_formats_by_shape():
    assert matching_formats(["output"], [(1, ANCHORS_64, 7)], YOLO_HW) == ["yolox"]
    assert matching_formats(["output0"], [("batch", 6, "anchors")], YOLO_HW) == ["yolov8"]
    assert matching_formats(["boxes", "scores"], [("n", 84, 4), ("n", 84, 3)], YOLO_HW) == ["native"]
    assert matching_formats(["output"], [(1, ANCHORS_64 + 1, 7)], YOLO_HW) == []


def test_external_class_names(tmp_path):
    default = engine(constant_model(tmp_path / "a.onnx", {"output0": yolov8_output()}))
    assert default.info.classes == ("class_0", "class_1")
    ultralytics = engine(constant_model(tmp_path / "b.onnx", {"output0": yolov8_output()},
                                        metadata={"names": "{0: 'car', 1: 'bus'}", "stride": "32"}))
    assert ultralytics.info.classes == ("car", "bus") and not ultralytics.info.has_metadata
    overridden = engine(constant_model(tmp_path / "c.onnx", {"output0": yolov8_output()}), class_names=["x", "y"])
    assert overridden.info.classes == ("x", "y")
    coco_hw = (64, 96)  # A = 126, so [1, 84, 126] is only a YOLOv8 layout
    coco = engine(constant_model(tmp_path / "d.onnx", {"output0": yolov8_output(80, expected_anchors(coco_hw))},
                                 input_shape=(1, 3, *coco_hw)))
    assert coco.info.classes == COCO80_CLASSES
    with pytest.raises(ModelLoadError, match="3 class names given but the model outputs 2 classes"):
        engine(tmp_path / "a.onnx", class_names=["x", "y", "z"])


def test_dynamic_input_size_needs_an_override(tmp_path):
    path = constant_model(tmp_path / "dyn.onnx", {"output0": yolov8_output()}, input_shape=(1, 3, "height", "width"))
    with pytest.raises(ModelLoadError, match=r"input H/W are dynamic \(\['height', 'width'\]\).*set input_size"):
        engine(path)
    detector = engine(path, input_size=(64, 64), input_color_order="bgr", input_scale=1.0)
    assert detector.info.input_hw == (64, 64)
    assert (detector.info.preprocess.color_order, detector.info.preprocess.normalization.scale) == ("BGR", 1.0)
    detections, _ = detector.detect(np.zeros((64, 64, 3), np.uint8))
    np.testing.assert_allclose(detections.boxes, [[24, 16, 40, 24]], atol=1e-4)
    with pytest.raises(ModelLoadError, match=r"input size \[32, 32\] .* disagrees with the model's input \[64, 64\]"):
        engine(constant_model(tmp_path / "static.onnx", {"output0": yolov8_output()}), input_size=(32, 32))


@pytest.mark.parametrize("kwargs, problem", [
    ({"input_scale": 0}, "input_scale must be a positive number"),
    ({"input_color_order": "yuv"}, "input_color_order must be one of RGB, BGR"),
    ({"input_size": (64,)}, r"input_size must be \[H, W\]"),
    ({"class_names": ["a", ""]}, "class_names must be a non-empty list of non-empty strings"),
])
def test_invalid_overrides_are_config_errors(tmp_path, kwargs, problem):
    path = constant_model(tmp_path / "v8.onnx", {"output0": yolov8_output()})
    with pytest.raises(ConfigError, match=problem):
        engine(path, **kwargs)
