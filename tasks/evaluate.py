"""Greedy evaluation of a checkpoint on Dask env workers."""

from __future__ import annotations

from prefect import task

from svrl_core.config import Params
from svrl_core.evaluation import evaluate_policy, save_episode_gifs
from svrl_core.policies import load_policy
from tasks.cluster import env_pool
from tasks.layouts import solvable_layouts


@task(tags=["envs"])  # `make ui` limits concurrent env-heavy tasks by this tag
def evaluate_checkpoint(params: Params, model_dir: str, videos_dir: str) -> dict:
    policy = load_policy(model_dir, params.policy)
    policy.decoding = params.eval.decoding
    tasks = list(params.eval.tasks or params.env.tasks)
    with solvable_layouts(params.env) as layouts, env_pool(params.env, params.compute) as pool:
        table, trajectories = evaluate_policy(policy, pool, tasks, params.eval, layouts.seed)
    if layouts.unsolvable() is not None:
        table["unsolvable_layouts"] = layouts.unsolvable()
    gifs = save_episode_gifs(trajectories, videos_dir, params.eval.n_videos, policy.camera)
    table["decoding"] = policy.decoding
    table["videos"] = [str(p) for p in gifs]  # local paths or URLs
    return table
