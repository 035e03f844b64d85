"""The contract between simulators and everything else."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

# RoboTwin's dual-arm layout, shared by the simulated tasks and real arms (deploy/piper.py):
# joint targets in radians, grippers 0 = closed .. 1 = open
DUAL_ARM_ACTION_NAMES = tuple(f"{side}_{part}" for side in ("left", "right")
                              for part in [*(f"joint{j}" for j in range(1, 7)), "gripper"])


@dataclass(frozen=True)
class Obs:
    """One observation: camera images (uint8 HWC per camera), proprio state, instruction."""

    images: dict[str, np.ndarray]
    proprio: np.ndarray
    instruction: str


@dataclass(frozen=True)
class StepResult:
    """What executing one action chunk produced."""

    obs: Obs
    done: bool
    success: bool
    n_executed: int  # actions of the chunk actually executed (the rest never ran)
    info: dict = field(default_factory=dict)


class VLAEnv(Protocol):
    """A language-conditioned task family. Envs never import the policy."""

    tasks: tuple[str, ...]
    action_dim: int
    action_names: tuple[str, ...]  # one per action dimension, in order
    max_steps: int

    def reset(self, task: str, seed: int) -> Obs:
        """Start an episode of `task` from the initial state that `seed` selects."""

    def step(self, action_chunk: np.ndarray) -> StepResult:
        """Execute a (K, action_dim) chunk step by step; stop early at success or the step limit."""

    def close(self) -> None:
        """Release simulator resources."""
