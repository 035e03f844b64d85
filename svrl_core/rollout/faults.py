"""Fault injection for the Dask env pool: a worker's envs that die, hang or raise on cue.

Used by the tests and by `python -m bench.faults`. Faults fire in order, each exactly once
across every worker process (a marker file per fault, created atomically), so a replacement
actor does not repeat the fault that killed its predecessor.
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
from svrl_core.rollout.pool import EnvGroup, EpisodeRequest


@dataclass(frozen=True)
class Fault:
    """At the `nth` `event` call of an actor (counted per process), `action` happens."""

    event: Literal["init", "reset", "step"]
    action: Literal["kill", "hang", "raise"]
    nth: int = 1


class FaultyEnvGroup(EnvGroup):
    """An EnvGroup that injects `faults`; `marker_dir` (shared by all workers) records which fired."""

    def __init__(self, env_cfg: EnvConfig, n_envs: int, faults: tuple[Fault, ...], marker_dir: str):
        self.faults, self.marker_dir, self.calls = faults, Path(marker_dir), Counter()
        self._maybe_fault("init")
        super().__init__(env_cfg, n_envs)

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
    return len(list(Path(marker_dir).glob("fault-*")))


def fault_times(marker_dir: str | Path) -> list[float]:
    """Wall-clock time at which each fired fault happened, in order."""
    markers = sorted(Path(marker_dir).glob("fault-*"), key=lambda p: int(p.name.removeprefix("fault-")))
    return [p.stat().st_mtime for p in markers]
