"""GRPO from the SFT checkpoint on Dask env workers."""

from __future__ import annotations

from typing import Callable

from prefect import task

from svrl_core.algos.grpo_trainer import train_grpo
from svrl_core.config import Params
from svrl_core.policies import VLAPolicy
from tasks.cluster import env_pool


@task
def train_rl_policy(params: Params, on_iteration: Callable[[dict], None]) -> list[dict]:
    policy = VLAPolicy.load(params.paths.sft_model)
    with env_pool(params.env, params.compute) as pool:
        history = train_grpo(policy, pool, list(params.env.tasks), params.rl, on_iteration)
    policy.save(params.paths.rl_model)
    return history
