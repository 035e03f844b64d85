"""Closed-loop episodes with policy inference batched over every live env."""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field

import numpy as np
import torch

from svrl_core.envs import Obs
from svrl_core.policies import VLAPolicy
from svrl_core.progress import Progress
from svrl_core.rollout.pool import EnvPool, EpisodeRequest


@dataclass
class Trajectory:
    """One episode: the observation at each policy query and the chunk sampled there."""

    request: EpisodeRequest
    observations: list[Obs] = field(default_factory=list)  # C queries
    bins: list[np.ndarray] = field(default_factory=list)  # C x (K, D) int64
    n_executed: list[int] = field(default_factory=list)  # C; actions of each chunk that ran
    final_obs: Obs | None = None
    success: bool = False
    error: str | None = None  # the simulator raised: recorded as a failure, with its message

    @property
    def steps(self) -> int:
        return int(sum(self.n_executed))

    def action_mask(self, action_dim: int) -> np.ndarray:
        """(C, K, D) bool: True for tokens of actions that were executed."""
        k = self.bins[0].shape[0]
        executed = np.arange(k)[None, :] < np.asarray(self.n_executed)[:, None]  # (C, K)
        return np.repeat(executed[:, :, None], action_dim, axis=2)


@dataclass
class RolloutStats:
    env_steps: int = 0
    env_time_s: float = 0.0
    inference_time_s: float = 0.0
    restarted_episodes: int = 0  # episodes re-run from the start after their env worker was lost


def _reset_all(pool: EnvPool, slot_of: dict[int, int], requests: list[EpisodeRequest], ids: list[int]) -> dict[int, Obs]:
    """Reset every id on its slot, retrying slots whose worker was lost (the pool bounds retries)."""
    observations: dict[int, Obs] = {}
    pending = ids
    while pending:
        for i, obs in zip(pending, pool.reset([slot_of[i] for i in pending], [requests[i] for i in pending])):
            if obs is not None:
                observations[i] = obs
        pending = [i for i in pending if i not in observations]
    return observations


def run_episodes(policy: VLAPolicy, pool: EnvPool, requests: list[EpisodeRequest], temperature: float | None,
                 generator: torch.Generator | None = None, stats: RolloutStats | None = None,
                 progress_name: str | None = None) -> list[Trajectory]:
    """Run every request to its end; greedy when `temperature` is None, else sampled.

    Every live env is queried in one batch per step; an env whose episode ends takes the next
    pending request at once, so envs never wait for a whole wave. An episode whose env was
    lost (pool answered None) is re-run from its initial state: every request yields exactly
    one complete trajectory.
    """
    stats = stats or RolloutStats()
    trajectories = [Trajectory(r) for r in requests]
    progress = Progress(progress_name, len(requests), "episodes") if progress_name else None
    pending = deque(range(len(requests)))
    free_slots = list(range(min(pool.capacity, len(requests))))[::-1]
    live: dict[int, int] = {}  # trajectory index -> env slot
    obs: dict[int, Obs] = {}
    to_start: list[int] = []
    finished = 0
    while pending or live:
        while pending and free_slots:
            i = pending.popleft()
            live[i] = free_slots.pop()
            to_start.append(i)
        obs.update(_reset_all(pool, live, requests, to_start))
        ids = list(live)
        began = time.monotonic()
        inputs = policy.prepare([obs[i] for i in ids])
        if temperature is None:
            bins = policy.greedy(inputs)
        else:
            bins, _ = policy.sample(inputs, temperature, generator)
        bins = bins.numpy()  # (B, K, D)
        actions = policy.bins_to_actions(bins)
        stepped = time.monotonic()
        results = pool.step([live[i] for i in ids], actions)
        stats.inference_time_s += stepped - began
        stats.env_time_s += time.monotonic() - stepped
        to_start = []
        for i, chunk, result in zip(ids, bins, results):
            if result is None:  # env lost: run the episode again from its start, on the same slot
                stats.restarted_episodes += 1
                trajectories[i] = Trajectory(requests[i])
                to_start.append(i)
                continue
            traj = trajectories[i]
            traj.observations.append(obs[i])
            traj.bins.append(chunk)
            traj.n_executed.append(result.n_executed)
            stats.env_steps += result.n_executed
            obs[i] = result.obs
            if result.done:
                traj.final_obs, traj.success, traj.error = result.obs, result.success, result.info.get("error")
                free_slots.append(live.pop(i))
                del obs[i]
                finished += 1
        if progress:
            progress.update(finished)
    return trajectories
