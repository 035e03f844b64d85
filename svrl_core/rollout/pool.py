"""Env pools: a fixed set of live envs addressed by slot, in-process or on Dask workers."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from svrl_core.config import EnvConfig
from svrl_core.envs import Obs, StepResult, make_env


@dataclass(frozen=True)
class EpisodeRequest:
    """One episode to run: a task from an initial state; `group` ties GRPO siblings together."""

    task: str
    seed: int
    group: int = 0


class EnvPool(Protocol):
    capacity: int
    pipeline_stages: int  # envs split into this many stages whose stepping overlaps inference

    def reset(self, slots: list[int], requests: list[EpisodeRequest]) -> list[Obs | None]:
        """Start `requests[i]` in env `slots[i]`; None where that env was lost (retry the reset)."""

    def step(self, slots: list[int], chunks: np.ndarray) -> list[StepResult | None]:
        """Execute `chunks[i]` (K, D) in env `slots[i]`; None where that env was lost mid-episode."""

    def grow(self) -> None:
        """Take envs on workers that joined since the last call (called at the start of each rollout)."""

    def close(self) -> None: ...


class EnvGroup:
    """A list of envs that reset and step by local index (the unit a Dask worker holds)."""

    def __init__(self, env_cfg: EnvConfig, n_envs: int):
        self.envs = [make_env(env_cfg) for _ in range(n_envs)]

    def reset(self, ids: list[int], requests: list[EpisodeRequest]) -> list[Obs]:
        return [self.envs[i].reset(r.task, r.seed) for i, r in zip(ids, requests)]

    def step(self, ids: list[int], chunks: np.ndarray) -> list[StepResult]:
        return [self.envs[i].step(chunk) for i, chunk in zip(ids, chunks)]

    def timings(self) -> Counter:
        """Seconds and counts spent inside the envs, by kind (envs that keep `timings`, e.g. LIBERO's)."""
        return sum((Counter(getattr(env, "timings", {})) for env in self.envs), Counter())

    def close(self) -> None:
        for env in self.envs:
            env.close()


class LocalEnvPool(EnvGroup):
    """All envs in this process: for tests and tiny runs."""

    def __init__(self, env_cfg: EnvConfig, n_envs: int, pipeline_stages: int = 1):
        super().__init__(env_cfg, n_envs)
        self.capacity, self.pipeline_stages = n_envs, pipeline_stages

    def grow(self) -> None:
        """A local pool has a fixed size."""
