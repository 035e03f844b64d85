"""Evaluation protocol: greedy actions (and, beside them, sampled ones), a fixed list of initial states per task."""

from __future__ import annotations

from svrl_core.config import EvalConfig
from svrl_core.experts.layouts import SeedMap, consecutive
from svrl_core.policies import VLAPolicy
from svrl_core.rollout import EnvPool, EpisodeRequest, Trajectory, run_episodes


def evaluation_requests(tasks: list[str], cfg: EvalConfig, seed_of: SeedMap = consecutive) -> list[EpisodeRequest]:
    """The same initial states for every policy: per task, the first n seeds from seed_start (all of
    them, or those `seed_of` keeps)."""
    return [EpisodeRequest(task, seed_of(task, cfg.seed_start, j)) for task in tasks for j in range(cfg.episodes_per_task)]


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


def evaluate_policy(policy: VLAPolicy, pool: EnvPool, tasks: list[str], cfg: EvalConfig,
                    seed_of: SeedMap = consecutive) -> tuple[dict, list[Trajectory]]:
    """Greedy rollouts on the evaluation initial states -> (success table, greedy trajectories).

    With `cfg.sampled_temperature` the same states are rolled out again sampling (seeded by
    `cfg.seed_start`); the table's "sampled" entry holds that success table."""
    requests = evaluation_requests(tasks, cfg, seed_of)
    trajectories = run_episodes(policy, pool, requests, None, progress_name="eval")
    table = success_table(trajectories)
    if cfg.sampled_temperature is not None:
        sampled = run_episodes(policy, pool, requests, cfg.sampled_temperature, cfg.seed_start,
                               progress_name="eval sampled")
        table["sampled"] = {"temperature": cfg.sampled_temperature, **success_table(sampled)}
    return table, trajectories
