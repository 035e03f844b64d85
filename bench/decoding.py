"""Greedy decoding rules and sampling side by side: one checkpoint, the evaluation states.

    python -m bench.decoding models/sft [--params params.yaml] [--temperatures 1.0] [--seeds 2]

Per rule (each `eval.decoding`, then sampling): success rate and mean steps. For failed
episodes: the share that stalled (the end effector moved under 1 cm over the last 5 queries)
and that never closed the gripper. For each greedy rule: how often a query repeats the previous
query's chunk exactly, and per action dimension the share of tokens decoded to an edge bin
(where clipped full-scale labels pile up), beside the demo labels' own share when --demos is
given. docs/results/libero.md has what this measured.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from svrl_core.config import load_params
from svrl_core.data import load_dataset
from svrl_core.evaluation.evaluate import evaluation_requests, success_table
from svrl_core.export.runtime import DECODINGS
from svrl_core.policies import VLAPolicy
from svrl_core.rollout import LocalEnvPool, Trajectory, run_episodes

STALL_QUERIES, STALL_METRES = 5, 0.01


def stalled(trajectory: Trajectory) -> bool:
    """The end effector (LIBERO proprio[:3]) moved less than 1 cm over the last queries."""
    positions = np.stack([o.proprio[:3] for o in trajectory.observations[-STALL_QUERIES:]])
    return len(positions) == STALL_QUERIES and float(np.ptp(positions, axis=0).max()) < STALL_METRES


def closed_gripper(trajectory: Trajectory, policy: VLAPolicy) -> bool:
    """LIBERO's gripper action is +1 to close: did any executed action close it?"""
    actions = [policy.bins_to_actions(b[None])[0][:n, -1] for b, n in zip(trajectory.bins, trajectory.n_executed)]
    return bool(np.concatenate(actions).max() > 0)


def failure_profile(trajectories: list[Trajectory], policy: VLAPolicy) -> str:
    failed = [t for t in trajectories if not t.success]
    if not failed:
        return "no failures"
    stall = np.mean([stalled(t) for t in failed])
    never_closed = np.mean([not closed_gripper(t, policy) for t in failed])
    return f"failed {len(failed)}: stalled {stall:.2f}, gripper never closed {never_closed:.2f}"


def repeated_chunks(trajectories: list[Trajectory]) -> float:
    pairs = [np.array_equal(a, b) for t in trajectories for a, b in zip(t.bins, t.bins[1:])]
    return float(np.mean(pairs)) if pairs else 0.0


def edge_share(bins: np.ndarray, n_bins: int) -> str:
    """(..., D) bins -> per action dimension, the share in bin 0 or the top bin."""
    edge = (bins == 0) | (bins == n_bins - 1)
    return " ".join(f"{v:.2f}" for v in edge.reshape(-1, bins.shape[-1]).mean(0))


def executed_bins(trajectories: list[Trajectory]) -> np.ndarray:
    return np.concatenate([b[:n] for t in trajectories for b, n in zip(t.bins, t.n_executed)])  # (N, D)


def outcome(trajectories: list[Trajectory], policy: VLAPolicy) -> str:
    return (f"success {success_table(trajectories)['success_rate']:.3f} over {len(trajectories)}, mean steps "
            f"{np.mean([t.steps for t in trajectories]):.0f}, {failure_profile(trajectories, policy)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint")
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--temperatures", type=float, nargs="+", default=[1.0])
    parser.add_argument("--seeds", type=int, default=2, help="sampling seeds per temperature")
    parser.add_argument("--envs", type=int, default=8)
    parser.add_argument("--demos", help="a demo dataset: print its labels' edge-bin share per dimension")
    args = parser.parse_args()
    params = load_params(args.params)
    torch.set_num_threads(params.compute.torch_threads)
    policy = VLAPolicy.load(args.checkpoint)
    pool = LocalEnvPool(params.env, args.envs)
    requests = evaluation_requests(list(params.env.tasks), params.eval)
    if args.demos:
        labels = policy.actions.encode(load_dataset(args.demos).actions)  # (N, D)
        print(f"demo labels: edge-bin share per dim {edge_share(labels, policy.n_bins)}")
    try:
        for decoding in DECODINGS:
            policy.decoding = decoding
            greedy = run_episodes(policy, pool, requests, None)
            print(f"greedy {decoding}: {outcome(greedy, policy)}; repeated chunks {repeated_chunks(greedy):.3f}; "
                  f"edge-bin share per dim {edge_share(executed_bins(greedy), policy.n_bins)}")
        for temperature in args.temperatures:
            for seed in range(args.seeds):
                sampled = run_episodes(policy, pool, requests, temperature, torch.Generator().manual_seed(seed))
                print(f"T={temperature} seed {seed}: {outcome(sampled, policy)}")
    finally:
        pool.close()


if __name__ == "__main__":
    main()
