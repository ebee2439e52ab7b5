"""Pruning detectors we did not write: ONNX in, smaller drop-in ONNX out, fine-tuned on unlabeled frames.

Small conv detectors with the YOLOX, YOLOv8, native and an unknown output layout are built and
exported in the test (test/external_models.py); real onnx2torch conversion, torch-pruning, ONNX
Runtime and the runtime engine throughout.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path

import cv2
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper

from external_models import (INPUT_HW, OUTPUT_NAMES, build_detector, export_detector, native_metadata,
                             write_frames)
from prune_perception.config import (ExternalModelSettings, ExternalPruneConfig, LabelFreeDistillSettings,
                                     OptimConfig, PruneSettings)
from prune_perception.errors import ConfigError, DatasetError, ModelLoadError
from prune_perception.external.agreement import AgreementScorer
from prune_perception.external.batchnorm_reinsertion import (conv_statistics, fold_batchnorm, has_batchnorm,
                                                              insert_batchnorm, output_statistics)
from prune_perception.external.distill_finetune import distill_finetune
from prune_perception.external.frame_augment import FrameAugment
from prune_perception.external.frames import load_frames
from prune_perception.external.graph_pruning import GraphPruner
from prune_perception.external.layout import RAW_FORMAT, DetectorLayout
from prune_perception.external.onnx_import import import_onnx, read_signature
from prune_perception.external.label_free_loss import DistillationLoss, output_distillation, parse_terms
from prune_perception.external.onnx_writer import EXTERNAL_PRUNING_KEY
from prune_perception.external.pipeline import prune_external, prune_module, start_imported
from prune_perception.external.latency_search import smallest_meeting_ratio
from prune_perception.external.split_convs import split_producing_convs
from prune_perception.export.onnx_export import slim_model
from prune_perception.models.cost import model_cost
from prune_perception.pruning.importance import make_importance
from prune_perception.pruning.structured import PruneSpec
from prune_perception.runtime.engine import DetectorEngine
from prune_perception.runtime.preprocess import Normalization, PreprocessSpec
from prune_perception.training.schedule import lr_factor

pytestmark = pytest.mark.slow
TINY_TUNE = OptimConfig(epochs=1, batch_size=8, lr=0.001, patience=5)


@pytest.fixture(scope="module")
def frames_dir(tmp_path_factory):
    return write_frames(tmp_path_factory.mktemp("frames"), 40)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """layout -> exported ONNX path (dynamic batch, user metadata; native with our metadata)."""
    root = tmp_path_factory.mktemp("external_models")
    return {layout: export_detector(build_detector(layout), root / f"{layout}.onnx", OUTPUT_NAMES[layout],
                                    metadata=native_metadata() if layout == "native" else None)
            for layout in ("yolox", "yolov8", "native", "unknown")}


def _config(model, frames_dir, output, **prune) -> ExternalPruneConfig:
    return ExternalPruneConfig(external=ExternalModelSettings(model=str(model), images=[str(frames_dir)]),
                               prune=PruneSettings(**{"ratio": 0.3, "round_to": None, **prune}),
                               finetune=copy.deepcopy(TINY_TUNE), output=str(output))


@pytest.mark.parametrize("layout", ["yolox", "yolov8", "native", "unknown"])
def test_round_trip_is_a_smaller_drop_in(layout, models, frames_dir, tmp_path):
    original_path = models[layout]
    pruned_path, steps = prune_external(_config(original_path, frames_dir, tmp_path), progress=False)
    original, pruned = onnx.load(original_path), onnx.load(pruned_path)

    # same IO signature (names, element types, declared dims with the symbolic batch), fewer MACs
    assert read_signature(pruned).inputs == read_signature(original).inputs
    assert read_signature(pruned).outputs == read_signature(original).outputs
    assert read_signature(pruned).inputs[0].dims[0] == "batch"
    assert steps[-1].macs < 0.85 * steps[0].macs and steps[-1].params < steps[0].params

    # metadata: the user's keys kept, our record added
    before = {p.key: p.value for p in original.metadata_props}
    after = {p.key: p.value for p in pruned.metadata_props}
    if layout == "native":
        record = json.loads(after["pruning"])
        assert record["pruned_from"] == {"method": "none"} and after["model_hash"] != before["model_hash"]
        assert set(after) == set(before)   # the runtime's strict key check must still pass
    else:
        record = json.loads(after[EXTERNAL_PRUNING_KEY])
        assert {k: after[k] for k in before} == before
    assert record["parent"]["sha256"] == _sha(original_path)
    assert (record["ratio"], record["macs"], record["params"]) == (0.3, steps[-1].macs, steps[-1].params)
    assert record["frames"]["train_frames"] + record["frames"]["holdout_frames"] == 40

    images = np.random.default_rng(0).random((2, 3, *INPUT_HW), dtype=np.float32)
    dense_out = ort.InferenceSession(str(original_path)).run(None, {"images": images})
    pruned_out = ort.InferenceSession(str(pruned_path)).run(None, {"images": images})
    assert [o.shape for o in pruned_out] == [o.shape for o in dense_out]
    if layout != "unknown":   # the node's engine runs it with the dense model's model_format
        engine_format = "auto" if layout == "native" else layout
        dense_engine = DetectorEngine(original_path, model_format=engine_format, warmup_runs=1)
        engine = DetectorEngine(pruned_path, model_format=engine_format, warmup_runs=1)
        assert engine.info.output_format == dense_engine.info.output_format == layout
        assert engine.info.preprocess == dense_engine.info.preprocess
        frame = cv2.imread(str(next(frames_dir.glob("*.png"))), cv2.IMREAD_COLOR_BGR)
        detections, _ = engine.detect(frame, "bgr")
        assert detections.boxes.shape[1:] == (4,)
    history = json.loads((tmp_path / "history.json").read_text())
    assert history["steps"][-1]["macs"] == steps[-1].macs and (tmp_path / "summary.md").is_file()


def _sha(path):
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_output_layers_are_protected_and_untouched(models):
    for layout, protected in (("yolox", {"preds/0/Conv", "preds/1/Conv", "preds/2/Conv"}),
                              ("unknown", {"preds/0/Conv", "embed/Gemm"})):
        imported = import_onnx(models[layout])
        dense = copy.deepcopy(imported.module)
        pruner = GraphPruner(imported.module, imported.example_input(), make_importance("l1"), PruneSpec(0.4))
        pruner.step()
        assert set(pruner.plan.protected) == protected
        modules, dense_modules = dict(imported.module.named_modules()), dict(dense.named_modules())
        for name in protected:
            assert modules[name].weight.shape[0] == dense_modules[name].weight.shape[0]
            assert modules[name].weight.shape[1] < dense_modules[name].weight.shape[1]   # its inputs are pruned
            assert torch.equal(modules[name].bias, dense_modules[name].bias)


def test_user_kept_layers_and_unknown_names(models):
    imported = import_onnx(models["yolox"])
    keep = "backbone/s32/s32/0/Conv"
    pruner = GraphPruner(imported.module, imported.example_input(), make_importance("l1"), PruneSpec(0.4), [keep])
    pruner.step()
    assert keep in pruner.plan.protected
    assert dict(imported.module.named_modules())[keep].out_channels == 64
    with pytest.raises(ConfigError, match="no module named 'head.nope'"):
        GraphPruner(imported.module, imported.example_input(), make_importance("l1"), PruneSpec(0.4), ["head.nope"])


def test_distillation_loss_falls_and_agreement_rises(models, frames_dir):
    """A tiny run (yolox layout, the raw loss: the best on these untrained teachers, docs/external-models.md):
    after pruning, fine-tuning raises agreement with the dense model."""
    config = _config(models["yolox"], frames_dir, "unused")
    run = start_imported(config, progress=False)
    tune = OptimConfig(epochs=3, batch_size=8, lr=0.001, patience=10, eval_interval=1)
    _, result = prune_module(run.imported.module, run.imported.example_input(), run.layout, run.frames, config.prune,
                             tune, LabelFreeDistillSettings(loss="raw"), progress=False)
    pruned = result.steps[-1]
    losses = [epoch["loss"] for epoch in pruned.finetune[1:]]
    assert losses[-1] < losses[0]
    assert result.steps[0].mAP50 > 0.95   # the dense model agrees with itself
    assert pruned.mAP50 > pruned.mAP50_pruned
    assert pruned.raw_error < pruned.raw_error_pruned


class RecordingScorer(AgreementScorer):
    """The real scorer, remembering which network it scored and that network's weights at the time."""

    def __init__(self, *args):
        super().__init__(*args)
        self.scored: list[tuple[torch.nn.Module, dict]] = []

    def score(self, student):
        self.scored.append((student, copy.deepcopy(student.state_dict())))
        return super().score(student)


def test_finetune_reads_warm_up_ema_and_optimizer_as_training_does(models, frames_dir):
    """The label-free loop honours the finetune section: the warm-up + cosine schedule it shares with training,
    the optimizer, and with ema the scored (and kept) weights are the student's running average, not its last step."""
    optim = OptimConfig(epochs=4, lr=0.01, warmup_epochs=1, min_lr_ratio=0.05)
    assert lr_factor(optim, 0, 10) == pytest.approx(0.1) and lr_factor(optim, 5, 10) == pytest.approx(0.55)
    assert lr_factor(optim, 10, 10) == pytest.approx(1.0) and lr_factor(optim, 40, 10) == pytest.approx(0.05)
    assert lr_factor(dataclasses.replace(optim, lr_schedule="plateau"), 10, 10) is None
    run = start_imported(_config(models["yolox"], frames_dir, frames_dir.parent / "ema"), progress=False)
    teacher = run.imported.module

    def tune(**changes):
        student = copy.deepcopy(teacher).requires_grad_(True)
        generator = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for parameter in student.parameters():
                parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.1 * parameter.std())
        scorer = RecordingScorer(teacher, run.frames.holdout, run.layout)
        raw_at_epoch_start = []
        result = distill_finetune(DistillationLoss(teacher, student, run.layout, ("raw",)), run.frames.train, scorer,
                                  OptimConfig(**{"epochs": 2, "batch_size": 8, "lr": 0.003, "patience": 5,
                                                 "warmup_epochs": 0.0, **changes}),
                                  progress=False,
                                  before_epoch=lambda _: raw_at_epoch_start.append(copy.deepcopy(student.state_dict())))
        return student, result, scorer.scored, raw_at_epoch_start

    def same(a, b):
        return all(torch.equal(a[name], b[name]) for name in a)

    student, _, scored, raw = tune(ema=False)
    assert all(network is student for network, _ in scored)
    assert same(scored[1][1], raw[1])   # epoch 1 was scored on the raw weights that epoch 2 starts from
    plain_epoch_1 = raw[1]
    averaged, averaged_result, scored, raw = tune(ema=True)
    assert all(network is not averaged for network, _ in scored)
    assert not same(scored[1][1], raw[1])   # the average lags the raw weights
    best = max(range(len(scored)), key=lambda i: averaged_result.epochs[i]["agreement_mAP50"]
               if averaged_result.epochs[i]["agreement_mAP50"] is not None else -averaged_result.epochs[i]["raw_error"])
    assert same(averaged.state_dict(), scored[best][1])   # the best average is what comes back
    # the weights after epoch 1 (what epoch 2 starts from), same seed: warm-up and SGD each take other steps
    assert not same(tune(ema=False, warmup_epochs=1)[3][1], plain_epoch_1)
    assert not same(tune(ema=False, optimizer="sgd")[3][1], plain_epoch_1)
    with pytest.raises(ConfigError, match="finetune.optimizer must be one of"):
        prune_module(teacher, run.imported.example_input(), run.layout, run.frames, run.config.prune,
                     OptimConfig(optimizer="adam"), progress=False)


def test_channel_shuffle_and_split_are_skipped_not_a_traceback(tmp_path, frames_dir):
    path = export_detector(build_detector("yolox", shuffle=True), tmp_path / "shuffle.onnx", OUTPUT_NAMES["yolox"])
    imported = import_onnx(path)
    dense = model_cost(imported.module, INPUT_HW)
    pruner = GraphPruner(imported.module, imported.example_input(), make_importance("l1"), PruneSpec(0.3))
    pruner.step()
    assert pruner.plan.skipped_groups   # the groups through the shuffle are left alone
    assert imported.module(imported.example_input(2)).shape == (2, 126, 8)
    assert model_cost(imported.module, INPUT_HW).macs < dense.macs
    pruned_path, _ = prune_external(_config(path, frames_dir, tmp_path / "run"), progress=False)
    assert read_signature(onnx.load(pruned_path)).outputs == imported.signature.outputs


def test_a_csp_split_becomes_one_conv_per_part_and_is_pruned(tmp_path, frames_dir):
    """YOLOv8's C2f: a conv's output Split in two, one part with three consumers (torch-pruning alone fails on
    it); the import rewrites it exactly as a conv per part and the model prunes like any other."""
    path = export_detector(build_detector("yolov8", csp=True), tmp_path / "csp.onnx", OUTPUT_NAMES["yolov8"])
    slimmed = slim_model(onnx.load(path))
    rewritten, count = split_producing_convs(slimmed)
    assert count == 1 and [n.op_type for n in slimmed.graph.node].count("Split") == 1
    assert "Split" not in [n.op_type for n in rewritten.graph.node]
    images = np.random.default_rng(0).random((2, 3, *INPUT_HW), dtype=np.float32)
    before, after = (ort.InferenceSession(m.SerializeToString()).run(None, {"images": images})[0]
                     for m in (slimmed, rewritten))
    np.testing.assert_allclose(after, before, rtol=0, atol=1e-4)

    pruned_path, steps = prune_external(_config(path, frames_dir, tmp_path / "run"), progress=False)
    assert steps[-1].macs < 0.85 * steps[0].macs
    assert read_signature(onnx.load(pruned_path)).outputs == read_signature(onnx.load(path)).outputs
    engine = DetectorEngine(pruned_path, model_format="yolov8", warmup_runs=1)
    assert engine.info.output_format == "yolov8"


def test_a_split_that_is_not_a_conv_output_is_left_as_it_is():
    """A Split of a graph input (no conv to slice) stays a Split; the graph is unchanged."""
    graph = helper.make_graph(
        [helper.make_node("Split", ["x"], ["a", "b"], axis=1), helper.make_node("Add", ["a", "b"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 2, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 2, 2])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    rewritten, count = split_producing_convs(model)
    assert count == 0 and rewritten.graph == model.graph


def test_batchnorm_is_reinserted_calibrated_to_the_teacher_and_folded_back(models, frames_dir):
    """After pruning a BN-folded export, each conv but the protected ones gets a BatchNorm calibrated to the dense
    model's statistics of the channels it kept: the student moves towards its teacher before any training; after
    training steps the fold puts the same conv objects back and keeps the trained function."""
    imported = import_onnx(models["yolov8"])
    teacher, student = imported.module, copy.deepcopy(imported.module)
    frames = load_frames([str(frames_dir)], DetectorEngine(models["yolov8"], warmup_runs=0).info.preprocess,
                         1, 40, 0.2).train
    images = frames[:8].float()
    pruner = GraphPruner(student, imported.example_input(), make_importance("l1"), PruneSpec(0.4))
    pruner.step()
    assert pruner.kept_out_channels and all(len(kept) == len(set(kept)) for kept in pruner.kept_out_channels.values())
    convs = {name: module for name, module in student.named_modules() if isinstance(module, torch.nn.Conv2d)}
    with torch.no_grad():
        target, before = teacher(images), student(images)
    statistics = conv_statistics(teacher, frames)
    wrapped = insert_batchnorm(student, statistics, frames, pruner.kept_out_channels, pruner.plan.protected)
    assert set(wrapped) == set(convs) - set(pruner.plan.protected) and wrapped
    outputs = output_statistics(student, pruner.plan.protected, frames, 16)   # output layers: mean compensated
    for name in pruner.plan.protected:
        spread = float(statistics[name][1].mean().sqrt())
        assert torch.allclose(outputs[name][0], statistics[name][0], atol=1e-3 * spread)
    with torch.no_grad():
        calibrated = student(images)
    assert (calibrated - target).abs().mean() < (before - target).abs().mean()
    assert insert_batchnorm(student, statistics, frames) == []   # a model with BatchNorm of its own is left alone

    optimizer = torch.optim.SGD(student.parameters(), lr=0.01)
    student.train()
    for start in range(0, 32, 8):
        loss = (student(frames[start:start + 8].float()) - teacher(frames[start:start + 8].float())).square().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    student.eval()
    with torch.no_grad():
        trained = student(images)
    fold_batchnorm(student)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in student.modules())
    assert all(dict(student.named_modules())[name] is conv for name, conv in convs.items())
    with torch.no_grad():
        torch.testing.assert_close(student(images), trained, atol=1e-3, rtol=1e-3)


def test_augmentation_flips_and_zooms_in_and_refuses_a_bad_crop_fraction(models, frames_dir):
    images = torch.rand(32, 3, *INPUT_HW, generator=torch.Generator().manual_seed(0))
    flipped = FrameAugment()(images, torch.Generator().manual_seed(1))
    assert all(torch.equal(a, b) or torch.equal(a, b.flip(-1)) for a, b in zip(flipped, images))
    zoomed = FrameAugment(min_crop=0.6)(images, torch.Generator().manual_seed(1))
    assert zoomed.shape == images.shape
    changed = [not (torch.equal(a, b) or torch.equal(a, b.flip(-1))) for a, b in zip(zoomed, images)]
    assert 4 <= sum(changed) <= 28   # about half the frames are zoomed in
    config = _config(models["yolox"], frames_dir, "unused")
    config.distill.min_crop = 0.0
    with pytest.raises(ConfigError, match="min_crop must be in"):
        prune_external(config, progress=False)


def test_in_memory_module_with_raw_layout_and_user_loss(frames_dir):
    """The Python API on a user's own nn.Module (no ONNX): raw outputs matched, the user's loss term added."""
    model = build_detector("unknown")
    spec = PreprocessSpec(INPUT_HW, "RGB", Normalization(1 / 255))
    layout = DetectorLayout(RAW_FORMAT, spec, ("heatmap", "embedding"))
    frames = load_frames([frames_dir], spec, max_frames=12)
    calls = []

    def user_loss(student_outputs, teacher_outputs, images):
        calls.append(len(images))
        return (student_outputs[1] - teacher_outputs[1]).abs().mean()

    student, result = prune_module(model, torch.zeros(1, 3, *INPUT_HW), layout, frames,
                                   PruneSettings(ratio=0.3, method="taylor"), TINY_TUNE,
                                   LabelFreeDistillSettings(loss="raw+feature"), user_loss=user_loss, progress=False)
    assert calls and result.steps[-1].macs < result.steps[0].macs
    assert result.steps[-1].mAP50 is None and result.steps[-1].raw_error > 0
    assert [o.shape for o in student(torch.zeros(2, 3, *INPUT_HW))] == [o.shape for o in model(torch.zeros(2, 3, *INPUT_HW))]
    with pytest.raises(ConfigError, match="BatchNorm of its own"):   # elastic masks sit after re-inserted BatchNorm
        prune_module(model, torch.zeros(1, 3, *INPUT_HW), layout, frames, PruneSettings(ratio=0.3, schedule="elastic"),
                     dataclasses.replace(TINY_TUNE, epochs=2), progress=False)


# --------------------------------------------------------------------------- bad input


def _custom_op_model(tmp_path, op="FancyDecode", domain="com.vendor"):
    weight = helper.make_tensor("w", TensorProto.FLOAT, [4, 3, 1, 1], np.ones(12, np.float32))
    graph = helper.make_graph(
        [helper.make_node("Conv", ["images", "w"], ["c"], name="conv0"),
         helper.make_node(op, ["c", "c"][:1 if domain else 2], ["out"], name="decode_head", domain=domain)],
        "g", [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 32, 32])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 4, 32, 32])], [weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.vendor", 1)])
    path = tmp_path / f"{op}.onnx"
    onnx.save(model, str(path))
    return path


@pytest.mark.parametrize("layout", ["yolox", "yolov8"])
def test_a_batch_one_export_is_pruned_on_batches_and_keeps_its_fixed_batch(layout, tmp_path, frames_dir):
    """The projects' default exports fix the batch at 1 and bake it into Reshape shapes; fine-tuning runs batches."""
    path = export_detector(build_detector(layout), tmp_path / "fixed.onnx", OUTPUT_NAMES[layout], dynamic_batch=False)
    assert any(node.op_type == "Reshape" for node in onnx.load(path).graph.node)
    imported = import_onnx(path)
    with torch.no_grad():
        batch, single = imported.module(imported.example_input(3) + 0.5), imported.module(imported.example_input() + 0.5)
    assert batch.shape[0] == 3 and torch.allclose(batch[:1], single, atol=1e-5)
    pruned_path, _ = prune_external(_config(path, frames_dir, tmp_path / "run"), progress=False)
    assert read_signature(onnx.load(pruned_path)) == read_signature(onnx.load(path))   # still batch 1, same IO
    assert DetectorEngine(pruned_path, warmup_runs=0).info.output_format == layout


def test_a_fixed_batch_resize_to_constant_sizes_is_freed(tmp_path):
    """FPN upsampling in a batch-1 export is a Resize to constant sizes [1, C, H', W']: it resizes by scales instead,
    so the converted graph runs batches and gives what ONNX Runtime gives per image."""
    rng = np.random.default_rng(0)
    weights = [helper.make_tensor(name, TensorProto.FLOAT, shape, rng.normal(size=shape).astype(np.float32).ravel())
               for name, shape in (("w0", [4, 3, 1, 1]), ("w1", [2, 4, 1, 1]))]
    sizes = helper.make_tensor("sizes", TensorProto.INT64, [4], [1, 4, 2 * INPUT_HW[0], 2 * INPUT_HW[1]])
    graph = helper.make_graph(
        [helper.make_node("Conv", ["images", "w0"], ["c0"]),
         helper.make_node("Resize", ["c0", "", "", "sizes"], ["up"], mode="nearest"),
         helper.make_node("Conv", ["up", "w1"], ["output"])], "fpn",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, *INPUT_HW])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 2, 2 * INPUT_HW[0], 2 * INPUT_HW[1]])],
        [*weights, sizes])
    path = tmp_path / "fpn.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    imported = import_onnx(path)
    images = rng.random((2, 3, *INPUT_HW), dtype=np.float32)
    session = ort.InferenceSession(str(path))
    expected = np.concatenate([session.run(None, {"images": images[i:i + 1]})[0] for i in range(2)])
    with torch.no_grad():
        np.testing.assert_allclose(imported.module(torch.from_numpy(images)).numpy(), expected, rtol=1e-4, atol=1e-4)


def test_unsupported_op_is_named_with_its_node(tmp_path):
    with pytest.raises(ModelLoadError, match=r"com\.vendor::FancyDecode \(nodes decode_head\)"):
        import_onnx(_custom_op_model(tmp_path))


def test_an_op_newer_than_its_converter_names_the_opset_to_export_at(tmp_path):
    split = helper.make_node("Split", ["images", "sizes"], ["a", "b"], axis=1, name="split0")
    graph = helper.make_graph(
        [split], "g", [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, None) for name in ("a", "b")],
        [helper.make_tensor("sizes", TensorProto.INT64, [2], [1, 2])])
    path = tmp_path / "split18.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(path))
    with pytest.raises(ModelLoadError, match=r"Split \(nodes split0\) at opset 18; .* re-export the model at opset 17"):
        import_onnx(path)


def test_torchvision_stand_in(tmp_path):
    """onnx2torch imports torchvision, which does not import beside our CPU torch: a stand-in takes its place,
    and the two ops that need the real one are refused up front, by name."""
    from prune_perception.external.torchvision_stub import ensure_torchvision_importable, torchvision_is_stub

    if not ensure_torchvision_importable():
        pytest.skip("a working torchvision is installed here")
    assert torchvision_is_stub()
    import onnx2torch  # noqa: F401  (imports torchvision at import time)
    from torchvision.ops import roi_align

    with pytest.raises(ModelLoadError, match="ONNX op RoiAlign needs torchvision"):
        roi_align(torch.zeros(1), torch.zeros(1), 1)
    with pytest.raises(ModelLoadError, match=r"NonMaxSuppression \(nodes decode_head\)"):
        import_onnx(_custom_op_model(tmp_path, "NonMaxSuppression", ""))


def test_nothing_prunable(tmp_path):
    path = export_detector(torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.Sigmoid()),
                           tmp_path / "one_conv.onnx", ["out"])
    imported = import_onnx(path)
    with pytest.raises(ModelLoadError, match="nothing to prune"):
        GraphPruner(imported.module, imported.example_input(), make_importance("l1"), PruneSpec(0.3))
    with pytest.raises(ConfigError, match="bn_scale needs BatchNorm layers"):
        GraphPruner(imported.module, imported.example_input(), make_importance("bn_scale"), PruneSpec(0.3))


def test_dynamic_hw_needs_input_size(tmp_path):
    path = export_detector(build_detector("yolox"), tmp_path / "dyn.onnx", OUTPUT_NAMES["yolox"], dynamic_hw=True)
    with pytest.raises(ModelLoadError, match=r"dynamic.*set input_size \[H, W\]"):
        import_onnx(path)
    assert import_onnx(path, input_size=INPUT_HW).input_hw == INPUT_HW


def test_image_sources_without_frames(tmp_path, frames_dir):
    spec = PreprocessSpec(INPUT_HW, "RGB", Normalization(1 / 255))
    (tmp_path / "empty").mkdir()
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "a.jpg").write_bytes(b"not a jpeg")
    (tmp_path / "notes.txt").write_text("no video")
    for source, message in (("empty", "no readable image file"), ("broken", r"no readable image file \(1 unreadable"),
                            ("notes.txt", "no frame OpenCV can decode"), ("missing", "image source not found")):
        with pytest.raises(DatasetError, match=message):
            load_frames([frames_dir, tmp_path / source], spec)
    with pytest.raises(ConfigError, match="no image source given"):
        load_frames([], spec)


def test_video_bag_and_folder_sources_with_stride(tmp_path, frames_dir, tiny_synth):
    from prune_perception.bags.dataset_bag import write_dataset_bag

    video = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 10, (144, 96))
    for image in sorted(frames_dir.glob("*.png")):
        writer.write(cv2.imread(str(image)))
    writer.release()
    bag = tmp_path / "bag"
    write_dataset_bag(tiny_synth, "val", bag, transport="compressed", progress=False)
    spec = PreprocessSpec(INPUT_HW, "BGR", Normalization(1.0), centered=False)
    frames = load_frames([frames_dir, video, bag], spec, frame_stride=2)
    kinds = {s.kind: s.frames for s in frames.sources}
    assert kinds == {"images": 20, "video": 20, "bag": 5}
    assert len(frames.train) + len(frames.holdout) == 45 and len(frames.holdout) == 4 + 4 + 1
    assert frames.train.shape[1:] == (3, *INPUT_HW) and float(frames.train.float().max()) > 1.0   # raw 0..255 BGR


def test_cli_options_and_yaml_load_one_schema(tmp_path):
    import argparse

    from prune_perception.config import load_config
    from prune_perception.cli.prune import add_external_arguments, external_overrides

    parser = argparse.ArgumentParser()
    add_external_arguments(parser)
    args = parser.parse_args(["--model", "det.onnx", "--images", "a dir", "clip.mp4", "--frame-stride", "3",
                              "--input-size", "320", "480", "--keep-layer", "head/Conv", "--distill-loss", "raw"])
    yaml_file = tmp_path / "external.yaml"
    yaml_file.write_text("external:\n  model_format: yolox\n  max_frames: 50\nfinetune:\n  epochs: 2\n")
    config = load_config(ExternalPruneConfig, yaml_file, external_overrides(args))
    assert (config.external.model, config.external.images, config.external.frame_stride) == (
        "det.onnx", ["a dir", "clip.mp4"], 3)
    assert (config.external.input_size, config.external.keep_layers, config.distill.loss) == (
        [320, 480], ["head/Conv"], "raw")
    assert (config.external.model_format, config.external.max_frames, config.finetune.epochs) == ("yolox", 50, 2)
    assert config.prune.round_to == 8
    with pytest.raises(ConfigError, match="unknown key"):
        load_config(ExternalPruneConfig, None, ["external.images_dir=x"])


def test_labeled_map_is_reported_when_a_labeled_set_is_given(models, frames_dir, tmp_path):
    """Labels = the dense engine's own detections on a few frames (boxes under 1 px are dropped by the loader, so the
    dense model's labeled mAP50 is high but not 1): the run reports the engine's labeled mAP of both models."""
    from prune_perception.evaluation.evaluate import evaluate_onnx

    engine = DetectorEngine(models["yolov8"], warmup_runs=0)
    images, annotations = [], []
    for index, path in enumerate(sorted(frames_dir.glob("*.png"))[:6]):
        detections, _ = engine.detect(cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB))
        images.append({"id": index + 1, "file_name": str(path), "width": 144, "height": 96})
        for box, label in zip(detections.boxes.tolist(), detections.labels.tolist()):
            annotations.append({"id": len(annotations) + 1, "image_id": index + 1, "category_id": label + 1,
                                "bbox": [box[0], box[1], box[2] - box[0], box[3] - box[1]], "iscrowd": 0,
                                "area": (box[2] - box[0]) * (box[3] - box[1])})
    assert annotations
    labels = tmp_path / "labels.json"
    labels.write_text(json.dumps({"images": images, "annotations": annotations, "categories": [
        {"id": i + 1, "name": name} for i, name in enumerate(engine.info.classes)]}))
    config = _config(models["yolov8"], frames_dir, tmp_path / "run")
    config.external.labeled_data = str(labels)
    _, steps = prune_external(config, progress=False)
    assert steps[0].labeled_mAP50 == evaluate_onnx(models["yolov8"], str(labels))[0].map50 > 0.5
    assert steps[-1].labeled_mAP50 == evaluate_onnx(tmp_path / "run" / "pruned.onnx", str(labels))[0].map50


def test_a_model_without_class_names_is_scored_on_labels_with_the_names_given(models, frames_dir, tmp_path):
    """A YOLOX export names no classes (the engine calls them class_0, ...): scoring it on a labeled set whose
    categories are named needs `external.class_names`; without them the run stops with an error naming the class."""
    from prune_perception.errors import DatasetError

    names = [f"kind{i}" for i in range(len(DetectorEngine(models["yolox"], warmup_runs=0).info.classes))]
    path = sorted(frames_dir.glob("*.png"))[0]
    labels = tmp_path / "labels.json"
    labels.write_text(json.dumps({
        "images": [{"id": 1, "file_name": str(path), "width": 144, "height": 96}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 10, 40, 30], "iscrowd": 0,
                         "area": 1200}],
        "categories": [{"id": i + 1, "name": name} for i, name in enumerate(names)]}))
    config = _config(models["yolox"], frames_dir, tmp_path / "run")
    config.finetune.epochs = 0
    config.external.labeled_data = str(labels)
    with pytest.raises(DatasetError, match="kind0"):
        prune_external(config, progress=False)
    config.external.class_names = names
    _, steps = prune_external(config, progress=False)
    assert steps[0].labeled_mAP50 is not None and steps[-1].labeled_mAP50 is not None


def test_budget_search_on_an_imported_model_keeps_the_fastest_candidate_within_budget(models, frames_dir, tmp_path):
    from prune_perception.pruning import prune

    config = _config(models["yolov8"], frames_dir, tmp_path / "run", budget=100.0, budget_ratios=[0.2, 0.4],
                     latency_runs=5)
    result = prune(config, progress=False)
    history = json.loads((tmp_path / "run" / "history.json").read_text())["budget"]
    assert [c.ratio for c in result.candidates] == [0.2, 0.4] and all(c.within_budget for c in result.candidates)
    assert all(c.latency_p50_ms > 0 for c in result.candidates) and history["latency"]["dense_p50_ms"] > 0
    chosen = next(c for c in result.candidates if c.ratio == result.chosen_ratio)
    assert (tmp_path / "run" / "pruned.onnx").read_bytes() == open(chosen.path, "rb").read()
    assert result.history[-1].macs == chosen.macs < result.history[0].macs and not result.kept_dense
    assert "## Accuracy budget: 100 points of agreement mAP50" in (tmp_path / "run" / "summary.md").read_text()
    assert DetectorEngine(result.path, warmup_runs=0).info.output_format == "yolov8"


def test_budget_search_keeps_the_dense_model_when_no_candidate_agrees_enough(models, frames_dir, tmp_path):
    from prune_perception.pruning import prune

    config = _config(models["yolov8"], frames_dir, tmp_path / "run", budget=0.0, budget_ratios=[0.5],
                     budget_search="descending", latency_runs=5)
    config.finetune.epochs = 0
    result = prune(config, progress=False)
    assert result.kept_dense and result.chosen_ratio is None and len(result.history) == 1
    assert (tmp_path / "run" / "pruned.onnx").read_bytes() == models["yolov8"].read_bytes()
    assert "none of 1 candidate(s) within budget" in result.summary[-1]
    with pytest.raises(ConfigError, match="decodable output layout"):
        prune(_config(models["unknown"], frames_dir, tmp_path / "raw", budget=1.0), progress=False)


def test_latency_target_the_dense_model_meets_keeps_it_and_an_unreachable_one_is_one_error(models, frames_dir,
                                                                                             tmp_path):
    from prune_perception.pruning import prune

    config = _config(models["yolox"], frames_dir, tmp_path / "met", latency_ms=10_000.0, latency_runs=5)
    result = prune(config, progress=False)
    assert result.kept_dense and result.chosen_ratio is None
    assert (tmp_path / "met" / "pruned.onnx").read_bytes() == models["yolox"].read_bytes()
    history = json.loads((tmp_path / "met" / "history.json").read_text())
    assert history["latency"]["chosen_ratio"] is None and history["latency"]["dense_p50_ms"] < 10_000
    assert "written unchanged" in result.summary[-1]
    from prune_perception.cli import main
    assert main(["report", str(tmp_path / "met"), "-o", str(tmp_path / "report"), "-q"]) == 0
    assert "latency ≤ 10000 ms" in (tmp_path / "report" / "report.html").read_text()

    unreachable = _config(models["yolox"], frames_dir, tmp_path / "fast", latency_ms=1e-6, latency_runs=5)
    unreachable.finetune.epochs = 0
    with pytest.raises(ConfigError, match=r"latency target 1e-06 ms is below what pruning reaches here: ratio 0\.7 "
                                          r"runs at [0-9.]+ ms \(dense [0-9.]+ ms"):
        prune(unreachable, progress=False)


def test_a_latency_target_with_an_accuracy_budget_keeps_the_dense_model_when_the_fast_one_drops_too_much(
        models, frames_dir, tmp_path, monkeypatch):
    """--latency-ms with --budget: the smallest ratio meeting the target is fine-tuned and checked against the budget.
    Latency is stood in for by the ONNX file size (deterministic; real timing is the bench's job)."""
    from prune_perception.external import latency_search
    from prune_perception.pruning import prune
    from prune_perception.pruning.latency_model import LatencyStats

    monkeypatch.setattr(latency_search, "time_models", lambda paths, *args, **kwargs: [
        LatencyStats.of([Path(path).stat().st_size / 1e4]) for path in paths])
    target = models["yolov8"].stat().st_size / 1e4 * 0.8
    for budget, kept_dense in ((100.0, False), (0.0, True)):
        out = tmp_path / f"budget_{budget:g}"
        result = prune(_config(models["yolov8"], frames_dir, out, latency_ms=target, latency_margin=0.0,
                               budget=budget), progress=False)
        history = json.loads((out / "history.json").read_text())
        assert history["budget"]["within_budget"] is not kept_dense and result.kept_dense is kept_dense
        assert history["latency"]["chosen_ratio"] > 0 and result.candidates
        written = (out / "pruned.onnx").read_bytes()
        assert (written == models["yolov8"].read_bytes()) is kept_dense
        assert ("over budget" in (out / "summary.md").read_text()) is kept_dense
    assert "drops more than the 0-point budget" in result.summary[-1]


def test_the_latency_search_bisects_to_the_smallest_ratio_that_meets_the_target():
    asked = []

    def meets(ratio):
        asked.append(ratio)
        return ratio >= 0.37

    chosen = smallest_meeting_ratio(meets, 0.7, 0.05)
    assert 0.37 <= chosen <= 0.37 + 0.05 and len(asked) == 4
    assert smallest_meeting_ratio(lambda ratio: True, 0.7, 0.05) <= 0.05


def test_a_temperature_weighs_the_teachers_unsure_cells_more_and_zero_is_refused(models, frames_dir):
    """Two cells with the same box: one the teacher is sure of (0.9), one it is unsure of (0.2), both under-scored
    by the student. Softened at T > 1, the unsure cell's share of the class term grows; a matching student
    still costs nothing."""
    boxes = torch.tensor([[[0.0, 0.0, 10.0, 10.0]] * 2])
    teacher, student = torch.tensor([[[0.9], [0.2]]]), torch.tensor([[[0.8], [0.02]]])

    def unsure_share(temperature):
        unsure_only = torch.tensor([[[0.9], [0.02]]])
        return (output_distillation((boxes, unsure_only), (boxes, teacher), temperature)
                / output_distillation((boxes, student), (boxes, teacher), temperature))

    assert unsure_share(1.0) < unsure_share(2.0) < unsure_share(4.0)
    assert output_distillation((boxes, teacher), (boxes, teacher), 2.0) == 0
    with pytest.raises(ConfigError, match="distill.temperature must be > 0"):
        start_imported(dataclasses.replace(_config(models["yolox"], frames_dir, frames_dir.parent / "t0"),
                                           distill=LabelFreeDistillSettings(temperature=0.0)), progress=False)
    detector = build_detector("yolox")
    run = start_imported(_config(models["yolox"], frames_dir, frames_dir.parent / "t1"), progress=False)
    with pytest.raises(ConfigError, match="distill.temperature must be > 0"):
        DistillationLoss(detector, copy.deepcopy(detector), run.layout, ("output",), temperature=-1.0)
    with pytest.raises(ConfigError, match="distill.temperature must be > 0"):   # the Python API refuses it too
        prune_module(run.imported.module, run.imported.example_input(), run.layout, run.frames, run.config.prune,
                     TINY_TUNE, LabelFreeDistillSettings(temperature=0.0), progress=False)


def test_auto_loss_is_output_and_pseudo_labels_when_decodable_and_raw_otherwise():
    assert parse_terms("auto", True) == ("output", "pseudo") and parse_terms("auto", False) == ("raw",)


def test_imported_model_formats_are_the_runtimes_plus_raw():
    from prune_perception.pruning.choices import IMPORTED_MODEL_FORMATS, RAW_OUTPUT_FORMAT
    from prune_perception.runtime.model_metadata import MODEL_FORMATS

    assert set(IMPORTED_MODEL_FORMATS) == {*MODEL_FORMATS, RAW_OUTPUT_FORMAT}


def test_prune_command_on_an_onnx_detector(models, frames_dir, tmp_path, capsys):
    """`prune --model det.onnx --images DIR`: the one entry point, a readable summary; bad combinations are one line."""
    from prune_perception.cli import main

    out = tmp_path / "cli"
    code = main(["prune", "--model", str(models["yolox"]), "--images", str(frames_dir), "--ratio", "0.3",
                 "--finetune-epochs", "1", "--max-frames", "20", "-o", str(out), "-q"])
    lines = capsys.readouterr().out.strip().splitlines()
    assert code == 0 and (out / "pruned.onnx").is_file() and (out / "history.json").is_file()
    assert lines[0].startswith(f"pruned ONNX: {out / 'pruned.onnx'}") and "agreement with the dense model" in lines[1]
    assert main(["report", str(out), "-o", str(tmp_path / "report"), "-q"]) == 0   # the HTML report reads it too
    assert "agreement mAP50" in (tmp_path / "report" / "report.html").read_text()
    for extra, message in ((["--checkpoint", "x.pt"], "exclude each other"),
                           (["--schedule", "elastic", "--method", "taylor"], "elastic schedule ranks"),
                           (["--latency-ms", "2", "--budget", "-1"], "prune.budget must be >= 0")):
        code = main(["prune", "--model", str(models["yolox"]), "--images", str(frames_dir), "-o", str(out), *extra])
        err = capsys.readouterr().err.strip()
        assert code == 2 and len(err.splitlines()) == 1 and message in err, err


def test_sensitivity_of_an_imported_model_guides_its_ratios(models, frames_dir, tmp_path, capsys):
    """`sensitivity --model`: every prunable group alone, scored by agreement; `prune --sensitivity` then cuts the
    MACs of the uniform ratio with per-group ratios that follow the measured drops."""
    from prune_perception.cli import main
    from prune_perception.external.sensitivity_ratios import load_curves

    sens = tmp_path / "sens"
    assert main(["sensitivity", "--model", str(models["yolov8"]), "--images", str(frames_dir), "--max-frames", "30",
                 "--ratios", "0.3", "0.6", "-o", str(sens), "-q"]) == 0
    result = json.loads((sens / "sensitivity.json").read_text())
    assert result["scored_as"].startswith("agreement mAP50") and result["groups"]
    assert (sens / "sensitivity.png").is_file()
    assert len(result["points"]) == 2 * len(result["groups"])
    assert all(p["macs"] < result["dense"]["macs"] for p in result["points"])
    assert "agreement mAP50 with the dense model" in (sens / "sensitivity.md").read_text()

    curves = load_curves(sens)
    curve = [(0.0, 0.0), (0.3, 0.1), (0.6, 0.05)]   # a drop that falls again counts as the worse one before it
    assert curves.ratio_at(curve, 0.05) == pytest.approx(0.15) and curves.ratio_at(curve, 0.1) == 0.6
    assert curves.ratio_at([(0.0, 0.0), (0.3, 0.2)], 0.0) == 0.0

    out = tmp_path / "guided"
    assert main(["prune", "--model", str(models["yolov8"]), "--images", str(frames_dir), "--max-frames", "30",
                 "--ratio", "0.3", "--finetune-epochs", "0", "--sensitivity", str(sens), "-o", str(out), "-q"]) == 0
    history = json.loads((out / "history.json").read_text())
    allocation = history["sensitivity_ratios"]
    assert allocation["macs"] <= allocation["uniform_macs"] < allocation["dense_macs"]
    assert history["steps"][-1]["macs"] == allocation["macs"]
    ratios = {curves.groups.index(group): allocation["layer_ratios"][group[0]] for group in curves.groups}
    drops = {index: curve[-1][1] for index, curve in enumerate(curves.curves)}
    most, least = max(drops, key=drops.get), min(drops, key=drops.get)
    assert ratios[most] <= ratios[least]
    assert DetectorEngine(out / "pruned.onnx", warmup_runs=0).info.output_format == "yolov8"

    capsys.readouterr()
    for argv, message in ((["prune", "--model", str(models["yolox"]), "--images", str(frames_dir), "--sensitivity",
                            str(sens), "-o", str(tmp_path / "other")], "measured on another model"),
                          (["prune", "--model", str(models["yolov8"]), "--images", str(frames_dir), "--sensitivity",
                            str(tmp_path), "-o", str(tmp_path / "none")], "no sensitivity.json"),
                          (["sensitivity", "--model", str(models["yolov8"]), "--checkpoint", "x.pt"], "one of"),
                          (["sensitivity", "--model", str(models["yolov8"]), "--images", str(frames_dir), "--layers",
                            "nope", "-o", str(tmp_path / "bad")], "unknown or unprunable layer")):
        assert main([*argv, "-q"]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and message in err, err


def test_the_elastic_schedule_soft_prunes_while_distilling_and_removes_the_best_selection(frames_dir, tmp_path):
    """Elastic on an imported graph with YOLOX-style depthwise convs: filters zeroed per epoch, the best what-if
    network removed for real: smaller, and it scores what the what-if scored."""
    from prune_perception.pruning import prune

    model = export_detector(build_detector("yolox", depthwise=True), tmp_path / "dw.onnx", OUTPUT_NAMES["yolox"])
    config = _config(model, frames_dir, tmp_path / "elastic", ratio=0.4, schedule="elastic", elastic_hard_epochs=0)
    config.finetune.epochs = 2
    run = start_imported(config, progress=False)
    student, result = prune_module(run.imported.module, run.imported.example_input(), run.layout, run.frames,
                                   config.prune, config.finetune, config.distill, progress=False)
    dense, step = result.steps
    assert step.macs < dense.macs and [record["epoch"] for record in step.elastic] == [1, 2]
    assert all(record["zeroed"] > 0 for record in step.elastic) and not has_batchnorm(student)
    assert step.elastic[1]["regrown"] > 0   # the zeroed filters keep learning (straight-through gradient)
    final = AgreementScorer(run.imported.module, run.frames.holdout, run.layout).score(student)
    assert final.mAP50 == pytest.approx(step.mAP50, abs=0.02)
    assert any(m.groups > 1 for m in student.modules() if isinstance(m, torch.nn.Conv2d))

    config.prune.elastic_hard_epochs = 1
    config.finetune.epochs = 3
    result = prune(config, progress=False)
    assert result.history[-1].macs < result.history[0].macs
    assert DetectorEngine(result.path, warmup_runs=0).info.output_format == "yolox"
    with pytest.raises(ConfigError, match="must exceed prune.elastic_hard_epochs"):
        prune(_config(model, frames_dir, tmp_path / "bad", schedule="elastic", elastic_hard_epochs=1),
              progress=False)


def test_round_to_keeps_the_nearest_multiple_per_group_not_the_one_below(models):
    """torch-pruning rounds kept widths down, which halves a 16-channel layer at any ratio; imported models keep the
    nearest multiple of round_to per group (global pruning, one ranking, still uses torch-pruning's)."""
    imported = import_onnx(models["yolov8"])
    widths = {name: m.out_channels for name, m in imported.module.named_modules() if isinstance(m, torch.nn.Conv2d)}
    pruner = GraphPruner(imported.module, imported.example_input(), make_importance("l1"), PruneSpec(0.1, round_to=8))
    pruner.step()
    after = {name: m.out_channels for name, m in imported.module.named_modules() if isinstance(m, torch.nn.Conv2d)}
    pruned = {name for group in pruner.plan.groups for name in group}
    assert {widths[name] for name in pruned} >= {16, 48}
    assert all(after[name] == widths[name] for name in pruned if widths[name] <= 32)   # 16*0.9 -> 16, not 8
    assert all(after[name] == 40 for name in pruned if widths[name] == 48)            # 43.2 -> 40
    assert all(after[name] % 8 == 0 for name in pruned)
