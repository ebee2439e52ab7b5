"""detector_node with real rclpy publishers/subscribers (in-process, own context per test) and a trained tiny model."""

from __future__ import annotations

import hashlib
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

rclpy = pytest.importorskip("rclpy")
pytest.importorskip("vision_msgs.msg")

from builtin_interfaces.msg import Time as TimeMsg  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402
from std_msgs.msg import Header  # noqa: E402
from vision_msgs.msg import Detection2DArray  # noqa: E402

from prune_perception.export.onnx_export import export_onnx  # noqa: E402
from prune_perception.bags.detections import detections_from_bag_msg  # noqa: E402
from prune_perception.ros.messages import compressed_to_msg, image_to_msg  # noqa: E402
from prune_perception.runtime.engine import DetectorEngine  # noqa: E402
from prune_perception.runtime.image_msg import convert_color  # noqa: E402
from node_harness import Harness, wait_for  # noqa: E402

SCORE = 0.005   # the 4-epoch tiny model scores ~0.01: enough boxes to compare node and engine


@pytest.fixture
def harness_factory():
    made = []

    def make(model_path, **params) -> Harness:
        harness = Harness(model_path=str(model_path) if model_path else "", score_threshold=SCORE, **params)
        made.append(harness)
        return harness

    yield make
    for harness in made:
        harness.close()


@pytest.fixture(scope="module")
def val_images(tiny_synth) -> list[np.ndarray]:
    """RGB val images of the tiny synthetic set."""
    paths = sorted((Path(tiny_synth) / "images" / "val").glob("*.jpg"))[:6]
    assert paths
    return [cv2.cvtColor(cv2.imread(str(p), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB) for p in paths]


@pytest.fixture(scope="module")
def reference(tiny_onnx_model) -> DetectorEngine:
    return DetectorEngine(tiny_onnx_model, providers=["cpu"], score_threshold=SCORE, warmup_runs=0)


@pytest.fixture(scope="module")
def second_model(tiny_onnx_model, tmp_path_factory) -> Path:
    """The same trained network exported again with a dynamic batch: a different file (and hash)."""
    checkpoint = next(Path(tiny_onnx_model).parent.glob("train/best.pt"))
    path = tmp_path_factory.mktemp("second") / "dynamic.onnx"
    export_onnx(checkpoint, path, dynamic_batch=True)
    return path


def assert_same_detections(out: Detection2DArray, expected, class_names) -> None:
    got = detections_from_bag_msg(out).to_detections(class_names)
    assert len(got) == len(expected)
    np.testing.assert_allclose(got.boxes, expected.boxes, atol=1e-3)
    np.testing.assert_allclose(got.scores, expected.scores, atol=1e-6)
    np.testing.assert_array_equal(got.labels, expected.labels)


def test_images_in_detections_out_with_stamps_and_boxes(harness_factory, val_images, reference):
    h = harness_factory(reference.info.path)
    classes = reference.info.classes
    total = 0
    for image in val_images:
        msg = image_to_msg(image, "rgb8", h.header())
        out = h.send_and_wait(msg)
        assert out.header.frame_id == "cam_test"
        expected, _ = reference.detect(image, "rgb")
        assert_same_detections(out, expected, classes)
        for detection in out.detections:
            assert detection.results[0].hypothesis.class_id in classes
            assert 0 <= detection.bbox.center.position.x <= image.shape[1]
        total += len(out.detections)
    assert total > 0, "the trained tiny model found nothing at score 0.005"
    stats = h.settled()
    assert (stats.received, stats.processed, stats.dropped, stats.failed) == (len(val_images), len(val_images), 0, 0)


def test_compressed_input(harness_factory, val_images, reference):
    h = harness_factory(reference.info.path, input_transport="compressed")
    for image in val_images[:3]:
        data = cv2.imencode(".jpg", image[..., ::-1])[1].tobytes()
        out = h.send_and_wait(compressed_to_msg(data, "jpeg", h.header()))
        expected, _ = reference.detect_encoded(data)
        assert_same_detections(out, expected, reference.info.classes)


def test_every_raw_encoding(harness_factory, val_images, reference):
    h = harness_factory(reference.info.path)
    image = val_images[0]
    for encoding in ("rgb8", "bgr8", "rgba8", "bgra8", "mono8", "mono16"):
        converted = convert_color(image, "rgb", encoding)
        out = h.send_and_wait(image_to_msg(converted, encoding, h.header()))
        if encoding.startswith("mono"):
            expected, _ = reference.detect(converted)
        else:
            expected, _ = reference.detect(image, "rgb")
        assert_same_detections(out, expected, reference.info.classes)


def test_debug_image(harness_factory, val_images, reference):
    h = harness_factory(reference.info.path, publish_debug_image=True)
    image = val_images[1]
    h.send_and_wait(image_to_msg(image, "bgr8", h.header()))
    wait_for(lambda: h.debug_images, "the debug image")
    debug = h.debug_images[-1]
    assert (debug.encoding, debug.height, debug.width) == ("rgb8", image.shape[0], image.shape[1])


def test_live_threshold_change(harness_factory, val_images, reference):
    h = harness_factory(reference.info.path)
    msg = image_to_msg(val_images[0], "rgb8", Header())
    low = len(h.send_and_wait(msg).detections)
    assert low > 0
    assert h.node.set_parameters([Parameter("score_threshold", value=0.999)])[0].successful
    assert len(h.send_and_wait(msg).detections) == 0
    result = h.node.set_parameters([Parameter("max_detections", value=1), Parameter("score_threshold", value=SCORE)])
    assert all(r.successful for r in result)
    assert len(h.send_and_wait(msg).detections) == 1
    rejected = h.node.set_parameters([Parameter("nms_threshold", value=0.0)])[0]
    assert not rejected.successful and "nms_threshold" in rejected.reason
    assert h.node.get_parameter("nms_threshold").value == 0.7
    read_only = h.node.set_parameters([Parameter("input_transport", value="compressed")])[0]
    assert not read_only.successful


def test_class_agnostic_nms_parameter(harness_factory, val_images, reference):
    """Set at start-up and changed live, the node's detections match the engine's in the same NMS mode."""
    uncapped = dict(score_threshold=SCORE, max_detections=10000)  # the counts must not hit the cap
    aware = DetectorEngine(reference.info.path, providers=["cpu"], warmup_runs=0, **uncapped)
    agnostic = DetectorEngine(reference.info.path, providers=["cpu"], warmup_runs=0, class_agnostic_nms=True,
                              **uncapped)
    h = harness_factory(reference.info.path, class_agnostic_nms=True, max_detections=10000)
    msg = image_to_msg(val_images[0], "rgb8", Header())
    fewer, _ = agnostic.detect(val_images[0], "rgb")
    all_classes, _ = aware.detect(val_images[0], "rgb")
    assert 0 < len(fewer) < len(all_classes), "the tiny model gives overlapping boxes of different classes"
    assert_same_detections(h.send_and_wait(msg), fewer, reference.info.classes)
    assert h.node.set_parameters([Parameter("class_agnostic_nms", value=False)])[0].successful
    assert_same_detections(h.send_and_wait(msg), all_classes, reference.info.classes)
    rejected = h.node.set_parameters([Parameter("class_agnostic_nms", value="yes")])[0]   # typed: rclpy refuses it
    assert not rejected.successful and "Wrong parameter type" in rejected.reason
    assert h.node.get_parameter("class_agnostic_nms").value is False


def test_overload_drops_newest_wins_and_counts_add_up(harness_factory, reference):
    h = harness_factory(reference.info.path, qos_depth=100)   # DDS keeps all 60: every drop is the node's
    big = np.random.default_rng(0).integers(0, 255, (480, 640, 3), dtype=np.uint8)
    messages = [image_to_msg(big, "rgb8", h.header()) for _ in range(60)]
    for msg in messages:
        h.publish(msg)
    stats = wait_for(lambda: (s := h.settled()).received == len(messages) and s, "all 60 frames received")
    assert stats.received == stats.processed + stats.dropped + stats.failed
    assert stats.failed == 0 and stats.dropped > 0, "60 frames back to back must overrun a one-slot mailbox"
    wait_for(lambda: len(h.outputs) == stats.processed, "one output per processed frame")
    last = messages[-1].header.stamp
    assert (h.outputs[-1].header.stamp.sec, h.outputs[-1].header.stamp.nanosec) == (last.sec, last.nanosec), \
        "the newest frame must always be processed"
    assert int(h.diagnostic("frames_dropped", fresh=True)) == stats.dropped


def test_hot_swap_during_stream_loses_no_frame(harness_factory, val_images, reference, second_model):
    h = harness_factory(reference.info.path)
    old_hash = h.diagnostic("model_sha256", fresh=True)
    new_hash = hashlib.sha256(second_model.read_bytes()).hexdigest()
    assert old_hash != new_hash
    stop = threading.Event()

    def stream():
        while not stop.is_set():
            h.publish(image_to_msg(val_images[2], "rgb8", h.header()))
            time.sleep(1 / 30)

    streamer = threading.Thread(target=stream)
    streamer.start()
    try:
        wait_for(lambda: len(h.outputs) > 5, "outputs before the swap")
        result = h.node.set_parameters([Parameter("model_path", value=str(second_model))])[0]
        assert result.successful, result.reason
        wait_for(lambda: h.diagnostic("model_sha256") == new_hash, "the new hash on /diagnostics")
        count = len(h.outputs)
        wait_for(lambda: len(h.outputs) > count + 5, "outputs after the swap")
    finally:
        stop.set()
        streamer.join()
    stats = h.settled()
    assert stats.failed == 0
    assert stats.received == stats.processed + stats.dropped
    assert h.diagnostic("swaps_done", fresh=True) == "1"
    assert h.level() != 2


def _wrong_layout_model(path: Path) -> Path:
    """A valid ONNX classifier (image in, [1, 3] out): not a detector layout."""
    graph = helper.make_graph(
        [helper.make_node("GlobalAveragePool", ["images"], ["pooled"]),
         helper.make_node("Flatten", ["pooled"], ["logits"])],
        "classifier", [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 64, 64])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 3])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


@pytest.mark.parametrize("kind", ["missing", "corrupt", "wrong_layout"])
def test_bad_swap_keeps_the_old_model(harness_factory, val_images, reference, tmp_path, kind):
    h = harness_factory(reference.info.path)
    good = str(reference.info.path)
    bad = tmp_path / f"{kind}.onnx"
    if kind == "corrupt":
        bad.write_bytes(np.random.default_rng(1).bytes(5000))
    elif kind == "wrong_layout":
        _wrong_layout_model(bad)
    result = h.node.set_parameters([Parameter("model_path", value=str(bad))])[0]
    if kind == "missing":
        assert not result.successful and "not found" in result.reason
    else:
        assert result.successful  # accepted, then the loader fails and reverts
        wait_for(lambda: h.node.get_parameter("model_path").value == good, "model_path to revert")
    wait_for(lambda: h.diagnostics and h.level() == 2, "ERROR on /diagnostics")
    message = h.diagnostics[-1].status[0].message
    assert f"still serving {good}" in message and str(bad) in message
    assert h.diagnostic("model_path") == good and h.diagnostic("swaps_failed") == "1"
    h.send_and_wait(image_to_msg(val_images[0], "rgb8", h.header()))   # the old model still serves
    assert h.settled().failed == 0


def _image_msg(encoding="rgb8", height=4, width=4, step=12, size=48) -> Image:
    msg = Image(height=height, width=width, encoding=encoding, step=step)
    msg.data = bytes(size)
    return msg


@pytest.mark.parametrize("msg, reason", [
    (_image_msg(step=8), "step 8 is smaller than one row"),
    (_image_msg(size=20), "truncated"),
    (_image_msg(encoding="yuv422"), "unsupported image encoding 'yuv422'"),
    (_image_msg(height=0, width=0, step=0, size=0), "image is 0x0"),
])
def test_malformed_images_fail_and_the_node_lives_on(harness_factory, val_images, reference, msg, reason):
    h = harness_factory(reference.info.path)
    msg.header = h.header()
    assert reason in h.send_bad_and_wait(msg)
    h.send_and_wait(image_to_msg(val_images[0], "rgb8", h.header()))
    stats = h.settled()
    assert (stats.failed, stats.processed) == (1, 1)


def test_corrupt_jpeg_and_empty_compressed_fail(harness_factory, reference):
    h = harness_factory(reference.info.path, input_transport="compressed")
    assert "cannot decode" in h.send_bad_and_wait(compressed_to_msg(b"\xff\xd8 not a jpeg", "jpeg", h.header()))
    assert "no data" in h.send_bad_and_wait(compressed_to_msg(b"", "jpeg", h.header()))
    good = cv2.imencode(".png", np.zeros((32, 48, 3), np.uint8))[1].tobytes()
    h.send_and_wait(compressed_to_msg(good, "png", h.header()))


def test_oversized_frame_is_refused(harness_factory, reference):
    h = harness_factory(reference.info.path, max_image_pixels=100 * 100)
    assert "over the limit of 10000" in h.send_bad_and_wait(
        image_to_msg(np.zeros((120, 100, 3), np.uint8), "rgb8", h.header()))


def test_no_model_is_an_error_until_one_is_set(harness_factory, val_images, reference):
    h = harness_factory(None)
    wait_for(lambda: h.diagnostics and h.level() == 2, "ERROR on /diagnostics")
    assert "no model loaded" in h.diagnostics[-1].status[0].message
    assert "no model loaded" in h.send_bad_and_wait(image_to_msg(val_images[0], "rgb8", h.header()))
    assert h.node.set_parameters([Parameter("model_path", value=str(reference.info.path))])[0].successful
    wait_for(lambda: h.diagnostic("model_sha256") == reference.info.file_sha256, "the model to load")
    h.send_and_wait(image_to_msg(val_images[0], "rgb8", h.header()))


def test_diagnostics_report_every_key_and_ok_when_healthy(harness_factory, val_images, reference):
    h = harness_factory(reference.info.path)
    for image in val_images:
        h.send_and_wait(image_to_msg(image, "rgb8", h.header()))
    h.diagnostic("level", fresh=True)
    status = h.diagnostics[-1].status[0]
    values = {kv.key: kv.value for kv in status.values}
    assert status.level[0] == 0 and status.message == "OK", status.message
    assert values["model_path"] == str(reference.info.path)
    assert values["model_sha256"] == reference.info.file_sha256
    assert values["active_provider"] == "CPUExecutionProvider"
    assert values["frames_received"] == values["frames_processed"] == str(len(val_images))
    for stage in ("decode", "preprocess", "inference", "postprocess", "total"):
        for p in ("p50", "p90", "p99"):
            assert float(values[f"latency_{stage}_ms_{p}"]) >= 0
    assert 0 < float(values["pipeline_latency_ms_p50"]) < 10_000


def test_pipeline_latency_uses_the_node_clock_with_sim_time(harness_factory, val_images, reference):
    """With use_sim_time the latency is /clock time - header.stamp: a stamp 0.5 s behind the clock -> ~500 ms."""
    from rosgraph_msgs.msg import Clock

    h = harness_factory(reference.info.path, use_sim_time=True)
    clock_pub = h.io.create_publisher(Clock, "/clock", 10)
    sim_now = TimeMsg(sec=1000, nanosec=0)
    wait_for(lambda: clock_pub.get_subscription_count() > 0, "the node's /clock subscription")
    clock_pub.publish(Clock(clock=sim_now))
    wait_for(lambda: h.node.get_clock().now().nanoseconds == 1000 * 10**9, "the node to take the sim time")
    h.send_and_wait(image_to_msg(val_images[0], "rgb8", Header(stamp=TimeMsg(sec=999, nanosec=500_000_000))))
    assert float(h.diagnostic("pipeline_latency_ms_p50", fresh=True)) == pytest.approx(500.0)
