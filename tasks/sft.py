"""SFT from the demonstrations to a checkpoint."""

from __future__ import annotations

from prefect import task

from svrl_core.algos.sft import train_sft
from svrl_core.config import Params
from svrl_core.data import load_dataset
from svrl_core.policies import VLAPolicy, new_policy
from tasks.metrics import engine_overrides


def fit_sft_policy(params: Params) -> tuple[VLAPolicy, list[dict]]:
    """The trained policy and its metrics rows; every rank of a multi-rank run calls this."""
    data = load_dataset(params.paths.demos)
    if params.sft.steps == 0:  # a brought checkpoint, as it is
        return new_policy(params.policy, data, params.sft.seed, adopt=True), []
    policy = new_policy(params.policy, data, params.sft.seed)
    return policy, train_sft(policy, data, data.tasks, params.sft, engine_overrides(params))


@task
def train_sft_policy(params: Params) -> list[dict]:
    policy, history = fit_sft_policy(params)
    policy.save(params.paths.sft_model)
    return history
