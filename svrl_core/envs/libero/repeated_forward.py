"""Skip the second of two MuJoCo forward passes on one state, inside robosuite's step.

Each of robosuite's 25 physics substeps per control step calls `sim.forward()`, then the arm
controller's update calls `sim.forward()` again before anything has changed, then `sim.step()`
(which runs its own forward). The repeated pass recomputes the same numbers, and it is a third of
the MuJoCo time of a LIBERO step. Within `env.step`, a forward with no `sim.step` since the last
one is skipped; everywhere else (resets, setting initial states) every forward runs. Episodes are
bit-identical with and without it (tests/test_libero.py).
"""

from __future__ import annotations


class SkipRepeatedForward:
    """Wraps one robosuite env's `sim.forward` / `sim.step`; only inside `control_step` is a forward skipped."""

    def __init__(self, sim):
        self._forward, self._step = sim.forward, sim.step
        self.in_step = False
        self.fresh = False  # a forward ran since the last physics step
        self.skipped = 0
        sim.forward, sim.step = self.forward, self.step

    def forward(self) -> None:
        if self.in_step and self.fresh:
            self.skipped += 1
            return
        self._forward()
        self.fresh = True

    def step(self, *args, **kwargs) -> None:
        self._step(*args, **kwargs)
        self.fresh = False

    def control_step(self, env_step, action):
        """`env_step(action)` (robosuite's step) with repeated forwards skipped."""
        self.in_step, self.fresh = True, False
        try:
            return env_step(action)
        finally:
            self.in_step = False
