"""The views label-free fine-tuning trains on: unlabeled frames augmented on the fly.

The teacher sees the same augmented frame as the student, so its outputs stay the target whatever the
view; no label has to follow the pixels. Stronger views did not help the students measured so far: crops
of 0.35 and four-frame mosaics (branch ``experiment/frame-mosaic``) both lowered labeled mAP50
(docs/external-models.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from prune_perception.config import LabelFreeDistillSettings
from prune_perception.errors import ConfigError


@dataclass(frozen=True)
class FrameAugment:
    """Horizontal flips (half the frames), then with ``min_crop < 1`` zoom-in crops (``distill.min_crop``).
    Checked when made: ConfigError for a crop fraction outside (0, 1]."""

    min_crop: float = 1.0

    def __post_init__(self) -> None:
        if not 0 < self.min_crop <= 1:
            raise ConfigError(f"distill.min_crop must be in (0, 1] (1: no zoom-in crops), got {self.min_crop}")

    @classmethod
    def of(cls, distill: LabelFreeDistillSettings) -> FrameAugment:
        """The views the ``distill`` section asks for (ConfigError for a bad value)."""
        return cls(distill.min_crop)

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """A new batch of views of ``images`` (``[N,3,H,W]``), drawn from ``generator``."""
        views = images.clone()
        flip = torch.rand(len(views), generator=generator) < 0.5
        views[flip] = views[flip].flip(-1)
        if self.min_crop < 1:
            _zoom_in(views, generator, self.min_crop)
        return views


def _zoom_in(views: torch.Tensor, generator: torch.Generator, min_crop: float) -> None:
    """In place: half the views become a random crop of at least ``min_crop`` of each side, resized back."""
    height, width = views.shape[-2:]
    for index in torch.nonzero(torch.rand(len(views), generator=generator) < 0.5).flatten().tolist():
        fraction = min_crop + (1 - min_crop) * float(torch.rand((), generator=generator))
        crop_h, crop_w = max(1, round(height * fraction)), max(1, round(width * fraction))
        top = int(torch.randint(height - crop_h + 1, (), generator=generator))
        left = int(torch.randint(width - crop_w + 1, (), generator=generator))
        crop = views[index:index + 1, :, top:top + crop_h, left:left + crop_w]
        views[index] = F.interpolate(crop, size=(height, width), mode="bilinear", align_corners=False)[0]
