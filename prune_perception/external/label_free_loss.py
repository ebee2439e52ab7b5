"""Label-free distillation losses: the dense model teaches its pruned copy on unlabeled frames.

Terms (``terms`` of :class:`DistillationLoss`, combined with ``+``, e.g. ``output+feature``):

- ``output`` (known layouts): confidence-weighted output distillation on the decoded outputs. Per
  cell k and class c, the binary KL divergence between the student's and the teacher's class
  probabilities, weighted by ``w_k = max(teacher confidence, student confidence)`` (the teacher's
  confident cells teach the objects; the student's own confident cells teach it to drop false
  positives; the many background cells where both are unsure weigh little), normalised by Σ w_k;
  with ``temperature`` T > 1 both probabilities are softened first, ``sigmoid(logit(p) / T)``, and the KL
  is scaled by T² (the teacher's low scores, the objects it is unsure of, then weigh more);
  plus ``1 - GIoU`` between student and teacher boxes on cells where the teacher's confidence is
  at least ``BOX_MIN_TEACHER_SCORE``, weighted by that confidence.
- ``pseudo`` (known layouts): the teacher's detections as hard pseudo-labels, per cell: class
  target 1 where the teacher's class probability is at least ``pseudo_threshold``, else 0 (BCE
  normalised by the number of positives), and the teacher's box as the GIoU target there.
- ``feature``: MSE between the inputs of the output layers (the head's last features), the
  student's mapped to the teacher's width by learned 1x1 adapters, normalised by the teacher
  feature's variance.
- ``raw`` (any layout): MSE between every raw output and the teacher's, each normalised by the
  teacher output's variance, so a detector whose outputs we cannot decode is still matched.

The outputs of ONNX detectors are probabilities already (after sigmoid), so the class terms work
on probabilities, clamped away from 0 and 1.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from prune_perception.errors import ConfigError
from prune_perception.external.layout import DetectorLayout, OutputDecoder, as_output_list
from prune_perception.training.loss import EPS, LossWeights, giou

TERMS = ("output", "pseudo", "feature", "raw")
DECODED_TERMS = ("output", "pseudo")
AUTO_TERMS = ("output", "pseudo")
"""What ``auto`` means for a decodable layout: the best measured on a trained detector (docs/external-models.md)."""
AUTO_RAW_TERMS = ("raw",)
"""What ``auto`` means for a raw layout (nothing to decode)."""
BOX_MIN_TEACHER_SCORE = 0.3
PROBABILITY_EPS = 1e-6

UserLoss = Callable[[list[torch.Tensor], list[torch.Tensor], torch.Tensor], torch.Tensor]
"""``loss(student_outputs, teacher_outputs, images) -> scalar``: a user's own term, added to the configured ones."""


def parse_terms(text: str, decodable: bool) -> tuple[str, ...]:
    """``'auto'`` (:data:`AUTO_TERMS`, raw layouts :data:`AUTO_RAW_TERMS`) or ``'output+feature'`` -> the terms;
    ConfigError for unknown or undecodable ones."""
    if text == "auto":
        return AUTO_TERMS if decodable else AUTO_RAW_TERMS
    terms = tuple(term.strip() for term in text.split("+"))
    unknown = [term for term in terms if term not in TERMS]
    if unknown or not terms:
        raise ConfigError(f"distillation loss {text!r}: unknown term(s) {unknown}; known: auto or a '+'-joined "
                          f"combination of {', '.join(TERMS)}")
    if not decodable and set(terms) & set(DECODED_TERMS):
        raise ConfigError(f"distillation terms {', '.join(DECODED_TERMS)} need a known output layout (native, yolox, "
                          "yolov8); this model's outputs are raw: use raw and/or feature")
    return terms


def _binary_kl(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    student = student.clamp(PROBABILITY_EPS, 1 - PROBABILITY_EPS)
    teacher = teacher.clamp(PROBABILITY_EPS, 1 - PROBABILITY_EPS)
    return teacher * (teacher / student).log() + (1 - teacher) * ((1 - teacher) / (1 - student)).log()


def _box_term(student_boxes, teacher_boxes, mask: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    if not mask.any():
        return student_boxes.new_zeros(())
    weights = weights[mask]
    return ((1 - giou(student_boxes[mask], teacher_boxes[mask])) * weights).sum() / weights.sum()


def check_temperature(temperature: float) -> None:
    """ConfigError unless the output term's temperature is > 0."""
    if not temperature > 0:
        raise ConfigError(f"distill.temperature must be > 0 (1: probabilities as they are), got {temperature}")


def _softened(probabilities: torch.Tensor, temperature: float) -> torch.Tensor:
    if temperature == 1:
        return probabilities
    return torch.sigmoid(torch.logit(probabilities.clamp(PROBABILITY_EPS, 1 - PROBABILITY_EPS)) / temperature)


def output_distillation(student: tuple[torch.Tensor, torch.Tensor], teacher: tuple[torch.Tensor, torch.Tensor],
                        temperature: float = 1.0) -> torch.Tensor:
    """Confidence-weighted class KL (at ``temperature``) + GIoU to the teacher's confident boxes (module doc,
    ``output``)."""
    (student_boxes, student_scores), (teacher_boxes, teacher_scores) = student, teacher
    teacher_confidence = teacher_scores.amax(-1)
    weights = torch.maximum(teacher_confidence, student_scores.detach().amax(-1))
    divergence = _binary_kl(_softened(student_scores, temperature), _softened(teacher_scores, temperature))
    cls_term = (divergence.sum(-1) * weights).sum() / (weights.sum() + EPS) * temperature ** 2
    box_term = _box_term(student_boxes, teacher_boxes, teacher_confidence >= BOX_MIN_TEACHER_SCORE,
                         teacher_confidence)
    return cls_term + LossWeights().box * box_term


def pseudo_label_loss(student: tuple[torch.Tensor, torch.Tensor], teacher: tuple[torch.Tensor, torch.Tensor],
                      threshold: float) -> torch.Tensor:
    """Hard targets from the teacher's confident predictions (module doc, ``pseudo``)."""
    (student_boxes, student_scores), (teacher_boxes, teacher_scores) = student, teacher
    targets = (teacher_scores >= threshold).to(student_scores.dtype)
    positives = targets.amax(-1) > 0
    bce = F.binary_cross_entropy(student_scores.clamp(PROBABILITY_EPS, 1 - PROBABILITY_EPS), targets,
                                 reduction="sum")
    cls_term = bce / max(int(positives.sum()), 1)
    return cls_term + LossWeights().box * _box_term(student_boxes, teacher_boxes, positives,
                                                     positives.to(student_scores.dtype))


def raw_output_distillation(student: Sequence[torch.Tensor], teacher: Sequence[torch.Tensor]) -> torch.Tensor:
    """Σ over outputs of MSE(student, teacher) / var(teacher): scale-free matching of undecodable outputs."""
    return sum(F.mse_loss(s.float(), t.float()) / (t.float().var() + EPS) for s, t in zip(student, teacher))


@contextmanager
def capture_layer_inputs(model: nn.Module, layer_names: Sequence[str]) -> Iterator[dict[str, torch.Tensor]]:
    """Within the block, the returned dict holds each named layer's input of the model's last forward."""
    captured: dict[str, torch.Tensor] = {}
    modules = dict(model.named_modules())
    with ExitStack() as stack:
        for name in layer_names:
            def hook(module, args, name=name):
                captured[name] = args[0]
            stack.callback(modules[name].register_forward_pre_hook(hook).remove)
        yield captured


class DistillationLoss:
    """The configured terms for one teacher/student pair; ``loss(images)`` returns (loss, student outputs).

    ``feature_layers``: module names (same in teacher and student) whose 4-D inputs are matched by
    the ``feature`` term, usually the protected output layers. The adapters are trainable:
    :meth:`student_parameters` gives them with the student's, for the optimizer.
    """

    def __init__(self, teacher: nn.Module, student: nn.Module, layout: DetectorLayout, terms: Sequence[str],
                 feature_layers: Sequence[str] = (), pseudo_threshold: float = 0.35,
                 example_input: torch.Tensor | None = None, user_loss: UserLoss | None = None,
                 temperature: float = 1.0):
        self.teacher, self.student, self.terms = teacher.eval(), student, tuple(terms)
        for parameter in self.teacher.parameters():
            parameter.requires_grad_(False)
        self.decoder = OutputDecoder(layout) if set(self.terms) & set(DECODED_TERMS) else None
        check_temperature(temperature)
        self.pseudo_threshold, self.user_loss, self.temperature = pseudo_threshold, user_loss, temperature
        self.feature_layers: list[str] = []
        self.adapters = nn.ModuleDict()
        if "feature" in self.terms:
            self._build_adapters(feature_layers, example_input)

    def _build_adapters(self, layer_names: Sequence[str], example_input: torch.Tensor) -> None:
        with torch.no_grad(), capture_layer_inputs(self.teacher, layer_names) as teacher_features, \
                capture_layer_inputs(self.student, layer_names) as student_features:
            self.teacher(example_input)
            self.student(example_input)
        for name in layer_names:
            teacher_feature, student_feature = teacher_features.get(name), student_features.get(name)
            if teacher_feature is None or teacher_feature.dim() != 4:
                continue
            self.feature_layers.append(name)
            self.adapters[str(len(self.adapters))] = nn.Conv2d(student_feature.shape[1], teacher_feature.shape[1], 1)
        if not self.feature_layers:
            raise ConfigError("feature distillation needs conv output layers with 4-D inputs; this model has none")

    def student_parameters(self) -> Iterator[nn.Parameter]:
        """The student's and the adapters' parameters (what the optimizer trains)."""
        yield from self.student.parameters()
        yield from self.adapters.parameters()

    def __call__(self, images: torch.Tensor, student_images: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """(loss, student outputs); ``student_images`` (default ``images``) lets the student see a perturbed copy."""
        student_images = images if student_images is None else student_images
        with capture_layer_inputs(self.student, self.feature_layers) as student_features:
            student_outputs = as_output_list(self.student(student_images))
        with torch.no_grad(), capture_layer_inputs(self.teacher, self.feature_layers) as teacher_features:
            teacher_outputs = as_output_list(self.teacher(images))
        loss = student_outputs[0].new_zeros(())
        if self.decoder is not None:
            student_decoded, teacher_decoded = self.decoder(student_outputs), self.decoder(teacher_outputs)
            if "output" in self.terms:
                loss = loss + output_distillation(student_decoded, teacher_decoded, self.temperature)
            if "pseudo" in self.terms:
                loss = loss + pseudo_label_loss(student_decoded, teacher_decoded, self.pseudo_threshold)
        if "raw" in self.terms:
            loss = loss + raw_output_distillation(student_outputs, teacher_outputs)
        for adapter, name in zip(self.adapters.values(), self.feature_layers):
            teacher_feature = teacher_features[name]
            loss = loss + F.mse_loss(adapter(student_features[name]), teacher_feature) / (teacher_feature.var() + EPS)
        if self.user_loss is not None:
            loss = loss + self.user_loss(student_outputs, teacher_outputs, student_images)
        return loss, student_outputs
