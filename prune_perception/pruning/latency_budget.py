"""Latency-budget pruning: the target is a measured latency on the target device, not a ratio.

`prune --latency-ms X --device cpu|cuda [--threads N]`:

1. Measure the dense network and the smallest one the search may build (every group at
   `max_layer_ratio`) through export + the runtime engine (latency_model.py). A target below the
   smallest network's latency is an error; a dense network that already meets it is kept.
2. Calibrate the latency model on a dozen measured candidates (uniform and mixed widths).
3. Estimate what each coupled group's width costs in accuracy: zero its least important channels
   (exactly what removing them computes, see channel_masks.py) at a few ratios and evaluate val mAP50
   on `latency_val_images` images — no fine-tuning, one layer group at a time, but with BatchNorm
   statistics re-estimated on as many training images first ("adaptive BN", EagleEye, Li et al. ECCV
   2020: stale statistics make a pruned network look far worse than it is after fine-tuning).
4. Search per-group widths greedily: starting from dense, narrow the group that saves the most
   predicted latency per point of estimated mAP50 lost, until the prediction meets
   target × (1 − `latency_margin`). Measure the choice; refit the model with it and correct the
   prediction by the measured/predicted ratio until a measured candidate meets the target.
5. Prune the dense model to those widths (torch-pruning, the `prune:` method, schedule and fine-tuning),
   export it, and measure dense and pruned through the engine (>= 200 runs, round-robin): achieved
   p50/p99 against the target.

With `prune.budget` (`--budget Y`) the accuracy budget applies too: the target, then the tighter
targets `latency_budget_fractions` × X, are pruned and fine-tuned in turn until one drops more than
Y mAP50 points. The result is the fastest one within budget, and the run says which constraint bound:
`latency` (the target decided the model), `budget` (the budget allowed a faster model than the
target; it stopped at the next step), or `infeasible` (meeting the target costs more than the budget:
the target's model is written, marked as over budget).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from prune_perception.config import PruneConfig, to_dict
from prune_perception.data.dataset import load_dataset
from prune_perception.errors import ConfigError
from prune_perception.export.onnx_export import export_onnx
from prune_perception.models.checkpoint import load_checkpoint
from prune_perception.models.cost import model_cost
from prune_perception.models.detector import Detector, model_widths
from prune_perception.models.torch_eval import LetterboxedImages, evaluate_model
from prune_perception.pruning.channel_masks import ChannelGroups, restore, snapshot, zero_selection
from prune_perception.pruning.importance import make_importance
from prune_perception.pruning.dense import save_pruned, start_run
from prune_perception.pruning.history import PruneResult, PruneStep, prune_markdown
from prune_perception.pruning.schedules import prune_model, resolve_schedule
from prune_perception.pruning.latency_model import (CostFeatures, LatencyMeter, LatencyModel, MeasureSettings,
                                                    WidthSpace, check_device, export_candidate, time_models)
from prune_perception.pruning.structured import PruneSpec
from prune_perception.pruning.choices import GRADIENT_FREE_CRITERIA

LATENCY_METHODS = GRADIENT_FREE_CRITERIA   # the sensitivity estimate ranks channels without gradients
SENSITIVITY_FRACTIONS = (0.25, 0.5, 0.75)              # + max_layer_ratio: removed share of a group's channels
CALIBRATION_UNIFORM = (0.25, 0.5, 0.7)
CALIBRATION_MIXED = 5
FINAL_RUNS = 200                                       # timed runs of the final dense/pruned comparison (at least)
MAX_SEARCH_ROUNDS = 8
DROP_EPSILON = 1e-3                                    # mAP50 a width step costs at least, in the greedy score
BOUNDS = ("latency", "budget", "infeasible", "dense")


def validate_latency_settings(config: PruneConfig) -> None:
    s = config.prune
    if s.latency_ms is None or not s.latency_ms > 0:
        raise ConfigError(f"prune.latency_ms must be > 0 ms, got {s.latency_ms}")
    check_device(s.latency_device)
    MeasureSettings(s.latency_device, s.latency_threads, s.latency_runs).validate()
    if not 0.0 <= s.latency_margin < 0.5:
        raise ConfigError(f"prune.latency_margin must be in [0, 0.5), got {s.latency_margin}")
    if s.latency_val_images < 1:
        raise ConfigError(f"prune.latency_val_images must be >= 1, got {s.latency_val_images}")
    if s.granularity != "channel":
        raise ConfigError(f"latency-budget pruning removes channels: prune.granularity must be channel, "
                          f"got {s.granularity!r}")
    if s.method not in LATENCY_METHODS:
        raise ConfigError(f"latency-budget pruning estimates per-layer sensitivity without loss gradients: "
                          f"prune.method must be one of {', '.join(LATENCY_METHODS)}, got {s.method!r}")
    if s.layer_ratios or s.global_pruning:
        raise ConfigError("latency-budget pruning chooses every layer's width itself: drop prune.layer_ratios "
                          "and prune.global_pruning (--global)")
    if not s.latency_budget_fractions or any(not 0.0 < f <= 1.0 for f in s.latency_budget_fractions):
        raise ConfigError(f"prune.latency_budget_fractions must be in (0, 1], got {s.latency_budget_fractions}")
    if s.budget is not None and s.budget < 0:
        raise ConfigError(f"prune.budget must be >= 0 mAP50 points, got {s.budget}")
    resolve_schedule(s)


# ------------------------------------------------------------------ accuracy side: per-group sensitivity
@dataclass
class GroupSensitivity:
    """Estimated val mAP50 lost when one group is narrowed alone (no fine-tuning): (width, drop) points."""

    layers: tuple[str, ...]
    widths: list[int]          # descending, dense first
    drops: list[float]         # mAP50 (0..1) lost at each width; 0 at dense

    def drop(self, width: int) -> float:
        return float(np.interp(width, self.widths[::-1], self.drops[::-1]))


def estimate_sensitivity(groups: ChannelGroups, space: WidthSpace, evaluate: Callable[[Detector], float],
                         fractions: Sequence[float], progress: bool = True) -> list[GroupSensitivity]:
    """Zero each group's least important channels at each removed fraction and evaluate (restored afterwards)."""
    model = groups.model
    base = evaluate(model)
    jobs = [(g, w) for g in range(len(space.groups))
            for w in sorted({space.group_width(g, f) for f in fractions} | {int(space.floor[g])}, reverse=True)
            if w < space.dense[g]]
    points: dict[int, list[tuple[int, float]]] = {g: [(int(space.dense[g]), 0.0)] for g in range(len(space.groups))}
    for g, width in tqdm(jobs, desc="sensitivity", unit="eval", disable=not progress):
        selection = groups.selection(g, int(space.dense[g]) - width)
        saved = snapshot(model, selection)
        zero_selection(model, selection, full=True)
        points[g].append((width, base - evaluate(model)))
        restore(model, saved)
    return [GroupSensitivity(space.groups[g], [w for w, _ in sorted(points[g], reverse=True)],
                             [d for _, d in sorted(points[g], reverse=True)]) for g in range(len(space.groups))]


# ------------------------------------------------------------------ the width search
def allocate_widths(space: WidthSpace, predict: Callable[[np.ndarray], float], sensitivity: list[GroupSensitivity],
                    goal_ms: float) -> tuple[np.ndarray, float]:
    """Greedy: from dense, narrow the group with the most predicted ms saved per estimated mAP50 lost, until the
    prediction meets `goal_ms` (or every group is at its floor). Returns the widths and their prediction."""
    widths = space.dense.copy()
    predicted = predict(widths)
    while predicted > goal_ms:
        best = None
        for g in range(len(widths)):
            narrower = space.narrower(widths, g)
            if narrower is None:
                continue
            trial = widths.copy()
            trial[g] = narrower
            trial_ms = predict(trial)
            saved_ms = predicted - trial_ms
            if saved_ms <= 0:
                continue
            cost = max(sensitivity[g].drop(narrower) - sensitivity[g].drop(int(widths[g])), 0.0) + DROP_EPSILON
            score = saved_ms / cost
            if best is None or score > best[0]:
                best = (score, g, narrower, trial_ms)
        if best is None:
            break
        _, g, narrower, predicted = best
        widths[g] = narrower
    return widths, predicted


@dataclass
class SearchRound:
    """One measured candidate of the width search (latencies relative to the calibration's dense p50, see
    `search_widths`; `raw_p50_ms` as timed)."""

    round: int
    predicted_ms: float
    measured_p50_ms: float
    measured_p99_ms: float
    raw_p50_ms: float
    macs: int
    estimated_drop: float      # sum of the groups' estimated mAP50 drops (no fine-tuning)
    widths: list[int]


@dataclass
class WidthSearch:
    target_ms: float
    goal_ms: float
    widths: np.ndarray
    rounds: list[SearchRound]
    met: bool                  # a measured candidate met the goal (else: the best one measured within the target)


def search_widths(space: WidthSpace, model: LatencyModel, meter: LatencyMeter, sensitivity: list[GroupSensitivity],
                  target_ms: float, margin: float, macs_of: Callable[[np.ndarray], int], dense_reference_ms: float,
                  progress: bool = True) -> WidthSearch:
    """Widths predicted to meet target × (1 - margin), verified by measurement (refit + correction each round).

    Each candidate is timed together with the dense network and its latency scaled by
    dense_reference_ms / dense p50 of that session, so load that comes and goes on a shared machine
    does not move the goalposts between rounds (the final check measures without this correction).
    """
    goal = target_ms * (1 - margin)
    scale, aim = 1.0, goal
    rounds: list[SearchRound] = []
    seen: set[tuple[int, ...]] = set()

    def estimated_drop(w):
        return float(sum(s.drop(int(x)) for s, x in zip(sensitivity, w)))

    for index in range(1, MAX_SEARCH_ROUNDS + 1):
        widths, predicted = allocate_widths(space, lambda w: model.predict(w) * scale, sensitivity, aim)
        if tuple(widths) in seen:            # the correction changed nothing: aim lower
            aim *= 0.97
            widths, predicted = allocate_widths(space, lambda w: model.predict(w) * scale, sensitivity, aim)
            if tuple(widths) in seen:
                break
        seen.add(tuple(widths))
        raw, dense_now = meter.measure([widths, space.dense], progress=False, fresh=True)
        factor = dense_reference_ms / dense_now.p50
        p50, p99 = raw.p50 * factor, raw.p99 * factor
        rounds.append(SearchRound(index, round(predicted, 4), round(p50, 4), round(p99, 4), round(raw.p50, 4),
                                  macs_of(widths), round(estimated_drop(widths), 5), [int(w) for w in widths]))
        if progress:
            tqdm.write(f"search round {index}: predicted {predicted:.2f} ms, measured p50 {p50:.2f} ms "
                       f"(goal {goal:.2f}, target {target_ms:.2f}; as timed {raw.p50:.2f}, dense {dense_now.p50:.2f})"
                       f", MACs {rounds[-1].macs / 1e6:.1f}M")
        model.add(widths, p50)
        model.fit()
        space.set_block(model.block)
        scale = p50 / max(model.predict(widths), 1e-9)
        if goal * 0.92 <= p50 <= goal:
            break
        if p50 > goal and np.array_equal(widths, space.floor):
            break
    within_goal = [r for r in rounds if r.measured_p50_ms <= goal]
    within_target = [r for r in rounds if r.measured_p50_ms <= target_ms]
    pool = within_goal or within_target
    if not pool:
        raise ConfigError(f"no measured candidate met the latency target {target_ms:g} ms "
                          f"(closest: {min(r.measured_p50_ms for r in rounds):.2f} ms); the machine may be too "
                          f"noisy: raise prune.latency_margin or the target")
    best = min(pool, key=lambda r: r.estimated_drop)
    return WidthSearch(target_ms, goal, np.array(best.widths), rounds, bool(within_goal))


# ------------------------------------------------------------------ the combined ladder (latency + accuracy budget)
@dataclass
class LadderTrial:
    target_ms: float
    mAP50: float
    drop_points: float
    within_budget: bool
    extra: Any = None


def search_latency_ladder(evaluate_target: Callable[[float], tuple[float, Any]], dense_map50: float,
                          budget: float | None, targets: Sequence[float]) -> tuple[list[LadderTrial], LadderTrial, str]:
    """Try latency targets loosest first; stop at the first over `budget` (or after the first, without a budget).

    Returns every trial, the chosen one and which constraint bound: `latency` (the first target's model),
    `budget` (a tighter target was within budget: the result is faster than asked) or `infeasible`
    (the first target is over budget; it is returned anyway).
    """
    trials: list[LadderTrial] = []
    for target in sorted(targets, reverse=True):
        map50, extra = evaluate_target(target)
        drop = (dense_map50 - map50) * 100
        trials.append(LadderTrial(target, map50, drop, budget is None or drop <= budget, extra))
        if budget is None or not trials[-1].within_budget:
            break
    passed = [t for t in trials if t.within_budget]
    if not passed:
        return trials, trials[0], "infeasible"
    return trials, passed[-1], "latency" if passed[-1] is trials[0] else "budget"


# ------------------------------------------------------------------ the run
@dataclass
class LatencyOutcome:
    """What `prune --latency-ms` produced and measured."""

    path: Path
    bound: str                 # latency | budget | infeasible | dense
    target_ms: float
    device: str
    threads: int
    dense_p50_ms: float
    dense_p99_ms: float
    p50_ms: float
    p99_ms: float
    met: bool                  # measured p50 <= target
    dense_mAP50: float
    mAP50: float
    dense_macs: int
    macs: int
    budget: float | None = None
    candidates: list[dict] = field(default_factory=list)

    def summary_lines(self) -> list[str]:
        where = f"{self.device}, {self.threads or 'default'} thread(s)"
        lines = [f"pruned checkpoint: {self.path} (ONNX: {self.path.with_suffix('.onnx')})",
                 f"latency target {self.target_ms:g} ms ({where}): measured p50 {self.p50_ms:.2f} ms, p99 "
                 f"{self.p99_ms:.2f} ms -> {'met' if self.met else 'NOT met'} (dense p50 {self.dense_p50_ms:.2f} ms, "
                 f"p99 {self.dense_p99_ms:.2f} ms)",
                 f"MACs {self.dense_macs / 1e6:.1f}M -> {self.macs / 1e6:.1f}M "
                 f"({1 - self.macs / self.dense_macs:.1%} cut),"
                 f" val mAP50 {self.dense_mAP50:.3f} -> {self.mAP50:.3f} "
                 f"({(self.mAP50 - self.dense_mAP50) * 100:+.2f} points)"]
        drop = (self.dense_mAP50 - self.mAP50) * 100
        if self.bound == "dense":
            lines.append("the dense model already meets the target: nothing pruned")
        elif self.bound == "infeasible":
            lines.append(f"both constraints cannot be met: meeting {self.target_ms:g} ms costs {drop:.2f} mAP50 "
                         f"points > budget {self.budget:g}; the target's model is written, marked over budget")
        elif self.budget is None:
            lines.append("bound by the latency target")
        elif self.bound == "latency":
            lines.append(f"bound by the latency target: {drop:.2f} mAP50 points lost <= budget {self.budget:g}; "
                         f"the next tighter target went over budget (or none was tried)")
        else:
            lines.append(f"bound by the accuracy budget: {drop:.2f} mAP50 points lost <= {self.budget:g}, model "
                         f"faster than the target; the next tighter target went over budget")
        return lines


@torch.no_grad()
def recalibrated_map50(model: Detector, calibration: LetterboxedImages, images: LetterboxedImages,
                       dataset, batch_size: int = 16) -> float:
    """val mAP50 with BatchNorm statistics re-estimated on `calibration` images (restored afterwards)."""
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    saved = [(bn.running_mean.clone(), bn.running_var.clone(), bn.num_batches_tracked.clone(), bn.momentum)
             for bn in norms]
    for bn in norms:
        bn.reset_running_stats()
        bn.momentum = None                   # cumulative average over the calibration batches
    was_training = model.training
    model.train()
    for start in range(0, len(calibration.images), batch_size):
        model(calibration.batch(start, start + batch_size))
    model.train(was_training)
    try:
        return evaluate_model(model, images, dataset).map50
    finally:
        for bn, (mean, var, count, momentum) in zip(norms, saved):
            bn.running_mean.copy_(mean)
            bn.running_var.copy_(var)
            bn.num_batches_tracked.copy_(count)
            bn.momentum = momentum


def _subset_evaluator(config: PruneConfig, classes: list[str], input_hw: tuple[int, int],
                      count: int) -> Callable[[Detector], float]:
    """mAP50 on the first `count` val images after adaptive BN on the first `count` training images."""
    val_set = load_dataset(config.data.val, config.data.val_split, classes)
    val_set = dataclasses.replace(val_set, samples=val_set.samples[:count])
    train_set = load_dataset(config.data.train, config.data.train_split, classes)
    calibration = LetterboxedImages(dataclasses.replace(train_set, samples=train_set.samples[:count]), input_hw)
    images = LetterboxedImages(val_set, input_hw)
    return lambda model: recalibrated_map50(model, calibration, images, val_set)


def calibration_candidates(space: WidthSpace, seed: int = 0) -> list[np.ndarray]:
    """Uniform ratios (as `prune --ratio` keeps them and rounded to multiples of 8) and mixed widths."""
    rng = np.random.default_rng(seed)
    candidates = [space.uniform(r) for r in CALIBRATION_UNIFORM]
    candidates += [np.maximum(space.floor, (space.uniform(r) // 8) * 8) for r in CALIBRATION_UNIFORM[1:]]
    candidates += [space.keep(rng.uniform(0.15, 1.0, len(space.groups))) for _ in range(CALIBRATION_MIXED)]
    unique = {tuple(int(w) for w in c): c for c in candidates}
    return list(unique.values())


def run_latency_pruning(config: PruneConfig, progress: bool = True) -> PruneResult:
    """`prune --latency-ms` (optionally with `--budget`); writes pruned.pt, pruned.onnx, dense.onnx, history.json,
    summary.md and latency_cache.json to `config.output`. The result's `details` is the LatencyOutcome.

    Validation is `pruning.api.validate_prune_config`'s (validate_latency_settings).
    """
    settings = config.prune
    schedule = resolve_schedule(settings)
    output = Path(config.output)
    output.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    checkpoint = load_checkpoint(Path(config.checkpoint))
    dense_model, input_hw, classes = checkpoint.model.eval(), checkpoint.input_hw, checkpoint.classes
    groups = ChannelGroups(dense_model, input_hw, make_importance(settings.method))
    space = WidthSpace(dense_model.arch, [g.layers for g in groups.groups], settings.max_layer_ratio, settings.round_to)
    measure = MeasureSettings(settings.latency_device, settings.latency_threads, settings.latency_runs)
    meter = LatencyMeter(space, classes, input_hw, measure,
                         Path(settings.latency_cache) if settings.latency_cache else output / "latency_cache.json")
    target = settings.latency_ms
    where = f"{measure.device}, {measure.threads or 'default'} thread(s)"

    # 1. the two ends
    dense_stats, floor_stats = meter.measure([space.dense, space.floor], progress=progress, desc="dense + smallest")
    features = CostFeatures(space, input_hw)
    if progress:
        tqdm.write(f"dense p50 {dense_stats.p50:.2f} ms, smallest searchable network p50 {floor_stats.p50:.2f} ms "
                   f"({where}); target {target:g} ms")
    if target < floor_stats.p50:
        raise ConfigError(f"latency target {target:g} ms is below what the smallest network this search may build "
                          f"achieves: {floor_stats.p50:.2f} ms p50 ({where}; every layer at max_layer_ratio "
                          f"{settings.max_layer_ratio:g}, {features(space.floor)[1] * 1e3:.1f}M MACs; dense "
                          f"{dense_stats.p50:.2f} ms): no pruning can meet it; raise --latency-ms")

    baseline = start_run(config)
    dense_map = baseline.map
    subset_evaluate = _subset_evaluator(config, classes, input_hw, settings.latency_val_images)

    # 2. latency model  3. sensitivity (both only when something has to be pruned)
    model = LatencyModel(features)
    sensitivity: list[GroupSensitivity] | None = None
    reference = {"dense_ms": dense_stats.p50}
    targets = [round(target * f, 4) for f in sorted(set(settings.latency_budget_fractions), reverse=True)]
    if settings.budget is None:
        targets = targets[:1]

    def prepare() -> list[GroupSensitivity]:
        nonlocal sensitivity
        if sensitivity is None:
            calibration = [space.dense, space.floor] + calibration_candidates(space)   # timed together
            measured = meter.measure(calibration, progress=progress, desc="calibration", fresh=True)
            for candidate, stats in zip(calibration, measured):
                model.add(candidate, stats.p50)
            reference["dense_ms"] = measured[0].p50
            model.fit()
            space.set_block(model.block)
            if progress:
                quality = model.quality()
                tqdm.write(f"latency model: SIMD block {quality['block']}, rank correlation {quality['spearman']:.3f}"
                           f", mean |error| {quality['mean_abs_rel_error']:.1%} on {quality['points']} candidates")
            sensitivity = estimate_sensitivity(groups, space, subset_evaluate, SENSITIVITY_FRACTIONS
                                               + (settings.max_layer_ratio,), progress)
        return sensitivity

    def macs_of(widths: np.ndarray) -> int:
        return int(features(widths)[1] * 1e9)

    def evaluate_target(target_ms: float) -> tuple[float, dict]:
        """Search widths for one target, prune a copy of the dense model to them, fine-tune; (mAP50, details)."""
        candidate_start = time.monotonic()
        if dense_stats.p50 <= target_ms * (1 - settings.latency_margin):
            return dense_map.map50, {"model": dense_model, "step": None, "search": None, "dense": True,
                                     "seconds": 0.0}
        sensitivity_table = prepare()
        search = search_widths(space, model, meter, sensitivity_table, target_ms, settings.latency_margin, macs_of,
                               reference["dense_ms"], progress)
        pruned = copy.deepcopy(dense_model)
        spec = PruneSpec(0.0, False, settings.max_layer_ratio, space.layer_ratios(search.widths),
                         settings.iterative_steps, None)
        folder = output if len(targets) == 1 else output / f"target_{target_ms:g}ms"
        steps = prune_model(config, pruned, input_hw, classes, spec, baseline.evaluate, folder, progress)
        expected = space.widths(search.widths)
        if model_widths(pruned) != expected:
            raise RuntimeError(f"pruned widths {model_widths(pruned)} differ from the searched ones {expected}")
        if progress:
            tqdm.write(f"target {target_ms:g} ms: MACs {steps[-1].macs / 1e6:.1f}M, mAP50 {steps[-1].mAP50:.3f} "
                       f"({(steps[-1].mAP50 - dense_map.map50) * 100:+.2f} points)")
        return steps[-1].mAP50, {"model": pruned, "steps": steps, "search": search, "dense": False,
                                 "seconds": round(time.monotonic() - candidate_start, 2)}

    trials, chosen, bound = search_latency_ladder(evaluate_target, dense_map.map50, settings.budget, targets)
    details = chosen.extra
    if details["dense"] and bound != "infeasible":
        bound = "dense" if chosen is trials[0] else bound
    final_model: Detector = details["model"]

    # 5. measure dense and pruned through the engine (round-robin), save, export
    cost = model_cost(final_model, input_hw)
    widths = model_widths(final_model)
    channel_ratio = round(1 - sum(widths.values()) / sum(dense_model.arch["widths"].values()), 4)
    dense_onnx = export_onnx(Path(config.checkpoint), output / "dense.onnx").path
    with tempfile.TemporaryDirectory(prefix="latency_final_") as folder:
        measured = export_candidate(final_model.arch, classes, input_hw, Path(folder) / "pruned.onnx", final_model)
        final_dense, final_pruned = time_models([dense_onnx, measured], measure, max(FINAL_RUNS, measure.runs),
                                                progress, desc="final latency")
    met = final_pruned.p50 <= target
    meta = {"method": settings.method, "schedule": schedule, "ratio": channel_ratio, "latency_target_ms": target,
            "latency_device": measure.device, "latency_threads": measure.threads, "bound": bound,
            "budget": settings.budget, "within_budget": bound != "infeasible", "kept_dense": details["dense"],
            "latency_p50_ms": round(final_pruned.p50, 4), "latency_p99_ms": round(final_pruned.p99, 4),
            "dense_latency_p50_ms": round(final_dense.p50, 4), "latency_met": met}
    pruned_path = save_pruned(config, baseline, final_model, chosen.mAP50, meta)
    export_onnx(pruned_path, output / "pruned.onnx")

    history_steps = [baseline.step(latency_p50_ms=round(final_dense.p50, 4), latency_p99_ms=round(final_dense.p99, 4))]
    if not details["dense"]:
        count = len(details["steps"])
        history_steps += [dataclasses.replace(s, ratio=round(channel_ratio * s.step / count, 6))
                          for s in details["steps"]]
        history_steps[-1] = dataclasses.replace(history_steps[-1], latency_p50_ms=round(final_pruned.p50, 4),
                                                latency_p99_ms=round(final_pruned.p99, 4))
    candidates = [_candidate_row(t, dense_map.map50) for t in trials]
    search = details["search"]
    latency = {"target_ms": target, "device": measure.device, "threads": measure.threads, "runs": measure.runs,
               "margin": settings.latency_margin, "budget": settings.budget, "bound": bound, "met": met,
               "dense_p50_ms": round(final_dense.p50, 4), "dense_p99_ms": round(final_dense.p99, 4),
               "p50_ms": round(final_pruned.p50, 4), "p99_ms": round(final_pruned.p99, 4),
               "final_runs": max(FINAL_RUNS, measure.runs),
               "search_dense_p50_ms": round(dense_stats.p50, 4), "smallest_p50_ms": round(floor_stats.p50, 4),
               "model": model.quality() if sensitivity is not None else None,
               "calibration": [{"widths": [int(w) for w in c], "measured_p50_ms": round(ms, 4),
                                "predicted_ms": round(model.predict(c), 4)} for c, ms in model.points]
               if sensitivity is not None else [],
               "sensitivity": [asdict(s) for s in sensitivity] if sensitivity is not None else None,
               "search": [asdict(r) for r in search.rounds] if search is not None else None,
               "widths": space.widths(search.widths) if search is not None else None,
               "candidates": candidates, "measured_candidates": meter.measured}
    (output / "history.json").write_text(json.dumps({
        "config": to_dict(config), "steps": [asdict(s) for s in history_steps], "latency": latency,
        "seconds": round(time.monotonic() - started, 1)}, indent=2))
    outcome = LatencyOutcome(pruned_path, bound, target, measure.device, measure.threads, final_dense.p50,
                             final_dense.p99, final_pruned.p50, final_pruned.p99, met, dense_map.map50, chosen.mAP50,
                             baseline.cost.macs, cost.macs, settings.budget, candidates)
    (output / "summary.md").write_text(latency_markdown(outcome, history_steps, schedule, settings.method))
    return PruneResult("latency", pruned_path, output, history_steps, outcome.summary_lines(), candidates,
                       channel_ratio, kept_dense=details["dense"], details=outcome)


def _candidate_row(trial: LadderTrial, dense_map50: float) -> dict:
    details = trial.extra
    search: WidthSearch | None = details["search"]
    last = search.rounds[-1] if search else None
    chosen = next((r for r in search.rounds if r.widths == [int(w) for w in search.widths]), last) if search else None
    return {"target_ms": trial.target_ms, "mAP50": trial.mAP50, "drop_points": round(trial.drop_points, 3),
            "within_budget": trial.within_budget, "dense": details["dense"],
            "search_p50_ms": chosen.measured_p50_ms if chosen else None,
            "macs": details["steps"][-1].macs if details.get("steps") else None, "seconds": details["seconds"]}


def latency_markdown(outcome: LatencyOutcome, steps: list[PruneStep], schedule: str, method: str) -> str:
    lines = [f"# Latency-budget pruning ({method}, {schedule})", "", *outcome.summary_lines(), ""]
    if len(outcome.candidates) > 1 or outcome.budget is not None:
        lines += ["| target (ms) | search p50 (ms) | MACs (M) | mAP50 | Δ mAP50 (points) | within budget |",
                  "|---|---|---|---|---|---|"]
        for c in outcome.candidates:
            macs = f"{c['macs'] / 1e6:.1f}" if c["macs"] else "dense"
            p50 = f"{c['search_p50_ms']:.2f}" if c["search_p50_ms"] else "-"
            lines.append(f"| {c['target_ms']:g} | {p50} | {macs} | {c['mAP50']:.3f} | {-c['drop_points']:+.2f} | "
                         f"{'yes' if c['within_budget'] else 'no'} |")
        lines.append("")
    lines.append(prune_markdown(steps, method, schedule))
    return "\n".join(lines)
