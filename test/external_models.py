"""Small conv detectors with external output layouts, exported to ONNX the way their projects do (tests only).

Three heads on one backbone (strides 8/16/32, input 64x96 -> 126 anchor points):

- ``yolox``: one output ``[N, A, 5+C]``: raw grid offsets / log sizes, sigmoided objectness and classes;
- ``yolov8``: one output ``[N, 4+C, A]``: centre/size in input pixels, sigmoided classes;
- ``native``: ``boxes [N, A, 4]`` xyxy pixels + ``scores [N, A, C]`` (with :func:`native_metadata`);
- ``unknown``: two outputs no adapter knows: a ``[N, 6, H/8, W/8]`` map and a ``[N, 16]`` embedding
  (global pooling of the coarser levels + linear);
- ``shuffle``: the yolox head on a backbone with a channel split and a ShuffleNet channel shuffle;
- ``csp``: a backbone with a YOLOv8 C2f block (a conv's output split in two, one half through a residual
  bottleneck, all three concatenated).

:func:`build_detector` calibrates BatchNorm on rendered road scenes and the prediction convs get larger
weights and a negative bias, so that the untrained models give sparse, confident, image-dependent
detections (5-15 % of the cells above 0.35): a teacher whose detections are worth agreeing with.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import cv2
import numpy as np
import onnx
import torch
from torch import nn

INPUT_HW = (64, 96)
NUM_CLASSES = 3
PREDICTION_GAIN = 3.0
PREDICTION_BIAS = {"yolox": -1.0, "yolov8": -2.0, "native": -2.0, "unknown": 0.0}
WEAK_FRACTION = 0.375
PIXEL_SCALE = {"yolox": 1.0, "yolov8": 1 / 255, "native": 1 / 255, "unknown": 1 / 255}
"""What the runtime feeds each layout: YOLOX raw 0..255 pixels, the others / 255 (an unknown layout: RGB / 255)."""


def conv(cin: int, cout: int, stride: int = 1, kernel: int = 3, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False),
                         nn.BatchNorm2d(cout), nn.SiLU())


def depthwise_separable(channels: int) -> nn.Sequential:
    """YOLOX-nano's DWConv: a depthwise 3x3 then a pointwise 1x1."""
    return nn.Sequential(conv(channels, channels, groups=channels), conv(channels, channels, kernel=1))


class ShuffleBlock(nn.Module):
    """Half the channels through a conv, concat, channel shuffle (ShuffleNetV2 style)."""

    def __init__(self, channels: int):
        super().__init__()
        self.branch = conv(channels // 2, channels // 2)

    def forward(self, x):
        a, b = x.chunk(2, dim=1)
        x = torch.cat([a, self.branch(b)], dim=1)
        n, c, h, w = x.shape
        return x.reshape(n, 2, c // 2, h, w).transpose(1, 2).reshape(n, c, h, w)


class CspBlock(nn.Module):
    """YOLOv8's C2f with one bottleneck."""

    def __init__(self, channels: int):
        super().__init__()
        self.cv1 = conv(channels, channels, kernel=1)
        self.bottleneck = nn.Sequential(conv(channels // 2, channels // 2), conv(channels // 2, channels // 2))
        self.cv2 = conv(3 * channels // 2, channels, kernel=1)

    def forward(self, x):
        a, b = self.cv1(x).split([self.cv2[0].in_channels // 3] * 2, dim=1)   # as Ultralytics' export: a Split
        return self.cv2(torch.cat([a, b, b + self.bottleneck(b)], dim=1))


class Backbone(nn.Module):
    def __init__(self, shuffle: bool = False, csp: bool = False):
        super().__init__()
        self.stem = nn.Sequential(conv(3, 16, 2), conv(16, 24, 2))
        self.shuffle = ShuffleBlock(24) if shuffle else CspBlock(24) if csp else nn.Identity()
        self.s8 = conv(24, 32, 2)
        self.s16 = nn.Sequential(conv(32, 48, 2), conv(48, 48))
        self.s32 = conv(48, 64, 2)

    def forward(self, x):
        p3 = self.s8(self.shuffle(self.stem(x)))
        p4 = self.s16(p3)
        return p3, p4, self.s32(p4)


class TestDetector(nn.Module):
    """Backbone + one head per level; ``layout`` picks the output format."""

    def __init__(self, layout: str, shuffle: bool = False, seed: int = 0, csp: bool = False, depthwise: bool = False):
        super().__init__()
        torch.manual_seed(seed)
        self.layout = layout
        self.backbone = Backbone(shuffle, csp)
        self.stems = nn.ModuleList(conv(ch, 32, kernel=1) for ch in (32, 48, 64))
        self.towers = nn.ModuleList(depthwise_separable(32) if depthwise else conv(32, 32) for _ in range(3))
        outputs = {"yolox": 5 + NUM_CLASSES, "yolov8": 4 + NUM_CLASSES, "native": 4 + NUM_CLASSES, "unknown": 6}[layout]
        self.preds = nn.ModuleList(nn.Conv2d(32, outputs, 1) for _ in range(3))
        for pred in self.preds:
            pred.weight.data *= PREDICTION_GAIN
            pred.bias.data += PREDICTION_BIAS[layout]
        if layout == "unknown":
            self.embed = nn.Linear(64, 16)

    def forward(self, x):
        levels = [tower(stem(f)) for f, stem, tower in zip(self.backbone(x), self.stems, self.towers)]
        if self.layout == "unknown":
            return self.preds[0](levels[0]), self.embed(torch.cat([f.mean((2, 3)) for f in levels[1:]], 1))
        maps = [pred(f) for f, pred in zip(levels, self.preds)]
        flat = torch.cat([m.flatten(2) for m in maps], dim=2)           # [N, ch, A]
        if self.layout == "yolox":   # grid offsets in 0..1 and log sizes 0.5..2.5 strides: boxes on the image
            boxes = torch.cat([flat[:, :2].sigmoid(), flat[:, 2:4].tanh() + 1.5], 1)
            return torch.cat([boxes, flat[:, 4:].sigmoid()], 1).permute(0, 2, 1)
        height, width = x.shape[-2:]
        scale = torch.tensor([width, height, width / 3, height / 3], dtype=x.dtype).view(1, 4, 1)
        predictions = torch.cat([flat[:, :4].sigmoid() * scale, flat[:, 4:].sigmoid()], 1)
        if self.layout == "yolov8":
            return predictions
        centers, sizes = predictions[:, :2], predictions[:, 2:4]   # native: boxes xyxy [N,K,4], scores [N,K,C]
        boxes = torch.cat([centers - sizes / 2, centers + sizes / 2], 1)
        return boxes.permute(0, 2, 1), predictions[:, 4:].permute(0, 2, 1)


OUTPUT_NAMES = {"yolox": ["output"], "yolov8": ["output0"], "native": ["boxes", "scores"],
                "unknown": ["heatmap", "embedding"]}


def native_metadata() -> dict[str, str]:
    """Our own metadata_props (DESIGN §5) for the ``native`` test model."""
    from prune_perception.export.metadata import build_metadata

    return build_metadata([f"thing{i}" for i in range(NUM_CLASSES)], INPUT_HW, {"method": "none"}, "0" * 64)


def calibrate_batchnorm(model: nn.Module, pixel_scale: float, count: int = 16, seed: int = 1) -> nn.Module:
    """BatchNorm statistics from rendered road scenes (cumulative average), so features are normalised and the
    untrained model's outputs depend on the image content; returns the model in eval mode."""
    from prune_perception.data.synth import render_scene

    rng = np.random.default_rng(seed)
    images = np.stack([render_scene(rng, INPUT_HW[1], INPUT_HW[0])[0] for _ in range(count)])
    batch = torch.from_numpy(images).permute(0, 3, 1, 2).float() * pixel_scale
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None
    model.train()
    with torch.no_grad():
        model(batch)
    return model.eval()


def weaken_channels(model: nn.Module, fraction: float = WEAK_FRACTION, seed: int = 0) -> nn.Module:
    """Scale the BatchNorm gain of ``fraction`` of every layer's channels down 20x and zero their shift: like a
    network trained with weight decay, it has channels that matter little, which magnitude pruning finds."""
    generator = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            weak = torch.randperm(module.num_features, generator=generator)[:int(module.num_features * fraction)]
            module.weight.data[weak] *= 0.05
            module.bias.data[weak] = 0.0
    return model


def build_detector(layout: str, shuffle: bool = False, seed: int = 0, csp: bool = False,
                   depthwise: bool = False) -> TestDetector:
    """A calibrated TestDetector with weak channels, in eval mode (``depthwise``: YOLOX-style head towers)."""
    return calibrate_batchnorm(weaken_channels(TestDetector(layout, shuffle, seed, csp, depthwise), seed=seed),
                               PIXEL_SCALE[layout])


def export_detector(model: nn.Module, path: Path, output_names: list[str], dynamic_batch: bool = True,
                    dynamic_hw: bool = False, metadata: dict[str, str] | None = None) -> Path:
    """Legacy torch.onnx.export at opset 17 (as YOLOX's export_onnx.py / Ultralytics do), BatchNorm folded."""
    model.eval()
    axes = {0: "batch"} if dynamic_batch else {}
    input_axes = {**axes, **({2: "height", 3: "width"} if dynamic_hw else {})}
    dynamic = {"images": input_axes, **{name: axes for name in output_names}} if input_axes else None
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.zeros(1, 3, *INPUT_HW),), buffer, input_names=["images"],
                          output_names=output_names, opset_version=17, dynamic_axes=dynamic, dynamo=False)
    proto = onnx.load_from_string(buffer.getvalue())
    with torch.no_grad():
        outputs = model(torch.zeros(1, 3, *INPUT_HW))
    for value, tensor in zip(proto.graph.output, outputs if isinstance(outputs, tuple) else (outputs,)):
        for dim, size in list(zip(value.type.tensor_type.shape.dim, tensor.shape))[1:]:
            dim.dim_value = size   # static like the projects' own exports (the tracer leaves them symbolic)
    onnx.helper.set_model_props(proto, metadata or {"author": "test", "names": str(
        {i: f"thing{i}" for i in range(NUM_CLASSES)})})
    onnx.save(proto, str(path))
    return path


def write_frames(folder: Path, count: int, seed: int = 0) -> Path:
    """``count`` rendered road scenes (BGR PNG, 144x96) in ``folder``."""
    from prune_perception.data.synth import render_scene

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for index in range(count):
        image, _ = render_scene(rng, 144, 96)
        cv2.imwrite(str(folder / f"frame_{index:03d}.png"), image)
    return folder
