"""Does RL learn? SFT from few demos, then GRPO, on the toy task; held-out success before/after.

    python -m bench.learning [--params params.yaml] [--rl-seeds 0 1] [--set rl.lr=0.0003 ...]

Runs in-process (no Prefect, no DVC) on an in-process env pool, so the numbers measure the
algorithm, not the orchestration. Prints one line per RL seed and the mean gain.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np
import torch
import yaml

from svrl_core.algos.grpo_trainer import train_grpo
from svrl_core.algos.sft import train_sft
from svrl_core.config import parse_params
from svrl_core.data import load_dataset, write_dataset
from svrl_core.envs.toy import ToyReachEnv
from svrl_core.evaluation import evaluate_policy
from svrl_core.experts.toy_reach import record_demonstration
from svrl_core.policies import VLAPolicy, new_policy
from svrl_core.rollout import LocalEnvPool


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    for item in overrides:
        key, value = item.split("=", 1)
        section, name = key.split(".", 1)
        raw.setdefault(section, {})[name] = yaml.safe_load(value)
    return raw


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--rl-seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--set", nargs="*", default=[], help="section.key=value overrides")
    args = parser.parse_args()
    torch.set_num_threads(1)
    params = parse_params(apply_overrides(yaml.safe_load(open(args.params)), args.set))
    env = ToyReachEnv(params.env)
    episodes = [record_demonstration(env, task, params.ingest.seed_start + j, params.ingest.expert_noise)[0]
                for task in params.env.tasks for j in range(params.ingest.episodes_per_task)]
    pool = LocalEnvPool(params.env, params.compute.envs_per_worker * params.compute.n_workers)
    tasks = list(params.env.tasks)
    with tempfile.TemporaryDirectory() as tmp:
        write_dataset(f"{tmp}/demos", episodes, fps=10, robot_type="toy-reach")
        data = load_dataset(f"{tmp}/demos")
        policy = new_policy(params.policy, data, params.sft.seed)
        train_sft(policy, data, data.tasks, params.sft)
        policy.save(f"{tmp}/sft")
        sft_rate = evaluate_policy(policy, pool, tasks, params.eval)[0]["success_rate"]
        print(f"SFT ({len(episodes)} demos): held-out success {sft_rate:.3f}", flush=True)
        gains = []
        for seed in args.rl_seeds:
            policy = VLAPolicy.load(f"{tmp}/sft")
            cfg = params.rl.model_copy(update={"seed": seed, "seed_start": params.rl.seed_start + 100_000 * seed})
            began = time.monotonic()
            history = train_grpo(policy, pool, tasks, cfg)
            rl_rate = evaluate_policy(policy, pool, tasks, params.eval)[0]["success_rate"]
            gains.append(rl_rate - sft_rate)
            print(f"RL seed {seed}: {len(history)} iterations in {time.monotonic() - began:.0f}s, held-out success "
                  f"{sft_rate:.3f} -> {rl_rate:.3f} ({100 * (rl_rate - sft_rate):+.1f} points)", flush=True)
    print(f"mean gain over {len(gains)} RL seeds: {100 * np.mean(gains):+.1f} points "
          f"({params.eval.episodes_per_task * len(tasks)} evaluation episodes each)")


if __name__ == "__main__":
    main()
