"""ament_python setup for prune_perception.

Works both under colcon (ament_python build type) and with a plain `pip install .`.

Dependencies are deliberately NOT listed in install_requires: the vehicle/ROS side gets them
from rosdep (package.xml), and a dev/CI environment gets them from scripts/setup_env.sh, which
pins torch==2.13.0 (CPU). Letting pip resolve `torch` here would pull a multi-GB CUDA build, and
pip-installing numpy/opencv over a system ROS install would shadow the system packages.
"""

import os
import xml.etree.ElementTree as ET
from glob import glob

from setuptools import find_packages, setup

PACKAGE = "prune_perception"
HERE = os.path.dirname(os.path.abspath(__file__))

# package.xml is the single source of truth for version, description, maintainer and licence.
_xml = ET.parse(os.path.join(HERE, "package.xml")).getroot()


def _text(tag):
    return " ".join((_xml.findtext(tag) or "").split())


def _files(pattern):
    """Files matching a glob relative to this directory (sorted, relative paths)."""
    return sorted(os.path.relpath(p, HERE) for p in glob(os.path.join(HERE, pattern))
                  if os.path.isfile(p))


setup(
    name=PACKAGE,
    version=_text("version"),
    packages=find_packages(where=HERE, exclude=["test", "test.*"]),
    # vision_msgs definitions: bags/ registers them with rosbags (also the source of tools/vision_msgs).
    package_data={PACKAGE + ".bags": ["vision_msgs_msg/*.msg"]},
    data_files=[
        ("share/ament_index/resource_index/packages", ["resource/" + PACKAGE]),
        ("share/" + PACKAGE, ["package.xml"]),
        ("share/" + PACKAGE + "/launch", _files("launch/*.launch.py") + _files("launch/*.launch.xml")
         + _files("launch/*.launch.yaml")),
        ("share/" + PACKAGE + "/config", _files("config/*")),
        # `ros2 run` / launch_ros Node(package, executable) look in <prefix>/lib/<package>/. Under
        # colcon, setup.cfg's install_scripts puts the console scripts there; `pip install .` puts
        # them in <prefix>/bin. These sh wrappers (named like the ROS executables, so never like a
        # console script) exec whichever exists. pip and colcon keep their exec bit.
        ("lib/" + PACKAGE, _files("scripts/ros_exec/*")),
    ],
    install_requires=[],  # see module docstring and README "Setup"
    zip_safe=False,
    maintainer=_xml.find("maintainer").text.strip(),
    maintainer_email=_xml.find("maintainer").get("email"),
    description=_text("description"),
    license=_text("license"),
    python_requires=">=3.10",
    entry_points={
        "console_scripts": [
            "prune-perception = prune_perception.cli:main",
            "prune-perception-detector-node = prune_perception.ros.detector_node:main",
            "prune-perception-camera-publisher = prune_perception.ros.camera_publisher:main",
        ],
    },
)
