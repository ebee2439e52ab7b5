"""Packaging: package.xml, the installed share/ files, and a real colcon build."""

import ast
import glob
import os
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = "prune_perception"
EXEC_DEPENDS = {"rclpy", "sensor_msgs", "vision_msgs", "diagnostic_msgs", "std_msgs",
                "geometry_msgs", "launch", "launch_ros"}
COLCON_VENV = REPO / "build" / "colcon-venv"
# ROS executable (lib/<pkg>/, what `ros2 run` and launch_ros start) -> the console script it runs.
NODE_EXECUTABLES = {"detector_node": "prune-perception-detector-node",
                    "camera_publisher": "prune-perception-camera-publisher"}


def _installed_share():
    try:
        from ament_index_python.packages import get_package_share_directory
    except ImportError:
        return Path(sys.prefix) / "share" / PACKAGE
    return Path(get_package_share_directory(PACKAGE))


# ---------------------------------------------------------------------------- package.xml ----
# Third-party module -> the rosdep key that provides it (None: no key exists in rosdep's default
# sources; the README says how to install it). Keys checked against ros/rosdistro (rosdep/python.yaml,
# {humble,jazzy}/distribution.yaml): where each resolves, "apt" or "pip" on Ubuntu, "ros" = a ROS package.
MODULE_KEYS = {
    "rclpy": "rclpy", "std_msgs": "std_msgs", "sensor_msgs": "sensor_msgs", "geometry_msgs": "geometry_msgs",
    "diagnostic_msgs": "diagnostic_msgs", "vision_msgs": "vision_msgs", "rcl_interfaces": "rcl_interfaces",
    "rosgraph_msgs": "rosgraph_msgs", "builtin_interfaces": "builtin_interfaces",
    "lifecycle_msgs": "lifecycle_msgs", "launch": "launch", "launch_ros": "launch_ros",
    "ament_index_python": "ament_index_python",
    "numpy": "python3-numpy", "cv2": "python3-opencv", "yaml": "python3-yaml", "tqdm": "python3-tqdm",
    "onnxruntime": "python3-onnxruntime-pip", "rosbags": "python3-rosbags-pip",
    "faster_coco_eval": None,
}
KEY_SOURCES = {
    **{key: "ros" for key in ("rclpy", "std_msgs", "sensor_msgs", "geometry_msgs", "diagnostic_msgs", "vision_msgs",
                              "rcl_interfaces", "rosgraph_msgs", "builtin_interfaces", "lifecycle_msgs", "launch",
                              "launch_ros", "ament_index_python")},
    **{key: "apt" for key in ("python3-numpy", "python3-opencv", "python3-yaml", "python3-tqdm", "python3-pytest",
                              "python3-hypothesis", "python3-jsonschema", "python3-psutil", "python3-torch")},
    **{key: "pip" for key in ("python3-onnxruntime-pip", "python3-rosbags-pip")},
}
VEHICLE_DIRS = ("runtime", "ros", "bags")


def _third_party_imports(start: list[Path]) -> dict[str, set[str]]:
    """Top-level third-party modules imported (anywhere in the file) by ``start`` and, transitively,
    by the prune_perception modules they import -> the files importing each."""
    found: dict[str, set[str]] = {}
    todo, seen = list(start), set()
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top == PACKAGE:
                    module = REPO.joinpath(*name.split("."))
                    todo += [p for p in (module / "__init__.py", module.with_suffix(".py")) if p.is_file()]
                elif top not in sys.stdlib_module_names:
                    found.setdefault(top, set()).add(str(path.relative_to(REPO)))
    return found


def test_package_xml_declares_every_vehicle_path_import():
    """`rosdep install` gives the vehicle path everything it imports: every key declared, every key real."""
    root = ET.parse(REPO / "package.xml").getroot()
    exec_deps = {e.text.strip() for e in root.findall("exec_depend")}
    test_deps = {e.text.strip() for e in root.findall("test_depend")}
    unknown_keys = (exec_deps | test_deps) - set(KEY_SOURCES)
    assert not unknown_keys, f"package.xml keys not checked against rosdep's sources: {sorted(unknown_keys)}"
    imports = _third_party_imports([p for d in VEHICLE_DIRS for p in (REPO / PACKAGE / d).rglob("*.py")])
    assert {"rclpy", "numpy", "cv2", "onnxruntime", "rosbags"} <= set(imports), sorted(imports)
    unmapped = {module: sorted(files) for module, files in imports.items() if module not in MODULE_KEYS}
    assert not unmapped, f"add these modules and their rosdep keys to MODULE_KEYS and package.xml: {unmapped}"
    undeclared = {module: MODULE_KEYS[module] for module in imports
                  if MODULE_KEYS[module] is not None and MODULE_KEYS[module] not in exec_deps}
    assert not undeclared, f"package.xml lacks exec_depend for {undeclared}"
    readme = (REPO / "README.md").read_text()
    for module in imports:
        if MODULE_KEYS[module] is None:   # no rosdep key: the pip name must be documented
            pip_name = module.replace("_", "-")
            assert pip_name in readme and pip_name in (REPO / "package.xml").read_text(), pip_name
    # torch is a test/offline dependency only; the version floors are stated on the keys.
    assert "python3-torch" not in exec_deps and "python3-torch" in test_deps
    floors = {e.text.strip(): e.get("version_gte") for e in root.findall("exec_depend")}
    assert floors["python3-numpy"] == "1.21" and floors["python3-opencv"] == "4.5.4"
    for module in ("hypothesis", "jsonschema", "psutil", "torch"):
        assert "python3-" + module in test_deps


def test_package_xml_declares_ament_python_and_dependencies():
    root = ET.parse(REPO / "package.xml").getroot()
    assert root.tag == "package" and root.get("format") == "3"
    assert root.findtext("name") == PACKAGE
    assert root.findtext("export/build_type") == "ament_python"
    exec_deps = {e.text.strip() for e in root.findall("exec_depend")}
    missing = EXEC_DEPENDS - exec_deps
    assert not missing, f"package.xml lacks exec_depend {sorted(missing)}"
    assert "python3-pytest" in {e.text.strip() for e in root.findall("test_depend")}
    from prune_perception import __version__
    assert root.findtext("version") == __version__, "package.xml and __init__ versions differ"


# ------------------------------------------------------------------- installed share/ files ----
def test_installed_package_has_share_files():
    share = _installed_share()
    assert (share / "package.xml").is_file(), f"{share}/package.xml missing: run `make env`"
    marker = share.parent / "ament_index" / "resource_index" / "packages" / PACKAGE
    assert marker.is_file(), f"ament index marker {marker} missing"
    installed_launch = {p.name for p in (share / "launch").glob("*.launch.py")}
    assert "train.launch.py" in installed_launch
    assert list((share / "config").glob("*.yaml")), f"no config/*.yaml in {share}"
    # Everything in the source tree's launch/ and config/ is installed (no forgotten data_files).
    for sub in ("launch", "config"):
        src = {p.name for p in (REPO / sub).iterdir() if p.is_file()}
        inst = {p.name for p in (share / sub).iterdir() if p.is_file()}
        assert src <= inst, f"{sub}/ not installed: {sorted(src - inst)} (run `make env`)"


def test_installed_node_executables():
    """`pip install .` (make env): lib/<pkg>/<node> wrappers for launch_ros, console scripts in bin/."""
    try:
        from ament_index_python.packages import get_package_prefix
        prefix = Path(get_package_prefix(PACKAGE))
    except Exception:
        prefix = Path(sys.prefix)
    for wrapper, script in NODE_EXECUTABLES.items():
        exe = prefix / "lib" / PACKAGE / wrapper
        assert exe.is_file() and os.access(exe, os.X_OK), f"{exe} missing or not executable: run `make env`"
        console = prefix / "bin" / script
        assert console.is_file() and os.access(console, os.X_OK), f"{console} missing: run `make env`"
        # the wrapper is the installed copy of scripts/ros_exec/<name> (reinstall when it changed)
        assert exe.read_text() == (REPO / "scripts" / "ros_exec" / wrapper).read_text(), \
            f"{exe} is stale: FORCE_PKG=1 make env"


def test_train_launch_file_builds_a_launch_description():
    launch = pytest.importorskip("launch")
    import importlib.util

    spec = importlib.util.spec_from_file_location("train_launch", REPO / "launch" / "train.launch.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    ld = mod.generate_launch_description()
    assert isinstance(ld, launch.LaunchDescription)
    args = {a.name: a for a in ld.get_launch_arguments()}
    assert "config" in args
    default = "".join(s.perform(None) for s in args["config"].default_value)
    assert default.endswith(os.path.join("share", PACKAGE, "config", "train_synth.yaml"))
    proc = [e for e in ld.entities if type(e).__name__ == "ExecuteProcess"]
    assert len(proc) == 1


# ------------------------------------------------------------------------------ colcon ----
def _colcon():
    exe = COLCON_VENV / "bin" / "colcon"
    if not exe.exists():  # normally created by scripts/setup_env.sh; create it lazily otherwise
        subprocess.run(["bash", str(REPO / "scripts" / "setup_env.sh"), "--colcon-only"],
                       check=True, timeout=600)
    return exe


@pytest.mark.slow
def test_colcon_build(tmp_path):
    colcon = _colcon()
    src = tmp_path / "src" / PACKAGE
    shutil.copytree(REPO, src, ignore=shutil.ignore_patterns(
        ".git", ".venv", "build", "install", "log", "runs", "__pycache__", "*.egg-info",
        ".pytest_cache", ".hypothesis", "tools"))
    env = {k: v for k, v in os.environ.items()
           if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME")}
    env["PATH"] = os.pathsep.join([str(colcon.parent), "/usr/bin", "/bin"])
    proc = subprocess.run(
        [str(colcon), "--log-base", str(tmp_path / "log"), "build",
         "--base-paths", str(tmp_path / "src"), "--build-base", str(tmp_path / "build"),
         "--install-base", str(tmp_path / "install"), "--event-handlers", "console_cohesion+"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"colcon build failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    prefix = tmp_path / "install" / PACKAGE
    assert (prefix / "share" / PACKAGE / "package.xml").is_file()
    assert (prefix / "share" / PACKAGE / "launch" / "train.launch.py").is_file()
    assert (prefix / "share" / "ament_index" / "resource_index" / "packages" / PACKAGE).is_file()
    scripts = [p for p in glob.glob(str(prefix / "lib" / PACKAGE / "prune-perception"))
               + glob.glob(str(prefix / "bin" / "prune-perception")) if os.access(p, os.X_OK)]
    assert scripts, f"no prune-perception console script under {prefix}/lib/{PACKAGE} or bin"
    # ament_python layout: the script is where `ros2 run` / launch_ros look for it.
    assert (prefix / "lib" / PACKAGE / "prune-perception").is_file()
    assert glob.glob(str(prefix / "lib" / "python3*" / "site-packages" / PACKAGE / "__init__.py"))
    # Node executables: the sh wrappers (data_files) beside the console scripts (install_scripts),
    # different names, all executable; plus the launch files and the Fast DDS profiles.
    for name in (*NODE_EXECUTABLES, *NODE_EXECUTABLES.values()):
        exe = prefix / "lib" / PACKAGE / name
        assert exe.is_file() and os.access(exe, os.X_OK), f"{exe} missing or not executable"
    for wrapper, script in NODE_EXECUTABLES.items():
        assert script in (prefix / "lib" / PACKAGE / wrapper).read_text()
    for name in ("detector.launch.py", "multi_camera.launch.py"):
        assert (prefix / "share" / PACKAGE / "launch" / name).is_file()
    for name in ("fastdds_shm_localhost.xml", "fastdds_shm.xml"):
        assert (prefix / "share" / PACKAGE / "config" / name).is_file()


def test_train_launch_file_runs_the_cli(tmp_path):
    """The installed launch file really starts `prune-perception train --config <config>`."""
    pytest.importorskip("launch")
    launch_file = _installed_share() / "launch" / "train.launch.py"
    missing = tmp_path / "missing.yaml"
    script = (
        "import sys, launch\n"
        "from launch.actions import IncludeLaunchDescription\n"
        "from launch.launch_description_sources import AnyLaunchDescriptionSource\n"
        "ls = launch.LaunchService(noninteractive=True)\n"
        f"ls.include_launch_description(IncludeLaunchDescription(AnyLaunchDescriptionSource("
        f"{str(launch_file)!r}), launch_arguments=[('config', {str(missing)!r})]))\n"
        "sys.exit(ls.run())\n")
    env = dict(os.environ, ROS_LOG_DIR=str(tmp_path / "roslog"))
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                          text=True, timeout=120)
    out = proc.stdout + proc.stderr
    assert "process started" in out, out
    assert f"prune-perception train --config {missing}" in out, out
    # the CLI really ran: its one error line about the missing config, exit code 2, no traceback
    assert "prune-perception train: error:" in out and f"{missing}" in out.split("prune-perception train: error:")[1]
    assert "exit code 2" in out and "Traceback" not in out, out
