"""Scripted demonstrators with privileged simulator state, one per env family."""

from __future__ import annotations

from typing import Callable

from svrl_core.data import Episode
from svrl_core.envs import VLAEnv

Recorder = Callable[..., "tuple[Episode, bool]"]  # (env, task, seed, noise[, execution_noise])


def recorder_for(family: str) -> Recorder:
    """`record_demonstration(env, task, seed, noise) -> (episode, success)` of the family's expert
    (RoboTwin's also takes `execution_noise`, DART)."""
    if family == "toy":
        from svrl_core.experts.toy_reach import record_demonstration
    elif family == "libero":
        from svrl_core.experts.libero import record_demonstration
    elif family == "robotwin":
        from svrl_core.experts.robotwin import record_demonstration
    else:
        raise ValueError(f"no scripted expert for env.family {family!r}; valid: 'toy', 'libero', 'robotwin'")
    return record_demonstration


def collect_demonstrations(env: VLAEnv, record: Recorder, tasks: list[str], per_task: int, seed_start: int,
                           noise: float, execution_noise: float = 0.0) -> tuple[list[Episode], dict]:
    """`per_task` successful expert episodes per task, from consecutive seeds; failures are dropped.
    `execution_noise` > 0 (DART) is passed to the recorder, which then must accept it.

    Returns the episodes and, per task, the expert's success rate over its attempts.
    """
    episodes, report = [], {}
    for task in tasks:
        kept, attempts = [], 0
        while len(kept) < per_task:
            if attempts >= 10 * per_task:
                raise RuntimeError(f"ingest: the expert succeeded only {len(kept)}/{attempts} times on {task!r}")
            dart = {"execution_noise": execution_noise} if execution_noise else {}
            episode, success = record(env, task, seed_start + attempts, noise, **dart)
            attempts += 1
            if success:
                kept.append(episode)
        episodes += kept
        report[task] = {"expert_success_rate": len(kept) / attempts, "attempts": attempts}
    return episodes, report
