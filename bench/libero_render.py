"""LIBERO env steps/s on one core: stock OffScreenRenderEnv vs our env, rendered and physics-only.

The same task, initial state, random actions, cameras and resolution for every variant:
  stock       LIBERO's OffScreenRenderEnv (MSAA, full meshes, renders every step)
  ours/step   our env rendering a frame after every step (chunks of 1)
  ours/chunk  our env as rollouts use it: chunks of K steps, a frame per chunk
  physics     our env stepping without any rendering (the physics limit)
  physics/robosuite  the same with robosuite's own substeps (env.fast_substeps off)

    python -m bench.libero_render [--size 128] [--cameras agentview robot0_eye_in_hand] [--steps 200] [--faces N]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from svrl_core.config import EnvConfig
from svrl_core.envs.libero import LiberoEnv, suites
from svrl_core.envs.libero.env import NOOP, make_control_env

TASK = "pick_up_the_alphabet_soup_and_place_it_in_the_basket"


def steps_per_s(step, actions: np.ndarray) -> float:
    began = time.perf_counter()
    for action in actions:
        step(action)
    return len(actions) / (time.perf_counter() - began)


def stock_rate(size: int, cameras: list[str], actions: np.ndarray) -> float:
    task = suites.find_task("libero_object", TASK)
    env = make_control_env(task, size, tuple(cameras), stock=True)
    env.seed(0)
    env.reset()
    env.set_init_state(suites.init_state(task, 0))
    env.step(NOOP)  # first frame outside the timing
    rate = steps_per_s(env.step, actions)
    env.close()
    return rate


def our_env(size: int, cameras: list[str], faces: int, fast_substeps: bool = True) -> LiberoEnv:
    env = LiberoEnv(EnvConfig(family="libero", suite="libero_object", tasks=[TASK], image_size=size, cameras=cameras,
                              max_steps=10_000, render_mesh_faces=faces, fast_substeps=fast_substeps))
    env.reset(TASK, 0)
    return env


def robosuite_physics_rate(size: int, cameras: list[str], actions: np.ndarray, faces: int) -> float:
    """Physics only, with robosuite's own substeps (env.fast_substeps off)."""
    env = our_env(size, cameras, faces, fast_substeps=False)
    rate = steps_per_s(env._sim.step, actions)
    env.close()
    return rate


def our_rates(size: int, cameras: list[str], actions: np.ndarray, chunk: int, faces: int) -> dict[str, float]:
    env = our_env(size, cameras, faces)
    per_step = steps_per_s(lambda a: env.step(a[None]), actions)
    env.reset(TASK, 0)
    chunks = actions[: len(actions) // chunk * chunk].reshape(-1, chunk, actions.shape[1])
    per_chunk = steps_per_s(env.step, chunks) * chunk
    env.reset(TASK, 0)
    physics = steps_per_s(env._sim.step, actions)
    env.close()
    return {"ours/step": per_step, "ours/chunk": per_chunk, "physics": physics}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--cameras", nargs="+", default=["agentview", "robot0_eye_in_hand"])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--chunk", type=int, default=8)
    parser.add_argument("--faces", type=int, default=EnvConfig().render_mesh_faces, help="env.render_mesh_faces")
    args = parser.parse_args()
    torch.set_num_threads(1)
    actions = np.random.default_rng(0).uniform(-1, 1, (args.steps, 7))
    rates = {"stock": stock_rate(args.size, args.cameras, actions),
             **our_rates(args.size, args.cameras, actions, args.chunk, args.faces),
             "physics/robosuite": robosuite_physics_rate(args.size, args.cameras, actions, args.faces)}
    print(f"LIBERO-Object, {len(args.cameras)} camera(s) at {args.size}px, {args.steps} random actions, one core, "
          f"visual meshes <= {args.faces} triangles")
    for name, rate in rates.items():
        print(f"  {name:<17} {rate:8.1f} steps/s")
    print(f"ours/step vs stock:    {rates['ours/step'] / rates['stock']:.2f}x  (goal >= 4)")
    print(f"ours/chunk vs stock:   {rates['ours/chunk'] / rates['stock']:.2f}x")
    print(f"ours/step vs physics:  {rates['ours/step'] / rates['physics']:.2f}   (goal >= 0.5)")
    print(f"ours/chunk vs physics: {rates['ours/chunk'] / rates['physics']:.2f}")
    print(f"physics, fast substeps vs robosuite's: {rates['physics'] / rates['physics/robosuite']:.2f}x")


if __name__ == "__main__":
    main()
