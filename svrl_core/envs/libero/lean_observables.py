"""robosuite's observable clocks inside a control step, advanced without a Python call per observable.

After each of the 25 MuJoCo substeps of a control step, robosuite calls `update` on every
observable (37 in a LIBERO-Object scene). An observable samples its sensor once per sampling period
(the control period here) and otherwise only adds the substep's duration to its clock. When every
enabled observable has the same clock, period and zero delay (robosuite's defaults, which LIBERO
keeps) they evolve identically, so `LeanObservables` runs one clock for all of them: on a substep where
that clock neither samples nor restarts its period, it only adds the substep's duration; on any other
substep it writes the clock back into every observable and runs robosuite's own update. The clocks
are written back at the end of each control step. Observations stay bit-identical to LIBERO's stock
env (tests/test_libero.py); observables that differ (a delay, another rate) keep robosuite's path.
"""

from __future__ import annotations

from contextlib import contextmanager


class LeanObservables:
    """Replaces `env._update_observables` on one robosuite env (the inner env, not LIBERO's wrapper)."""

    def __init__(self, env):
        from robosuite.utils.observables import NO_DELAY

        self._no_delay = NO_DELAY
        self._env = env
        self._stock_update = env._update_observables
        self._enabled: list = []  # the observables sharing the clock, during a control step; else empty
        self._clock = 0.0  # their common time since the last sample
        self.skipped = 0  # substeps that only advanced the clock
        env._update_observables = self.update

    @contextmanager
    def control_step(self):
        """Run the clock for the control step inside the block when the observables allow it."""
        self._enabled = self._shared_clock()
        if self._enabled:
            self._clock = self._enabled[0]._time_since_last_sample
        try:
            yield
        finally:
            self._write_clock()
            self._enabled = []

    def update(self, force: bool = False) -> None:
        """robosuite's `_update_observables`."""
        if not self._enabled or force:
            return self._stock_update(force=force)
        first = self._enabled[0]
        clock = self._clock + self._env.model_timestep  # the same float sum each observable would compute
        samples = not first._sampled and first._sampling_timestep - first._current_delay >= clock
        if samples or clock >= first._sampling_timestep:
            self._write_clock()
            self._stock_update()
            self._clock = first._time_since_last_sample
        else:
            self._clock = clock
            self.skipped += 1

    def _shared_clock(self) -> list:
        """The enabled observables if they all share one clock, period and zero delay; else []."""
        enabled = [o for o in self._env._observables.values() if o._enabled]
        if not enabled:
            return []
        first = enabled[0]
        same = all(o._delayer is self._no_delay and o._current_delay == 0.0
                   and o._time_since_last_sample == first._time_since_last_sample
                   and o._sampled == first._sampled and o._sampling_timestep == first._sampling_timestep
                   for o in enabled)
        return enabled if same else []

    def _write_clock(self) -> None:
        for observable in self._enabled:
            observable._time_since_last_sample = self._clock
