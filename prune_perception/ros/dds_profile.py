"""The Fast DDS profiles shipped in ``config/`` and how a process opts into one.

Fast DDS reads ``FASTDDS_DEFAULT_PROFILES_FILE`` once, when the first participant is created (in
``rclpy.init``/the first node), so :func:`apply_profile` must run before that. A user's own
setting always wins. No rclpy import here: the CLI calls this before it imports rclpy.

Profiles (see the comments inside each file):

- ``fastdds_shm_localhost.xml`` (default): shared memory with 16 MB segments + UDPv4 on 127.0.0.1
  only. Raw camera images between processes arrive complete and fast; nothing leaves the machine.
- ``fastdds_shm.xml``: the same shared memory + UDPv4 on all interfaces, for vehicles where other
  computers consume the detections.
"""

from __future__ import annotations

import os
import sys
from collections.abc import MutableMapping
from pathlib import Path

from prune_perception.errors import ConfigError

PACKAGE = "prune_perception"
ENV_VAR = "FASTDDS_DEFAULT_PROFILES_FILE"
DEFAULT_PROFILE = "fastdds_shm_localhost.xml"
_SOURCE_CONFIG = Path(__file__).resolve().parents[2] / "config"


def _candidate_dirs() -> list[Path]:
    dirs = []
    try:
        from ament_index_python.packages import get_package_share_directory

        dirs.append(Path(get_package_share_directory(PACKAGE)) / "config")
    except Exception:  # ament_index missing, or the package is not on AMENT_PREFIX_PATH
        pass
    dirs.append(Path(sys.prefix) / "share" / PACKAGE / "config")
    dirs.append(_SOURCE_CONFIG)  # running from a source checkout
    unique: list[Path] = []
    for d in dirs:
        if d not in unique:
            unique.append(d)
    return unique


def shipped_profile(name: str = DEFAULT_PROFILE) -> Path:
    """Path of the shipped profile ``name``: installed share/ first, then sys.prefix, then the checkout."""
    dirs = _candidate_dirs()
    for d in dirs:
        path = d / name
        if path.is_file():
            return path
    raise ConfigError(f"Fast DDS profile {name!r} not found; searched: {', '.join(str(d) for d in dirs)} "
                      f"(install the package, or set {ENV_VAR})")


def apply_profile(profile: str | os.PathLike | None = None,
                  environ: MutableMapping[str, str] = os.environ) -> str | None:
    """Set ``FASTDDS_DEFAULT_PROFILES_FILE`` in ``environ`` unless the user already set it.

    ``profile``: a profile path, or None for the shipped :data:`DEFAULT_PROFILE`. A non-empty value
    already in ``environ`` is kept (the user's DDS settings win). Returns the profile in effect.
    Raises ConfigError when the profile to set does not exist (Fast DDS would silently ignore it).
    """
    current = environ.get(ENV_VAR)
    if current:
        return current
    path = shipped_profile() if profile is None else Path(profile).expanduser()
    if not path.is_file():
        raise ConfigError(f"Fast DDS profile {path} not found (fastdds_profile / {ENV_VAR})")
    environ[ENV_VAR] = str(path.resolve())
    return environ[ENV_VAR]
