"""Pruning: importance criteria, structured/unstructured pruners, schedules, searches, one entry point.

`prune(config) -> PruneResult` (api.py) is what callers use; the other modules are its parts.
"""

from __future__ import annotations

from typing import Any

__all__ = ["prune", "PruneResult", "PRUNE_MODES", "validate_prune_config"]


def __getattr__(name: str) -> Any:   # lazy: importing one part (e.g. importance) must not load every mode
    if name in ("prune", "PRUNE_MODES", "validate_prune_config"):
        from prune_perception.pruning import api

        return getattr(api, name)
    if name == "PruneResult":
        from prune_perception.pruning.history import PruneResult

        return PruneResult
    raise AttributeError(name)
