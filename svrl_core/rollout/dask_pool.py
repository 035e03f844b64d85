"""Env pool on Dask workers: one persistent actor per worker holds its envs between calls."""

from __future__ import annotations

import numpy as np
from distributed import Client

from svrl_core.config import EnvConfig
from svrl_core.envs import Obs, StepResult
from svrl_core.rollout.pool import EnvGroup, EpisodeRequest


class DaskEnvPool:
    """Slots are spread over workers; each call fans out to the workers involved, in parallel."""

    def __init__(self, client: Client, env_cfg: EnvConfig, envs_per_worker: int):
        workers = sorted(client.scheduler_info(n_workers=-1)["workers"])
        if not workers:
            raise RuntimeError("DaskEnvPool: the Dask cluster has no workers")
        futures = [client.submit(EnvGroup, env_cfg, envs_per_worker, actor=True, workers=[w], pure=False)
                   for w in workers]
        self.actors = [f.result() for f in futures]
        self.envs_per_worker = envs_per_worker
        self.capacity = envs_per_worker * len(self.actors)

    def _fan_out(self, method: str, slots: list[int], payload: list) -> list:
        by_actor: dict[int, list[int]] = {}
        for position, slot in enumerate(slots):
            by_actor.setdefault(slot // self.envs_per_worker, []).append(position)
        calls = {a: getattr(self.actors[a], method)([slots[p] % self.envs_per_worker for p in positions],
                                                    [payload[p] for p in positions])
                 for a, positions in by_actor.items()}
        results: list = [None] * len(slots)
        for a, positions in by_actor.items():
            for position, value in zip(positions, calls[a].result()):
                results[position] = value
        return results

    def reset(self, slots: list[int], requests: list[EpisodeRequest]) -> list[Obs]:
        return self._fan_out("reset", slots, requests)

    def step(self, slots: list[int], chunks: np.ndarray) -> list[StepResult]:
        return self._fan_out("step", slots, list(chunks))

    def close(self) -> None:
        for actor in self.actors:
            actor.close().result()
