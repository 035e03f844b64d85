"""Where does a RoboTwin SFT policy send its arm? Its TCP against the block the expert grasps first.

For each layout the physics-only expert (no noise) gives the arm, the block and the step of its
first grasp. Two measurements, each as slopes of TCP on block position per axis (1 = follows the
block, 0 = ignores it) and the mean xy error:
  closed loop    the policy acts greedily from the layout's reset; its TCP at the expert's grasp step
  teacher-forced on the demos' own frames: the TCP of the chunk's last joint target, the demo's
                 label beside it (needs every demo layout solved, so demo e is layout seed_start + e)
docs/results/dual_arm.md has the numbers this measured.

    python -m bench.robotwin_reach --params configs/robotwin.yaml [--layouts 16] [--frames 5 15]
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

import numpy as np
import torch

from svrl_core.config import load_params
from svrl_core.data.lerobot import load_dataset
from svrl_core.envs.robotwin import RoboTwinEnv
from svrl_core.experts.robotwin import record_demonstration
from svrl_core.policies import load_policy

GRIPPERS = {"left": 6, "right": 13}
ARM_JOINTS = {"left": slice(0, 6), "right": slice(7, 13)}


@dataclass
class Grasp:
    side: str
    block_xy: np.ndarray  # (2,)
    step: int  # the expert's first closing step


def expert_grasp(env: RoboTwinEnv, task: str, seed: int) -> Grasp:
    """The arm, block and step of the noiseless expert's first grasp in layout `seed`."""
    env.reset(task, seed)
    blocks = [np.asarray(env.block_pose(b.name).p[:2]) for b in env.layout.blocks]
    actions = record_demonstration(env, task, seed, 0.0)[0].actions  # (T, 14)
    closed = np.stack([actions[:, GRIPPERS[s]] < 0.5 for s in GRIPPERS], axis=1)  # (T, 2)
    step = int(np.flatnonzero(closed.any(axis=1))[0])
    side = list(GRIPPERS)[int(np.argmax(closed[step]))]
    tcp = tcp_xy(env, side, actions[step])
    return Grasp(side, min(blocks, key=lambda b: np.linalg.norm(b - tcp)), step)


def tcp_xy(env: RoboTwinEnv, side: str, action: np.ndarray) -> np.ndarray:
    return np.asarray(env.arms[side].tcp_pose_at(action[ARM_JOINTS[side]]).p[:2])


def follow(blocks: np.ndarray, tcps: np.ndarray) -> str:
    """(N, 2) block and TCP xy -> slopes per axis and the mean xy error."""
    slopes = [np.polyfit(blocks[:, d], tcps[:, d], 1)[0] for d in range(2)]
    error = np.linalg.norm(blocks - tcps, axis=1).mean()
    return f"slope x {slopes[0]:.2f}, y {slopes[1]:.2f}; block spread y {blocks[:, 1].std():.3f} m; error {error:.3f} m"


def closed_loop(policy, env: RoboTwinEnv, physics: RoboTwinEnv, task: str, seeds: range) -> str:
    blocks, tcps = [], []
    for seed in seeds:
        grasp = expert_grasp(physics, task, seed)
        obs, steps = env.reset(task, seed), 0
        while steps < grasp.step:
            chunk = policy.bins_to_actions(policy.greedy(policy.prepare([obs])), obs.proprio[None])[0]  # (K, 14)
            for action in chunk[: grasp.step - steps]:
                obs, steps = env.step(action[None]).obs, steps + 1
        blocks.append(grasp.block_xy)
        tcps.append(np.asarray(env.arms[grasp.side].tcp_pose().p[:2]))
    return follow(np.array(blocks), np.array(tcps))


def teacher_forced(policy, data, physics: RoboTwinEnv, task: str, seed_start: int, frame: int) -> tuple[str, str]:
    blocks, predicted, labelled = [], [], []
    last = policy.chunk_size - 1
    for episode in range(data.n_episodes):
        grasp = expert_grasp(physics, task, seed_start + episode)
        i = np.flatnonzero(data.episode_index == episode)[frame]
        states = data.states[[i]]
        inputs = policy.prepare_arrays({policy.camera: data.images[policy.camera][[i]]}, states, [data.tasks[data.task_index[i]]])
        chunk = policy.bins_to_actions(policy.greedy(inputs), states)[0]  # (K, 14)
        blocks.append(grasp.block_xy)
        predicted.append(tcp_xy(physics, grasp.side, chunk[last]))
        labelled.append(tcp_xy(physics, grasp.side, data.actions[i + last]))
    return follow(np.array(blocks), np.array(predicted)), follow(np.array(blocks), np.array(labelled))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", required=True, help="the run's params (its sft_model, demos, env)")
    parser.add_argument("--layouts", type=int, default=16, help="unseen layouts for the closed-loop test")
    parser.add_argument("--frames", type=int, nargs="*", default=[5, 15], help="demo frames, teacher-forced")
    args = parser.parse_args()
    torch.set_num_threads(1)
    params = load_params(args.params)
    policy = load_policy(params.paths.sft_model, params.policy)
    policy.decoding = params.eval.decoding
    task = params.env.tasks[0]
    physics, env = RoboTwinEnv(params.env, physics_only=True), RoboTwinEnv(params.env)
    seeds = range(params.eval.seed_start, params.eval.seed_start + args.layouts)
    print(f"closed loop, {args.layouts} unseen layouts: {closed_loop(policy, env, physics, task, seeds)}", flush=True)
    data = load_dataset(params.paths.demos)
    for frame in args.frames:
        predicted, labelled = teacher_forced(policy, data, physics, task, params.ingest.seed_start, frame)
        print(f"teacher-forced, demo frame {frame}: policy {predicted} | labels {labelled}", flush=True)


if __name__ == "__main__":
    main()
