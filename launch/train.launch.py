"""Train a detector from a config file: runs `prune-perception train --config <config>`.

    ros2 launch prune_perception train.launch.py config:=/path/to/train.yaml

`config` defaults to the installed share/prune_perception/config/train_synth.yaml.
"""

import os
import shutil
import sys

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, ExecuteProcess
from launch.substitutions import LaunchConfiguration

PACKAGE = "prune_perception"
EXE = "prune-perception"


def _prefix():
    try:
        from ament_index_python.packages import get_package_prefix

        return get_package_prefix(PACKAGE)
    except Exception:  # not on AMENT_PREFIX_PATH: this file sits in <prefix>/share/<pkg>/launch
        return os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", ".."))


def _executable():
    """colcon installs the CLI to <prefix>/lib/<pkg>/, `pip install .` to <prefix>/bin/."""
    for cand in (os.path.join(_prefix(), "lib", PACKAGE, EXE), os.path.join(_prefix(), "bin", EXE),
                 os.path.join(os.path.dirname(sys.executable), EXE)):
        if os.access(cand, os.X_OK):
            return cand
    return shutil.which(EXE) or EXE


def generate_launch_description():
    default_config = os.path.join(_prefix(), "share", PACKAGE, "config", "train_synth.yaml")
    return LaunchDescription([
        DeclareLaunchArgument("config", default_value=default_config,
                              description="training config YAML (prune_perception schema)"),
        ExecuteProcess(cmd=[_executable(), "train", "--config", LaunchConfiguration("config")],
                       output="screen", name="prune_perception_train"),
    ])
