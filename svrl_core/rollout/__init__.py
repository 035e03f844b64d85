"""Batched interactive rollouts over env pools (in-process or on Dask workers)."""

from svrl_core.rollout.episodes import RolloutStats, Trajectory, run_episodes
from svrl_core.rollout.pool import EnvGroup, EnvPool, EpisodeRequest, LocalEnvPool

__all__ = ["EnvGroup", "EnvPool", "EpisodeRequest", "LocalEnvPool", "RolloutStats", "Trajectory", "run_episodes"]
