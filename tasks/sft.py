"""SFT from the demonstrations to a checkpoint."""

from __future__ import annotations

from prefect import task

from svrl_core.algos.sft import train_sft
from svrl_core.config import Params
from svrl_core.data import load_dataset
from svrl_core.policies import new_policy
from tasks.metrics import engine_overrides


@task
def train_sft_policy(params: Params) -> list[dict]:
    data = load_dataset(params.paths.demos)
    policy = new_policy(params.policy, data, params.sft.seed)
    history = train_sft(policy, data, data.tasks, params.sft, engine_overrides(params))
    policy.save(params.paths.sft_model)
    return history
