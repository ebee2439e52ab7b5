"""The ROS environment of tests, the demo and benchmarks on this machine (docs/design.md §9).

Every process here that may start rclpy keeps DDS discovery on loopback, uses its run's own
``ROS_DOMAIN_ID``, finds this venv's ROS packages through ``AMENT_PREFIX_PATH`` and moves images
through the shipped loopback-only Fast DDS shared-memory profile. The Makefile's ``RUN_ENV`` sets
the same variables for ``make test`` and ``make demo`` (test/test_ros_env.py keeps the two in
agreement). Not for vehicles: there the user's own DDS settings apply, and the node never calls this.

No rclpy import here: the environment must be set before rclpy starts.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path

from prune_perception.ros.dds_profile import ENV_VAR as PROFILE_VAR, LOOPBACK_PROFILE, shipped_profile

DISCOVERY_VAR = "ROS_AUTOMATIC_DISCOVERY_RANGE"
DOMAIN_VAR = "ROS_DOMAIN_ID"
AMENT_VAR = "AMENT_PREFIX_PATH"
ROS_ENV_VARS = (DISCOVERY_VAR, DOMAIN_VAR, AMENT_VAR, PROFILE_VAR)
"""Every variable :func:`loopback_environment` sets."""
DISCOVERY_RANGE = "LOCALHOST"
KEEP = object()
"""``profile`` value: the profile the environment already names, else the shipped loopback profile."""


def domain_id(environ: Mapping[str, str] = os.environ) -> int:
    """``ROS_DOMAIN_ID`` from ``environ``, else one derived from this process id (1..101), so that
    parallel runs rarely share a domain."""
    return int(environ.get(DOMAIN_VAR) or os.getpid() % 101 + 1)


def loopback_environment(base: Mapping[str, str] | None = None, domain: int | None = None,
                         profile: str | os.PathLike | object | None = KEEP) -> dict[str, str]:
    """A copy of ``base`` (default ``os.environ``) with :data:`ROS_ENV_VARS` set for rclpy on this machine.

    - ``ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST``: no DDS packet leaves loopback;
    - ``ROS_DOMAIN_ID``: ``domain``, else :func:`domain_id` of ``base``;
    - ``AMENT_PREFIX_PATH``: this Python's prefix first, so ament_index finds the venv's ROS packages;
    - ``FASTDDS_DEFAULT_PROFILES_FILE``: ``profile``; :data:`KEEP` keeps the one ``base`` names, else the
      shipped :data:`LOOPBACK_PROFILE`; None removes it (Fast DDS defaults).
    """
    env = dict(os.environ if base is None else base)
    env[DISCOVERY_VAR] = DISCOVERY_RANGE
    env[DOMAIN_VAR] = str(domain if domain is not None else domain_id(env))
    ament = [p for p in env.get(AMENT_VAR, "").split(os.pathsep) if p]
    if sys.prefix not in ament:
        env[AMENT_VAR] = os.pathsep.join([sys.prefix, *ament])
    if profile is None:
        env.pop(PROFILE_VAR, None)
    elif profile is not KEEP:
        env[PROFILE_VAR] = str(Path(profile))
    elif not env.get(PROFILE_VAR):
        env[PROFILE_VAR] = str(shipped_profile(LOOPBACK_PROFILE))
    return env
