"""Latency statistics (milliseconds): percentiles of a series of timings."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np


@dataclass(frozen=True)
class LatencyStats:
    count: int
    mean: float
    p50: float
    p90: float
    p99: float
    min: float
    max: float

    @classmethod
    def of(cls, samples_ms: Sequence[float]) -> "LatencyStats":
        values = np.asarray(samples_ms, dtype=np.float64)
        if values.size == 0:
            return cls(0, *([float("nan")] * 6))
        p50, p90, p99 = np.percentile(values, [50, 90, 99])
        return cls(int(values.size), float(values.mean()), float(p50), float(p90), float(p99),
                   float(values.min()), float(values.max()))

    def as_dict(self) -> dict:
        return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in asdict(self).items()}
