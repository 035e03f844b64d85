"""Layouts the scripted expert solves: SimpleVLA-RL trains and evaluates only on those.

A seed map `(task, start, n) -> seed` says which layout the n-th episode from `start` uses.
`consecutive` is the plain one; `SolvableLayouts.seed` skips the layouts its expert fails on
(run once each, without noise, in a physics-only env) and remembers them for the report.
"""

from __future__ import annotations

from typing import Callable

from svrl_core.envs import VLAEnv
from svrl_core.experts import Recorder

SeedMap = Callable[[str, int, int], int]


def consecutive(task: str, start: int, n: int) -> int:
    """Every layout: the n-th episode from `start` uses seed start + n."""
    return start + n


class EveryLayout:
    """No filter: the n-th episode from `start` uses seed start + n, and nothing is skipped (None)."""

    seed = staticmethod(consecutive)

    def unsolvable(self) -> None:
        return None


class SolvableLayouts:
    """The n-th layout from a start seed that the expert solves; unsolvable ones are skipped and kept.

    `max_unsolvable_run` consecutive failures mean the expert, not the layouts, is broken: an error.
    """

    def __init__(self, env: VLAEnv, record: Recorder, max_unsolvable_run: int = 50):
        self.env, self.record, self.max_unsolvable_run = env, record, max_unsolvable_run
        self._solvable: dict[tuple[str, int], list[int]] = {}  # (task, start) -> solvable seeds found, in order
        self._unsolvable: dict[str, set[int]] = {}

    def seed(self, task: str, start: int, n: int) -> int:
        found = self._solvable.setdefault((task, start), [])
        candidate = found[-1] + 1 if found else start
        while len(found) <= n:
            run = 0
            while not self._solves(task, candidate):
                run += 1
                if run >= self.max_unsolvable_run:
                    raise RuntimeError(f"the expert failed {run} layouts in a row on {task!r} (seeds up to "
                                       f"{candidate}); check the expert, or set env.solvable_layouts_only: false")
                candidate += 1
            found.append(candidate)
            candidate += 1
        return found[n]

    def unsolvable(self) -> dict[str, list[int]]:
        """Task -> the seeds skipped so far, sorted."""
        return {task: sorted(seeds) for task, seeds in self._unsolvable.items()}

    def _solves(self, task: str, seed: int) -> bool:
        if seed in self._unsolvable.get(task, ()):
            return False
        _, success = self.record(self.env, task, seed, 0.0)
        if not success:
            self._unsolvable.setdefault(task, set()).add(seed)
        return success
