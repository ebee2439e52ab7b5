"""Arch spec: the JSON-serialisable description of one detector of our family.

A spec names every conv layer with its output width, so a pruned network (same topology,
narrower layers) is described by the same schema and rebuilt exactly from a checkpoint.
"""

from __future__ import annotations

import copy
from typing import Any

from prune_perception.errors import ConfigError

ARCH_FAMILY = "ppdet"
ARCH_VERSION = 1
STRIDES = (8, 16, 32)
ACTIVATIONS = ("relu", "silu")

# Per size: stem width, (width, residual blocks) of the four backbone stages (strides 4..32),
# neck width and head width.
SIZES: dict[str, dict[str, Any]] = {
    "nano": {"stem": 16, "stages": [(32, 1), (64, 2), (96, 2), (128, 1)], "neck": 64, "head": 64},
    "small": {"stem": 24, "stages": [(48, 1), (96, 2), (160, 3), (256, 1)], "neck": 96, "head": 96},
}


def layer_names(depths: list[int]) -> list[str]:
    """All conv layer names of the topology with the given residual blocks per stage, in build order."""
    names = ["stem"]
    for s, blocks in enumerate(depths, start=1):
        names.append(f"stage{s}.down")
        for b in range(blocks):
            names += [f"stage{s}.block{b}.cv1", f"stage{s}.block{b}.cv2"]
    names += ["neck.lat3", "neck.lat4", "neck.lat5", "neck.td4", "neck.td3",
              "neck.down3", "neck.bu4", "neck.down4", "neck.bu5"]
    for level in range(len(STRIDES)):
        names += [f"head{level}.stem", f"head{level}.cls_conv", f"head{level}.reg_conv"]
    return names


def default_arch(size: str, num_classes: int, act: str = "relu") -> dict[str, Any]:
    """Spec of the dense `size` model (nano/small) for `num_classes` classes."""
    if size not in SIZES:
        raise ConfigError(f"unknown model size {size!r}; known: {', '.join(SIZES)}")
    base = SIZES[size]
    depths = [blocks for _, blocks in base["stages"]]
    widths: dict[str, int] = {"stem": base["stem"]}
    for s, (width, blocks) in enumerate(base["stages"], start=1):
        widths[f"stage{s}.down"] = width
        for b in range(blocks):
            widths[f"stage{s}.block{b}.cv1"] = width // 2
            widths[f"stage{s}.block{b}.cv2"] = width
    for name in layer_names(depths):
        if name.startswith("neck."):
            widths[name] = base["neck"]
        elif name.startswith("head"):
            widths[name] = base["head"]
    spec = {"family": ARCH_FAMILY, "version": ARCH_VERSION, "size": size, "num_classes": num_classes,
            "act": act, "strides": list(STRIDES), "depths": depths, "widths": widths}
    validate_arch(spec)
    return spec


def validate_arch(spec: dict[str, Any]) -> dict[str, Any]:
    """Check a spec read from a file; returns a deep copy or raises ConfigError naming the problem."""
    if not isinstance(spec, dict):
        raise ConfigError("arch spec must be a mapping")
    if spec.get("family") != ARCH_FAMILY or spec.get("version") != ARCH_VERSION:
        raise ConfigError(f"arch spec is not {ARCH_FAMILY} v{ARCH_VERSION}: family={spec.get('family')!r} "
                          f"version={spec.get('version')!r}")
    if spec.get("act") not in ACTIVATIONS:
        raise ConfigError(f"arch act {spec.get('act')!r} not one of {ACTIVATIONS}")
    num_classes = spec.get("num_classes")
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ConfigError(f"arch num_classes must be a positive int, got {num_classes!r}")
    depths = spec.get("depths")
    if not (isinstance(depths, list) and len(depths) == 4 and all(isinstance(d, int) and d >= 0 for d in depths)):
        raise ConfigError(f"arch depths must be 4 non-negative ints, got {depths!r}")
    widths = spec.get("widths")
    expected = layer_names(depths)
    if not isinstance(widths, dict) or sorted(widths) != sorted(expected):
        missing = sorted(set(expected) - set(widths or {}))
        extra = sorted(set(widths or {}) - set(expected))
        raise ConfigError(f"arch widths do not match the topology: missing {missing}, unexpected {extra}")
    bad = {k: v for k, v in widths.items() if not isinstance(v, int) or v < 1}
    if bad:
        raise ConfigError(f"arch widths must be positive ints: {bad}")
    for s, blocks in enumerate(depths, start=1):
        for b in range(blocks):
            if widths[f"stage{s}.block{b}.cv2"] != widths[f"stage{s}.down"]:
                raise ConfigError(f"arch stage{s}.block{b}.cv2 must equal stage{s}.down (residual add)")
    return copy.deepcopy(spec)
