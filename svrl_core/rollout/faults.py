"""Fault injection for the Dask env pool: a worker's envs that die, hang or raise on cue.

Used by the tests and by `python -m bench.faults`. Faults fire in order, each exactly once
across every worker process (a marker file per fault, created atomically), so a replacement
actor does not repeat the fault that killed its predecessor. `kill_replacement_workers`
kills the worker that a pool picks for a replacement, right after the pool submits it.
"""

from __future__ import annotations

import os
import signal
import threading
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from svrl_core.config import EnvConfig
from svrl_core.envs import Obs, StepResult
from svrl_core.rollout.dask_pool import DaskEnvPool
from svrl_core.rollout.pool import EnvGroup, EpisodeRequest


@dataclass(frozen=True)
class Fault:
    """At the `nth` `event` call of an actor (counted per process), `action` happens."""

    event: Literal["reset", "step"]
    action: Literal["kill", "hang", "raise"]
    nth: int = 1


@dataclass(frozen=True)
class Scenario:
    """A chaos scenario: faults in order, the rollout's pipeline stages, whether the worker picked for
    the replacement is killed too."""

    faults: tuple[Fault, ...]
    pipeline_stages: int = 1
    kill_replacement: bool = False

    @property
    def hangs(self) -> bool:
        return any(fault.action == "hang" for fault in self.faults)


SCENARIOS = {  # run by tests/test_rollout.py and bench/faults.py
    "kill mid-step": Scenario((Fault("step", "kill", 2),)),
    "kill during reset": Scenario((Fault("reset", "kill", 2),)),
    "kill while replacing": Scenario((Fault("step", "kill", 2),), kill_replacement=True),
    "hang in step": Scenario((Fault("step", "hang", 2),)),
    "env raises": Scenario((Fault("step", "raise", 3),)),
    "kill, 2 stages": Scenario((Fault("step", "kill", 3),), pipeline_stages=2),
}


class FaultyEnvGroup(EnvGroup):
    """An EnvGroup that injects `faults`; `marker_dir` (shared by all workers) records which fired."""

    def __init__(self, env_cfg: EnvConfig, n_envs: int, faults: tuple[Fault, ...], marker_dir: str):
        super().__init__(env_cfg, n_envs)
        self.faults, self.marker_dir, self.calls = faults, Path(marker_dir), Counter()

    def reset(self, ids: list[int], requests: list[EpisodeRequest]) -> list[Obs]:
        self._maybe_fault("reset")
        return super().reset(ids, requests)

    def step(self, ids: list[int], chunks: np.ndarray) -> list[StepResult]:
        self._maybe_fault("step")
        return super().step(ids, chunks)

    def _maybe_fault(self, event: str) -> None:
        self.calls[event] += 1
        index = fired_faults(self.marker_dir)
        if index >= len(self.faults):
            return
        fault = self.faults[index]
        if fault.event != event or self.calls[event] < fault.nth:
            return
        try:
            (self.marker_dir / f"fault-{index}").open("x").close()
        except FileExistsError:  # another worker fired it a moment ago
            return
        if fault.action == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        elif fault.action == "hang":
            threading.Event().wait()  # forever: only a restart of this worker ends it
        else:
            raise RuntimeError(f"injected fault {index}: {event} #{self.calls[event]} raises")


def fired_faults(marker_dir: str | Path) -> int:
    return len(fault_times(marker_dir))


def fault_times(marker_dir: str | Path) -> list[float]:
    """Wall-clock time at which each fired fault happened, in order."""
    markers = sorted(Path(marker_dir).glob("fault-*"), key=lambda p: int(p.name.removeprefix("fault-")))
    return [p.stat().st_mtime for p in markers]


def kill_replacement_workers(pool: DaskEnvPool, times: int = 1) -> None:
    """SIGKILL the worker picked for each of the next `times` replacements as its envs start building
    (workers on this host only)."""
    submit, remaining = pool._submit_actor, [times]

    def submit_then_kill(worker: str):
        future = submit(worker)
        if remaining[0] > 0:
            remaining[0] -= 1
            pid = pool.client.run(os.getpid, workers=[worker])[worker]
            os.kill(pid, signal.SIGKILL)
        return future

    pool._submit_actor = submit_then_kill
