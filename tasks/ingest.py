"""Demonstrations from the scripted expert."""

from __future__ import annotations

from prefect import task

from svrl_core.config import Params
from svrl_core.data import write_dataset
from svrl_core.envs.toy import ToyReachEnv
from svrl_core.experts.toy_reach import record_demonstration
from svrl_core.progress import Progress

DEMO_FPS = 10


@task
def generate_demos(params: Params) -> dict:
    """Scripted-expert demonstrations; only successful episodes become demos."""
    env, cfg = ToyReachEnv(params.env), params.ingest
    episodes, per_task = [], {}
    progress = Progress("ingest", cfg.episodes_per_task * len(params.env.tasks), "episodes")
    for task_name in params.env.tasks:
        attempts = 0
        kept = []
        while len(kept) < cfg.episodes_per_task:
            if attempts >= 10 * cfg.episodes_per_task:
                raise RuntimeError(f"ingest: expert succeeded only {len(kept)}/{attempts} times on {task_name!r}")
            episode, ok = record_demonstration(env, task_name, cfg.seed_start + attempts, cfg.expert_noise)
            attempts += 1
            if ok:
                kept.append(episode)
        episodes += kept
        per_task[task_name] = {"expert_success_rate": len(kept) / attempts, "attempts": attempts}
        progress.update(len(episodes))
    write_dataset(params.paths.demos, episodes, fps=DEMO_FPS, robot_type=f"{params.env.family}-reach")
    return {"episodes": len(episodes), "frames": int(sum(len(e.actions) for e in episodes)), "per_task": per_task}
