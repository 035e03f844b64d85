"""Scripted-expert success per task on LIBERO-Object and LIBERO-Spatial (official init states).

    python -m bench.libero_experts [--suites libero_object libero_spatial] [--episodes 10] [--noise 0.1]
"""

from __future__ import annotations

import argparse
import time

from svrl_core.config import EnvConfig
from svrl_core.envs.libero import LiberoEnv, suites
from svrl_core.experts.libero import record_demonstration


def suite_success(suite: str, episodes: int, noise: float) -> dict[str, float]:
    tasks = [t.name for t in suites.suite_tasks(suite)]
    env = LiberoEnv(EnvConfig(family="libero", suite=suite, tasks=tasks, image_size=32, max_steps="oft",
                              cached_tasks=1))
    rates = {}
    try:
        for task in tasks:
            began = time.perf_counter()
            wins = sum(record_demonstration(env, task, seed, noise)[1] for seed in range(episodes))
            rates[task] = wins / episodes
            print(f"  {suite} {task:<95} {wins:>3}/{episodes}  ({time.perf_counter() - began:.0f} s)", flush=True)
    finally:
        env.close()
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--suites", nargs="+", default=["libero_object", "libero_spatial"])
    parser.add_argument("--episodes", type=int, default=10, help="init states 0..N-1 per task")
    parser.add_argument("--noise", type=float, default=0.1, help="the ingest stage's expert_noise")
    args = parser.parse_args()
    overall = []
    for suite in args.suites:
        rates = suite_success(suite, args.episodes, args.noise)
        overall += rates.values()
        print(f"{suite}: mean expert success {sum(rates.values()) / len(rates):.3f}, "
              f"min {min(rates.values()):.2f} over {len(rates)} tasks x {args.episodes} episodes")
    print(f"all: mean expert success {sum(overall) / len(overall):.3f}")


if __name__ == "__main__":
    main()
