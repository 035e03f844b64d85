"""Action tokenizer: q01/q99 (or min/max) normalization to [-1, 1], then bins (OpenVLA style).

Dimensions whose `normalize_mask` is False (grippers) are used as they are, clipped to
[-1, 1], as OpenVLA leaves the gripper unnormalized. Dimensions in `binary_mask` (grippers whose
labels take two values) decode to the nearer of low and high, as OpenVLA binarizes its gripper
before the robot sees it. Dimensions in `relative_mask` (arm joints whose proprio has the action's layout)
are binned as the change from the proprio at the chunk's first frame, as delta-joint policies do: the
network predicts the move, and the state supplies where the arm already is. Two binnings:
- "uniform" (svrl's default): `n_bins` equal-width bins, every bin decodes to its own centre;
- "openvla" (what OpenVLA / OpenVLA-OFT checkpoints were trained with): edges
  linspace(-1, 1, n_bins), bin = digitize - 1, decoded to the n_bins - 1 centres between edges
  (the top bin, reached only at exactly 1.0, decodes like the one below it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np


@dataclass(frozen=True)
class ActionTokenizer:
    low: np.ndarray  # (D,) q01 (or min) of the training actions, mapped to -1
    high: np.ndarray  # (D,) q99 (or max), mapped to 1
    normalize_mask: np.ndarray  # (D,) bool
    n_bins: int = 256
    binning: Literal["uniform", "openvla"] = "uniform"
    binary_mask: np.ndarray | None = None  # (D,) bool: decoded to low or high, whichever is nearer
    relative_mask: np.ndarray | None = None  # (D,) bool: binned as action - proprio (low/high are of that change)

    @classmethod
    def from_stats(cls, action_stats: dict, n_bins: int, unnormalized_dims: tuple[int, ...] = (),
                   binning: Literal["uniform", "openvla"] = "uniform",
                   bounds: Literal["q01_q99", "min_max"] = "q01_q99",
                   binary_dims: tuple[int, ...] = (), relative_dims: tuple[int, ...] = ()) -> "ActionTokenizer":
        """From feature statistics; `bounds` picks the pair mapped to [-1, 1] (min_max clips no label).
        For `relative_dims`, `action_stats` must be those of the change from the proprio (`chunk_moves`)."""
        low_key, high_key = bounds.split("_")
        low = np.asarray(action_stats[low_key], dtype=np.float64)
        mask = np.ones_like(low, dtype=bool)
        binary, relative = np.zeros_like(mask), np.zeros_like(mask)
        mask[list(unnormalized_dims)] = False
        binary[list(binary_dims)] = True
        relative[list(relative_dims)] = True
        if (relative & ~mask).any():
            raise ValueError(f"relative dims {relative_dims} must be normalized dims, not {unnormalized_dims}")
        return cls(low, np.asarray(action_stats[high_key], dtype=np.float64), mask, n_bins, binning, binary,
                   relative)

    @property
    def action_dim(self) -> int:
        return len(self.low)

    @property
    def bin_centres(self) -> np.ndarray:
        """(n_bins,) the normalized value each bin decodes to."""
        if self.binning == "openvla":
            edges = np.linspace(-1.0, 1.0, self.n_bins)
            centres = (edges[:-1] + edges[1:]) / 2  # (n_bins - 1,)
            return np.append(centres, centres[-1])
        edges = np.linspace(-1.0, 1.0, self.n_bins + 1)
        return (edges[:-1] + edges[1:]) / 2

    def normalize(self, actions: np.ndarray) -> np.ndarray:
        """(..., D) actions -> (..., D) in [-1, 1]."""
        span = np.where(self.high > self.low, self.high - self.low, 1.0)
        scaled = 2.0 * (actions - self.low) / span - 1.0
        return np.clip(np.where(self.normalize_mask, scaled, actions), -1.0, 1.0)

    def unnormalize(self, normalized: np.ndarray) -> np.ndarray:
        """(..., D) in [-1, 1] -> (..., D) actions."""
        scaled = (normalized + 1.0) / 2.0 * (self.high - self.low) + self.low
        return np.where(self.normalize_mask, scaled, normalized)

    @property
    def is_relative(self) -> bool:
        return self.relative_mask is not None and bool(self.relative_mask.any())

    def _proprio_offset(self, states: np.ndarray | None) -> np.ndarray | float:
        """(B, D) proprio -> (B, 1, D) what the relative dims are measured from (0 elsewhere)."""
        if not self.is_relative:
            return 0.0
        if states is None:
            raise ValueError("these actions are relative to the proprio (relative_action_dims): pass the states "
                             "observed at each chunk's first frame")
        states = np.asarray(states, dtype=np.float64)
        if states.shape[-1] != self.action_dim:
            raise ValueError(f"relative actions need proprio in the action's layout ({self.action_dim} dims), "
                             f"got {states.shape[-1]}")
        return np.where(self.relative_mask, states, 0.0)[..., None, :]

    def encode(self, actions: np.ndarray, states: np.ndarray | None = None) -> np.ndarray:
        """(..., K, D) actions (and (..., D) proprio if relative) -> (..., K, D) int64 bins in [0, n_bins)."""
        moves = np.asarray(actions, dtype=np.float64) - self._proprio_offset(states)
        normalized = self.normalize(moves)
        if self.binning == "openvla":
            return (np.digitize(normalized, np.linspace(-1.0, 1.0, self.n_bins)) - 1).astype(np.int64)
        unit = (normalized + 1.0) / 2.0
        return np.clip(np.floor(unit * self.n_bins), 0, self.n_bins - 1).astype(np.int64)

    def decode(self, bins: np.ndarray, states: np.ndarray | None = None) -> np.ndarray:
        """(..., K, D) bins (and (..., D) proprio if relative) -> (..., K, D) float32 actions at the bin centres."""
        bins = np.asarray(bins)
        if bins.min(initial=0) < 0 or bins.max(initial=0) >= self.n_bins:
            raise ValueError(f"action bins must lie in [0, {self.n_bins}), got [{bins.min()}, {bins.max()}]")
        actions = snap_binary(self.unnormalize(self.bin_centres[bins]), self.low, self.high, self.binary_mask)
        return (actions + self._proprio_offset(states)).astype(np.float32)

    def to_dict(self) -> dict:
        return {"low": self.low.tolist(), "high": self.high.tolist(),
                "normalize_mask": self.normalize_mask.tolist(), "n_bins": self.n_bins, "binning": self.binning,
                "binary_mask": _mask_list(self.binary_mask, self.normalize_mask),
                "relative_mask": _mask_list(self.relative_mask, self.normalize_mask)}

    @classmethod
    def from_dict(cls, spec: dict) -> "ActionTokenizer":
        binary, relative = spec.get("binary_mask"), spec.get("relative_mask")  # absent in older checkpoints
        return cls(np.asarray(spec["low"]), np.asarray(spec["high"]),
                   np.asarray(spec["normalize_mask"], dtype=bool), int(spec["n_bins"]), spec.get("binning", "uniform"),
                   None if binary is None else np.asarray(binary, dtype=bool),
                   None if relative is None else np.asarray(relative, dtype=bool))


def _mask_list(mask: np.ndarray | None, like: np.ndarray) -> list[bool]:
    return (np.zeros_like(like) if mask is None else mask).tolist()


def snap_binary(actions: np.ndarray, low: np.ndarray, high: np.ndarray, binary: np.ndarray | None) -> np.ndarray:
    """(..., D) actions -> float32, the `binary` dims moved to low or high, whichever is nearer."""
    if binary is None or not binary.any():
        return np.asarray(actions, dtype=np.float32)
    snapped = np.where(actions >= (low + high) / 2, high, low)
    return np.where(binary, snapped, actions).astype(np.float32)
