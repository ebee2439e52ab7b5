"""prune_perception: prune object detectors offline, run them in ROS 2 with ONNX Runtime."""

__version__ = "0.1.0"
