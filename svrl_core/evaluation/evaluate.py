"""Evaluation protocol: greedy actions, a fixed list of held-out initial states per task."""

from __future__ import annotations

from svrl_core.config import EvalConfig
from svrl_core.policies import VLAPolicy
from svrl_core.rollout import EnvPool, EpisodeRequest, Trajectory, run_episodes


def evaluation_requests(tasks: list[str], cfg: EvalConfig) -> list[EpisodeRequest]:
    """The same initial states for every policy: seeds seed_start .. seed_start + n - 1 per task."""
    return [EpisodeRequest(task, cfg.seed_start + j) for task in tasks for j in range(cfg.episodes_per_task)]


def success_table(trajectories: list[Trajectory]) -> dict:
    """Success rate per task and overall."""
    per_task: dict[str, dict] = {}
    for traj in trajectories:
        row = per_task.setdefault(traj.request.task, {"episodes": 0, "successes": 0, "errors": 0})
        row["episodes"] += 1
        row["successes"] += int(traj.success)
        row["errors"] += int(traj.error is not None)  # counted as failures, as the official protocol does
    for row in per_task.values():
        row["success_rate"] = row["successes"] / row["episodes"]
    total = sum(r["successes"] for r in per_task.values())
    return {"success_rate": total / len(trajectories), "episodes": len(trajectories),
            "mean_steps": sum(t.steps for t in trajectories) / len(trajectories), "per_task": per_task}


def evaluate_policy(policy: VLAPolicy, pool: EnvPool, tasks: list[str], cfg: EvalConfig) -> tuple[dict, list[Trajectory]]:
    """Greedy rollouts on the evaluation initial states -> (success table, trajectories)."""
    trajectories = run_episodes(policy, pool, evaluation_requests(tasks, cfg), None, progress_name="eval")
    return success_table(trajectories), trajectories
