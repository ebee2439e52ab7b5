"""The one pruning entry point: `prune(config) -> PruneResult`.

It owns the choice of mode and its validation, so the CLI, the demo, benchmarks, Dask and torchrun all
behave alike:

- `ratio` (run.py): remove `prune.ratio` of the channels (or weights), one-shot / iterative / elastic;
- `budget` (budget.py, when `prune.budget` is set): the fastest measured candidate ratio whose fine-tuned
  mAP50 drop stays within the budget; `fan_out` evaluates its candidates on Dask (scaleout/budget_candidates.py);
- `latency` (latency_budget.py, when `prune.latency_ms` is set, with `prune.budget` or without): the
  fastest network that meets a measured latency target;
- `external` (external/pipeline.py, for an ExternalPruneConfig): a detector brought as an ONNX file,
  pruned and fine-tuned by distillation on unlabeled frames, written back as a drop-in ONNX; with
  `prune.budget`, the fastest candidate within budget (external/budget_search.py).

Under torchrun rank 0 prunes and writes, every rank fine-tunes (ddp_finetune.py); the other ranks get None.
"""

from __future__ import annotations

from pathlib import Path

from prune_perception.config import ExternalPruneConfig, PruneConfig
from prune_perception.errors import ConfigError
from prune_perception.pruning.budget import (check_search_fans_out, run_budget_pruning,
                                             validate_budget_settings)
from prune_perception.pruning.ddp_finetune import check_distributable, run_on_ranks
from prune_perception.pruning.elastic import validate_elastic
from prune_perception.pruning.history import PruneResult
from prune_perception.pruning.latency_budget import run_latency_pruning, validate_latency_settings
from prune_perception.pruning.run import run_pruning
from prune_perception.pruning.schedules import resolve_schedule
from prune_perception.pruning.unstructured import check_granularity
from prune_perception.scaleout.runner import FanOutSettings
from prune_perception.training.distillation import validate_distill_settings
from prune_perception.training.distributed import env_context

PRUNE_MODES = ("ratio", "budget", "latency", "external")


def prune_mode(config: PruneConfig) -> str:
    """The mode a config asks for: latency when `prune.latency_ms` is set, else budget with `prune.budget`, else ratio."""
    if config.prune.latency_ms is not None:
        return "latency"
    return "budget" if config.prune.budget is not None else "ratio"


def validate_prune_config(config: PruneConfig, fan_out: FanOutSettings | None = None) -> str:
    """Every check of a pruning run before anything is loaded; returns its mode. Raises ConfigError."""
    settings = config.prune
    if env_context().is_distributed:
        check_distributable(config)   # first: under torchrun that is the error that matters
    validate_distill_settings(config.distill)
    check_granularity(settings.granularity, settings.method)
    if resolve_schedule(settings) == "elastic":
        validate_elastic(config)
    mode = prune_mode(config)
    if mode == "latency":
        validate_latency_settings(config)
    elif mode == "budget":
        validate_budget_settings(settings)
    if fan_out is not None:
        if mode != "budget":
            raise ConfigError("--scheduler / --workers fan out the candidates of an accuracy-budget search: they "
                              "need --budget (and no --latency-ms)")
        check_search_fans_out(settings.budget_search)
        if env_context().is_distributed:
            raise ConfigError("--scheduler / --workers (Dask) and torchrun do not combine: use one of them")
    return mode


def prune(config: PruneConfig | ExternalPruneConfig, progress: bool = True,
          fan_out: FanOutSettings | None = None) -> PruneResult | None:
    """Validate `config`, then prune as its mode says; writes the run's outputs to `config.output`.

    Returns None only on torchrun ranks other than 0 (they serve rank 0's fine-tuning jobs).
    """
    if isinstance(config, ExternalPruneConfig):
        return _prune_imported(config, progress, fan_out)
    mode = validate_prune_config(config, fan_out)
    if mode == "latency":
        return run_on_ranks(config, lambda: run_latency_pruning(config, progress))
    if mode == "budget":
        candidates_on = None
        if fan_out is not None:
            from prune_perception.scaleout.budget_candidates import DaskBudgetCandidates   # Dask only when fanning out

            candidates_on = DaskBudgetCandidates(fan_out)
        return run_on_ranks(config, lambda: run_budget_pruning(config, progress, candidates_on))
    return run_on_ranks(config, lambda: run_pruning(config, progress))


def _prune_imported(config: ExternalPruneConfig, progress: bool, fan_out: FanOutSettings | None) -> PruneResult:
    """The `external` mode: one ratio (one-shot or iterative), an accuracy-budget or a latency-target search,
    label-free, one process."""
    from prune_perception.external.pipeline import prune_external   # onnx2torch only for imported models

    if fan_out is not None:
        raise ConfigError("--scheduler / --workers fan out accuracy-budget candidates, which imported models do not "
                          "search: drop them")
    if env_context().is_distributed:
        raise ConfigError("imported models are pruned in one process: run without torchrun")
    candidates, chosen_ratio = [], config.prune.ratio
    if config.prune.latency_ms is not None:
        from prune_perception.external.latency_search import search_imported_latency

        path, steps, candidates = search_imported_latency(config, progress)
        chosen_ratio = steps[-1].ratio if len(steps) > 1 else None
    elif config.prune.budget is not None:
        validate_budget_settings(config.prune)
        from prune_perception.external.budget_search import search_imported_budget

        path, steps, candidates = search_imported_budget(config, progress)
        chosen_ratio = steps[-1].ratio if len(steps) > 1 else None
    else:
        path, steps = prune_external(config, progress)
    dense, final = steps[0], steps[-1]
    score = (f"agreement with the dense model mAP50 {final.mAP50:.3f}" if final.mAP50 is not None
             else f"raw-output error {dense.raw_error:.4f} -> {final.raw_error:.4f}")
    summary = [f"pruned ONNX: {path} (same inputs and outputs as {config.external.model})",
               f"params {dense.params:,} -> {final.params:,}, MACs {dense.macs / 1e6:.1f}M -> {final.macs / 1e6:.1f}M "
               f"({1 - final.macs / dense.macs:.1%} cut), {score} (held-out frames, no labels)"]
    if final.labeled_mAP50 is not None:
        summary.append(f"labeled mAP50 {dense.labeled_mAP50:.3f} -> {final.labeled_mAP50:.3f} "
                       f"({config.external.labeled_data})")
    if config.prune.latency_ms is not None:
        summary.append(f"latency target {config.prune.latency_ms:g} ms: " + (
            f"ratio {chosen_ratio:g}, the smallest that meets it (history.json: achieved p50/p99)"
            if chosen_ratio is not None else
            f"the smallest ratio that meets it drops more than the {config.prune.budget:g}-point budget: the dense "
            "model was written unchanged (history.json: budget)" if candidates else
            "the dense model meets it: written unchanged"))
    elif config.prune.budget is not None:
        summary.append(f"budget {config.prune.budget:g} points: " + (
            f"ratio {chosen_ratio:g} of {len(candidates)} candidate(s), the fastest within budget"
            if chosen_ratio is not None else f"none of {len(candidates)} candidate(s) within budget: the dense model "
                                             "was written unchanged"))
    return PruneResult("external", path, Path(config.output), steps, summary, candidates, chosen_ratio,
                       kept_dense=(config.prune.budget is not None or config.prune.latency_ms is not None)
                       and chosen_ratio is None)
