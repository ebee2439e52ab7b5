#!/usr/bin/env bash
# A second venv for the vehicle-path tests at the distributions' library floors (Ubuntu 22.04: numpy
# 1.21 / OpenCV 4.5.4; 24.04: 1.26 / 4.6): the oldest numpy and OpenCV that install for this Python
# (3.11: numpy 1.23.5, opencv-python-headless 4.5.5.64), everything else shared with the main venv.
# `make test` runs the vehicle-path tests in it after the main run, so a newer-only API cannot slip in.
#
# How: the floor venv holds only the two old libraries; a .pth file adds the main venv's
# site-packages *behind* them with site.addsitedir (so the main venv's own .pth files, e.g. the ROS
# wheels' bootstrapper, still run). Idempotent: seconds when both versions are already there.
#
# Usage: bash scripts/setup_floor_env.sh   (after scripts/setup_env.sh)
# Environment: VENV (main venv, default <repo>/.venv), FLOOR_VENV (default <repo>/.venv-floor)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VENV:-$ROOT/.venv}"
FLOOR_VENV="${FLOOR_VENV:-$ROOT/.venv-floor}"
FLOOR_DEPS=(numpy==1.23.5 opencv-python-headless==4.5.5.64
            ml_dtypes==0.5.1)   # test side: onnx needs ml_dtypes, whose newest releases need numpy 2
export PIP_DISABLE_PIP_VERSION_CHECK=1

[ -x "$VENV/bin/python" ] || { echo "[floor-env] ERROR: $VENV missing: run scripts/setup_env.sh first" >&2; exit 1; }
if [ ! -x "$FLOOR_VENV/bin/python" ]; then
  echo "[floor-env] creating $FLOOR_VENV"
  "$("$VENV/bin/python" -c 'import sys; print(sys._base_executable)')" -m venv "$FLOOR_VENV"
fi
# share/ (vision_msgs definitions, this package's data files) is the main venv's, for code that looks under sys.prefix
[ -e "$FLOOR_VENV/share" ] || ln -s "$VENV/share" "$FLOOR_VENV/share"
MAIN_SITE="$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
FLOOR_SITE="$("$FLOOR_VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
# The ROS wheels' bootstrapper re-executes Python with LD_LIBRARY_PATH = <sys.prefix>/lib + ros_*.libs,
# i.e. the floor venv's: do it first with the main venv's libraries (one line: .pth files run lines
# that start with `import`), then add the main site-packages, whose bootstrapper then has nothing to do.
cat > "$FLOOR_SITE/zz_main_venv.pth" <<PTHEOF
import glob, os, site, sys; os.environ.get("_ROS_WHEELS_BOOTSTRAP_COMPLETE") or os.execve(sys.executable, sys.orig_argv, {**os.environ, "_ROS_WHEELS_BOOTSTRAP_COMPLETE": "1", "LD_LIBRARY_PATH": os.pathsep.join(["$VENV/lib", *glob.glob("$MAIN_SITE/ros_*.libs"), *filter(None, [os.environ.get("LD_LIBRARY_PATH")])])}); site.addsitedir("$MAIN_SITE")
PTHEOF

if ! "$FLOOR_VENV/bin/python" - "${FLOOR_DEPS[@]}" <<'PYEOF' 2>/dev/null; then
import importlib.metadata as md, sys, sysconfig
floor_site = sysconfig.get_paths()["purelib"]
for pin in sys.argv[1:]:
    name, version = pin.split("==")
    dist = md.distribution(name)
    assert dist.version == version and str(dist.locate_file("")).startswith(floor_site), pin
PYEOF
  echo "[floor-env] installing ${FLOOR_DEPS[*]}"
  # --no-deps: everything else comes from the main venv behind them.
  "$FLOOR_VENV/bin/python" -m pip install -q --no-deps --force-reinstall "${FLOOR_DEPS[@]}" \
    2> >(grep -v 'is ignored: it is neither a file nor a directory' >&2)
fi
"$FLOOR_VENV/bin/python" -c 'import cv2, numpy, onnxruntime, rclpy; print(f"[floor-env] numpy {numpy.__version__}, OpenCV {cv2.__version__}, onnxruntime {onnxruntime.__version__}")'
