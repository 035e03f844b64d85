"""Is a GRPO update signal or noise? The gradient noise scale of a checkpoint's rollouts.

    python -m bench.gradient_noise --params P.yaml [--model DIR] [--prompts 32]

Rolls out `--prompts` prompts x rl.group_size at rl.temperature from the RL prompt sampler (as
`svrl rl` would, on the run's Dask env workers), keeps the mixed groups, and takes one GRPO gradient
per kept group at the rollout policy. Prints, per loss aggregation, the noise scale B_noise in
groups (svrl_core/algos/gradient_noise.py): the batch size at which an update's noise equals its
signal, beside the groups one optimizer step of this config sees (rl.mini_batch_trajectories) and
the expected cosine between two such steps' gradients.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from svrl_core.algos.grpo import AGGREGATIONS, keep_mixed_groups
from svrl_core.algos.gradient_noise import NoiseScale, group_gradients, noise_scale, parameter_slices
from svrl_core.algos.grpo_batch import episode_streams, prompt_sampler
from svrl_core.config import load_params
from svrl_core.policies import load_policy
from svrl_core.rollout import RolloutStats, run_episodes
from tasks.cluster import env_pool
from tasks.layouts import solvable_layouts
from tasks.rl import rl_env_config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", required=True, help="the run's params (env, rl, compute)")
    parser.add_argument("--model", help="checkpoint to roll out (default: paths.sft_model)")
    parser.add_argument("--prompts", type=int, default=32, help="prompts rolled out, each rl.group_size times")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    params = load_params(args.params)
    cfg = params.rl
    policy = load_policy(args.model or params.paths.sft_model, params.policy)
    began = time.monotonic()
    with solvable_layouts(params.env) as layouts, env_pool(rl_env_config(params), params.compute) as pool:
        requests = prompt_sampler(list(params.env.tasks), cfg, layouts.seed).next_requests(args.prompts, cfg.group_size)
        trajectories = run_episodes(policy, pool, requests, cfg.temperature, args.seed, RolloutStats(),
                                    streams=episode_streams(requests, cfg.group_size))
    rewards = torch.tensor([float(t.success) for t in trajectories])
    mixed = keep_mixed_groups(rewards, cfg.group_size, *cfg.keep_success_range)  # (n_prompts,)
    groups = [trajectories[g * cfg.group_size:(g + 1) * cfg.group_size] for g in torch.nonzero(mixed).flatten().tolist()]
    step_groups = cfg.mini_batch_trajectories / cfg.group_size
    print(f"{len(trajectories)} rollouts at T = {cfg.temperature} in {time.monotonic() - began:.0f} s: success "
          f"{rewards.mean():.3f}, {len(groups)} of {args.prompts} groups mixed; one optimizer step sees "
          f"{step_groups:g} groups (rl.mini_batch_trajectories {cfg.mini_batch_trajectories})", flush=True)
    rng = np.random.default_rng(args.seed)
    for aggregation in AGGREGATIONS:
        grads = group_gradients(policy, groups, cfg.temperature, aggregation)  # (n, P)
        print(f"{aggregation}: {describe(noise_scale(grads, rng), step_groups)}", flush=True)
        if aggregation == cfg.loss_agg:
            for name, columns in parameter_slices(policy.model).items():
                part = noise_scale(grads[:, columns], rng)
                print(f"  {name} ({columns.stop - columns.start} values): {describe(part, step_groups)}", flush=True)


def describe(scale: NoiseScale, step_groups: float) -> str:
    return (f"B_noise {scale.noise_scale:.0f} groups, at least {scale.noise_scale_lower:.0f} (|G|^2 {scale.signal:.3g} "
            f"+- {scale.signal_se:.2g}, tr Sigma {scale.noise:.3g}); cosine of two half-batches of {scale.groups // 2} "
            f"groups {scale.split_cosine:.3f}; expected cosine of two optimizer steps {scale.cosine_at(step_groups):.3f}")


if __name__ == "__main__":
    main()
