"""Why does argmax decoding fail where sampling succeeds? One checkpoint, the evaluation states,
greedy and sampled side by side, and what the failed episodes did.

    python -m bench.decoding models/sft [--params params.yaml] [--temperatures 1.0] [--seeds 2]

Per decoding rule: success rate and mean steps. For failed episodes: the share that stalled (the
end effector moved under 1 cm over the last 5 queries) and that never closed the gripper. For
greedy: how often a query repeats the previous query's chunk exactly. Per greedy token: the
probability of the argmax bin and how often the runner-up bin lies far from it (> 8 bins) with
at least half its probability, a sign of a multimodal action that argmax splits.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from svrl_core.config import load_params
from svrl_core.evaluation.evaluate import evaluation_requests, success_table
from svrl_core.policies import VLAPolicy
from svrl_core.rollout import LocalEnvPool, Trajectory, run_episodes

STALL_QUERIES, STALL_METRES = 5, 0.01
FAR_BINS = 8


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


def token_shape(policy: VLAPolicy, trajectories: list[Trajectory]) -> str:
    """Argmax probability and far runner-ups over every greedy query's tokens."""
    observations = [o for t in trajectories for o in t.observations]
    with torch.no_grad():
        probs = torch.cat([policy.model(policy.prepare(observations[i:i + 256])).softmax(-1)
                           for i in range(0, len(observations), 256)])  # (Q, K * D, n_bins)
    top = probs.topk(2, dim=-1)
    far = ((top.indices[..., 0] - top.indices[..., 1]).abs() > FAR_BINS) & (top.values[..., 1] >= 0.5 * top.values[..., 0])
    per_dim = far.view(len(far), -1, policy.action_dim).float().mean(dim=(0, 1))  # (D,)
    return (f"argmax prob mean {top.values[..., 0].mean():.3f}, far runner-up with >= half its prob "
            f"{far.float().mean():.3f} (per action dim {' '.join(f'{v:.3f}' for v in per_dim)})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint")
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--temperatures", type=float, nargs="+", default=[1.0])
    parser.add_argument("--seeds", type=int, default=2, help="sampling seeds per temperature")
    parser.add_argument("--envs", type=int, default=8)
    args = parser.parse_args()
    params = load_params(args.params)
    torch.set_num_threads(params.compute.torch_threads)
    policy = VLAPolicy.load(args.checkpoint)
    pool = LocalEnvPool(params.env, args.envs)
    requests = evaluation_requests(list(params.env.tasks), params.eval)
    try:
        greedy = run_episodes(policy, pool, requests, None)
        print(f"greedy: success {success_table(greedy)['success_rate']:.3f} over {len(greedy)}, "
              f"{failure_profile(greedy, policy)}; repeated chunks {repeated_chunks(greedy):.3f}")
        print(f"greedy tokens: {token_shape(policy, greedy)}")
        for temperature in args.temperatures:
            for seed in range(args.seeds):
                sampled = run_episodes(policy, pool, requests, temperature, torch.Generator().manual_seed(seed))
                print(f"T={temperature} seed {seed}: success {success_table(sampled)['success_rate']:.3f}, "
                      f"{failure_profile(sampled, policy)}")
    finally:
        pool.close()


if __name__ == "__main__":
    main()
