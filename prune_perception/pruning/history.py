"""The record of a pruning run: one PruneStep row per step, the PruneResult every pruning mode returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class PruneStep:
    """One row of the pruning history."""

    step: int
    ratio: float
    params: int
    macs: int
    mAP50_pruned: float       # right after removing channels
    mAP50_95_pruned: float
    mAP50: float              # after fine-tuning (= pruned values when not fine-tuned)
    mAP50_95: float
    seconds: float
    sparsity: float = 0.0     # fraction of zero conv weights (what weight/kernel granularity produces)
    latency_p50_ms: float | None = None   # measured inference latency (latency-budget runs; ONNX Runtime engine)
    latency_p99_ms: float | None = None
    elastic: list[dict] | None = None     # elastic schedule: one record per fine-tune epoch (see pruning/elastic.py)


@dataclass
class PruneResult:
    """What `prune(config)` produced, whatever the mode.

    `history` starts with the dense model's row; ratio and latency runs list every pruning step after it,
    a budget run the chosen candidate's final step (nothing more when the dense model was kept).
    `candidates` are the searched candidates of a budget or latency run (empty for ratio pruning).
    """

    mode: str                          # ratio | budget | latency | external (pruning/api.py PRUNE_MODES)
    path: Path                         # the written checkpoint or ONNX (the dense model itself when kept_dense)
    output: Path                       # the run's folder: history.json, summary.md, fine-tuning folders
    history: list[PruneStep]           # external: ExternalPruneStep rows (PruneStep's fields, agreement as mAP)
    summary: list[str]                 # the lines a person reads at the end of the run
    candidates: list[Any] = field(default_factory=list)
    chosen_ratio: float | None = None
    kept_dense: bool = False
    details: Any = None                # mode-specific outcome (latency: LatencyOutcome)

    @property
    def dense(self) -> PruneStep:
        return self.history[0]

    @property
    def final(self) -> PruneStep:
        return self.history[-1]


def prune_markdown(history: list[PruneStep], method: str, schedule: str = "oneshot") -> str:
    """The history as a Markdown table (summary.md)."""
    dense = history[0]
    lines = [f"# Pruning ({method}, {schedule})", "",
             "| step | ratio | params | MACs (M) | MACs cut | mAP50 pruned | mAP50 fine-tuned | mAP50-95 | Δ mAP50 |",
             "|---|---|---|---|---|---|---|---|---|"]
    for h in history:
        lines.append(f"| {h.step} | {h.ratio:.2f} | {h.params:,} | {h.macs / 1e6:.1f} | {1 - h.macs / dense.macs:.1%} | "
                     f"{h.mAP50_pruned:.3f} | {h.mAP50:.3f} | {h.mAP50_95:.3f} | {h.mAP50 - dense.mAP50:+.3f} |")
    return "\n".join(lines) + "\n"


def dense_step(params: int, macs: int, map50: float, map50_95: float, **extra: Any) -> PruneStep:
    """Row 0 of a history: the dense model, nothing pruned."""
    return PruneStep(0, 0.0, params, macs, map50, map50_95, map50, map50_95, 0.0, **extra)
