"""Accuracy with a percentile-bootstrap 95% confidence interval, and paired differences (numpy only)."""

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
    return _bootstrap_mean_interval(values, samples, seed, level)


def _bootstrap_mean_interval(values: np.ndarray, samples: int, seed: int, level: float) -> tuple[float, float]:
    """Percentile interval of the mean of `values`, resampled with replacement (items kept whole)."""
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, values.size, size=(samples, values.size))].mean(axis=1)
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return (round(float(low), 4), round(float(high), 4))


def paired_difference(
    correct_a: Sequence[bool], correct_b: Sequence[bool], samples: int = 1000, seed: int = 0, level: float = 0.95
) -> dict[str, float | int | list[float]]:
    """Accuracy of A minus accuracy of B on the same items, with a paired percentile-bootstrap interval.

    Resampling items (not the two models separately) keeps the pairing, so the interval reflects
    only the items on which the two disagree: narrower, and the right test when both were scored
    on one benchmark. Also counts the discordant items (A right and B wrong, and the reverse).
    """
    a = np.asarray(correct_a, dtype=np.float64)
    b = np.asarray(correct_b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"paired_difference needs the same items: {a.size} vs {b.size}")
    if a.size == 0:
        return {"n": 0, "difference": 0.0, "ci95": [0.0, 0.0], "only_a": 0, "only_b": 0}
    delta = a - b
    return {
        "n": int(a.size),
        "difference": round(float(delta.mean()), 4),
        "ci95": list(_bootstrap_mean_interval(delta, samples, seed, level)),
        "only_a": int((delta > 0).sum()),
        "only_b": int((delta < 0).sum()),
    }
