"""Ratio pruning (`prune --ratio`): evaluate -> prune (one-shot, iterative or elastic) -> fine-tune -> save."""

from __future__ import annotations

import json
from dataclasses import asdict

from prune_perception.config import PruneConfig, to_dict
from prune_perception.pruning.dense import save_pruned, start_run
from prune_perception.pruning.history import PruneResult, prune_markdown
from prune_perception.pruning.schedules import prune_model, prune_spec, resolve_schedule


def run_pruning(config: PruneConfig, progress: bool = True) -> PruneResult:
    """Prune `config.checkpoint` to `prune.ratio`; writes pruned.pt, history.json and summary.md.

    Validation is `pruning.api.validate_prune_config`'s: call `pruning.prune(config)` unless you need this mode.
    """
    settings = config.prune
    schedule = resolve_schedule(settings)
    dense = start_run(config)
    model, input_hw = dense.checkpoint.model, dense.checkpoint.input_hw
    history = [dense.step()]
    spec = prune_spec(settings)
    history += prune_model(config, model, input_hw, dense.checkpoint.classes, spec, dense.evaluate, dense.output,
                           progress)
    final = history[-1]
    path = save_pruned(config, dense, model, final.mAP50, {
        "method": settings.method, "ratio": settings.ratio, "scope": "global" if settings.global_pruning else "local",
        "iterative_steps": settings.iterative_steps, "schedule": schedule, "granularity": settings.granularity,
        "sparsity": final.sparsity, "round_to": spec.round_to, "aligned_to": spec.align_to})
    (dense.output / "history.json").write_text(json.dumps({
        "config": to_dict(config), "steps": [asdict(h) for h in history], "seconds": dense.seconds()}, indent=2))
    (dense.output / "summary.md").write_text(prune_markdown(history, settings.method, schedule))
    first = history[0]
    summary = [f"pruned checkpoint: {path}",
               f"params {first.params:,} -> {final.params:,}, MACs {first.macs / 1e6:.1f}M -> {final.macs / 1e6:.1f}M "
               f"({1 - final.macs / first.macs:.1%} cut), val mAP50 {first.mAP50:.3f} -> {final.mAP50:.3f}"]
    return PruneResult("ratio", path, dense.output, history, summary, chosen_ratio=settings.ratio)
