"""The detector family: conv-BN-act backbone with residual stages, PAN neck, decoupled heads.

Anchor-free: every cell of the stride 8/16/32 maps predicts class logits and the distances
(left, top, right, bottom) from the cell centre to the box edges, in units of the stride.
"""

from __future__ import annotations

import math
import re
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from prune_perception.models.arch import validate_arch


class ConvBNAct(nn.Module):
    """Conv (no bias) + BatchNorm + activation."""

    def __init__(self, c_in: int, c_out: int, kernel: int = 1, stride: int = 1, act: str = "relu"):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, kernel, stride, kernel // 2, bias=False)
        self.bn = nn.BatchNorm2d(c_out, eps=1e-3, momentum=0.03)
        self.act = nn.ReLU(inplace=True) if act == "relu" else nn.SiLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


class ResidualBlock(nn.Module):
    """1x1 squeeze, 3x3 expand back to the input width, add the input."""

    def __init__(self, c_io: int, c_hidden: int, act: str):
        super().__init__()
        self.cv1 = ConvBNAct(c_io, c_hidden, 1, act=act)
        self.cv2 = ConvBNAct(c_hidden, c_io, 3, act=act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.cv2(self.cv1(x))


class Stage(nn.Module):
    """Stride-2 3x3 conv followed by residual blocks."""

    def __init__(self, name: str, c_in: int, blocks: int, widths: dict[str, int], act: str):
        super().__init__()
        c_out = widths[f"{name}.down"]
        self.down = ConvBNAct(c_in, c_out, 3, 2, act)
        self.blocks = nn.Sequential(*[
            ResidualBlock(c_out, widths[f"{name}.block{b}.cv1"], act) for b in range(blocks)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.down(x))


class PANNeck(nn.Module):
    """Top-down (FPN) then bottom-up (PAN) fusion of C3/C4/C5 by concatenation."""

    def __init__(self, c3: int, c4: int, c5: int, w: dict[str, int], act: str):
        super().__init__()
        self.lat3 = ConvBNAct(c3, w["neck.lat3"], 1, act=act)
        self.lat4 = ConvBNAct(c4, w["neck.lat4"], 1, act=act)
        self.lat5 = ConvBNAct(c5, w["neck.lat5"], 1, act=act)
        self.td4 = ConvBNAct(w["neck.lat4"] + w["neck.lat5"], w["neck.td4"], 3, act=act)
        self.td3 = ConvBNAct(w["neck.lat3"] + w["neck.td4"], w["neck.td3"], 3, act=act)
        self.down3 = ConvBNAct(w["neck.td3"], w["neck.down3"], 3, 2, act)
        self.bu4 = ConvBNAct(w["neck.down3"] + w["neck.td4"], w["neck.bu4"], 3, act=act)
        self.down4 = ConvBNAct(w["neck.bu4"], w["neck.down4"], 3, 2, act)
        self.bu5 = ConvBNAct(w["neck.down4"] + w["neck.lat5"], w["neck.bu5"], 3, act=act)
        self.out_channels = (w["neck.td3"], w["neck.bu4"], w["neck.bu5"])

    def forward(self, c3, c4, c5):
        l5 = self.lat5(c5)
        t4 = self.td4(torch.cat([self.lat4(c4), F.interpolate(l5, size=c4.shape[-2:], mode="nearest")], 1))
        p3 = self.td3(torch.cat([self.lat3(c3), F.interpolate(t4, size=c3.shape[-2:], mode="nearest")], 1))
        p4 = self.bu4(torch.cat([self.down3(p3), t4], 1))
        p5 = self.bu5(torch.cat([self.down4(p4), l5], 1))
        return p3, p4, p5


class DecoupledHead(nn.Module):
    """Per-level head: shared 1x1 stem, separate 3x3 class and box branches."""

    def __init__(self, name: str, c_in: int, num_classes: int, w: dict[str, int], act: str):
        super().__init__()
        self.stem = ConvBNAct(c_in, w[f"{name}.stem"], 1, act=act)
        self.cls_conv = ConvBNAct(w[f"{name}.stem"], w[f"{name}.cls_conv"], 3, act=act)
        self.reg_conv = ConvBNAct(w[f"{name}.stem"], w[f"{name}.reg_conv"], 3, act=act)
        self.cls_pred = nn.Conv2d(w[f"{name}.cls_conv"], num_classes, 1)
        self.reg_pred = nn.Conv2d(w[f"{name}.reg_conv"], 4, 1)
        nn.init.constant_(self.cls_pred.bias, -math.log((1 - 0.01) / 0.01))  # prior p=0.01
        nn.init.constant_(self.reg_pred.bias, 1.0)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.stem(x)
        return self.cls_pred(self.cls_conv(x)), self.reg_pred(self.reg_conv(x))


class Detector(nn.Module):
    """A detector built from an arch spec (see models/arch.py).

    forward(images) -> (cls_logits [B,K,C], box_distances [B,K,4] in input pixels, ltrb),
    K = cells of all levels, finest first. `decode` turns them into xyxy boxes + scores.
    """

    def __init__(self, arch: dict[str, Any]):
        super().__init__()
        self.arch = validate_arch(arch)
        w, act, depths = self.arch["widths"], self.arch["act"], self.arch["depths"]
        self.strides = tuple(self.arch["strides"])
        self.num_classes = self.arch["num_classes"]
        self.stem = ConvBNAct(3, w["stem"], 3, 2, act)
        c_in = w["stem"]
        stages = []
        for s, blocks in enumerate(depths, start=1):
            stages.append(Stage(f"stage{s}", c_in, blocks, w, act))
            c_in = w[f"stage{s}.down"]
        self.stage1, self.stage2, self.stage3, self.stage4 = stages
        self.neck = PANNeck(w["stage2.down"], w["stage3.down"], w["stage4.down"], w, act)
        self.head0, self.head1, self.head2 = (
            DecoupledHead(f"head{i}", c, self.num_classes, w, act) for i, c in enumerate(self.neck.out_channels))

    def heads(self) -> tuple[DecoupledHead, ...]:
        return self.head0, self.head1, self.head2

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        c2 = self.stage1(self.stem(images))
        c3 = self.stage2(c2)
        c4 = self.stage3(c3)
        c5 = self.stage4(c4)
        cls_out, box_out = [], []
        for head, feature, stride in zip(self.heads(), self.neck(c3, c4, c5), self.strides):
            cls_logits, reg = head(feature)
            cls_out.append(cls_logits.flatten(2))
            box_out.append(F.softplus(reg.flatten(2)) * stride)
        return torch.cat(cls_out, 2).transpose(1, 2), torch.cat(box_out, 2).transpose(1, 2)

    def decode(self, cls_logits: torch.Tensor, distances: torch.Tensor,
               input_hw: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """(boxes [B,K,4] xyxy input pixels, scores [B,K,C] after sigmoid)."""
        centers = cell_centers(input_hw, self.strides, distances.device, distances.dtype)
        return distances_to_boxes(centers, distances), cls_logits.sigmoid()

    def prunable_output_layers(self) -> list[nn.Module]:
        """The head's final convs: their widths are the class count and box channels."""
        return [m for h in self.heads() for m in (h.cls_pred, h.reg_pred)]


def cell_centers(input_hw: tuple[int, int], strides, device=None, dtype=torch.float32) -> torch.Tensor:
    """Centres [K,2] (x, y) of all cells of all levels, finest level first, row-major."""
    height, width = input_hw
    centers = []
    for stride in strides:
        rows, cols = math.ceil(height / stride), math.ceil(width / stride)
        ys, xs = torch.meshgrid(torch.arange(rows, device=device, dtype=dtype),
                                torch.arange(cols, device=device, dtype=dtype), indexing="ij")
        centers.append(torch.stack([xs, ys], -1).reshape(-1, 2).add_(0.5).mul_(stride))
    return torch.cat(centers)


def cell_strides(input_hw: tuple[int, int], strides, device=None, dtype=torch.float32) -> torch.Tensor:
    """Stride [K] of every cell, same order as cell_centers."""
    height, width = input_hw
    return torch.cat([torch.full((math.ceil(height / s) * math.ceil(width / s),), float(s), device=device, dtype=dtype)
                      for s in strides])


def distances_to_boxes(centers: torch.Tensor, distances: torch.Tensor) -> torch.Tensor:
    """ltrb distances around cell centres -> xyxy boxes."""
    return torch.cat([centers - distances[..., :2], centers + distances[..., 2:]], -1)


def spec_layers(model: Detector) -> dict[str, ConvBNAct]:
    """Arch-spec layer name -> its ConvBNAct module (stageS.blockB lives at stageS.blocks.B)."""
    modules = dict(model.named_modules())
    return {name: modules[re.sub(r"^(stage\d)\.block(\d+)", r"\1.blocks.\2", name)] for name in model.arch["widths"]}


def model_widths(model: Detector) -> dict[str, int]:
    """Read the real conv widths back (after pruning) in arch-spec naming."""
    return {name: layer.conv.out_channels for name, layer in spec_layers(model).items()}
