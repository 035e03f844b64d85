"""Rollout engine throughput, measured side by side on the same cores.

    python -m bench.rollout [--params params.yaml] [--model models/rl] [--episodes 256]

1. policy rollouts (sampling, inference batched over all envs) vs raw env stepping with
   random actions, same Dask workers: env steps/s ratio, without and with pipelining
   (envs in 2 stages: one steps while the model infers for the other);
2. 2 workers vs 1 worker: policy rollout throughput ratio;
3. early exit (finished envs drop out) vs running every env to the step limit, as the
   reference implementation does: wall-time ratio.

`--params` picks the env (e.g. configs/robotwin.yaml) and `--model` a checkpoint trained on it.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from svrl_core.config import load_params
from svrl_core.envs import make_env
from svrl_core.policies import VLAPolicy
from svrl_core.rollout import EpisodeRequest, RolloutStats, run_episodes
from svrl_core.rollout.dask_pool import DaskEnvPool
from tasks.cluster import dask_client


def requests_for(tasks: list[str], n: int, seed_start: int) -> list[EpisodeRequest]:
    """RL's initial states (LIBERO has only 50 per task)."""
    return [EpisodeRequest(tasks[i % len(tasks)], seed_start + i) for i in range(n)]


def warm_up(policy, pool, requests) -> None:
    """Build every env on every worker (first frames, render setup) and run the model once, untimed."""
    obs = pool.reset(list(range(pool.capacity)), requests[:pool.capacity])
    policy.sample(policy.prepare(obs), 1.0, torch.Generator())


def random_stepping(pool, requests, chunk: int, action_dim: int) -> float:
    """Env steps/s with uniform random action chunks, every env to its end."""
    rng = np.random.default_rng(0)
    steps, began = 0, time.monotonic()
    for start in range(0, len(requests), pool.capacity):
        wave = requests[start:start + pool.capacity]
        live = list(range(len(wave)))
        pool.reset(live, wave)
        while live:
            results = pool.step(live, rng.uniform(-1, 1, size=(len(live), chunk, action_dim)))
            steps += sum(r.n_executed for r in results)
            live = [slot for slot, r in zip(live, results) if not r.done]
    return steps / (time.monotonic() - began)


def policy_rollouts(policy, pool, requests, temperature: float) -> tuple[float, float, float]:
    """(env steps/s, wall seconds, success rate) of sampled policy rollouts with early exit."""
    stats, began = RolloutStats(), time.monotonic()
    trajectories = run_episodes(policy, pool, requests, temperature, 0, stats)
    wall = time.monotonic() - began
    return stats.env_steps / wall, wall, float(np.mean([t.success for t in trajectories]))


def full_length_rollouts(policy, pool, requests, temperature: float, max_steps: int) -> float:
    """Wall seconds when every env is queried and stepped until the step limit, done or not."""
    generator, began = torch.Generator().manual_seed(0), time.monotonic()
    k = policy.chunk_size
    for start in range(0, len(requests), pool.capacity):
        wave = requests[start:start + pool.capacity]
        slots = list(range(len(wave)))
        obs = pool.reset(slots, wave)
        for _ in range(-(-max_steps // k)):
            bins, _ = policy.sample(policy.prepare(obs), temperature, generator)
            actions = policy.bins_to_actions(bins.numpy(), np.stack([o.proprio for o in obs]))
            obs = [r.obs for r in pool.step(slots, actions)]
    return time.monotonic() - began


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--model", default="models/rl", help="a trained checkpoint (`make run` writes one)")
    parser.add_argument("--episodes", type=int, default=256)
    args = parser.parse_args()
    torch.set_num_threads(1)
    params = load_params(args.params)
    policy = VLAPolicy.load(args.model)
    tasks, temperature = list(params.env.tasks), params.rl.temperature
    probe = make_env(params.env)
    max_steps = probe.max_steps  # a number, also for presets such as "oft"
    probe.close()
    requests = requests_for(tasks, args.episodes, params.rl.seed_start)
    k, d = policy.chunk_size, policy.action_dim
    results = {}
    for n_workers in (1, 2):
        compute = params.compute.model_copy(update={"n_workers": n_workers, "scheduler_address": None})
        envs_per_worker = args.episodes // n_workers
        with dask_client(compute) as client:
            pool = DaskEnvPool(client, params.env, compute.model_copy(update={"envs_per_worker": envs_per_worker}))
            warm_up(policy, pool, requests)
            raw = random_stepping(pool, requests, k, d)
            rate, wall, success = policy_rollouts(policy, pool, requests, temperature)
            pool.pipeline_stages = 2
            piped, _, _ = policy_rollouts(policy, pool, requests, temperature)
            pool.pipeline_stages = 1
            full = full_length_rollouts(policy, pool, requests, temperature, max_steps)
            results[n_workers] = max(rate, piped)
            print(f"{n_workers} worker(s), {args.episodes} episodes: random-action stepping {raw:,.0f} steps/s; "
                  f"policy rollouts {rate:,.0f} steps/s (ratio {rate / raw:.2f}, success {success:.2f}), "
                  f"pipelined in 2 stages {piped:,.0f} steps/s (ratio {piped / raw:.2f}); "
                  f"early exit {wall:.2f}s vs run to the step limit {full:.2f}s (saves {1 - wall / full:.0%})",
                  flush=True)
    print(f"2 workers vs 1: {results[2] / results[1]:.2f}x policy rollout throughput (the better of 1 or 2 stages)")


if __name__ == "__main__":
    main()
