"""Closed-loop episodes with policy inference batched over every live env."""

from __future__ import annotations

import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable

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


def episode_stream(seed: int, stream: int) -> torch.Generator:
    """The sampling stream of one episode: fixed by (seed, stream), whatever batch or process runs it."""
    return torch.Generator().manual_seed(int(np.random.SeedSequence([seed, stream]).generate_state(1)[0]))


def run_episodes(policy: VLAPolicy, pool: EnvPool, requests: list[EpisodeRequest], temperature: float | None,
                 seed: int = 0, stats: RolloutStats | None = None, progress_name: str | None = None,
                 streams: list[int] | None = None) -> list[Trajectory]:
    """Run every request to its end; greedy when `temperature` is None, else sampled.

    Every live env is queried in one batch per step; an env whose episode ends takes the next
    pending request at once, so envs never wait for a whole wave. An episode whose env was
    lost (pool answered None) is re-run from its initial state: every request yields exactly
    one complete trajectory.

    The pool first takes any env workers that joined since its last rollout (`pool.grow()`).

    Each episode samples from its own stream, `episode_stream(seed, streams[i])` (default: its
    index i), so an episode's actions do not depend on the pool size, the batch it shares, the
    pipeline stage or the rank that runs it.

    With `pool.pipeline_stages` = S > 1 the envs and requests are split into S interleaved
    stages, each run by its own thread: while one stage's envs step, another stage's batch is
    on the model.
    """
    pool.grow()
    stats = stats if stats is not None else RolloutStats()
    streams = list(range(len(requests))) if streams is None else streams
    episodes = [Episode(request, seed, stream) for request, stream in zip(requests, streams, strict=True)]
    n_stages = max(1, min(pool.pipeline_stages, pool.capacity, len(requests)))
    progress = Progress(progress_name, len(requests), "episodes") if progress_name else None
    finished, lock = [0], threading.Lock()

    def episode_done() -> None:
        with lock:
            finished[0] += 1
            if progress:
                progress.update(finished[0])

    slots = list(range(min(pool.capacity, len(requests))))
    if n_stages == 1:
        return _run_stage(policy, pool, episodes, slots, temperature, stats, episode_done)
    stage_stats = [RolloutStats() for _ in range(n_stages)]
    with ThreadPoolExecutor(n_stages, thread_name_prefix="rollout-stage") as threads:
        runs = [threads.submit(_run_stage, policy, pool, episodes[s::n_stages], slots[s::n_stages], temperature,
                               stage_stats[s], episode_done) for s in range(n_stages)]
        parts = [run.result() for run in runs]
    for part in stage_stats:
        for name in vars(stats):
            setattr(stats, name, getattr(stats, name) + getattr(part, name))
    trajectories: list[Trajectory] = [None] * len(requests)  # type: ignore[list-item]
    for s, part in enumerate(parts):
        trajectories[s::n_stages] = part
    return trajectories


@dataclass
class Episode:
    """A request and its random stream, which restarts with the episode."""

    request: EpisodeRequest
    seed: int
    stream: int

    def start(self) -> tuple[Trajectory, torch.Generator]:
        return Trajectory(self.request), episode_stream(self.seed, self.stream)


def _run_stage(policy: VLAPolicy, pool: EnvPool, episodes: list[Episode], slots: list[int],
               temperature: float | None, stats: RolloutStats, episode_done: Callable[[], None]) -> list[Trajectory]:
    """The closed loop over `episodes` on the env `slots` given to it."""
    requests = [e.request for e in episodes]
    started = [e.start() for e in episodes]
    trajectories, generators = [t for t, _ in started], [g for _, g in started]
    pending = deque(range(len(requests)))
    free_slots = slots[::-1]
    live: dict[int, int] = {}  # trajectory index -> env slot
    obs: dict[int, Obs] = {}
    to_start: list[int] = []
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
            bins, _ = policy.sample(inputs, temperature, [generators[i] for i in ids])
        bins = bins.numpy()  # (B, K, D)
        actions = policy.bins_to_actions(bins, np.stack([obs[i].proprio for i in ids]))
        stepped = time.monotonic()
        results = pool.step([live[i] for i in ids], actions)
        stats.inference_time_s += stepped - began
        stats.env_time_s += time.monotonic() - stepped
        to_start = []
        for i, chunk, result in zip(ids, bins, results):
            if result is None:  # env lost: run the episode again from its start (and stream), on the same slot
                stats.restarted_episodes += 1
                trajectories[i], generators[i] = episodes[i].start()
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
                episode_done()
    return trajectories
