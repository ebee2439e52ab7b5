"""BatchNorm put back after the convs of a pruned imported graph, calibrated to the dense model's statistics.

Detector exports fold BatchNorm into the convs, and a pruned network without it starts far from its teacher
and fine-tunes badly: each removed channel took its mean contribution to the next layer with it, and
nothing re-normalises the shifted statistics. Before fine-tuning, each conv of the student (but the
protected output layers) gets a ``BatchNorm2d`` whose affine part is the teacher's per-channel output
statistics for the channels it kept (``weight = std``, ``bias = mean``); one pass over the frames with the
BatchNorms taking batch statistics (cumulative running averages) then measures what each student channel
needs to match them, layer after layer. In eval mode every kept channel then has its teacher's mean and
variance again (the BatchNorm-recalibration step of pruning and quantisation toolkits), and the
BatchNorms keep conditioning the fine-tuning. The convs left without BatchNorm (the protected output
layers) lost inputs too, and nothing re-normalises them: their bias is shifted so their output mean is the
teacher's again (mean compensation; the largest single loss of YOLOX-nano's sensitivity analysis came from
there: 25 % of the channels feeding its stride-8 box/objectness outputs cost 58 agreement points).
:func:`fold_batchnorm` merges each BatchNorm into its conv, in place, so the exported graph has the original
ops and the pruner's references to the convs stay valid.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn


class ConvWithBatchNorm(nn.Sequential):
    """A conv and the BatchNorm re-inserted after it (the conv module object is the original one)."""

    def __init__(self, conv: nn.Conv2d, batchnorm: nn.BatchNorm2d):
        super().__init__(conv, batchnorm)


def has_batchnorm(model: nn.Module) -> bool:
    """Whether any BatchNorm layer is in ``model`` (a user's module, or one with BatchNorm re-inserted)."""
    return any(isinstance(module, nn.modules.batchnorm._BatchNorm) for module in model.modules())


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    parent._modules[child] = module


@torch.no_grad()
def output_statistics(model: nn.Module, names: Sequence[str], frames: torch.Tensor,
                      batch_size: int) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Per-channel (mean, variance) of the named modules' outputs over ``frames`` (eval mode); modules the
    outputs do not depend on are missing."""
    sums = {name: [0.0, 0.0, 0] for name in names}   # per name: Σx, Σx², count

    def hook(name):
        def record(module, args, output):
            values = output.transpose(0, 1).flatten(1).double()
            entry = sums[name]
            entry[0], entry[1], entry[2] = (entry[0] + values.sum(1), entry[1] + values.pow(2).sum(1),
                                            entry[2] + values.shape[1])
        return record

    modules = dict(model.named_modules())
    handles = [modules[name].register_forward_hook(hook(name)) for name in names]
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(frames), batch_size):
            model(frames[start:start + batch_size].float())
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    statistics = {}
    for name, (total, squares, count) in sums.items():
        if count:
            mean = total / count
            statistics[name] = (mean.float(), (squares / count - mean.pow(2)).clamp_min(0).float())
    return statistics


def conv_statistics(model: nn.Module, frames: torch.Tensor, batch_size: int = 16
                    ) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """:func:`output_statistics` of every Conv2d of ``model``: the dense model's targets for :func:`insert_batchnorm`
    (computed once per model and frames, shared by every student pruned from it)."""
    return output_statistics(model, [name for name, module in model.named_modules() if isinstance(module, nn.Conv2d)],
                             frames, batch_size)


def insert_batchnorm(student: nn.Module, teacher_statistics: Mapping[str, tuple[torch.Tensor, torch.Tensor]],
                     frames: torch.Tensor, kept_out_channels: Mapping[str, Sequence[int]] | None = None,
                     skip: Sequence[str] = (), batch_size: int = 16) -> list[str]:
    """Wrap every Conv2d of ``student`` not named in ``skip`` as conv + BatchNorm calibrated to the dense model's
    ``teacher_statistics`` (:func:`conv_statistics`; module doc) on ``frames``; the names wrapped.
    ``kept_out_channels``: per pruned conv, the teacher's indices of the channels the student kept (the others
    kept them all). A student with BatchNorm layers of its own (a user's module rather than an export) is left
    as it is."""
    if has_batchnorm(student):
        return []
    skipped = set(skip)
    convs = {name: module for name, module in student.named_modules()
             if isinstance(module, nn.Conv2d) and name not in skipped and name in teacher_statistics}
    batchnorms = []
    for name, conv in convs.items():
        kept = torch.as_tensor(list((kept_out_channels or {}).get(name, range(conv.out_channels))))
        mean, variance = (statistic[kept] for statistic in teacher_statistics[name])
        batchnorm = nn.BatchNorm2d(conv.out_channels, momentum=None)
        batchnorm.weight.data.copy_((variance + batchnorm.eps).sqrt())
        batchnorm.bias.data.copy_(mean)
        _set_submodule(student, name, ConvWithBatchNorm(conv, batchnorm))
        batchnorms.append(batchnorm)
    _calibrate(student, batchnorms, frames, batch_size)
    left_out = [name for name, module in student.named_modules()
                if isinstance(module, nn.Conv2d) and name in skipped and name in teacher_statistics]
    _match_output_means(student, teacher_statistics, left_out, frames, batch_size)
    return list(convs)


@torch.no_grad()
def _match_output_means(model: nn.Module, teacher_statistics: Mapping[str, tuple[torch.Tensor, torch.Tensor]],
                        names: Sequence[str], frames: torch.Tensor, batch_size: int) -> None:
    """Shift the bias of each named conv (those left without BatchNorm: the output layers, whose channels are all
    kept) by the dense model's output mean minus its own, measured with the BatchNorms calibrated: what the
    removed input channels contributed on average goes back into the bias."""
    for name, (mean, _) in output_statistics(model, names, frames, batch_size).items():
        conv = model.get_submodule(name)
        shift = (teacher_statistics[name][0] - mean).to(conv.weight.dtype)
        if conv.bias is None:
            conv.bias = nn.Parameter(shift)
        else:
            conv.bias.add_(shift)


@torch.no_grad()
def _calibrate(model: nn.Module, batchnorms: list[nn.BatchNorm2d], frames: torch.Tensor, batch_size: int) -> None:
    """Running statistics of the BatchNorms' inputs with batch statistics upstream (cumulative averages)."""
    was_training = model.training
    model.eval()
    for batchnorm in batchnorms:
        batchnorm.reset_running_stats()
        batchnorm.train()
    for start in range(0, len(frames), batch_size):
        model(frames[start:start + batch_size].float())
    for batchnorm in batchnorms:
        batchnorm.momentum = 0.1
    model.train(was_training)


@torch.no_grad()
def fold_batchnorm(model: nn.Module) -> None:
    """Merge every re-inserted BatchNorm into its conv (eval-mode statistics) and put the conv back in place."""
    for name, module in list(model.named_modules()):
        if not isinstance(module, ConvWithBatchNorm):
            continue
        conv, batchnorm = module
        scale = batchnorm.weight / (batchnorm.running_var + batchnorm.eps).sqrt()
        bias = conv.bias if conv.bias is not None else torch.zeros_like(batchnorm.running_mean)
        conv.weight.mul_(scale.view(-1, 1, 1, 1).to(conv.weight.dtype))
        folded_bias = (bias - batchnorm.running_mean) * scale + batchnorm.bias
        if conv.bias is None:
            conv.bias = nn.Parameter(folded_bias)
        else:
            conv.bias.copy_(folded_bias)
        _set_submodule(model, name, conv)
