"""prune_perception/ros_env.py and the Makefile's RUN_ENV set the same ROS environment."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from prune_perception import ros_env

REPO = Path(__file__).resolve().parents[1]
ROS_PREFIXES = ("ROS_", "RMW_", "AMENT_", "FASTDDS_", "FASTRTPS_")
BASE = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/tmp"), "LANG": "C.UTF-8"}


def _makefile_environment(domain: int) -> dict[str, str]:
    """The environment `make test` runs pytest in, printed through the Makefile's own RUN_ENV."""
    recipe = "print-run-env:\n\t@$(RUN_ENV) env -0"
    out = subprocess.run(["make", "-s", "--no-print-directory", f"VENV={sys.prefix}", f"TEST_ROS_DOMAIN_ID={domain}",
                          "--eval", recipe, "print-run-env"],
                         cwd=REPO, env=BASE, capture_output=True, text=True, timeout=60, check=True)
    return dict(entry.split("=", 1) for entry in out.stdout.split("\0") if entry)


def _ros_changes(env: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in env.items() if k.startswith(ROS_PREFIXES) and BASE.get(k) != v}


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_makefile_run_env_sets_what_the_helper_sets():
    made = _ros_changes(_makefile_environment(42))
    helped = _ros_changes(ros_env.loopback_environment(BASE, 42))
    assert set(made) == set(helped) == set(ros_env.ROS_ENV_VARS)
    for name in (ros_env.DISCOVERY_VAR, ros_env.DOMAIN_VAR):
        assert made[name] == helped[name], name
    assert made[ros_env.AMENT_VAR].split(os.pathsep)[0] == helped[ros_env.AMENT_VAR].split(os.pathsep)[0]
    # The same profile: the Makefile names the checkout's copy, the helper the installed one where installed.
    made_profile, helped_profile = Path(made["FASTDDS_DEFAULT_PROFILES_FILE"]), Path(helped["FASTDDS_DEFAULT_PROFILES_FILE"])
    assert made_profile.name == helped_profile.name == ros_env.LOOPBACK_PROFILE
    assert made_profile.read_bytes() == helped_profile.read_bytes()


def test_loopback_environment_keeps_what_the_caller_chose(tmp_path):
    profile = tmp_path / "mine.xml"
    base = dict(BASE, ROS_DOMAIN_ID="77", FASTDDS_DEFAULT_PROFILES_FILE=str(profile),
                ROS_AUTOMATIC_DISCOVERY_RANGE="SUBNET", AMENT_PREFIX_PATH=f"/opt/ros{os.pathsep}{sys.prefix}")
    env = ros_env.loopback_environment(base)
    assert env["ROS_AUTOMATIC_DISCOVERY_RANGE"] == "LOCALHOST"  # never off the machine, whatever was set
    assert env["ROS_DOMAIN_ID"] == "77" and env["FASTDDS_DEFAULT_PROFILES_FILE"] == str(profile)
    assert env["AMENT_PREFIX_PATH"] == base["AMENT_PREFIX_PATH"]  # this venv already on it: unchanged
    assert base["ROS_AUTOMATIC_DISCOVERY_RANGE"] == "SUBNET"  # a copy; the base is untouched
    forced = ros_env.loopback_environment(base, 5, None)
    assert forced["ROS_DOMAIN_ID"] == "5" and "FASTDDS_DEFAULT_PROFILES_FILE" not in forced


def test_domain_id_is_the_set_one_or_one_per_process():
    assert ros_env.domain_id({"ROS_DOMAIN_ID": "12"}) == 12
    assert ros_env.domain_id({}) == os.getpid() % 101 + 1
    assert 1 <= ros_env.domain_id({"ROS_DOMAIN_ID": ""}) <= 101
