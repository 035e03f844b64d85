"""One Prefect task per stage body: read inputs, call svrl_core, write outputs atomically."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from prefect import task

from svrl_core.algos.grpo_trainer import train_grpo
from svrl_core.algos.sft import train_sft
from svrl_core.config import Params
from svrl_core.data import load_dataset, write_dataset
from svrl_core.envs.toy import ToyReachEnv
from svrl_core.evaluation import evaluate_policy, save_episode_gifs
from svrl_core.experts.toy_reach import record_demonstration
from svrl_core.export import BundlePolicy, export_bundle
from svrl_core.io import write_json_atomic
from svrl_core.policies import VLAPolicy, new_policy
from svrl_core.progress import Progress
from svrl_core.report import write_report
from tasks.cluster import env_pool

DEMO_FPS = 10


def write_metrics(params: Params, name: str, payload: object) -> Path:
    path = Path(params.paths.metrics) / f"{name}.json"
    write_json_atomic(path, payload)
    return path


def read_metrics(params: Params, name: str) -> dict | list:
    path = Path(params.paths.metrics) / f"{name}.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: run the stage that writes it (`dvc repro`)")
    return json.loads(path.read_text())


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


@task
def train_sft_policy(params: Params) -> list[dict]:
    data = load_dataset(params.paths.demos)
    policy = new_policy(params.policy, data, params.sft.seed)
    history = train_sft(policy, data, data.tasks, params.sft)
    policy.save(params.paths.sft_model)
    return history


@task
def evaluate_checkpoint(params: Params, model_dir: str, videos_dir: str) -> dict:
    policy = VLAPolicy.load(model_dir)
    with env_pool(params.env, params.compute) as pool:
        table, trajectories = evaluate_policy(policy, pool, list(params.env.tasks), params.eval)
    gifs = save_episode_gifs(trajectories, videos_dir, params.eval.n_videos, policy.cfg.camera)
    table["videos"] = [str(p) for p in gifs]
    return table


@task
def train_rl_policy(params: Params, on_iteration: Callable[[dict], None]) -> list[dict]:
    policy = VLAPolicy.load(params.paths.sft_model)
    with env_pool(params.env, params.compute) as pool:
        history = train_grpo(policy, pool, list(params.env.tasks), params.rl, on_iteration)
    policy.save(params.paths.rl_model)
    return history


@task
def export_policy(params: Params) -> dict:
    """Export the RL policy and check the bundle reproduces in-process greedy actions exactly."""
    policy = VLAPolicy.load(params.paths.rl_model)
    export_bundle(policy, params.paths.export, params.export.name)
    env, observations = ToyReachEnv(params.env), []
    for j, task_name in enumerate(params.env.tasks * 8):
        observations.append(env.reset(task_name, params.eval.seed_start + j))
    inputs = policy.prepare(observations)
    expected = policy.bins_to_actions(policy.greedy(inputs))
    bundle = BundlePolicy(params.paths.export)
    got = bundle.act_batch(np.stack([o.images[policy.cfg.camera] for o in observations]),
                           np.stack([o.proprio for o in observations]), [o.instruction for o in observations])
    max_diff = float(np.abs(got - expected).max())
    if max_diff != 0.0:
        raise RuntimeError(f"export: the bundle's actions differ from the policy's by up to {max_diff}")
    size = sum(f.stat().st_size for f in Path(params.paths.export).rglob("*") if f.is_file())
    return {"checked_observations": len(observations), "max_action_difference": max_diff, "bundle_bytes": size,
            "torch": torch.__version__}


@task
def write_pipeline_report(params: Params) -> str:
    sft, rl = read_metrics(params, "eval_sft"), read_metrics(params, "eval_rl")
    history = json.loads((Path(params.paths.plots) / "rl_history.json").read_text())
    return str(write_report(params.report.title, sft, rl, history, params.paths.report))
