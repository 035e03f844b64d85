"""The learning curve of an RL run: the current policy on a fixed subset of the evaluated initial states,
greedy (the benchmark's decoding) and sampled at the rollout temperature, every `rl.curve_every` iterations.

Greedy is what the benchmark scores; sampled at `rl.temperature` is the policy RL optimizes. Both on the
same states and, for the sampled episodes, the same random streams at every point, so the points differ
by the policy alone."""

from __future__ import annotations

import time

from svrl_core.config import RlConfig
from svrl_core.experts.layouts import SeedMap
from svrl_core.policies import VLAPolicy
from svrl_core.rollout import EnvPool, EpisodeRequest, run_episodes
from svrl_core.training.ranks import Ranks

CURVE_SEED = 7919  # offsets rl.seed: the curve's sampled episodes draw from streams RL's rollouts never use


def curve_requests(tasks: list[str], cfg: RlConfig, seed_of: SeedMap) -> list[EpisodeRequest]:
    """The first `cfg.curve_states` initial states of every task, as RL numbers them."""
    return [EpisodeRequest(task, seed_of(task, cfg.seed_start, j)) for task in tasks for j in range(cfg.curve_states)]


def curve_point(policy: VLAPolicy, pool: EnvPool, requests: list[EpisodeRequest], cfg: RlConfig,
                ranks: Ranks = Ranks()) -> dict:
    """Greedy and sampled success on `requests`, greedy per task too; every rank runs its share."""
    mine = ranks.share(len(requests))
    share = [requests[j] for j in mine]
    greedy = run_episodes(policy, pool, share, None)
    sampled = run_episodes(policy, pool, share, cfg.temperature, cfg.seed + CURVE_SEED, streams=mine)
    outcomes = {j: (g.success, s.success) for j, g, s in zip(mine, greedy, sampled)}
    merged = {j: o for part in ranks.gather(outcomes) for j, o in part.items()}
    per_task: dict[str, list[bool]] = {}
    for j, request in enumerate(requests):
        per_task.setdefault(request.task, []).append(merged[j][0])
    return {"curve_greedy": sum(g for g, _ in merged.values()) / len(requests),
            "curve_sampled": sum(s for _, s in merged.values()) / len(requests),
            "curve_greedy_per_task": {task: sum(wins) / len(wins) for task, wins in per_task.items()}}


class LearningCurve:
    """When an RL run measures its curve, and the best point's policy, kept in `best_dir` by rank 0."""

    def __init__(self, policy: VLAPolicy, pool: EnvPool, tasks: list[str], cfg: RlConfig, seed_of: SeedMap,
                 ranks: Ranks, best_dir: str | None):
        self.policy, self.pool, self.cfg, self.ranks, self.best_dir = policy, pool, cfg, ranks, best_dir
        self.requests = curve_requests(tasks, cfg, seed_of) if cfg.curve_every else []

    def due(self, iteration: int, last: bool) -> bool:
        return bool(self.requests) and (iteration % self.cfg.curve_every == 0 or last)

    def measure(self, row: dict, key: str | None = None) -> None:
        """Add a point to `row` (its keys, or under `key`) and the seconds it took to row["curve_time_s"]."""
        began = time.monotonic()
        point = curve_point(self.policy, self.pool, self.requests, self.cfg, self.ranks)
        row.update({key: point} if key else point)
        row["curve_time_s"] = row.get("curve_time_s", 0.0) + time.monotonic() - began

    def keep_if_best(self, point: dict, history: list[dict]) -> bool:
        """Save the policy if `point` beats every earlier point of the run (the starting policy's included)."""
        earlier = [row["curve_greedy"] for row in history if "curve_greedy" in row and row is not point]
        earlier += [row["curve_before"]["curve_greedy"] for row in history[:1] if "curve_before" in row]
        if earlier and point["curve_greedy"] <= max(earlier):
            return False
        if self.ranks.is_writer and self.best_dir:
            self.policy.save(self.best_dir)
        return True
