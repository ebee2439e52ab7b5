"""Files shipped in ``config/`` (one lookup for the CLI, the nodes and the launch files), and the Fast DDS
profiles among them.

Fast DDS reads ``FASTDDS_DEFAULT_PROFILES_FILE`` once, when the first participant is created (in
``rclpy.init``/the first node), so :func:`apply_profile` must run before that. A user's own
setting always wins. No rclpy import here: the CLI and the launch files call this before rclpy.

Profiles (see the comments inside each file):

- ``fastdds_shm.xml`` (:data:`VEHICLE_PROFILE`, the default of the launch files and
  ``prune-perception node``): shared memory with 16 MB segments between the processes of one
  computer, plus UDPv4 on all interfaces, so other computers of the vehicle get the detections.
- ``fastdds_shm_localhost.xml`` (:data:`LOOPBACK_PROFILE`): the same shared memory + UDPv4 on
  127.0.0.1 only; nothing leaves the machine. For tests, the demo, benchmarks and bag replay.
"""

from __future__ import annotations

import os
import sys
from collections.abc import MutableMapping
from pathlib import Path

from prune_perception.errors import ConfigError

PACKAGE = "prune_perception"
ENV_VAR = "FASTDDS_DEFAULT_PROFILES_FILE"
VEHICLE_PROFILE = "fastdds_shm.xml"
LOOPBACK_PROFILE = "fastdds_shm_localhost.xml"
_SOURCE_CONFIG = Path(__file__).resolve().parents[2] / "config"


def config_dirs() -> list[Path]:
    """Where shipped config files are looked up, in order: the ament share directory, ``sys.prefix``'s
    share directory (pip installs), the source checkout."""
    dirs = []
    try:
        from ament_index_python.packages import get_package_share_directory

        dirs.append(Path(get_package_share_directory(PACKAGE)) / "config")
    except Exception:  # ament_index missing, or the package is not on AMENT_PREFIX_PATH
        pass
    dirs.append(Path(sys.prefix) / "share" / PACKAGE / "config")
    dirs.append(_SOURCE_CONFIG)
    unique: list[Path] = []
    for d in dirs:
        if d not in unique:
            unique.append(d)
    return unique


def shipped_config(name: str) -> Path:
    """Path of the shipped config file ``name`` (first of :func:`config_dirs` that has it); ConfigError if none."""
    dirs = config_dirs()
    for d in dirs:
        path = d / name
        if path.is_file():
            return path
    raise ConfigError(f"{name!r} not found in the shipped config; searched: {', '.join(str(d) for d in dirs)} "
                      f"(install the package)")


def shipped_profile(name: str = VEHICLE_PROFILE) -> Path:
    """Path of the shipped Fast DDS profile ``name``."""
    try:
        return shipped_config(name)
    except ConfigError as exc:
        raise ConfigError(f"Fast DDS profile {exc} (or set {ENV_VAR})") from None


def resolve_profile(value: str, what: str = "fastdds_profile ") -> str:
    """A profile path, or the name of a shipped profile, as an absolute path; '' stays '' (= leave DDS alone).
    ConfigError '<what><value>: no such file ...' when neither exists."""
    value = value.strip()
    if not value:
        return ""
    path = Path(value).expanduser()
    if not path.is_file() and os.sep not in value:
        try:
            path = shipped_profile(value)
        except ConfigError:
            pass
    if not path.is_file():
        shipped = sorted({p.name for d in config_dirs() if d.is_dir() for p in d.glob("fastdds*.xml")})
        raise ConfigError(f"{what}{value}: no such file (a path, or one of the shipped profiles {shipped})")
    return str(path.resolve())


def apply_profile(profile: str | os.PathLike | None = None,
                  environ: MutableMapping[str, str] = os.environ) -> str | None:
    """Set ``FASTDDS_DEFAULT_PROFILES_FILE`` in ``environ`` unless the user already set it.

    ``profile``: a profile path or shipped name, or None for :data:`VEHICLE_PROFILE`. A non-empty
    value already in ``environ`` is kept (the user's DDS settings win). Returns the profile in
    effect. Raises ConfigError when the profile to set does not exist (Fast DDS would silently ignore it).
    """
    current = environ.get(ENV_VAR)
    if current:
        return current
    environ[ENV_VAR] = resolve_profile(str(profile) if profile is not None else VEHICLE_PROFILE)
    return environ[ENV_VAR]
