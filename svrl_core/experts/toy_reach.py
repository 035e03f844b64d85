"""Scripted expert for the toy reach task: head straight for the target, with noise."""

from __future__ import annotations

import numpy as np

from svrl_core.data import Episode
from svrl_core.envs.toy.reach import MAX_STEP, ToyReachEnv
from svrl_core.experts.recording import record_episode


def expert_action(env: ToyReachEnv, rng: np.random.Generator, noise: float) -> np.ndarray:
    """One 2-D action toward the target; Gaussian noise of std `noise` keeps demos diverse."""
    direction = (env.target_xy - env.agent_xy) / MAX_STEP
    action = np.clip(direction, -1.0, 1.0) + rng.normal(0.0, noise, size=2)
    return np.clip(action, -1.0, 1.0).astype(np.float32)  # (2,)


def record_demonstration(env: ToyReachEnv, task: str, seed: int, noise: float) -> tuple[Episode, bool]:
    """Roll the expert out one action at a time; returns the episode and whether it succeeded."""
    rng = np.random.default_rng([seed, 7919])
    return record_episode(env, task, seed, lambda: lambda: expert_action(env, rng, noise))
