"""Class-name files for external models (ROS-free): one name per line, or a YAML/JSON list or id -> name map.

Accepted layouts (the class id is the model's output index):

- text (``.txt``, ``.names``, anything not YAML/JSON): one name per line, blank lines ignored;
- YAML or JSON list: ``[person, bicycle, car]``;
- YAML or JSON mapping ``{0: person, 1: bicycle}`` with ids 0..N-1, or the same list or mapping
  under a ``names`` key (an Ultralytics ``data.yaml``).
"""

from __future__ import annotations

from pathlib import Path

import yaml

from prune_perception.errors import ConfigError

STRUCTURED_SUFFIXES = (".yaml", ".yml", ".json")


def read_labels(path: str | Path) -> tuple[str, ...]:
    """Class names of a labels file, in class-id order; ConfigError naming the file and the problem."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"labels file {path}: cannot read it ({exc.strerror or exc})") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"labels file {path}: not a text file ({exc.reason} at byte {exc.start})") from None
    if path.suffix.lower() in STRUCTURED_SUFFIXES:
        try:
            data = yaml.safe_load(text)   # JSON is YAML
        except yaml.YAMLError as exc:
            raise ConfigError(f"labels file {path}: not valid YAML/JSON ({str(exc).splitlines()[0]})") from None
        if isinstance(data, dict) and "names" in data:
            data = data["names"]
        names = _names_from_structure(path, data)
    else:
        names = [line.strip() for line in text.splitlines() if line.strip()]
    if not names:
        raise ConfigError(f"labels file {path}: no class names in it")
    return tuple(names)


def _names_from_structure(path: Path, data) -> list[str]:
    if isinstance(data, dict):
        ids = sorted(data, key=lambda key: (not isinstance(key, int), str(key)))
        if not all(isinstance(key, int) and not isinstance(key, bool) for key in ids) or ids != list(range(len(ids))):
            raise ConfigError(f"labels file {path}: a mapping must have the integer class ids 0..N-1 as keys, "
                              f"got {[key for key in data][:10]}")
        data = [data[key] for key in ids]
    if not isinstance(data, list):
        raise ConfigError(f"labels file {path}: expected a list of class names or an id -> name mapping, "
                          f"got {type(data).__name__}")
    bad = [name for name in data if not isinstance(name, str) or not name.strip()]
    if bad:
        raise ConfigError(f"labels file {path}: class names must be non-empty strings, got {bad[0]!r}")
    return [name.strip() for name in data]
