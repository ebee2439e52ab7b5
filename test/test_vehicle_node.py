"""The detector node as a vehicle integrator meets it, with real rclpy pub/sub (own context per test): labels and
LabelInfo, typed parameters with ranges, `ros2 param dump` files, the debug image on demand, swaps restricted
to allowed directories / a sha256 manifest, and the managed (lifecycle) variant.

Models are tiny constant-output ONNX graphs (test_adapters.py) with a known YOLOX-layout prediction.
"""

from __future__ import annotations

import hashlib
import math
import re
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

rclpy = pytest.importorskip("rclpy")
pytest.importorskip("vision_msgs.msg")

from lifecycle_msgs.msg import State, Transition  # noqa: E402
from lifecycle_msgs.srv import ChangeState  # noqa: E402
from rcl_interfaces.msg import ParameterType  # noqa: E402
from rclpy.lifecycle import TransitionCallbackReturn  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402
from vision_msgs.msg import Detection2DArray, LabelInfo  # noqa: E402

from prune_perception.node_params import DETECTOR_PARAMS  # noqa: E402
from prune_perception.ros.detector_node import DetectorNode, LifecycleDetectorNode, ros_parameter  # noqa: E402
from prune_perception.ros.messages import image_to_msg  # noqa: E402
from prune_perception.ros.runner import detector_params  # noqa: E402
from node_harness import TIMEOUT, Harness, wait_for  # noqa: E402
from test_adapters import constant_model, yolox_output  # noqa: E402

LATCHED = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)
IMAGE = np.zeros((64, 64, 3), np.uint8)


@pytest.fixture
def yolox_model(tmp_path) -> Path:
    """YOLOX layout, 2 classes; one prediction: class 1 at 0.72, box (8, 2, 40, 14) in a 64x64 image."""
    (tmp_path / "models").mkdir()
    return constant_model(tmp_path / "models" / "yolox.onnx", {"output": yolox_output(decoded=False)})


@pytest.fixture
def labels_file(tmp_path) -> Path:
    path = tmp_path / "labels.txt"
    path.write_text("car\npedestrian\n")
    return path


def image(h: Harness) -> Image:
    return image_to_msg(IMAGE, "rgb8", h.header())


def latched_label_info(h: Harness) -> list[LabelInfo]:
    """A late subscriber to the node's LabelInfo (transient local)."""
    received: list[LabelInfo] = []
    h.io.create_subscription(LabelInfo, "/detector_node/out/label_info", received.append, LATCHED)
    return received


@pytest.fixture
def harness():
    made = []

    def make(node_class=DetectorNode, **params) -> Harness:
        made.append(Harness(node_class, **{"warmup_runs": 0, "diagnostics_period": 0.1, **params}))
        return made[-1]

    yield make
    for h in made:
        h.close()


# ------------------------------------------------------------------------------ labels ----
def test_class_names_from_a_labels_file_and_label_info_for_late_subscribers(harness, yolox_model, labels_file):
    h = harness(model_path=str(yolox_model), labels_path=str(labels_file), score_threshold=0.5)
    out = h.send_and_wait(image(h))
    assert [d.results[0].hypothesis.class_id for d in out.detections] == ["pedestrian"]
    assert out.detections[0].results[0].hypothesis.score == pytest.approx(0.72, abs=1e-6)
    received = latched_label_info(h)   # subscribes long after the model was loaded and LabelInfo published
    info = wait_for(lambda: received and received[-1], "the latched LabelInfo")
    assert [(c.class_id, c.class_name) for c in info.class_map] == [(0, "car"), (1, "pedestrian")]
    assert info.threshold == pytest.approx(0.5)
    # class_id in the detections is the name that LabelInfo maps the model's output index to
    assert info.class_map[1].class_name == out.detections[0].results[0].hypothesis.class_id
    # a live threshold change republishes it; class_names win over the labels file (a model reload)
    assert h.node.set_parameters([Parameter("score_threshold", value=0.25)])[0].successful
    wait_for(lambda: received[-1].threshold == pytest.approx(0.25), "LabelInfo with the new threshold")
    assert h.node.set_parameters([ros_parameter("class_names", ["bike", "truck"])])[0].successful
    wait_for(lambda: [c.class_name for c in received[-1].class_map] == ["bike", "truck"], "the new class map")
    assert [d.results[0].hypothesis.class_id for d in h.send_and_wait(image(h)).detections] == ["truck"]


def test_wrong_number_of_class_names_is_refused_and_the_old_ones_stay(harness, yolox_model):
    h = harness(model_path=str(yolox_model), class_names=["car", "pedestrian"])
    assert h.node.set_parameters([ros_parameter("class_names", ["a", "b", "c"])])[0].successful
    wait_for(lambda: h.node.get_parameter("class_names").value == ["car", "pedestrian"], "class_names to revert")
    status = h.status()
    assert status.level[0] == 2 and "3 class names given but the model outputs 2 classes" in status.message
    assert h.send_and_wait(image(h)).detections[0].results[0].hypothesis.class_id == "pedestrian"


# ------------------------------------------------------------------------------ parameters ----
def test_parameter_descriptors_carry_types_and_ranges(harness, yolox_model):
    h = harness(model_path=str(yolox_model))
    describe = {spec.name: h.node.describe_parameter(spec.name) for spec in DETECTOR_PARAMS}
    score = describe["score_threshold"]
    assert score.type == ParameterType.PARAMETER_DOUBLE and not score.dynamic_typing
    assert (score.floating_point_range[0].from_value, score.floating_point_range[0].to_value) == (0.0, 1.0)
    warmup = describe["warmup_runs"]
    assert warmup.type == ParameterType.PARAMETER_INTEGER
    assert (warmup.integer_range[0].from_value, warmup.integer_range[0].to_value) == (0, 1000)
    assert math.isinf(describe["latency_warn_ms"].floating_point_range[0].to_value)
    assert describe["class_names"].type == ParameterType.PARAMETER_STRING_ARRAY
    assert describe["allowed_model_dirs"].read_only and describe["input_transport"].read_only
    for spec in DETECTOR_PARAMS:
        if spec.kind in ("int", "float") and spec.minimum is not None:
            ranges = describe[spec.name].integer_range or describe[spec.name].floating_point_range
            assert ranges and ranges[0].from_value == spec.minimum, spec.name
    refused = h.node.set_parameters([Parameter("score_threshold", value=1.5)])[0]
    assert not refused.successful and "score_threshold" in refused.reason
    wrong_type = h.node.set_parameters([Parameter("max_detections", value="ten")])[0]
    assert not wrong_type.successful
    assert h.node.get_parameter("score_threshold").value == 0.35


def _dump(node) -> dict:
    """What `ros2 param dump` writes: the node's full name as the top key, every parameter (use_sim_time too)."""
    values = {name: param.value for name, param in node._parameters.items()}
    return {node.get_fully_qualified_name(): {"ros__parameters": values}}


def test_dumped_params_file_is_accepted_by_every_entry_point(harness, yolox_model, labels_file, tmp_path):
    h = harness(model_path=str(yolox_model), labels_path=str(labels_file), score_threshold=0.5,
                allowed_model_dirs=[str(yolox_model.parent)])
    dumped = tmp_path / "dumped.yaml"
    dumped.write_text(yaml.safe_dump(_dump(h.node)))
    assert "use_sim_time" in dumped.read_text() and "/detector_node:" in dumped.read_text()
    # `prune-perception node --config` (the in-process runner): our parameters, use_sim_time passed on
    params = detector_params(str(dumped), "", {})
    assert params["score_threshold"] == 0.5 and params["labels_path"] == str(labels_file)
    assert params["use_sim_time"] is False and params["allowed_model_dirs"] == [str(yolox_model.parent)]
    # --ros-args --params-file (ros2 run, launch): rcl reads it, the node starts with its values
    context = rclpy.Context()
    rclpy.init(context=context, args=["--ros-args", "--params-file", str(dumped)])
    try:
        node = DetectorNode(context=context)
        try:
            assert node.get_parameter("score_threshold").value == 0.5
            assert node.get_parameter("class_names").value == []   # `[]` in the file: rcl reads "unset"
            assert node.model_state().path == str(yolox_model)
        finally:
            node.close()
            node.destroy_node()
    finally:
        rclpy.shutdown(context=context)


def test_debug_image_is_drawn_only_while_someone_subscribes(harness, yolox_model):
    h = harness(model_path=str(yolox_model), publish_debug_image=True, watch_debug_image=False)
    for _ in range(3):
        h.send_and_wait(image(h))
    assert h.node.debug_images_drawn == 0
    images: list[Image] = []
    h.io.create_subscription(Image, "/detector_node/out/image", images.append,
                             QoSProfile(depth=5, reliability=ReliabilityPolicy.BEST_EFFORT))
    wait_for(lambda: h.node._debug_pub.get_subscription_count() > 0, "the debug image subscriber to match")
    wait_for(lambda: h.send_and_wait(image(h)) and images, "a debug image")
    assert h.node.debug_images_drawn >= 1 and (images[-1].encoding, images[-1].width) == ("rgb8", 64)


# ------------------------------------------------------------------------------ swap policy ----
def test_swap_outside_allowed_dirs_is_refused_with_the_reason_on_diagnostics(harness, yolox_model, tmp_path):
    outside = constant_model(tmp_path / "outside.onnx", {"output": yolox_output(decoded=True)})
    h = harness(model_path=str(yolox_model), allowed_model_dirs=[str(yolox_model.parent)])
    result = h.node.set_parameters([Parameter("model_path", value=str(outside))])[0]
    assert not result.successful and "outside allowed_model_dirs" in result.reason
    status = wait_for(lambda: (s := h.status()).level[0] == 2 and s, "ERROR on /diagnostics")
    assert "model swap refused" in status.message and f"still serving {yolox_model}" in status.message
    assert h.values()["model_path"] == str(yolox_model)
    assert h.send_and_wait(image(h)).detections, "the old model keeps serving"
    assert not h.node.set_parameters([ros_parameter("allowed_model_dirs", [str(tmp_path)])])[0].successful


def test_swap_to_a_model_whose_sha256_is_not_in_the_manifest_is_refused(harness, yolox_model, tmp_path):
    other = constant_model(yolox_model.parent / "other.onnx", {"output": yolox_output(decoded=True)})
    manifest = tmp_path / "SHA256SUMS"
    manifest.write_text(f"{hashlib.sha256(yolox_model.read_bytes()).hexdigest()}  yolox.onnx\n")
    h = harness(model_path=str(yolox_model), model_manifest=str(manifest))
    assert h.node.set_parameters([Parameter("model_path", value=str(other))])[0].successful   # checked in the loader
    wait_for(lambda: h.node.get_parameter("model_path").value == str(yolox_model), "model_path to revert")
    status = wait_for(lambda: (s := h.status()).level[0] == 2 and s, "ERROR on /diagnostics")
    assert "not in model_manifest" in status.message and f"still serving {yolox_model}" in status.message
    assert h.values()["model_sha256"] == hashlib.sha256(yolox_model.read_bytes()).hexdigest()
    assert h.send_and_wait(image(h)).detections


# ------------------------------------------------------------------------------ lifecycle ----
def _change_state(h: Harness, transition_id: int) -> bool:
    """A transition requested through the node's ~/change_state service, as `ros2 lifecycle set` does."""
    client = h.io.create_client(ChangeState, "/detector_node/change_state")
    assert client.wait_for_service(TIMEOUT)
    future = client.call_async(ChangeState.Request(transition=Transition(id=transition_id)))
    wait_for(future.done, "the change_state response")
    h.io.destroy_client(client)
    return future.result().success


def _state(h: Harness) -> str:
    return h.node._state_machine.current_state[1]


def test_lifecycle_transitions_in_order_and_no_frames_while_inactive(harness, yolox_model):
    h = harness(LifecycleDetectorNode, model_path=str(yolox_model))
    assert _state(h) == "unconfigured"
    assert h.values()["lifecycle_state"] == "unconfigured" and h.status().level[0] == 0
    labels = latched_label_info(h)
    assert _change_state(h, Transition.TRANSITION_CONFIGURE) and _state(h) == "inactive"
    assert h.values()["model_path"] == str(yolox_model)   # loaded and warmed up in configure
    wait_for(lambda: labels, "LabelInfo after configure")
    wait_for(lambda: h.publisher.get_subscription_count() > 0, "the image subscription")
    for _ in range(4):
        h.publish(image(h))
    wait_for(lambda: h.values().get("frames_inactive") == "4", "4 frames counted while inactive")
    assert not h.outputs and h.node.stats().received == 0
    assert _change_state(h, Transition.TRANSITION_ACTIVATE) and _state(h) == "active"
    assert h.send_and_wait(image(h)).detections[0].results[0].hypothesis.class_id == "class_1"
    assert h.node.trigger_deactivate() == TransitionCallbackReturn.SUCCESS and _state(h) == "inactive"
    processed = h.node.stats().processed
    for _ in range(3):
        h.publish(image(h))
    wait_for(lambda: h.values().get("frames_inactive") == "7", "3 more frames counted while inactive")
    assert h.node.stats().processed == processed == 1
    assert h.node.trigger_cleanup() == TransitionCallbackReturn.SUCCESS and _state(h) == "unconfigured"
    assert h.node.core is None   # the model is released
    # re-configure after cleanup: the same node serves again
    assert h.node.trigger_configure() == TransitionCallbackReturn.SUCCESS
    assert h.node.trigger_activate() == TransitionCallbackReturn.SUCCESS
    assert h.send_and_wait(image(h)).detections
    assert h.node.trigger_shutdown() == TransitionCallbackReturn.SUCCESS
    assert h.node._state_machine.current_state[0] == State.PRIMARY_STATE_FINALIZED and h.node.core is None


def test_lifecycle_configure_fails_cleanly_when_the_model_does_not_load(harness, yolox_model, tmp_path):
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(np.random.default_rng(0).bytes(4000))
    # latency_warn_ms=0: a slow first frame on a loaded machine must not turn the recovered OK into a WARN
    h = harness(LifecycleDetectorNode, model_path=str(corrupt), latency_warn_ms=0.0)
    assert not _change_state(h, Transition.TRANSITION_CONFIGURE)
    assert _state(h) == "unconfigured" and h.node.core is None
    status = wait_for(lambda: (s := h.status()).level[0] == 2 and s, "ERROR on /diagnostics")
    assert "configure failed" in status.message and str(corrupt) in status.message
    # fix the parameter, configure again
    assert h.node.set_parameters([Parameter("model_path", value=str(yolox_model))])[0].successful
    assert h.node.trigger_configure() == TransitionCallbackReturn.SUCCESS
    assert h.node.trigger_activate() == TransitionCallbackReturn.SUCCESS
    assert h.send_and_wait(image(h)).detections
    status = h.status()
    assert status.level[0] == 0 and status.message == "OK", status.message


class HumbleDetectorNode(DetectorNode):
    """The plain node as it runs on Humble's rclpy, which has no post-set parameter callbacks."""

    POST_SET_CALLBACKS = False


def test_hot_swap_and_revert_without_post_set_callbacks(harness, yolox_model, tmp_path):
    other = constant_model(yolox_model.parent / "other.onnx", {"output": yolox_output(decoded=True)})
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(np.random.default_rng(1).bytes(3000))
    h = harness(HumbleDetectorNode, model_path=str(yolox_model))
    assert h.node.set_parameters([Parameter("model_path", value=str(corrupt))])[0].successful
    wait_for(lambda: h.node.get_parameter("model_path").value == str(yolox_model), "model_path to revert")
    assert h.node.set_parameters([Parameter("model_path", value=str(other))])[0].successful
    sha = hashlib.sha256(other.read_bytes()).hexdigest()
    wait_for(lambda: h.values().get("model_sha256") == sha, "the swapped model on /diagnostics")
    assert h.values()["swaps_done"] == "1" and h.values()["swaps_failed"] == "1"


@pytest.mark.slow
def test_cli_lifecycle_nodes_wait_for_their_transitions(yolox_model, tmp_path):
    """`prune-perception node --lifecycle`: the detector starts unconfigured and publishes nothing until a
    lifecycle client configures and activates it (here over its ~/change_state service, as a manager does)."""
    import subprocess
    import sys

    from rclpy.executors import SingleThreadedExecutor

    proc = subprocess.Popen([sys.executable, "-m", "prune_perception.cli", "node", "--lifecycle",
                             "--model", str(yolox_model), "-p", "providers=[cpu]", "--camera", "synthetic",
                             "--camera-size", "64x64", "--camera-fps", "20", "--duration", "90"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=Path(__file__).resolve().parents[1])
    context = rclpy.Context()
    rclpy.init(context=context)
    node = rclpy.create_node("test_lifecycle_client", context=context)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(node)
    outputs = []
    node.create_subscription(Detection2DArray, "/detector_node/out/detections", outputs.append, 10)
    client = node.create_client(ChangeState, "/detector_node/change_state")

    def change(transition_id):
        # a request sent before DDS matched the new server is lost (volatile): ask again after a while
        for _ in range(4):
            future = client.call_async(ChangeState.Request(transition=Transition(id=transition_id)))
            executor.spin_until_future_complete(future, timeout_sec=5.0)
            if future.result() is not None:
                return future.result().success
            client.remove_pending_request(future)
        return "no response"

    try:
        # the subprocess imports ORT and rclpy first: on a loaded machine that alone can take most of TIMEOUT
        deadline = time.monotonic() + 3 * TIMEOUT
        while not client.wait_for_service(1.0) and proc.poll() is None and time.monotonic() < deadline:
            pass
        assert client.service_is_ready(), "the lifecycle node's change_state service"
        deadline = time.monotonic() + 2.0   # frames flow from the synthetic camera meanwhile
        while time.monotonic() < deadline:
            executor.spin_once(timeout_sec=0.1)
        assert not outputs, "an unconfigured node published detections"
        assert change(Transition.TRANSITION_CONFIGURE) is True and change(Transition.TRANSITION_ACTIVATE) is True
        deadline = time.monotonic() + TIMEOUT
        while len(outputs) < 3 and time.monotonic() < deadline:
            executor.spin_once(timeout_sec=0.1)
        assert len(outputs) >= 3, "no detections after activate"
        assert outputs[-1].detections[0].results[0].hypothesis.class_id == "class_1"
    except AssertionError as exc:
        proc.send_signal(2)
        stdout, stderr = proc.communicate(timeout=30)
        raise AssertionError(f"{exc}\nnode output:\n{stdout[-2000:]}\n{stderr[-3000:]}") from None
    finally:
        executor.shutdown()
        node.destroy_node()
        rclpy.shutdown(context=context)
    proc.send_signal(2)
    stdout, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 0, stderr[-2000:]
    assert re.search(r"detector 0: received [1-9]\d*, processed [1-9]", stdout), (stdout, stderr[-2000:])
