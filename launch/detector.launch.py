"""One detector_node (camera images in, vision_msgs/Detection2DArray + /diagnostics out).

    ros2 launch prune_perception detector.launch.py model_path:=/path/to/model.onnx
    ros2 launch prune_perception detector.launch.py model_path:=m.onnx image_topic:=/cam/image_raw
    ros2 launch prune_perception detector.launch.py model_path:=m.onnx camera:=true   # synthetic frames
    ros2 launch prune_perception detector.launch.py model_path:=m.onnx lifecycle:=true   # managed node

Arguments (`ros2 launch ... --show-args` lists them):
  model_path       ONNX model; overrides the params file's model_path when not empty.
  params_file      ROS 2 params file (default: the installed config/detector.yaml); a file written
                   by `ros2 param dump` works too.
  namespace        namespace of the node (default: none); topics ~/... follow it.
  node_name        name of the node (default detector_node).
  image_topic      camera topic (default /image_raw): ~/in/image <- <image_topic>,
                   ~/in/image/compressed <- <image_topic>/compressed.
  output_topic     detections topic (default: ~/out/detections, i.e. <namespace>/<node_name>/out/detections).
  input_transport  raw | compressed (sets the node's input_transport, default raw).
  lifecycle        true: the managed (lifecycle) node, which starts unconfigured; drive it with a
                   lifecycle manager, `ros2 lifecycle set`, or lifecycle_example.launch.py (default false).
  fastdds_profile  Fast DDS XML profile for the processes started here: a path, or the name of a
                   profile shipped in share/prune_perception/config. Default:
                   $FASTDDS_DEFAULT_PROFILES_FILE when set, else the shipped fastdds_shm.xml
                   (shared memory on this computer + UDP on every interface, so other computers
                   get the detections). fastdds_shm_localhost.xml keeps DDS on loopback (tests,
                   demo, benchmarks). Empty: leave FASTDDS_DEFAULT_PROFILES_FILE as it is.
  use_sim_time     use /clock (default false).
  camera           also start camera_publisher with synthetic road scenes on image_topic
                   (default false); camera_fps (10.0) and camera_count (0 = until shut down).

Detections: <namespace>/<node_name>/out/detections (or output_topic); class map (vision_msgs/LabelInfo,
transient local): <namespace>/<node_name>/out/label_info; diagnostics: /diagnostics.
"""

import os

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, GroupAction, OpaqueFunction, SetEnvironmentVariable
from launch.substitutions import LaunchConfiguration

from prune_perception.errors import ConfigError
from prune_perception.ros import dds_profile

PROFILE_ENV = dds_profile.ENV_VAR

PACKAGE = "prune_perception"
TRUE = ("true", "1", "yes", "on")
FALSE = ("false", "0", "no", "off")


def default_profile():
    return os.environ.get(PROFILE_ENV) or str(dds_profile.shipped_profile(dds_profile.VEHICLE_PROFILE))


def launch_arguments():
    """The arguments of this file (multi_camera.launch.py declares the same ones)."""
    return [
        DeclareLaunchArgument("model_path", default_value="",
                              description="ONNX model; overrides the params file's model_path when not empty"),
        DeclareLaunchArgument("params_file", default_value=str(dds_profile.shipped_config("detector.yaml")),
                              description="ROS 2 params file of detector_node (also one written by ros2 param dump)"),
        DeclareLaunchArgument("input_transport", default_value="raw", choices=["raw", "compressed"],
                              description="raw: sensor_msgs/Image on <image_topic>; compressed: "
                                          "sensor_msgs/CompressedImage on <image_topic>/compressed"),
        DeclareLaunchArgument("node_name", default_value="detector_node", description="name of the detector node"),
        DeclareLaunchArgument("lifecycle", default_value="false",
                              description="true: the managed (lifecycle) detector node, starting unconfigured"),
        DeclareLaunchArgument("fastdds_profile", default_value=default_profile(),
                              description=f"Fast DDS XML profile (path or shipped name) set as {PROFILE_ENV} "
                                          "for the processes started here; empty: leave the environment alone"),
        DeclareLaunchArgument("use_sim_time", default_value="false", description="use /clock"),
        DeclareLaunchArgument("camera", default_value="false",
                              description="also start camera_publisher (synthetic road scenes) on the image topic"),
        DeclareLaunchArgument("camera_fps", default_value="10.0", description="frames per second of camera_publisher"),
        DeclareLaunchArgument("camera_count", default_value="0",
                              description="camera_publisher stops after this many frames (0: never)"),
    ]


def _bool(context, name):
    value = LaunchConfiguration(name).perform(context).strip().lower()
    if value in TRUE:
        return True
    if value in FALSE:
        return False
    raise ValueError(f"launch argument {name}:={value!r} is not a boolean (true/false)")


def resolve_profile(value):
    """A profile path, or the name of a shipped profile; '' stays '' (= don't set)."""
    try:
        return dds_profile.resolve_profile(value, what="launch argument fastdds_profile:=")
    except ConfigError as exc:
        raise FileNotFoundError(str(exc)) from None


def detector_actions(context, namespace, image_topic, output_topic=""):
    """SetEnvironmentVariable + detector_node (+ camera_publisher) for one camera, in a scoped group."""
    from launch_ros.actions import LifecycleNode, Node

    lc = lambda name: LaunchConfiguration(name).perform(context)  # noqa: E731
    params_file = lc("params_file")
    if not os.path.isfile(params_file):
        raise FileNotFoundError(f"launch argument params_file:={params_file}: no such file")
    overrides = {"input_transport": lc("input_transport"), "use_sim_time": _bool(context, "use_sim_time")}
    if lc("model_path"):
        overrides["model_path"] = lc("model_path")
    image_topic = image_topic.rstrip("/") or "/image_raw"
    remappings = [("~/in/image", image_topic), ("~/in/image/compressed", image_topic + "/compressed")]
    if output_topic:
        remappings.append(("~/out/detections", output_topic))
    actions = []
    profile = resolve_profile(lc("fastdds_profile"))
    if profile:  # only for the processes started in this (scoped) group
        actions.append(SetEnvironmentVariable(PROFILE_ENV, profile))
    detector = dict(package=PACKAGE, executable="detector_node", name=lc("node_name"), output="screen",
                    parameters=[params_file, overrides], remappings=remappings)
    if _bool(context, "lifecycle"):   # launch_ros's LifecycleNode needs the namespace argument
        actions.append(LifecycleNode(namespace=namespace.strip("/") and namespace, arguments=["--lifecycle"],
                                     **detector))
    else:
        actions.append(Node(**detector, **({"namespace": namespace} if namespace.strip("/") else {})))
    if _bool(context, "camera"):
        actions.append(Node(
            package=PACKAGE, executable="camera_publisher", name="camera_publisher", output="screen",
            parameters=[{"source": "synthetic", "transport": lc("input_transport"),
                         "fps": float(lc("camera_fps")), "count": int(lc("camera_count"))}],
            remappings=[("image_raw", image_topic), ("image_raw/compressed", image_topic + "/compressed")],
            **({"namespace": namespace} if namespace.strip("/") else {})))
    return [GroupAction(actions, scoped=True, forwarding=True)]


def single_detector_arguments():
    """The arguments of one detector (this file and lifecycle_example.launch.py; not multi_camera)."""
    return [
        *launch_arguments(),
        DeclareLaunchArgument("namespace", default_value="", description="namespace of detector_node"),
        DeclareLaunchArgument("image_topic", default_value="/image_raw",
                              description="camera image topic (compressed: <image_topic>/compressed)"),
        DeclareLaunchArgument("output_topic", default_value="",
                              description="detections topic (default: ~/out/detections of the node)"),
    ]


def single_detector_actions(context):
    """detector_actions for the namespace, image_topic and output_topic arguments."""
    return detector_actions(context, LaunchConfiguration("namespace").perform(context),
                            LaunchConfiguration("image_topic").perform(context),
                            LaunchConfiguration("output_topic").perform(context))


def generate_launch_description():
    return LaunchDescription([*single_detector_arguments(), OpaqueFunction(function=single_detector_actions)])
