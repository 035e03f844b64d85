"""robosuite's physics substeps as MuJoCo's two-phase step, so no forward pass is computed twice.

Each of robosuite's 25 substeps per control step runs `sim.forward()` (mj_forward), the arm
controller (whose state update calls `sim.forward()` again on the same state), then `sim.step()`
(mj_step, which runs mj_forward a third time before integrating). MuJoCo splits a step for exactly
this pattern: mj_step1 computes what depends on positions and velocities (all a controller reads),
mj_step2 what depends on the controls (actuation, accelerations, constraints) and integrates. Inside
`control_step`, a substep's forward runs mj_step1, a repeated forward is skipped, and the step runs
mj_step2. The first substep keeps a full mj_forward, because robosuite's own control code runs
there and reads sensors from the acceleration stage. Everywhere else (resets, init states) forward
and step are MuJoCo's. Episodes are bit-identical to LIBERO's stock env (tests/test_libero.py).
"""

from __future__ import annotations


class SplitPhysicsStep:
    """Wraps one robosuite env's `sim.forward` / `sim.step`; only inside `control_step` are they split."""

    def __init__(self, sim):
        import mujoco

        self._mujoco = mujoco
        self._model, self._data = sim.model._model, sim.data._data
        self.in_step = False
        self.first_substep = False
        self.fresh = False  # positions and velocities computed since the last integration
        self.split = 0  # substeps run as mj_step1 + mj_step2
        sim.forward, sim.step = self.forward, self.step

    def forward(self) -> None:
        if self.in_step and self.fresh:  # the controller's repeated forward
            return
        if self.in_step and not self.first_substep:
            self._mujoco.mj_step1(self._model, self._data)
        else:
            self._mujoco.mj_forward(self._model, self._data)
        self.fresh = True

    def step(self, *args, **kwargs) -> None:
        if not self.in_step:
            self._mujoco.mj_step(self._model, self._data)
        elif self.fresh:
            self._mujoco.mj_step2(self._model, self._data)
            self.split += 1
        else:  # a step with no forward before it: MuJoCo's own
            self._mujoco.mj_step(self._model, self._data)
        self.fresh = self.first_substep = False

    def control_step(self, env_step, action):
        """`env_step(action)` (robosuite's step) with its substeps split."""
        self.in_step, self.fresh, self.first_substep = True, False, True
        try:
            return env_step(action)
        finally:
            self.in_step = False
