"""The views label-free fine-tuning trains on: unlabeled frames augmented on the fly.

The teacher sees the same augmented frame as the student, so its outputs stay the target whatever the
view; no label has to follow the pixels. A few hundred frames are distilled for tens of epochs, so the
number of distinct views is what keeps a small student from memorising them (docs/external-models.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from prune_perception.errors import ConfigError

MOSAIC_CENTRE_RANGE = (0.25, 0.75)
"""Where the mosaic's centre falls, as a fraction of each side (training's mosaic uses the same)."""


@dataclass(frozen=True)
class FrameAugment:
    """Horizontal flips (half the frames), then with ``min_crop < 1`` zoom-in crops and with ``mosaic > 0``
    four-frame mosaics; ``distill.min_crop`` and ``distill.mosaic`` of the config."""

    min_crop: float = 1.0
    mosaic: float = 0.0

    @classmethod
    def of(cls, distill) -> FrameAugment:
        """The views a ``LabelFreeDistillSettings`` asks for, checked."""
        views = cls(distill.min_crop, distill.mosaic)
        views.check()
        return views

    def check(self) -> None:
        """ConfigError for a crop fraction outside (0, 1] or a mosaic probability outside [0, 1]."""
        if not 0 < self.min_crop <= 1:
            raise ConfigError(f"distill.min_crop must be in (0, 1] (1: no zoom-in crops), got {self.min_crop}")
        if not 0 <= self.mosaic <= 1:
            raise ConfigError(f"distill.mosaic must be in [0, 1] (the share of frames made mosaics), got "
                              f"{self.mosaic}")

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """A new batch of views of ``images`` (``[N,3,H,W]``), drawn from ``generator``."""
        views = images.clone()
        if self.mosaic > 0:
            _tile_mosaics(views, images, generator, self.mosaic)
        flip = torch.rand(len(views), generator=generator) < 0.5
        views[flip] = views[flip].flip(-1)
        if self.min_crop < 1:
            _zoom_in(views, generator, self.min_crop)
        return views


def _tile_mosaics(views: torch.Tensor, frames: torch.Tensor, generator: torch.Generator, share: float) -> None:
    """In place: each chosen view becomes four frames (itself and three of the batch at random) tiled around a
    random centre, each at its own scale and showing the corner that touches the centre."""
    count, _, height, width = frames.shape
    low, high = MOSAIC_CENTRE_RANGE
    for index in torch.nonzero(torch.rand(count, generator=generator) < share).flatten().tolist():
        centre_y = int(height * (low + (high - low) * float(torch.rand((), generator=generator))))
        centre_x = int(width * (low + (high - low) * float(torch.rand((), generator=generator))))
        top_left, top_right, bottom_left, bottom_right = (
            frames[tile] for tile in [index, *torch.randint(count, (3,), generator=generator).tolist()])
        view = views[index]
        view[:, :centre_y, :centre_x] = top_left[:, height - centre_y:, width - centre_x:]
        view[:, :centre_y, centre_x:] = top_right[:, height - centre_y:, :width - centre_x]
        view[:, centre_y:, :centre_x] = bottom_left[:, :height - centre_y, width - centre_x:]
        view[:, centre_y:, centre_x:] = bottom_right[:, :height - centre_y, :width - centre_x]


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
