"""Normalization statistics, as LeRobot (v3.0) and OpenVLA save them."""

from __future__ import annotations

import numpy as np

QUANTILES = {"q01": 0.01, "q10": 0.10, "q50": 0.50, "q90": 0.90, "q99": 0.99}  # LeRobot's quantile set
MAX_IMAGE_SAMPLES = 1000  # frames per camera that image statistics read (LeRobot samples frames too)


def feature_stats(values: np.ndarray) -> dict[str, list]:
    """min, max, mean, std and LeRobot's quantiles per dimension of (N, D) values, plus the count."""
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 2 or len(values) == 0:
        raise ValueError(f"feature_stats: expected non-empty (N, D) values, got shape {values.shape}")
    quantiles = np.quantile(values, list(QUANTILES.values()), axis=0)  # (5, D)
    return {
        "min": values.min(0).tolist(),
        "max": values.max(0).tolist(),
        "mean": values.mean(0).tolist(),
        "std": values.std(0).tolist(),
        **{name: q.tolist() for name, q in zip(QUANTILES, quantiles)},
        "count": [int(len(values))],
    }


def image_stats(frames: np.ndarray) -> dict[str, list]:
    """Per-channel statistics of (N, H, W, 3) uint8 frames scaled to [0, 1], each of shape (3, 1, 1) as
    LeRobot keeps them; `count` is the number of frames read (evenly spaced, at most MAX_IMAGE_SAMPLES)."""
    picks = np.unique(np.linspace(0, len(frames) - 1, min(len(frames), MAX_IMAGE_SAMPLES)).round().astype(int))
    pixels = frames[picks].reshape(-1, frames.shape[-1]) / 255.0  # (n * H * W, 3)
    stats = feature_stats(pixels)
    return {name: [int(len(picks))] if name == "count" else [[[v]] for v in values]
            for name, values in stats.items()}
