"""Knowledge distillation from the dense teacher while a pruned student is fine-tuned.

Logit KD (``mode: logit``), per cell k of the student and teacher outputs:

- class term: BCE(student logits / T, sigmoid(teacher logits / T)) summed over classes, minus the
  same BCE of the teacher's own logits (its entropy: a constant, so the gradients are the BCE's and
  the term is the binary KL divergence, 0 when the student matches), weighted by the teacher's
  confidence c_k = max_c sigmoid(teacher logit) so that the many background cells do not dominate;
  normalised by Σ c_k and multiplied by T² (keeps gradients comparable across T).
- box term: (1 − GIoU(student box, teacher box)) on the cells where c_k ≥ ``BOX_MIN_TEACHER_SCORE``,
  weighted by c_k and normalised by their Σ c_k; scaled by the detection loss's box weight.

Feature KD (``mode: feature``): MSE between the teacher's neck outputs (P3, P4, P5) and the
student's, mapped to the teacher's widths by learned 1x1 conv adapters. The adapters are trained
with the student (``Distiller.parameters()`` goes into the optimizer) and live only in the
Distiller, so checkpoints of the student never contain them. Neck outputs are captured with forward
hooks on ``model.neck``. ``both`` adds the two. The total is multiplied by ``distill.weight``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from prune_perception.config import DistillSettings
from prune_perception.errors import ConfigError
from prune_perception.models.checkpoint import load_checkpoint
from prune_perception.models.cost import model_cost
from prune_perception.models.detector import Detector, cell_centers, distances_to_boxes, model_widths
from prune_perception.training.loss import EPS, LossWeights, giou

DISTILL_MODES = ("logit", "feature", "both")
NECK_OUTPUTS = ("neck.td3", "neck.bu4", "neck.bu5")   # arch-spec names of the layers giving P3, P4, P5
BOX_MIN_TEACHER_SCORE = 0.3


def distills(settings: DistillSettings, macs_cut: float) -> bool:
    """Whether fine-tuning a student that removed `macs_cut` (0..1) of the teacher's MACs distils: `enabled`, or
    with `auto` only when pruning hard (`macs_cut >= auto_min_macs_cut`; measured in the README)."""
    if settings.enabled == "auto":
        return macs_cut >= settings.auto_min_macs_cut
    return bool(settings.enabled)


def distillation_teacher(checkpoint: Path, settings: DistillSettings, student: Detector, input_hw: tuple[int, int],
                         macs_cut: Callable[[], float] | None = None) -> Detector | None:
    """The dense `checkpoint` as the teacher when `settings` say to distil `student`, else None. With `auto` the
    share of the dense MACs the pruning removes decides: `macs_cut()`, or measured on `student` as it is."""
    if settings.enabled is False:
        return None
    teacher = load_checkpoint(checkpoint).model
    reason = "distill.enabled true"
    if settings.enabled == "auto":
        cut = macs_cut() if macs_cut is not None else (
            1 - model_cost(student, input_hw).macs / model_cost(teacher, input_hw).macs)
        if not distills(settings, cut):
            return None
        reason = f"pruning removes {cut:.0%} of its MACs; distill.enabled auto"
    print(f"fine-tuning distils from the dense model ({reason})", flush=True)
    return teacher


def validate_distill_settings(settings: DistillSettings) -> None:
    checks = [
        (settings.enabled in (True, False, "auto"), f"distill.enabled must be true, false or auto, got "
                                                     f"{settings.enabled!r}"),
        (0 <= settings.auto_min_macs_cut <= 1, f"distill.auto_min_macs_cut must be in [0, 1], got "
                                               f"{settings.auto_min_macs_cut}"),
        (settings.mode in DISTILL_MODES, f"distill.mode must be one of {DISTILL_MODES}, got {settings.mode!r}"),
        (settings.weight >= 0, f"distill.weight must be >= 0, got {settings.weight}"),
        (settings.temperature > 0, f"distill.temperature must be > 0, got {settings.temperature}"),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)


@contextmanager
def capture_neck_outputs(model: Detector) -> Iterator[list[torch.Tensor]]:
    """Within the block, the returned list holds the (P3, P4, P5) of the model's last forward."""
    captured: list[torch.Tensor] = []

    def hook(module, inputs, outputs):
        captured[:] = outputs

    handle = model.neck.register_forward_hook(hook)
    try:
        yield captured
    finally:
        handle.remove()


def logit_distillation_loss(student_logits: torch.Tensor, student_distances: torch.Tensor,
                            teacher_logits: torch.Tensor, teacher_distances: torch.Tensor,
                            centers: torch.Tensor, temperature: float) -> torch.Tensor:
    """Confidence-weighted class KD plus GIoU to the teacher's confident boxes (see module docstring)."""
    teacher_confidence = teacher_logits.sigmoid().amax(-1)                                 # [B,K]
    soft_targets = (teacher_logits / temperature).sigmoid()
    cross_entropy = F.binary_cross_entropy_with_logits(student_logits / temperature, soft_targets, reduction="none")
    teacher_entropy = F.binary_cross_entropy_with_logits(teacher_logits / temperature, soft_targets, reduction="none")
    cls_per_cell = (cross_entropy - teacher_entropy).sum(-1)
    cls_term = (cls_per_cell * teacher_confidence).sum() / (teacher_confidence.sum() + EPS) * temperature ** 2
    confident = teacher_confidence >= BOX_MIN_TEACHER_SCORE
    if not confident.any():
        return cls_term
    weights = teacher_confidence[confident]
    student_boxes = distances_to_boxes(centers, student_distances)[confident]
    teacher_boxes = distances_to_boxes(centers, teacher_distances)[confident]
    box_term = ((1 - giou(student_boxes, teacher_boxes)) * weights).sum() / weights.sum()
    return cls_term + LossWeights().box * box_term


class Distiller:
    """Teacher (frozen, eval mode) + feature adapters for one student; ``student_forward`` runs both."""

    def __init__(self, teacher: Detector, student: Detector, settings: DistillSettings):
        validate_distill_settings(settings)
        if teacher.num_classes != student.num_classes or teacher.strides != student.strides:
            raise ConfigError("distillation teacher and student must have the same classes and strides")
        self.settings = settings
        self.teacher = teacher.eval()
        for parameter in self.teacher.parameters():
            parameter.requires_grad_(False)
        self.student = student
        self.uses_logits = settings.mode in ("logit", "both")
        self.uses_features = settings.mode in ("feature", "both")
        student_widths, teacher_widths = model_widths(student), model_widths(teacher)
        self.adapters = nn.ModuleList(
            nn.Conv2d(student_widths[name], teacher_widths[name], 1) for name in NECK_OUTPUTS
        ) if self.uses_features else nn.ModuleList()

    def parameters(self) -> Iterator[nn.Parameter]:
        """The adapters' parameters: train them with the student."""
        return self.adapters.parameters()

    def student_forward(self, images: torch.Tensor) -> tuple[tuple[torch.Tensor, torch.Tensor], torch.Tensor]:
        """(student's (cls_logits, distances), weighted distillation loss) for one batch."""
        with capture_neck_outputs(self.student) as student_features:
            student_logits, student_distances = self.student(images)
        with torch.no_grad(), capture_neck_outputs(self.teacher) as teacher_features:
            teacher_logits, teacher_distances = self.teacher(images)
        loss = student_logits.new_zeros(())
        if self.uses_logits:
            centers = cell_centers(tuple(images.shape[-2:]), self.student.strides, images.device)
            loss = loss + logit_distillation_loss(student_logits, student_distances, teacher_logits,
                                                  teacher_distances, centers, self.settings.temperature)
        if self.uses_features:
            loss = loss + sum(F.mse_loss(adapter(student), teacher) for adapter, student, teacher
                              in zip(self.adapters, student_features, teacher_features))
        return (student_logits, student_distances), self.settings.weight * loss
