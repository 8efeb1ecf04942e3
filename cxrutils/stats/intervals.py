"""Percentile intervals from bootstrap resamples: one function for every interval the reports show."""

from __future__ import annotations

import numpy as np

CONFIDENCE = 0.95


def percentile_interval(samples: np.ndarray, confidence: float = CONFIDENCE) -> tuple[float, float, int]:
    """(low, high, resamples used): the central ``confidence`` interval of the finite samples.

    Resamples that could not be scored (NaN: no positive or no negative drawn) are left
    out and counted out of the third value; with none left the interval is (NaN, NaN, 0).
    """
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    finite = np.asarray(samples, dtype=np.float64)
    finite = finite[np.isfinite(finite)]
    if finite.size == 0:
        return float("nan"), float("nan"), 0
    tail = (1.0 - confidence) / 2.0
    low, high = np.quantile(finite, [tail, 1.0 - tail])
    return float(low), float(high), int(finite.size)
