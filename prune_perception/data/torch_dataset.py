"""PyTorch view of a DetectionDataset: letterboxed (optionally augmented) tensors for training and eval.

Pipeline per item:

1. decode the image and resize it, aspect ratio kept, to fit ``input_hw`` (the resize step of
   :func:`~prune_perception.runtime.letterbox.letterbox`); cached in memory as uint8 when
   ``cache_images`` (about 250 kB per 384x216 image);
2. augment at that resolution (mosaic, affine, HSV, flip) with an rng derived from
   (seed, epoch, index) — cheap because the image is already small, and reproducible whatever
   the number of DataLoader workers;
3. pad centred to ``input_hw`` (the pad step of letterbox).

Without augmentation the pixels equal the runtime's ``letterbox(original, input_hw)``, and
:meth:`TorchDetectionDataset.letterbox_transform` maps predictions back to original pixels.
"""

from __future__ import annotations

import numpy as np
import torch

from prune_perception.config import AugmentSettings
from prune_perception.data.augment import Detections, augment
from prune_perception.data.dataset import DetectionDataset, read_image_rgb
from prune_perception.runtime.letterbox import LetterboxTransform, letterbox, letterbox_transform, resize_to_fit


class TorchDetectionDataset(torch.utils.data.Dataset):
    """Items are (image float32 [3,H,W] RGB 0..1, targets float32 [M,5] = (class, x1, y1, x2, y2)
    in input pixels, index).

    With DataLoader workers, call :meth:`preload` before creating the loader so the forked
    workers share one image cache, and :meth:`set_epoch` before each epoch (not with
    ``persistent_workers``, whose copies never see the new epoch).
    """

    def __init__(
        self,
        dataset: DetectionDataset,
        input_hw: tuple[int, int],
        augment: AugmentSettings | None = None,
        seed: int = 0,
        cache_images: bool = True,
    ) -> None:
        self.dataset = dataset
        self.input_hw = (int(input_hw[0]), int(input_hw[1]))
        self.augment_settings = augment
        self.seed = seed
        self.epoch = 0
        self.cache_images = cache_images
        self._fitted_cache: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def __len__(self) -> int:
        return len(self.dataset)

    def set_epoch(self, epoch: int) -> None:
        """Select the augmentation draws of ``epoch`` (same seed + epoch + index -> same item)."""
        self.epoch = epoch

    def preload(self) -> None:
        """Decode and cache every image now (no-op without ``cache_images``)."""
        if self.cache_images:
            for index in range(len(self)):
                self._fitted(index)

    def letterbox_transform(self, index: int) -> LetterboxTransform:
        """Original <-> input pixel mapping of item ``index`` when not augmented."""
        sample = self.dataset.samples[index]
        return letterbox_transform((sample.height, sample.width), self.input_hw)

    def _fitted(self, index: int) -> Detections:
        """Image resized to fit input_hw, its boxes in that image's pixels, and labels."""
        sample = self.dataset.samples[index]
        cached = self._fitted_cache.get(index)
        if cached is None:
            image, scale = resize_to_fit(read_image_rgb(sample.image_path), self.input_hw)
            cached = (image, sample.boxes * np.float32(scale))
            if self.cache_images:
                self._fitted_cache[index] = cached
        return cached[0], cached[1], sample.labels

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        image, boxes, labels = self._fitted(index)
        if self.augment_settings is not None:
            rng = np.random.default_rng((self.seed, self.epoch, index))
            image, boxes, labels = augment(
                image,
                boxes,
                labels,
                self.augment_settings,
                rng,
                mosaic_source=lambda: self._fitted(int(rng.integers(len(self)))),
            )
        image, transform = letterbox(image, self.input_hw)
        targets = np.empty((len(boxes), 5), dtype=np.float32)
        targets[:, 0] = labels
        targets[:, 1:] = transform.to_input(boxes)
        image_chw = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))
        return image_chw.float().div_(255.0), torch.from_numpy(targets), index


def collate_detections(
    batch: list[tuple[torch.Tensor, torch.Tensor, int]],
) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """Stack items: images [B,3,H,W], targets [T,6] = (batch_idx, class, x1, y1, x2, y2), indices."""
    images, targets, indices = zip(*batch)
    batch_targets = [
        torch.cat([torch.full((len(item), 1), float(batch_index)), item], dim=1)
        for batch_index, item in enumerate(targets)
    ]
    return torch.stack(images), torch.cat(batch_targets), list(indices)
