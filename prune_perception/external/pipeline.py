"""Prune a detector you already have: ONNX in, smaller drop-in ONNX out, fine-tuned without labels.

:func:`prune_external` runs the whole path for an :class:`ExternalPruneConfig`: import the ONNX file
(onnx2torch), read its layout and pre-processing as the runtime engine does, read unlabeled frames,
prune structurally (one-shot or iterative, output layers protected), fine-tune each step by
distillation from the dense model, score agreement on held-out frames, export ``pruned.onnx`` with
the original's IO signature and metadata, and write ``history.json`` and ``summary.md``.

:func:`prune_module` is the same core for an in-memory ``nn.Module`` (a user's own PyTorch detector).
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from prune_perception.config import (ExternalPruneConfig, LabelFreeDistillSettings, OptimConfig, PruneSettings,
                                     to_dict)
from prune_perception.errors import ConfigError
from prune_perception.external.agreement import Agreement, AgreementScorer
from prune_perception.external.batchnorm_reinsertion import conv_statistics, fold_batchnorm, insert_batchnorm
from prune_perception.external.distill_finetune import FinetuneResult, distill_finetune
from prune_perception.external.elastic_distill import check_elastic, check_elastic_model, elastic_distill
from prune_perception.external.frame_augment import FrameAugment
from prune_perception.external.frames import UnlabeledFrames, load_frames
from prune_perception.external.graph_pruning import GraphPruner, PrunePlan
from prune_perception.external.label_free_loss import DistillationLoss, UserLoss, check_temperature, parse_terms
from prune_perception.external.layout import DetectorLayout, resolve_layout
from prune_perception.external.onnx_import import ImportedOnnx, import_onnx
from prune_perception.external.onnx_writer import export_pruned
from prune_perception.external.sensitivity_ratios import (RatioAllocation, SensitivityCurves, allocate_ratios,
                                                          covering_max_layer_ratio, load_curves)
from prune_perception.models.cost import model_cost
from prune_perception.pruning.importance import accumulate_gradients, make_importance
from prune_perception.pruning.schedules import prune_spec, resolve_schedule
from prune_perception.runtime.model_metadata import ModelOverrides
from prune_perception.training.schedule import check_optim_choices


TeacherStatistics = Mapping[str, tuple[torch.Tensor, torch.Tensor]]
UNSCORED = Agreement(raw_error=float("nan"))
"""The score of a model pruned for timing only (``prune_module(scored=False)``)."""


@dataclass
class ExternalPruneStep:
    """One history row, PruneStep's fields (pruning/run.py) with agreement as the score when there are no labels.

    ``mAP50*`` are agreement mAP (pruned model vs dense model on held-out frames; None for raw
    layouts, where ``raw_error`` is the score); ``labeled_*`` are filled on the dense row and the
    final row when a labeled set is configured.
    """

    step: int
    ratio: float
    params: int
    macs: int
    mAP50_pruned: float | None
    mAP50_95_pruned: float | None
    mAP50: float | None
    mAP50_95: float | None
    seconds: float
    raw_error_pruned: float = 0.0
    raw_error: float = 0.0
    labeled_mAP50: float | None = None
    labeled_mAP50_95: float | None = None
    finetune: list[dict] | None = None
    elastic: list[dict] | None = None


@dataclass
class ModulePruneResult:
    """What :func:`prune_module` did: the plan, one row per step (and the sensitivity-guided ratios, if any)."""

    plan: PrunePlan
    steps: list[ExternalPruneStep]
    allocation: RatioAllocation | None = None


def check_supported(settings: PruneSettings, finetune: OptimConfig, distill: LabelFreeDistillSettings) -> str:
    """The schedule for an imported model (oneshot / iterative / elastic); ConfigError for what this path does not
    do."""
    if settings.granularity != "channel":
        raise ConfigError(f"imported models are pruned structurally (granularity channel), got {settings.granularity!r}")
    check_optim_choices(finetune, "finetune")
    schedule = resolve_schedule(settings)
    if schedule == "elastic":
        check_elastic(settings, finetune, distill)
    return schedule


def _taylor_gradients(loss: DistillationLoss, frames: torch.Tensor, settings: PruneSettings,
                      distill: LabelFreeDistillSettings, batch_size: int) -> None:
    """Gradients of the distillation loss for Taylor importance, the student seeing noisy frames.

    At the dense point the student equals the teacher and a distillation loss has zero gradient;
    the noise makes the gradient measure how much each channel matters to the teacher's outputs.
    """
    generator = torch.Generator().manual_seed(0)
    batches = [frames[i:i + batch_size].float() for i in range(0, len(frames), batch_size)]

    def loss_of_batch(images: torch.Tensor) -> torch.Tensor:
        spread = float(images.amax() - images.amin()) or 1.0
        noisy = images + torch.randn(images.shape, generator=generator) * distill.taylor_input_noise * spread
        return loss(images, noisy)[0]

    accumulate_gradients(loss.student, batches, loss_of_batch, settings.taylor_batches)


def prune_module(model: torch.nn.Module, example_input: torch.Tensor, layout: DetectorLayout,
                 frames: UnlabeledFrames, settings: PruneSettings, finetune: OptimConfig,
                 distill: LabelFreeDistillSettings = LabelFreeDistillSettings(), keep_layers: Sequence[str] = (),
                 user_loss: UserLoss | None = None, progress: bool = True,
                 teacher_statistics: TeacherStatistics | None = None, scored: bool = True
                 ) -> tuple[torch.nn.Module, ModulePruneResult]:
    """Prune a copy of ``model`` (the teacher stays dense) and fine-tune it by distillation; (student, result).

    ``layout`` says how to read the outputs (:func:`resolve_layout` for ONNX files; build a
    :class:`DetectorLayout` with ``output_format='raw'`` for anything else); ``user_loss`` adds the
    user's own term to the distillation loss. ``teacher_statistics``: the dense model's
    :func:`conv_statistics` on ``frames.train`` when already computed (BatchNorm re-insertion needs them).
    ``scored=False`` (a structure for timing only, without fine-tuning) skips the agreement scoring.
    """
    schedule = check_supported(settings, finetune, distill)
    if schedule == "elastic":
        check_elastic_model(model)
    if settings.latency_ms is not None or settings.budget is not None:
        raise ConfigError("prune_module prunes at prune.ratio: a latency target or an accuracy budget is searched by "
                          "prune(ExternalPruneConfig) (prune --latency-ms / --budget)")
    views = FrameAugment.of(distill)
    check_temperature(distill.temperature)
    terms = parse_terms(distill.loss, layout.decodable)
    teacher = model.eval()
    input_hw = tuple(example_input.shape[-2:])
    spec = prune_spec(settings)
    if not scored and finetune.epochs > 0:
        raise ValueError("fine-tuning is scored on the held-out frames: scored=False needs finetune.epochs 0")
    scorer = AgreementScorer(teacher, frames.holdout, layout, finetune.batch_size) if scored else None
    score = scorer.score if scorer else lambda _: UNSCORED
    dense_cost, dense_score = model_cost(teacher, input_hw), score(teacher)
    rows = [_row(0, 0.0, dense_cost, dense_score, dense_score, 0.0)]
    if distill.batchnorm and teacher_statistics is None:
        teacher_statistics = conv_statistics(teacher, frames.train, finetune.batch_size)

    def loss_of(student: torch.nn.Module, protected: Sequence[str]) -> DistillationLoss:
        return DistillationLoss(teacher, student, layout, terms, protected, distill.pseudo_threshold, example_input,
                                user_loss, distill.temperature)

    if schedule == "elastic":
        started = time.monotonic()
        elastic = elastic_distill(teacher, example_input, loss_of, scorer, frames.train, teacher_statistics, spec,
                                  settings, finetune, views, keep_layers, progress)
        fold_batchnorm(elastic.student)
        rows.append(_row(1, spec.ratio, model_cost(elastic.student, input_hw), elastic.first, elastic.tuned.best,
                         time.monotonic() - started, elastic.tuned.epochs))
        rows[-1].elastic = [asdict(record) for record in elastic.epochs]
        return elastic.student, ModulePruneResult(PrunePlan(elastic.protected), rows)
    student = copy.deepcopy(teacher).requires_grad_(True)   # the teacher is frozen once distillation has used it
    pruner = GraphPruner(student, example_input, make_importance(settings.method), spec, keep_layers)
    for step in tqdm(range(1, spec.iterative_steps + 1), desc="prune", unit="step", disable=not progress):
        started = time.monotonic()
        if settings.method == "taylor":
            gradient_loss = DistillationLoss(teacher, student, layout, [t for t in terms if t != "feature"] or ["raw"],
                                             pseudo_threshold=distill.pseudo_threshold,
                                             temperature=distill.temperature)
            _taylor_gradients(gradient_loss, frames.train, settings, distill, finetune.batch_size)
        pruner.step()
        student.zero_grad(set_to_none=True)
        cost, pruned_score = model_cost(student, input_hw), score(student)
        calibrated = distill.batchnorm and insert_batchnorm(
            student, teacher_statistics, frames.train, pruner.kept_out_channels, pruner.plan.protected,
            finetune.batch_size)
        tuned: FinetuneResult | None = None
        if finetune.epochs > 0:
            tuned = distill_finetune(loss_of(student, pruner.plan.protected), frames.train, scorer, finetune, progress,
                                     views)
        fold_batchnorm(student)
        rows.append(_row(step, round(spec.ratio * step / spec.iterative_steps, 6), cost, pruned_score,
                         tuned.best if tuned else score(student) if calibrated else pruned_score,
                         time.monotonic() - started, tuned.epochs if tuned else None))
        if progress:
            tqdm.write(f"step {step}: params {cost.params:,} MACs {cost.macs / 1e6:.1f}M, agreement "
                       f"{_describe(pruned_score)} after pruning, {_describe(rows[-1])} after fine-tuning")
    return student, ModulePruneResult(pruner.plan, rows)


def _describe(score: Agreement | ExternalPruneStep) -> str:
    if score.mAP50 is not None:
        return f"mAP50 {score.mAP50:.3f}"
    return f"raw error {score.raw_error:.4f}"


def _row(step: int, ratio: float, cost, pruned: Agreement, tuned: Agreement, seconds: float,
         finetune: list[dict] | None = None) -> ExternalPruneStep:
    return ExternalPruneStep(step, ratio, cost.params, cost.macs, pruned.mAP50, pruned.mAP50_95, tuned.mAP50,
                             tuned.mAP50_95, round(seconds, 2), pruned.raw_error, tuned.raw_error, finetune=finetune)


def labeled_map(model_path: Path, config: ExternalPruneConfig, layout: DetectorLayout) -> tuple[float, float] | None:
    """(mAP50, mAP50-95) of an ONNX file on the labeled set through the runtime engine; None without one."""
    ext = config.external
    if ext.labeled_data is None:
        return None
    if not layout.decodable:
        raise ConfigError("labeled mAP needs a known output layout (native, yolox, yolov8); this model's is raw")
    from prune_perception.evaluation.evaluate import evaluate_onnx

    result, _ = evaluate_onnx(model_path, ext.labeled_data, ext.labeled_split, model_format=layout.output_format,
                              input_size=ext.input_size, input_color_order=ext.input_color_order,
                              input_scale=ext.input_scale, class_names=ext.class_names)
    return result.map50, result.map50_95


@dataclass
class ImportedRun:
    """An imported model ready to prune: the ONNX import, its layout, its frames and its labeled scores."""

    config: ExternalPruneConfig
    imported: ImportedOnnx
    layout: DetectorLayout
    frames: UnlabeledFrames
    dense_labeled: tuple[float, float] | None
    schedule: str
    started: float
    curves: SensitivityCurves | None = None

    @property
    def output(self) -> Path:
        return Path(self.config.output)

    @functools.cached_property
    def teacher_statistics(self) -> TeacherStatistics:
        """The dense model's per-conv output statistics on the fine-tuning frames (once for every candidate)."""
        return conv_statistics(self.imported.module.eval(), self.frames.train, self.config.finetune.batch_size)


def start_imported(config: ExternalPruneConfig, progress: bool = True) -> ImportedRun:
    """Check the config, import the model, read its frames, score it on the labeled set (every bad input is a
    one-line error before any pruning)."""
    started = time.monotonic()
    schedule = check_supported(config.prune, config.finetune, config.distill)
    curves = load_curves(config.external.sensitivity) if config.external.sensitivity else None
    if curves and config.prune.layer_ratios:
        raise ConfigError("external.sensitivity chooses the ratio of every group: drop prune.layer_ratios")
    parse_terms(config.distill.loss, True)
    FrameAugment.of(config.distill)
    check_temperature(config.distill.temperature)
    Path(config.output).mkdir(parents=True, exist_ok=True)
    ext = config.external
    if not ext.model:
        raise ConfigError("no model given: set external.model (--model det.onnx)")
    imported = import_onnx(ext.model, ext.input_size)
    if curves is not None:
        curves.check_model(imported.sha256)
    overrides = ModelOverrides(input_color_order=ext.input_color_order, input_scale=ext.input_scale,
                               class_names=tuple(ext.class_names) if ext.class_names else None)
    layout = resolve_layout(imported.path, imported.input_hw, ext.model_format, overrides)
    frames = load_frames(ext.images, layout.preprocess, ext.frame_stride, ext.max_frames, ext.holdout_fraction)
    if progress and layout.note:
        tqdm.write(f"prune: {layout.note}")
    return ImportedRun(config, imported, layout, frames, labeled_map(imported.path, config, layout), schedule,
                       started, curves)


def prune_imported_at(run: ImportedRun, ratio: float, path: Path, progress: bool = True, scored: bool = True
                      ) -> tuple[Path, ModulePruneResult]:
    """Prune a fresh copy of the imported model at `ratio`, fine-tune it, write it as a drop-in ONNX at `path`;
    the labeled scores (when a labeled set is configured) are filled on the dense and the final row.
    ``scored=False``: a structure for timing only (see :func:`prune_module`)."""
    config = run.config
    settings = dataclasses.replace(config.prune, ratio=ratio, budget=None, latency_ms=None)
    allocation = None
    if run.curves is not None:
        allocation = allocate_ratios(run.curves, run.imported.module, run.imported.example_input(), settings.method,
                                     ratio, settings.round_to, settings.max_layer_ratio, config.external.keep_layers)
        settings = dataclasses.replace(settings, layer_ratios=allocation.layer_ratios, max_layer_ratio=(
            covering_max_layer_ratio(settings.max_layer_ratio, allocation.layer_ratios)))
        if progress:
            tqdm.write(f"prune: sensitivity-guided ratios (tolerance {allocation.tolerance:.4f}): "
                       f"{allocation.dense_macs / 1e6:.1f}M -> {allocation.macs / 1e6:.1f}M MACs, uniform ratio "
                       f"{ratio:g} -> {allocation.uniform_macs / 1e6:.1f}M")
    student, result = prune_module(run.imported.module, run.imported.example_input(), run.layout, run.frames,
                                   settings, config.finetune, config.distill, config.external.keep_layers,
                                   progress=progress, scored=scored,
                                   teacher_statistics=run.teacher_statistics if config.distill.batchnorm else None)
    result.allocation = allocation
    dense, final = result.steps[0], result.steps[-1]
    record = {"method": settings.method, "ratio": ratio, "schedule": run.schedule,
              **({"sensitivity": str(run.curves.path)} if run.curves else {}),
              "scope": "global" if settings.global_pruning else "local", "round_to": settings.round_to,
              "params": final.params, "macs": final.macs, "dense_params": dense.params, "dense_macs": dense.macs,
              "parent": {"path": str(run.imported.path), "sha256": run.imported.sha256},
              "output_format": run.layout.output_format, "distillation": config.distill.loss,
              "frames": run.frames.describe(), "agreement_mAP50": final.mAP50, "raw_error": final.raw_error}
    path, _ = export_pruned(student, run.imported, path, record)
    pruned_labeled = labeled_map(path, config, run.layout)
    if run.dense_labeled and pruned_labeled:
        (dense.labeled_mAP50, dense.labeled_mAP50_95), (final.labeled_mAP50, final.labeled_mAP50_95) = (
            run.dense_labeled, pruned_labeled)
    return path, result


def write_imported_history(run: ImportedRun, result: ModulePruneResult, markdown: str = "", **extra) -> None:
    """history.json (config, layout, protected layers, frames, steps, `extra`) and summary.md (+ `markdown`)."""
    (run.output / "history.json").write_text(json.dumps({
        "config": to_dict(run.config), "score": "agreement", "output_format": run.layout.output_format,
        "layout_note": run.layout.note,
        "protected": result.plan.protected, "skipped_groups": result.plan.skipped_groups,
        "frames": run.frames.describe(), "steps": [asdict(step) for step in result.steps],
        **({"sensitivity_ratios": result.allocation.as_record()} if result.allocation else {}), **extra,
        "seconds": round(time.monotonic() - run.started, 1)}, indent=2))
    (run.output / "summary.md").write_text(external_markdown(result.steps, run.config, run.layout) + markdown)


def prune_external(config: ExternalPruneConfig, progress: bool = True) -> tuple[Path, list[ExternalPruneStep]]:
    """Prune ``config.external.model`` at ``prune.ratio``; writes pruned.onnx, history.json and summary.md."""
    run = start_imported(config, progress)
    path, result = prune_imported_at(run, config.prune.ratio, run.output / "pruned.onnx", progress)
    write_imported_history(run, result)
    return path, result.steps


def _cell(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def external_markdown(steps: list[ExternalPruneStep], config: ExternalPruneConfig, layout: DetectorLayout) -> str:
    """The history as a Markdown table (agreement = pruned vs dense detections on held-out frames)."""
    dense = steps[0]
    lines = [f"# Pruning {Path(config.external.model).name} ({layout.output_format} layout, {config.prune.method}, "
             f"label-free: {config.distill.loss})", "",
             "| step | ratio | params | MACs (M) | MACs cut | agreement mAP50 pruned | agreement mAP50 fine-tuned "
             "| agreement mAP50-95 | raw error | labeled mAP50 |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for s in steps:
        lines.append(f"| {s.step} | {s.ratio:.2f} | {s.params:,} | {s.macs / 1e6:.1f} | {1 - s.macs / dense.macs:.1%} "
                     f"| {_cell(s.mAP50_pruned)} | {_cell(s.mAP50)} | {_cell(s.mAP50_95)} | {s.raw_error:.4f} "
                     f"| {_cell(s.labeled_mAP50)} |")
    return "\n".join(lines) + "\n"
