"""Demonstrations from the scripted expert."""

from __future__ import annotations

from prefect import task

from svrl_core.config import Params
from svrl_core.data import write_dataset
from svrl_core.envs.toy import ToyReachEnv
from svrl_core.experts.toy_reach import collect_demonstrations

DEMO_FPS = 10


@task
def generate_demos(params: Params) -> dict:
    """Scripted-expert demonstrations; only successful episodes become demos."""
    cfg = params.ingest
    episodes, per_task = collect_demonstrations(ToyReachEnv(params.env), list(params.env.tasks),
                                                cfg.episodes_per_task, cfg.seed_start, cfg.expert_noise)
    write_dataset(params.paths.demos, episodes, fps=DEMO_FPS, robot_type=f"{params.env.family}-reach")
    return {"episodes": len(episodes), "frames": int(sum(len(e.actions) for e in episodes)), "per_task": per_task}
