"""The robot interface the control loop drives, and a simulated robot on svrl's own envs."""

from __future__ import annotations

from typing import Protocol

import numpy as np

from svrl_core.envs.base import Obs, VLAEnv


class RobotFault(RuntimeError):
    """The robot cannot be commanded safely now (stale feedback, an arm error, an emergency stop)."""


class UnsafeAction(ValueError):
    """An action the robot's safety limits refuse; nothing of it was sent."""


class Robot(Protocol):
    """One action at a time, in the policy's action layout (`action_names`)."""

    action_names: tuple[str, ...]

    @property
    def done(self) -> bool:
        """The episode is over (a simulated robot's success or step limit; a real robot: never)."""

    def observe(self) -> Obs:
        """Camera images, proprio (SI units, the policy's layout) and the instruction, now."""

    def apply(self, action: np.ndarray) -> None:
        """Command one (D,) action."""

    def hold(self) -> None:
        """Stay where it is: called when no action can be had (the policy server is unreachable)."""

    def emergency_stop(self) -> None:
        """Stop now; every later apply() raises RobotFault. Callable from any thread or a signal handler."""

    def close(self) -> None:
        """Release the hardware or simulator."""


class SimulatedRobot:
    """A VLAEnv episode behind the Robot interface: each action is a one-action chunk."""

    def __init__(self, env: VLAEnv, task: str, seed: int):
        self.env = env
        self.action_names = tuple(env.action_names)
        self._obs = env.reset(task, seed)
        self._done = False
        self.success = False
        self.holds = 0
        self.stopped = False  # emergency_stop() was called

    @property
    def done(self) -> bool:
        return self._done

    def observe(self) -> Obs:
        return self._obs

    def apply(self, action: np.ndarray) -> None:
        if self.stopped:
            raise RobotFault("simulated robot: emergency stopped, commands are refused")
        if self._done:
            raise RuntimeError("simulated robot: the episode is over")
        result = self.env.step(np.asarray(action)[None])
        self._obs, self._done, self.success = result.obs, result.done, result.success

    def hold(self) -> None:
        self.holds += 1  # the simulated arm's drives keep their last targets; time does not pass

    def emergency_stop(self) -> None:
        self.stopped = True

    def close(self) -> None:
        self.env.close()
