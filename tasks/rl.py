"""GRPO from the SFT checkpoint on Dask env workers, resumable after a kill."""

from __future__ import annotations

import hashlib
import json
from typing import Callable

import fsspec
from prefect import task

from svrl_core.algos.grpo_trainer import train_grpo
from svrl_core.config import EnvConfig, Params
from svrl_core.io import join
from svrl_core.policies import VLAPolicy, load_policy
from svrl_core.training import best_policy_dir
from svrl_core.training.engine import init_process_group
from svrl_core.training.ranks import Ranks
from tasks.cluster import env_pool
from tasks.layouts import solvable_layouts
from tasks.metrics import engine_overrides


# Settings that change how a run is carried out, not what it trains: a run resumes across them.
NOT_TRAINED = {
    "rl": {"max_wall_s",  # a segment's budget
           "checkpoint_every",  # when the state is saved
           "curve_every", "curve_states"},  # the curve's episodes draw from streams and states of their own
    "env": {"fast_substeps",  # bit-identical episodes either way
            "cached_tasks"},  # a soft-reset scene steps bit-identically to a fresh one
}


def run_fingerprint(params: Params) -> str:
    """Names one RL run: the config that decides what it trains, and the exact starting weights."""
    with fsspec.open(str(join(params.paths.sft_model, "model.safetensors")), "rb") as handle:
        weights = hashlib.sha256(handle.read()).hexdigest()
    config = {section: getattr(params, section).model_dump(exclude=NOT_TRAINED[section]) for section in NOT_TRAINED}
    return hashlib.sha256(json.dumps({**config, "sft": weights}, sort_keys=True).encode()).hexdigest()


def rl_env_config(params: Params) -> EnvConfig:
    """The env RL rolls out in: the shared env, with RL's own step limit when it has one."""
    if params.rl.max_steps is None:
        return params.env
    return EnvConfig.model_validate({**params.env.model_dump(), "max_steps": params.rl.max_steps})


def fit_rl_policy(params: Params, on_iteration: Callable[[dict], None] = lambda row: None,
                  ) -> tuple[VLAPolicy, list[dict], dict | None]:
    """GRPO on this rank's env workers; every rank of a multi-rank run calls this.
    -> (policy, one metrics row per iteration, task -> layouts skipped as unsolvable or None)."""
    init_process_group()  # before the pool: a shared Dask cluster is split by rank
    policy = load_policy(params.paths.sft_model, params.policy)
    policy.decoding = params.eval.decoding  # the learning curve's greedy points decode as the benchmark does
    ranks = Ranks.of_process_group()
    with (solvable_layouts(params.env) as layouts,
          env_pool(rl_env_config(params), params.compute, ranks) as pool):
        history = train_grpo(policy, pool, list(params.env.tasks), params.rl, on_iteration,
                             state_dir=params.paths.rl_state, fingerprint=run_fingerprint(params),
                             engine_overrides=engine_overrides(params), seed_of=layouts.seed,
                             best_dir=best_policy_dir(params.paths.rl_state))
    return policy, history, layouts.unsolvable()


@task(tags=["envs"])
def train_rl_policy(params: Params, on_iteration: Callable[[dict], None]) -> tuple[list[dict], dict | None]:
    """Rank 0: train, then write the policy (and under best/ the best learning-curve point's, if any)."""
    policy, history, unsolvable = fit_rl_policy(params, on_iteration)
    policy.save(params.paths.rl_model)
    if any(row.get("curve_best") for row in history):
        load_policy(best_policy_dir(params.paths.rl_state), params.policy).save(join(params.paths.rl_model, "best"))
    return history, unsolvable
