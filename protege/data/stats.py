"""Per-key statistics of an episode store (the normalizer built from them lives in
:mod:`protege.policies.normalizer`)."""

from __future__ import annotations

import numpy as np

STAT_NAMES = ("min", "max", "mean", "std")


def compute_stats(array: np.ndarray, chunk: int = 65536) -> dict[str, np.ndarray]:
    """Min, max, mean and std over axis 0 of ``array`` (N, ...) in one pass, chunk by chunk.

    Sums are accumulated in float64 so the mean and std of long datasets stay exact to float32.
    Returns {name: (...) float32 array}.

    Raises:
        ValueError: the array is empty or holds NaN / inf.
    """
    n = len(array)
    if n == 0:
        raise ValueError("cannot compute statistics of an empty array")
    lo = hi = None
    total = sq = 0.0
    for i in range(0, n, chunk):
        x = np.asarray(array[i : i + chunk], dtype=np.float64)
        if not np.all(np.isfinite(x)):
            bad = i + int(np.flatnonzero((~np.isfinite(x.reshape(len(x), -1))).any(axis=1))[0])
            raise ValueError(f"non-finite value at row {bad}")
        lo = x.min(0) if lo is None else np.minimum(lo, x.min(0))
        hi = x.max(0) if hi is None else np.maximum(hi, x.max(0))
        total = total + x.sum(0)
        sq = sq + (x * x).sum(0)
    mean = total / n
    std = np.sqrt(np.maximum(sq / n - mean * mean, 0.0))
    return {k: v.astype(np.float32) for k, v in zip(STAT_NAMES, (lo, hi, mean, std))}
