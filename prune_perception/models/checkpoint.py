"""Checkpoints: {format, arch, state_dict, classes, input_size, meta}, loaded weights-only (no unpickling)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from prune_perception.errors import CheckpointError, ConfigError
from prune_perception.models.detector import Detector, model_widths

CHECKPOINT_FORMAT = "prune_perception.checkpoint/1"


@dataclass
class Checkpoint:
    """A loaded checkpoint: the rebuilt model plus what describes it."""

    model: Detector
    classes: list[str]
    input_hw: tuple[int, int]
    meta: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)


def save_checkpoint(path: Path, model: Detector, classes: list[str], input_hw: tuple[int, int],
                    meta: dict[str, Any] | None = None, extra: dict[str, Any] | None = None) -> None:
    """Write atomically. The arch is read back from the model, so pruned widths are recorded."""
    arch = dict(model.arch, widths=model_widths(model))
    payload = {"format": CHECKPOINT_FORMAT, "arch": arch, "state_dict": model.state_dict(),
               "classes": list(classes), "input_size": [int(input_hw[0]), int(input_hw[1])],
               "meta": meta or {}}
    if extra:
        payload["extra"] = extra
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)


def load_checkpoint(path: Path) -> Checkpoint:
    """Load and rebuild the model; CheckpointError names the file and what is wrong."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types on foreign bytes; all mean: not our checkpoint
        raise CheckpointError(f"checkpoint {path} is corrupt or not a weights-only torch file: "
                              f"{str(exc).splitlines()[0]}") from None
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        found = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
        raise CheckpointError(f"checkpoint {path} has format {found!r}, expected {CHECKPOINT_FORMAT!r}")
    try:
        model = Detector(payload["arch"])
        model.load_state_dict(payload["state_dict"])
    except ConfigError as exc:
        raise CheckpointError(f"checkpoint {path}: {exc}") from None
    except (KeyError, RuntimeError) as exc:
        raise CheckpointError(f"checkpoint {path}: weights do not match its arch: {str(exc).splitlines()[0]}") from None
    model.eval()
    height, width = payload["input_size"]
    return Checkpoint(model, list(payload["classes"]), (int(height), int(width)), dict(payload.get("meta", {})),
                      dict(payload.get("extra", {})))
