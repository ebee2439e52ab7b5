"""Shared by the node tests: polling with a timeout, and a detector node (plain or lifecycle) wired to a test
node with real rclpy pub/sub in its own context. Only ``wait_for`` is ROS-free; import the rest after
``pytest.importorskip("rclpy")``."""

from __future__ import annotations

import threading
import time

TIMEOUT = 20.0


def wait_for(predicate, what: str, timeout: float = TIMEOUT):
    """The first truthy value of ``predicate()``; AssertionError naming ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.01)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


class Harness:
    """A detector node plus a test node (image publisher, detections/diagnostics/debug-image subscribers) on one
    multi-threaded executor. ``params`` are the node's parameter overrides on top of test-friendly defaults;
    ``watch_debug_image`` False: nobody subscribes to the debug image."""

    def __init__(self, node_class=None, *, watch_debug_image: bool = True, **params):
        import rclpy
        from diagnostic_msgs.msg import DiagnosticArray
        from rclpy.executors import MultiThreadedExecutor
        from rclpy.qos import QoSProfile, ReliabilityPolicy
        from sensor_msgs.msg import CompressedImage, Image
        from vision_msgs.msg import Detection2DArray

        from prune_perception.ros.detector_node import DetectorNode, ros_parameter

        self._rclpy = rclpy
        reliable = QoSProfile(depth=200, reliability=ReliabilityPolicy.RELIABLE)
        self.context = rclpy.Context()
        rclpy.init(context=self.context)
        settings = {"providers": ["cpu"], "qos_reliability": "reliable", "qos_depth": 10, "diagnostics_period": 0.2,
                    "input_timeout": 0.0, **params}
        self.node = (node_class or DetectorNode)(
            context=self.context, parameter_overrides=[ros_parameter(k, v) for k, v in settings.items()])
        self.io = rclpy.create_node("test_io", context=self.context)
        compressed = settings.get("input_transport") == "compressed"
        self.publisher = self.io.create_publisher(
            CompressedImage if compressed else Image,
            "/detector_node/in/image/compressed" if compressed else "/detector_node/in/image", reliable)
        self.outputs: list[Detection2DArray] = []
        self.diagnostics: list[DiagnosticArray] = []
        self.debug_images: list[Image] = []
        self.io.create_subscription(Detection2DArray, "/detector_node/out/detections", self.outputs.append, reliable)
        self.io.create_subscription(DiagnosticArray, "/diagnostics", self.diagnostics.append, 50)
        if watch_debug_image:
            self.io.create_subscription(Image, "/detector_node/out/image", self.debug_images.append,
                                        QoSProfile(depth=10, reliability=ReliabilityPolicy.BEST_EFFORT))
        self.executor = MultiThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self.executor.add_node(self.io)
        self.thread = threading.Thread(target=self.executor.spin, daemon=True)
        self.thread.start()
        self._stamp = 0
        wait_for(lambda: self.publisher.get_subscription_count() > 0, "the node's image subscription")

    def header(self):
        """A header with a fresh, unique stamp (now on the test node's clock)."""
        from builtin_interfaces.msg import Time
        from std_msgs.msg import Header

        self._stamp += 1
        now = self.io.get_clock().now().nanoseconds + self._stamp
        return Header(stamp=Time(sec=now // 10**9, nanosec=now % 10**9), frame_id="cam_test")

    def publish(self, msg) -> None:
        self.publisher.publish(msg)

    def send_and_wait(self, msg):
        """Publish one message and wait for its output (matched by stamp)."""
        before = len(self.outputs)
        self.publish(msg)
        wait_for(lambda: len(self.outputs) > before, "a Detection2DArray")
        out = self.outputs[-1]
        assert (out.header.stamp.sec, out.header.stamp.nanosec) == (msg.header.stamp.sec, msg.header.stamp.nanosec)
        return out

    def send_bad_and_wait(self, msg) -> str:
        """Publish a malformed message; wait until it is counted as failed; return the node's last error."""
        failed = self.node.stats().failed
        self.publish(msg)
        wait_for(lambda: self.node.stats().failed > failed, "the frame to be counted as failed")
        return self.diagnostic("last_error", fresh=True)

    def settled(self):
        """Counts once no frame is pending."""
        return wait_for(lambda: (s := self.node.stats()).pending == 0 and s, "all frames accounted for")

    def status(self, fresh: bool = True):
        """The node's newest DiagnosticStatus (``fresh``: one published after this call)."""
        if fresh:
            count = len(self.diagnostics)
            wait_for(lambda: len(self.diagnostics) > count + 1, "a fresh /diagnostics message")
        return self.diagnostics[-1].status[0]

    def values(self, fresh: bool = True) -> dict[str, str]:
        return {kv.key: kv.value for kv in self.status(fresh).values}

    def diagnostic(self, key: str, fresh: bool = False) -> str:
        return self.values(fresh)[key]

    def level(self) -> int:
        return self.diagnostics[-1].status[0].level[0]

    def close(self) -> None:
        self.node.close()
        self.executor.shutdown()
        self.node.destroy_node()
        self.io.destroy_node()
        self._rclpy.shutdown(context=self.context)
        self.thread.join(5)
