"""Accuracy with a percentile-bootstrap 95% confidence interval (numpy only)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def accuracy(correct: Sequence[bool]) -> float:
    return float(np.mean(correct)) if len(correct) else 0.0


def bootstrap_ci(correct: Sequence[bool], samples: int = 1000, seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of the accuracy: resample items with replacement `samples` times.

    Deterministic for a given seed. Returns (0, 0) for an empty list.
    """
    values = np.asarray(correct, dtype=np.float64)
    if values.size == 0:
        return (0.0, 0.0)
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, values.size, size=(samples, values.size))].mean(axis=1)
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return (round(float(low), 4), round(float(high), 4))
