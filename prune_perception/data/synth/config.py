"""What to generate: the settings that make a synthetic dataset, and the renderer's identity."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from prune_perception.errors import ConfigError


#: Bumped whenever the renderer changes, so stored datasets of an older renderer are regenerated.
GENERATOR_VERSION = 1
GENERATOR_NAME = "prune_perception.synth"  # marks dataset.json as written by this generator


@dataclass(frozen=True)
class SynthConfig:
    """What to generate; every field but ``workers`` is part of the dataset's identity."""

    num_images: int = 1000
    width: int = 640
    height: int = 360
    val_fraction: float = 0.2
    seed: int = 0
    workers: int = 2  # multiprocessing processes; output is identical regardless of workers
    jpeg_quality: int = 90

    def __post_init__(self) -> None:
        if self.num_images < 1:
            raise ConfigError(f"synth num_images must be >= 1, got {self.num_images}")
        if self.width < 64 or self.height < 64:
            raise ConfigError(f"synth width and height must be >= 64, got {self.width}x{self.height}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ConfigError(f"synth val_fraction must be in [0, 1), got {self.val_fraction}")
        if self.workers < 1:
            raise ConfigError(f"synth workers must be >= 1, got {self.workers}")
        if not 1 <= self.jpeg_quality <= 100:
            raise ConfigError(f"synth jpeg_quality must be in [1, 100], got {self.jpeg_quality}")

    def identity(self) -> dict:
        """The fields that determine the output (``workers`` does not), plus the renderer version."""
        fields = asdict(self)
        del fields["workers"]
        return {"generator_version": GENERATOR_VERSION, **fields}
