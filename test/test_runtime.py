"""ONNX Runtime engine: parity with the torch model, batching, providers, load and input errors, no torch."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto
from test_adapters import constant_model, native_metadata, save_with_metadata

from prune_perception.errors import ConfigError, InputImageError, ModelLoadError, ProviderError
from prune_perception.models.arch import default_arch
from prune_perception.models.detector import Detector
from prune_perception.runtime.engine import DetectorEngine, StageTimes
from prune_perception.runtime.letterbox import letterbox
from prune_perception.runtime.postprocess import select_detections
from prune_perception.runtime.preprocess import Normalization, PreprocessSpec, preprocess_batch

INPUT_HW = (128, 160)
CLASSES = ("car", "truck", "pedestrian")
SCORE_THRESHOLD, NMS_THRESHOLD, MAX_DETECTIONS = 0.5, 0.6, 300


class DecodedDetector(torch.nn.Module):
    """Detector + decode: the native ONNX outputs (boxes xyxy input px, scores after sigmoid)."""

    def __init__(self, model: Detector, input_hw: tuple[int, int]):
        super().__init__()
        self.model, self.input_hw = model, input_hw

    def forward(self, images):
        return self.model.decode(*self.model(images), self.input_hw)


@pytest.fixture(scope="module")
def torch_model() -> DecodedDetector:
    """A random nano detector whose class scores spread around 0.5 (zero class bias), so NMS has work to do."""
    torch.manual_seed(0)
    model = Detector(default_arch("nano", len(CLASSES))).eval()
    for head in model.heads():
        torch.nn.init.zeros_(head.cls_pred.bias)
    return DecodedDetector(model, INPUT_HW).eval()


def export_native(model: DecodedDetector, path: Path, dynamic_batch: bool) -> Path:
    axes = {name: {0: "batch"} for name in ("images", "boxes", "scores")} if dynamic_batch else None
    torch.onnx.export(model, torch.zeros(1, 3, *INPUT_HW), str(path), dynamo=False, opset_version=17,
                      input_names=["images"], output_names=["boxes", "scores"], dynamic_axes=axes)
    return save_with_metadata(onnx.load(str(path)), path, native_metadata(CLASSES, INPUT_HW))


@pytest.fixture(scope="module")
def native_model(torch_model, tmp_path_factory) -> Path:
    return export_native(torch_model, tmp_path_factory.mktemp("native") / "dynamic.onnx", dynamic_batch=True)


@pytest.fixture(scope="module")
def fixed_batch_model(torch_model, tmp_path_factory) -> Path:
    return export_native(torch_model, tmp_path_factory.mktemp("native") / "fixed.onnx", dynamic_batch=False)


def make_engine(path, **kwargs) -> DetectorEngine:
    settings = dict(score_threshold=SCORE_THRESHOLD, nms_threshold=NMS_THRESHOLD, max_detections=MAX_DETECTIONS,
                    warmup_runs=1, intra_op_threads=1)
    return DetectorEngine(path, **{**settings, **kwargs})


def random_image(height: int, width: int, seed: int) -> np.ndarray:
    """A smooth random RGB image (blurred noise), so the detector sees some structure."""
    noise = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return cv2.GaussianBlur(noise, (9, 9), 3)


def assert_same_detections(actual, expected, box_atol=1e-3, score_atol=1e-4):
    """Same detections up to float noise: equal counts and every detection has a twin (label, score, box).

    Matched pairwise rather than by sort order: letterbox padding gives many cells exactly equal scores.
    """
    assert len(actual) == len(expected)
    twins = ((actual.labels[:, None] == expected.labels[None, :])
             & (np.abs(actual.scores[:, None] - expected.scores[None, :]) <= score_atol)
             & (np.abs(actual.boxes[:, None, :] - expected.boxes[None, :, :]).max(axis=2) <= box_atol))
    assert twins.any(axis=1).all() and twins.any(axis=0).all(), f"{(~twins.any(axis=1)).sum()} without a twin"


# --------------------------------------------------------------------------- parity and batching


@pytest.mark.parametrize("image_hw", [(128, 160), (300, 500), (500, 300)])
def test_engine_matches_torch_detections(torch_model, native_model, image_hw):
    image = random_image(*image_hw, seed=sum(image_hw))
    letterboxed, transform = letterbox(image, INPUT_HW)
    with torch.no_grad():
        boxes, scores = torch_model(torch.from_numpy(letterboxed).permute(2, 0, 1)[None].float() / 255.0)
    reference = select_detections(boxes[0].numpy(), scores[0].numpy(), SCORE_THRESHOLD, NMS_THRESHOLD, MAX_DETECTIONS)
    expected_boxes = transform.to_original(reference.boxes, image_hw)

    detections, times = make_engine(native_model).detect(image)
    assert len(detections) > 5
    assert_same_detections(detections, type(reference)(expected_boxes, reference.scores, reference.labels))
    assert (detections.boxes[:, 2] <= image_hw[1]).all() and (detections.boxes[:, 3] <= image_hw[0]).all()
    assert isinstance(times, StageTimes) and times.decode_ms == 0.0
    assert min(times.preprocess_ms, times.inference_ms, times.postprocess_ms) > 0
    assert times.total_ms == pytest.approx(times.preprocess_ms + times.inference_ms + times.postprocess_ms)


@pytest.mark.parametrize("model_fixture, batch_size", [("native_model", None), ("fixed_batch_model", 1)])
def test_batch_equals_per_image(request, model_fixture, batch_size):
    detector = make_engine(request.getfixturevalue(model_fixture))
    assert detector.info.batch_size == batch_size and detector.info.dynamic_batch == (batch_size is None)
    images = [random_image(100, 150, 1), random_image(200, 120, 2), random_image(128, 160, 3)]
    batched, _ = detector.detect_batch(images)
    assert len(batched) == 3
    for image, in_batch in zip(images, batched):
        single, _ = detector.detect(image)
        assert_same_detections(in_batch, single, box_atol=1e-3, score_atol=1e-5)


def test_model_info_from_metadata(native_model):
    detector = make_engine(native_model)
    info = detector.info
    assert (info.output_format, info.format_source, info.has_metadata) == ("native", "metadata", True)
    assert info.classes == CLASSES and info.input_hw == INPUT_HW and info.input_name == "images"
    assert info.output_names == ("boxes", "scores") and info.output_shapes[0][1:] == (420, 4)
    assert info.preprocess == PreprocessSpec(INPUT_HW, "RGB", Normalization(1 / 255, (0.0,) * 3, (1.0,) * 3), 114, True)
    assert info.model_hash == "0123abcd" and info.pruning == {"method": None, "ratio": 0.0}
    assert info.quantization is None
    assert len(info.file_sha256) == 64 and info.path == native_model


def test_thresholds_change_live_and_are_validated(native_model):
    detector = make_engine(native_model)
    image = random_image(128, 160, 7)
    many, _ = detector.detect(image)
    cut = float(np.median(many.scores))
    detector.set_thresholds(cut, 0.5, 2)
    few, _ = detector.detect(image)
    assert len(few) == 2 < len(many) and (few.scores > cut).all()
    for bad, message in [((1.5, 0.5, 10), "score_threshold"), ((0.5, 0.0, 10), "nms_threshold"),
                         ((0.5, 0.5, 0), "max_detections"), ((0.5, 0.5, 2.5), "max_detections")]:
        with pytest.raises(ConfigError, match=message):
            detector.set_thresholds(*bad)
    assert (detector.thresholds.score, detector.thresholds.nms, detector.thresholds.max_detections) == (cut, 0.5, 2)


# --------------------------------------------------------------------------- providers


def test_providers_report_the_active_ones(native_model):
    assert make_engine(native_model).active_providers[-1] == "CPUExecutionProvider"
    fallback = make_engine(native_model, providers=["cuda", "CPUExecutionProvider"])
    assert "CUDAExecutionProvider" not in fallback.active_providers  # CPU-only machine: CUDA skipped, not active


def test_strict_provider_fails_when_first_choice_is_not_active(native_model):
    with pytest.raises(ProviderError) as error:
        make_engine(native_model, providers=["cuda", "cpu"], strict_provider=True)
    message = str(error.value)
    assert "strict provider" in message and "CUDAExecutionProvider" in message and "CPUExecutionProvider" in message


@pytest.mark.filterwarnings("ignore:Specified provider 'CUDAExecutionProvider' is not in available provider names")
def test_strict_provider_checks_the_session_not_just_availability(native_model, monkeypatch):
    """onnxruntime-gpu lists CUDA as available even where it cannot run: the active list decides."""
    monkeypatch.setattr("onnxruntime.get_available_providers",
                        lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    with pytest.raises(ProviderError, match=r"first choice CUDAExecutionProvider is not active; "
                                            r"active providers: \['CPUExecutionProvider'\]"):
        make_engine(native_model, providers=["cuda", "cpu"], strict_provider=True)


def test_unknown_provider_lists_known_names(native_model):
    with pytest.raises(ProviderError, match="unknown execution provider 'tpu'; known: tensorrt, cuda, cpu"):
        make_engine(native_model, providers=["tpu", "cpu"])


# --------------------------------------------------------------------------- load errors


def test_bad_model_files(tmp_path, native_model):
    cases = {"missing.onnx": "model file not found", "empty.onnx": "model file is empty",
             "text.onnx": "not an ONNX model, or the file is truncated/corrupt",
             "truncated.onnx": "truncated/corrupt"}
    (tmp_path / "empty.onnx").write_bytes(b"")
    (tmp_path / "text.onnx").write_text("this is not a model\n")
    data = native_model.read_bytes()
    (tmp_path / "truncated.onnx").write_bytes(data[: len(data) // 2])
    for name, problem in cases.items():
        with pytest.raises(ModelLoadError) as error:
            make_engine(tmp_path / name)
        assert name in str(error.value) and problem in str(error.value)
    with pytest.raises(ModelLoadError, match="not a regular file"):
        make_engine(tmp_path)


@pytest.mark.parametrize("input_shape, input_type, problem", [
    ((1, 3, 64, 64), TensorProto.INT64, "is tensor(int64), expected tensor(float)"),
    ((3, 64, 64), TensorProto.FLOAT, r"has shape [3, 64, 64], expected [N, 3, H, W]"),
    ((1, 1, 64, 64), TensorProto.FLOAT, r"has shape [1, 1, 64, 64], expected [N, 3, H, W]"),
    ((2, 3, 64, 64), TensorProto.FLOAT, "batch size is fixed at 2"),
])
def test_wrong_model_input_is_rejected_at_load(tmp_path, input_shape, input_type, problem):
    outputs = {"boxes": np.zeros((1, 4, 4)), "scores": np.zeros((1, 4, 2))}
    path = constant_model(tmp_path / "bad_input.onnx", outputs, input_shape=input_shape, input_type=input_type,
                          metadata=native_metadata(["a", "b"], (64, 64)))
    with pytest.raises(ModelLoadError) as error:
        make_engine(path)
    assert "bad_input.onnx" in str(error.value) and problem in str(error.value)


@pytest.mark.parametrize("changes, problem", [
    ({"letterbox": None}, "misses keys ['letterbox']"),
    ({"input_sizes": "[64, 64]"}, "has unknown keys ['input_sizes']"),
    ({"prune_perception.format": "prune_perception.onnx/9"}, "'prune_perception.onnx/9' not supported"),
    ({"color_order": "XYZ"}, "'color_order' must be \"RGB\" or \"BGR\""),
    ({"classes": "car,truck"}, "'classes' must be JSON list"),
    ({"normalization": '{"scale": 0.5}'}, "'normalization' must be JSON object"),
    ({"input_size": "[32, 32]"}, "disagrees with the model's input [64, 64]"),
    ({"classes": '["a", "b", "c"]'}, "3 class names given but the model outputs 2 classes"),
])
def test_invalid_metadata_is_rejected(tmp_path, changes, problem):
    outputs = {"boxes": np.zeros((1, 4, 4)), "scores": np.zeros((1, 4, 2))}
    path = constant_model(tmp_path / "meta.onnx", outputs, metadata=native_metadata(["a", "b"], (64, 64), **changes))
    with pytest.raises(ModelLoadError) as error:
        make_engine(path)
    assert "meta.onnx" in str(error.value) and problem in str(error.value)


# --------------------------------------------------------------------------- input images


@pytest.fixture(scope="module")
def detector(native_model) -> DetectorEngine:
    return make_engine(native_model)


@pytest.mark.parametrize("image, problem", [
    (np.zeros((0, 10, 3), np.uint8), "image is empty"),
    (np.zeros((10, 10, 2), np.uint8), "image shape (10, 10, 2) not supported"),
    (np.zeros((10, 10, 3), np.float64), "image dtype float64 not supported: expected uint8"),
    (np.zeros((2, 10, 10, 3), np.uint8), "image shape (2, 10, 10, 3) not supported"),
    ([[1, 2], [3, 4]], "image must be a numpy array"),
])
def test_bad_images_raise_input_image_error(detector, image, problem):
    with pytest.raises(InputImageError) as error:
        detector.detect(image)
    assert problem in str(error.value)


def test_accepted_image_layouts_match_plain_rgb(detector):
    rgb = random_image(96, 120, 5)
    reference, _ = detector.detect(rgb)
    mono = rgb[..., 1]
    mono_as_rgb, _ = detector.detect(np.repeat(mono[..., None], 3, axis=2))
    for variant, order, expected in [(rgb[..., ::-1], "bgr", reference),  # a non-contiguous BGR view
                                     (np.dstack([rgb, np.full(rgb.shape[:2], 7, np.uint8)]), "rgb", reference),
                                     (rgb.astype(np.uint16) * 257, "rgb", reference),  # 16-bit
                                     (mono, "rgb", mono_as_rgb), (mono[..., None], "rgb", mono_as_rgb)]:
        detections, _ = detector.detect(variant, color_order=order)
        assert_same_detections(detections, expected)


def test_detect_encoded(detector):
    image = random_image(120, 200, 9)
    ok, png = cv2.imencode(".png", image[..., ::-1])  # cv2 encodes BGR
    assert ok
    detections, times = detector.detect_encoded(png.tobytes())
    reference, _ = detector.detect(image)
    assert_same_detections(detections, reference)
    assert times.decode_ms > 0 and times.total_ms > times.decode_ms
    ok, jpeg = cv2.imencode(".jpg", image)
    for corrupt in (b"\xff\xd8\xff\xe0 definitely not a jpeg", b"garbage", jpeg.tobytes()[:200]):
        with pytest.raises(InputImageError, match="cannot decode image"):
            detector.detect_encoded(corrupt)
    with pytest.raises(InputImageError, match="encoded image is empty"):
        detector.detect_encoded(b"")


def test_infer_validates_the_batch_tensor(detector):
    outputs = detector.infer(np.zeros((2, 3, *INPUT_HW), np.float32))
    assert [o.shape for o in outputs] == [(2, 420, 4), (2, 420, 3)]
    with pytest.raises(InputImageError, match=r"input batch must be float32 \[N, 3, 128, 160\]"):
        detector.infer(np.zeros((1, 3, 64, 64), np.float32))
    with pytest.raises(InputImageError, match="float64"):
        detector.infer(np.zeros((1, 3, *INPUT_HW)))
    with pytest.raises(InputImageError, match="no images given"):
        detector.detect_batch([])
    with pytest.raises(ConfigError, match="image color order must be one of RGB, BGR"):
        detector.detect(random_image(10, 10, 0), color_order="yuv")


# --------------------------------------------------------------------------- pre-processing


def test_preprocess_matches_letterbox_and_normalisation():
    image = random_image(50, 90, 11)
    spec = PreprocessSpec((64, 64), "BGR", Normalization(0.5, (1.0, 2.0, 3.0), (2.0, 4.0, 8.0)), pad_value=100)
    tensor, transforms = preprocess_batch([image], "rgb", spec)
    letterboxed, transform = letterbox(image, (64, 64), pad_value=100)
    assert transforms == [transform]
    bgr = letterboxed[..., ::-1].astype(np.float32)
    expected = (bgr * 0.5 - np.array([1.0, 2.0, 3.0], np.float32)) / np.array([2.0, 4.0, 8.0], np.float32)
    np.testing.assert_allclose(tensor[0], expected.transpose(2, 0, 1), rtol=1e-6, atol=1e-6)


# --------------------------------------------------------------------------- vehicle dependencies


def test_runtime_never_imports_torch():
    code = ("import pkgutil, importlib, sys, prune_perception.runtime as r\n"
            "names = [m.name for m in pkgutil.iter_modules(r.__path__, r.__name__ + '.')]\n"
            "[importlib.import_module(n) for n in names]\n"
            "assert len(names) >= 7, names\n"
            "assert 'torch' not in sys.modules, names\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            cwd=Path(__file__).resolve().parents[1], timeout=120)
    assert result.returncode == 0, result.stderr
