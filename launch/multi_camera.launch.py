"""One detector_node per camera: namespace /<name>, reading /<name>/image_raw.

    ros2 launch prune_perception multi_camera.launch.py model_path:=/path/to/model.onnx
    ros2 launch prune_perception multi_camera.launch.py cameras:=front,left,right model_path:=m.onnx
    ros2 launch prune_perception multi_camera.launch.py model_path:=m.onnx camera:=true  # synthetic frames

Arguments: `cameras` (comma-separated names, default front,rear) plus those of detector.launch.py
(model_path, params_file, input_transport, node_name, lifecycle, fastdds_profile, use_sim_time,
camera, camera_fps, camera_count), applied to every camera. Detections: /<name>/detector_node/out/detections; all
detectors report on /diagnostics (status name /<name>/detector_node: ...). A params file section
`/<name>/detector_node:` sets parameters for one camera only, `/**:` for all of them.
"""

import os
import re

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration

from prune_perception.ros.launch_files import load_launch_module

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def camera_names(value):
    names = [name.strip().strip("/") for name in value.split(",") if name.strip().strip("/")]
    if not names:
        raise ValueError(f"launch argument cameras:={value!r}: no camera names (e.g. cameras:=front,rear)")
    bad = [name for name in names if not _NAME.match(name)]
    if bad:
        raise ValueError(f"launch argument cameras: {', '.join(map(repr, bad))} not valid ROS names "
                         "(letters, digits, '_'; not starting with a digit)")
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ValueError(f"launch argument cameras: {', '.join(duplicates)} given more than once")
    return names


def _setup(context, detector):
    actions = []
    for name in camera_names(LaunchConfiguration("cameras").perform(context)):
        actions += detector.detector_actions(context, f"/{name}", f"/{name}/image_raw")
    return actions


def generate_launch_description():
    detector = load_launch_module(os.path.join(os.path.dirname(os.path.abspath(__file__)), "detector.launch.py"))
    return LaunchDescription([
        DeclareLaunchArgument("cameras", default_value="front,rear",
                              description="comma-separated camera names: one detector each in /<name>, "
                                          "reading /<name>/image_raw"),
        *detector.launch_arguments(),
        OpaqueFunction(function=_setup, args=[detector]),
    ])
