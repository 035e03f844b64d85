"""Mixed GRPO groups per core-hour, and where an RL run's time goes, side by side in one run.

    python -m bench.rl_throughput --params configs/libero_object_10.yaml --model models/sft
                                  [--iterations 3] [--arm NAME JSON]...

Each arm runs `--iterations` real GRPO iterations (rollouts, dynamic sampling, updates) from the same
checkpoint and the same prompts, with the config merged with the arm's overrides (JSON of sections,
e.g. '{"env": {"cached_tasks": 10}}'), on the same cores, one arm after the other. Per arm:
- mixed groups per hour: groups with mixed rewards, GRPO's learning signal (what dynamic sampling keeps);
- RL env steps/s beside the physics-only rate of the same envs: env steps / (physics seconds / workers),
  what the workers would do if they only stepped the simulator;
- where the workers' time went (scene builds, resets, physics, rendering, the rest: waiting for the
  driver and transfers) and the driver's (inference, updates).
The envs must report `timings` (LIBERO's do). Without --arm: one arm, the config as it is.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from svrl_core.algos.grpo_trainer import train_grpo
from svrl_core.config import Params, load_params, parse_params
from svrl_core.policies import load_policy
from tasks.cluster import env_pool
from tasks.layouts import solvable_layouts
from tasks.metrics import engine_overrides
from tasks.rl import rl_env_config

WORKER_PARTS = ("build_s", "reset_s", "physics_s", "render_s")


def merged(base: dict, overrides: dict) -> dict:
    """`base` with `overrides` merged in, section by section."""
    out = dict(base)
    for key, value in overrides.items():
        out[key] = merged(base.get(key, {}), value) if isinstance(value, dict) else value
    return out


def run_arm(params: Params, model: str, iterations: int) -> dict:
    """GRPO iterations on a fresh copy of `model`; totals of the history and the envs' timings."""
    cfg = params.rl.model_copy(update={"iterations": iterations, "max_idle_iterations": iterations + 1,
                                       "max_wall_s": None, "curve_every": None})  # rollouts and updates only
    policy = load_policy(model, params.policy)
    with solvable_layouts(params.env) as layouts, env_pool(rl_env_config(params), params.compute) as pool:
        began = time.monotonic()
        history = train_grpo(policy, pool, list(params.env.tasks), cfg, engine_overrides=engine_overrides(params),
                             seed_of=layouts.seed)
        wall = time.monotonic() - began
        timings, workers = pool.timings(), len(pool.actors)
    total = lambda key: sum(row.get(key, 0.0) for row in history)  # noqa: E731
    steps = total("env_steps")
    worker_s = workers * total("rollout_time_s")
    return {"iterations": len(history), "episodes": total("episodes"), "env_steps": steps, "wall_s": wall,
            "mixed_groups": total("mixed_groups"), "success": total("success_rate") / len(history),
            "rl_steps_per_s": steps / total("rollout_time_s"),
            "physics_steps_per_s": timings["steps"] / (timings["physics_s"] / workers),
            "builds": timings["builds"], "workers": workers,
            **{part: timings[part] / worker_s for part in WORKER_PARTS},
            "waiting": 1 - sum(timings[part] for part in WORKER_PARTS) / worker_s,
            "inference": total("inference_time_s") / wall, "update": total("update_time_s") / wall}


def report(name: str, row: dict) -> str:
    per_hour = row["mixed_groups"] / row["wall_s"] * 3600
    return (f"{name}: {row['iterations']} iterations, {row['episodes']} episodes (success {row['success']:.2f}), "
            f"{row['env_steps']:,.0f} env steps in {row['wall_s'] / 60:.1f} min: {row['mixed_groups']} mixed groups, "
            f"{per_hour:.0f} per hour on {row['workers']} workers\n"
            f"  RL env steps/s {row['rl_steps_per_s']:.1f} vs physics-only {row['physics_steps_per_s']:.1f} "
            f"({row['rl_steps_per_s'] / row['physics_steps_per_s']:.2f}); scene builds {row['builds']}\n"
            f"  worker time: builds {row['build_s']:.0%}, resets {row['reset_s']:.0%}, physics {row['physics_s']:.0%}, "
            f"rendering {row['render_s']:.0%}, waiting {row['waiting']:.0%}; driver: inference "
            f"{row['inference']:.0%}, updates {row['update']:.0%} of the wall time")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", default="configs/libero_object_10.yaml")
    parser.add_argument("--model", default="models/sft", help="the SFT checkpoint RL starts from")
    parser.add_argument("--iterations", type=int, default=3)
    parser.add_argument("--arm", nargs=2, action="append", metavar=("NAME", "JSON"),
                        help="an arm: its name and its overrides (repeat for several)")
    args = parser.parse_args()
    base = load_params(args.params)
    torch.set_num_threads(base.compute.torch_threads)
    rows = {}
    for name, overrides in args.arm or [("as configured", "{}")]:
        params = parse_params(merged(base.model_dump(), json.loads(overrides)), f"arm {name}")
        rows[name] = run_arm(params, args.model, args.iterations)
        print(report(name, rows[name]), flush=True)
    first = rows[next(iter(rows))]
    for name, row in list(rows.items())[1:]:
        groups = (row["mixed_groups"] / row["wall_s"]) / (first["mixed_groups"] / first["wall_s"])
        print(f"{name} vs {next(iter(rows))}: {groups:.2f}x mixed groups per hour, "
              f"{row['rl_steps_per_s'] / first['rl_steps_per_s']:.2f}x RL env steps/s")


if __name__ == "__main__":
    main()
