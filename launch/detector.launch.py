"""One detector_node (camera images in, vision_msgs/Detection2DArray + /diagnostics out).

    ros2 launch prune_perception detector.launch.py model_path:=/path/to/model.onnx
    ros2 launch prune_perception detector.launch.py model_path:=m.onnx image_topic:=/cam/image_raw
    ros2 launch prune_perception detector.launch.py model_path:=m.onnx camera:=true   # synthetic frames

Arguments (`ros2 launch ... --show-args` lists them):
  model_path       ONNX model; overrides the params file's model_path when not empty.
  params_file      ROS 2 params file (default: the installed config/detector.yaml).
  namespace        namespace of the node (default: none); topics ~/... follow it.
  image_topic      camera topic (default /image_raw): ~/in/image <- <image_topic>,
                   ~/in/image/compressed <- <image_topic>/compressed.
  input_transport  raw | compressed (sets the node's input_transport, default raw).
  fastdds_profile  Fast DDS XML profile for the processes started here: a path, or the name of a
                   profile shipped in share/prune_perception/config (fastdds_shm.xml). Default:
                   $FASTDDS_DEFAULT_PROFILES_FILE when set, else the shipped
                   fastdds_shm_localhost.xml (shared memory; DDS on loopback only). Empty: leave
                   FASTDDS_DEFAULT_PROFILES_FILE as it is.
  use_sim_time     use /clock (default false).
  camera           also start camera_publisher with synthetic road scenes on image_topic
                   (default false); camera_fps (10.0) and camera_count (0 = until shut down).

Detections: <namespace>/detector_node/out/detections; diagnostics: /diagnostics.
"""

import os

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, GroupAction, OpaqueFunction, SetEnvironmentVariable
from launch.substitutions import LaunchConfiguration

PACKAGE = "prune_perception"
PROFILE_ENV = "FASTDDS_DEFAULT_PROFILES_FILE"
DEFAULT_PROFILE = "fastdds_shm_localhost.xml"
TRUE = ("true", "1", "yes", "on")
FALSE = ("false", "0", "no", "off")


def _prefix():
    try:
        from ament_index_python.packages import get_package_prefix

        return get_package_prefix(PACKAGE)
    except Exception:  # not on AMENT_PREFIX_PATH: this file sits in <prefix>/share/<pkg>/launch
        return os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", ".."))


def _config_dir():
    installed = os.path.join(_prefix(), "share", PACKAGE, "config")
    if os.path.isdir(installed):
        return installed
    return os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "config"))  # source checkout


def default_profile():
    return os.environ.get(PROFILE_ENV) or os.path.join(_config_dir(), DEFAULT_PROFILE)


def launch_arguments():
    """The arguments of this file (multi_camera.launch.py declares the same ones)."""
    return [
        DeclareLaunchArgument("model_path", default_value="",
                              description="ONNX model; overrides the params file's model_path when not empty"),
        DeclareLaunchArgument("params_file", default_value=os.path.join(_config_dir(), "detector.yaml"),
                              description="ROS 2 params file of detector_node"),
        DeclareLaunchArgument("input_transport", default_value="raw", choices=["raw", "compressed"],
                              description="raw: sensor_msgs/Image on <image_topic>; compressed: "
                                          "sensor_msgs/CompressedImage on <image_topic>/compressed"),
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
    value = value.strip()
    if not value:
        return ""
    path = os.path.expanduser(value)
    if not os.path.isfile(path) and os.sep not in value:
        path = os.path.join(_config_dir(), value)
    if not os.path.isfile(path):
        shipped = sorted(f for f in os.listdir(_config_dir()) if f.startswith("fastdds"))
        raise FileNotFoundError(f"launch argument fastdds_profile:={value}: no such file "
                                f"(a path, or one of the shipped profiles {shipped})")
    return os.path.abspath(path)


def detector_actions(context, namespace, image_topic):
    """SetEnvironmentVariable + detector_node (+ camera_publisher) for one camera, in a scoped group."""
    from launch_ros.actions import Node

    lc = lambda name: LaunchConfiguration(name).perform(context)  # noqa: E731
    params_file = lc("params_file")
    if not os.path.isfile(params_file):
        raise FileNotFoundError(f"launch argument params_file:={params_file}: no such file")
    overrides = {"input_transport": lc("input_transport"), "use_sim_time": _bool(context, "use_sim_time")}
    if lc("model_path"):
        overrides["model_path"] = lc("model_path")
    image_topic = image_topic.rstrip("/") or "/image_raw"
    ns = {"namespace": namespace} if namespace.strip("/") else {}
    actions = []
    profile = resolve_profile(lc("fastdds_profile"))
    if profile:  # only for the processes started in this (scoped) group
        actions.append(SetEnvironmentVariable(PROFILE_ENV, profile))
    actions.append(Node(
        package=PACKAGE, executable="detector_node", name="detector_node", output="screen",
        parameters=[params_file, overrides],
        remappings=[("~/in/image", image_topic), ("~/in/image/compressed", image_topic + "/compressed")],
        **ns))
    if _bool(context, "camera"):
        actions.append(Node(
            package=PACKAGE, executable="camera_publisher", name="camera_publisher", output="screen",
            parameters=[{"source": "synthetic", "transport": lc("input_transport"),
                         "fps": float(lc("camera_fps")), "count": int(lc("camera_count"))}],
            remappings=[("image_raw", image_topic), ("image_raw/compressed", image_topic + "/compressed")],
            **ns))
    return [GroupAction(actions, scoped=True, forwarding=True)]


def _setup(context):
    return detector_actions(context, LaunchConfiguration("namespace").perform(context),
                            LaunchConfiguration("image_topic").perform(context))


def generate_launch_description():
    return LaunchDescription([
        *launch_arguments(),
        DeclareLaunchArgument("namespace", default_value="", description="namespace of detector_node"),
        DeclareLaunchArgument("image_topic", default_value="/image_raw",
                              description="camera image topic (compressed: <image_topic>/compressed)"),
        OpaqueFunction(function=_setup),
    ])
