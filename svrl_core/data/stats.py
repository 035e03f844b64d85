"""Normalization statistics, as LeRobot and OpenVLA save them."""

from __future__ import annotations

import numpy as np


def feature_stats(values: np.ndarray) -> dict[str, list[float]]:
    """min, max, mean, std, q01, q99 per dimension of (N, D) values, plus the count."""
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 2 or len(values) == 0:
        raise ValueError(f"feature_stats: expected non-empty (N, D) values, got shape {values.shape}")
    return {
        "min": values.min(0).tolist(),
        "max": values.max(0).tolist(),
        "mean": values.mean(0).tolist(),
        "std": values.std(0).tolist(),
        "q01": np.quantile(values, 0.01, axis=0).tolist(),
        "q99": np.quantile(values, 0.99, axis=0).tolist(),
        "count": [int(len(values))],
    }
