"""``camera_publisher``: drives the detector without a camera.

Publishes a video file, an image folder (sorted by name) or live synthetic road scenes at ``fps``
on ``image_raw`` (sensor_msgs/Image, ``encoding``) or ``image_raw/compressed``
(sensor_msgs/CompressedImage, JPEG). Relative topics, so a namespace per camera works. Frames
are stamped with the node clock when published. ``count`` > 0 stops after that many frames
(``loop`` repeats a file/folder source until then).
"""

from __future__ import annotations

import functools
import itertools
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import rclpy
from rcl_interfaces.msg import ParameterDescriptor
from rclpy.node import Node
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import Header

from prune_perception.errors import ConfigError, PrunePerceptionError
from prune_perception.node_params import ParamSpec, validate_params
from prune_perception.ros.entry import start_node, stop_on_signals
from prune_perception.ros.messages import compressed_to_msg, image_to_msg
from prune_perception.runtime.image_msg import RAW_ENCODINGS, convert_color

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")

CAMERA_PARAMS: tuple[ParamSpec, ...] = (
    ParamSpec("source", "synthetic", "'synthetic' (rendered road scenes), a video file or an image folder.",
              "read_only"),
    ParamSpec("fps", 10.0, "Frames per second.", "read_only", minimum=0.0, maximum=1000.0, exclusive_minimum=True),
    ParamSpec("transport", "raw", "raw: sensor_msgs/Image on image_raw; compressed: JPEG "
              "sensor_msgs/CompressedImage on image_raw/compressed.", "read_only", choices=("raw", "compressed")),
    ParamSpec("encoding", "rgb8", "Encoding of raw images.", "read_only", choices=tuple(RAW_ENCODINGS)),
    ParamSpec("jpeg_quality", 90, "JPEG quality of compressed images.", "read_only", minimum=1, maximum=100),
    ParamSpec("width", 640, "Width of synthetic scenes (file sources keep their size).", "read_only",
              minimum=16, maximum=8192),
    ParamSpec("height", 480, "Height of synthetic scenes.", "read_only", minimum=16, maximum=8192),
    ParamSpec("distinct_frames", 16, "Synthetic scenes rendered once and cycled (rendering is slower than "
              "publishing).", "read_only", minimum=1, maximum=10000),
    ParamSpec("seed", 0, "Random seed of the synthetic scenes.", "read_only", minimum=0),
    ParamSpec("count", 0, "Stop after this many frames (0: run until shut down).", "read_only", minimum=0),
    ParamSpec("loop", True, "Repeat a video file or image folder.", "read_only"),
    ParamSpec("frame_id", "camera", "header.frame_id of the published images.", "read_only"),
    ParamSpec("qos_reliability", "best_effort", "Reliability of the image publisher.", "read_only",
              choices=("best_effort", "reliable")),
)


def _synthetic_frames(width: int, height: int, distinct: int, seed: int) -> list[np.ndarray]:
    from prune_perception.data.synth import render_scene

    rng = np.random.default_rng(seed)
    return [render_scene(rng, width, height)[0] for _ in range(distinct)]


def _video_frames(path: Path) -> Iterator[np.ndarray]:
    capture = cv2.VideoCapture(str(path))
    try:
        while True:
            ok, frame = capture.read()
            if not ok:
                return
            yield frame
    finally:
        capture.release()


def _folder_frames(paths: list[Path]) -> Iterator[np.ndarray]:
    for path in paths:
        frame = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if frame is not None:
            yield frame


def bgr_frames(params: dict[str, Any]) -> Iterator[np.ndarray]:
    """BGR uint8 frames of the configured source, repeated when ``loop`` (synthetic always repeats).

    The source is checked here (ConfigError), not at the first frame."""
    source = params["source"]
    if source == "synthetic":
        return itertools.cycle(_synthetic_frames(params["width"], params["height"], params["distinct_frames"],
                                                 params["seed"]))
    path = Path(source)
    if path.is_dir():
        paths = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not paths:
            raise ConfigError(f"source {path}: no images ({', '.join(IMAGE_SUFFIXES)}) in this folder")
        make = functools.partial(_folder_frames, paths)
    elif path.is_file():
        capture = cv2.VideoCapture(str(path))
        opened = capture.isOpened()
        capture.release()
        if not opened:
            raise ConfigError(f"source {path}: cannot open as a video")
        make = functools.partial(_video_frames, path)
    else:
        raise ConfigError(f"source {source!r}: not 'synthetic', a video file or an image folder")
    return _repeat(make, params["loop"], path)


def _repeat(make, loop: bool, path: Path) -> Iterator[np.ndarray]:
    while True:
        produced = 0
        for frame in make():
            produced += 1
            yield frame
        if produced == 0:
            raise ConfigError(f"source {path}: no readable frames")
        if not loop:
            return


class CameraPublisher(Node):
    """Publishes frames on a timer; ``done`` is set once ``count`` frames went out or the source ended."""

    def __init__(self, node_name: str = "camera_publisher", **kwargs: Any) -> None:
        super().__init__(node_name, **kwargs)
        for spec in CAMERA_PARAMS:
            self.declare_parameter(spec.name, spec.default, ParameterDescriptor(
                description=spec.description, additional_constraints=spec.constraint_text(), read_only=True,
                dynamic_typing=True))
        self.params = validate_params({spec.name: self.get_parameter(spec.name).value for spec in CAMERA_PARAMS},
                                      f"node '{node_name}'", CAMERA_PARAMS)
        self._frames = bgr_frames(self.params)
        self._compressed = self.params["transport"] == "compressed"
        qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1,
                         reliability=ReliabilityPolicy.BEST_EFFORT if self.params["qos_reliability"] == "best_effort"
                         else ReliabilityPolicy.RELIABLE)
        self._publisher = (self.create_publisher(CompressedImage, "image_raw/compressed", qos) if self._compressed
                           else self.create_publisher(Image, "image_raw", qos))
        self.published = 0
        self.done = False
        self._timer = self.create_timer(1.0 / self.params["fps"], self._publish_next)

    def _publish_next(self) -> None:
        if self.done:
            return
        frame = next(self._frames, None)
        if frame is None:
            self._finish("source ended")
            return
        header = Header(stamp=self.get_clock().now().to_msg(), frame_id=self.params["frame_id"])
        if self._compressed:
            ok, encoded = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, self.params["jpeg_quality"]])
            self._publisher.publish(compressed_to_msg(encoded.tobytes(), "jpeg", header))
        else:
            encoding = self.params["encoding"]
            self._publisher.publish(image_to_msg(convert_color(frame, "bgr", encoding), encoding, header))
        self.published += 1
        if self.params["count"] and self.published >= self.params["count"]:
            self._finish(f"{self.published} frames published")

    def _finish(self, why: str) -> None:
        self.done = True
        self._timer.cancel()
        self.get_logger().info(f"camera_publisher done: {why}")


def main(args: list[str] | None = None) -> int:
    """Entry point of the ``camera_publisher`` executable; exits when ``count`` frames are out."""
    node = start_node("camera_publisher", args, CameraPublisher)
    if node is None:
        return 2
    with stop_on_signals() as stop:
        try:
            while rclpy.ok() and not node.done and not stop.is_set():
                rclpy.spin_once(node, timeout_sec=0.1)
        except PrunePerceptionError as exc:
            print(f"camera_publisher: error: {exc}", file=sys.stderr)
            return 2
        finally:
            node.destroy_node()
            rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
