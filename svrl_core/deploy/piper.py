"""Two AgileX Piper arms behind the Robot interface, on the vendor's SDK (piper_sdk, CAN bus).

svrl's dual-arm layout [left 6 joints (rad), left gripper (0 closed .. 1 open), right 6 joints,
right gripper] becomes, per arm on its own CAN channel, the SDK's joint command (0.001 degree
integers, joint mode MOVE J over CAN) and gripper command (opening in 0.001 mm). Feedback comes
back the same way into proprio. Joints are clipped to the Piper's limits (the SDK's table) and
the clips counted; a non-finite action is refused before anything is sent.

Calibration: a policy trained in simulation knows the simulated arm's joint zero and direction.
`joint_signs` and `joint_offsets_rad` map it to the Piper's (piper = sign * policy + offset);
measure them on your setup with the arm at known poses before running a policy.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from svrl_core.envs.base import DUAL_ARM_ACTION_NAMES as ACTION_NAMES
from svrl_core.envs.base import Obs

# joint limits from the SDK's JointCtrl documentation, radians (low, high)
PIPER_JOINT_LIMITS_RAD = np.array([[-2.6179, 2.6179], [0.0, 3.14], [-2.967, 0.0],
                                   [-1.745, 1.745], [-1.22, 1.22], [-2.09439, 2.09439]])
PIPER_GRIPPER_MAX_M = 0.07  # the SDK's gripper range: 0 .. 70 mm
MILLIDEGREES_PER_RAD = 180_000.0 / math.pi  # JointCtrl and joint feedback unit: 0.001 degree
MICROMETRES_PER_M = 1e6  # GripperCtrl and gripper feedback unit: 0.001 mm
ALL_MOTORS = 7
CAN_COMMAND_MODE, MOVE_J = 0x01, 0x01
GRIPPER_ENABLE = 0x01


@dataclass(frozen=True)
class PiperArmConfig:
    can_channel: str  # e.g. "can_left", as the vendor's can_activate.sh names the adapters
    interface: str = "socketcan"  # python-can interface; tests use "virtual"
    joint_signs: tuple[float, ...] = (1.0,) * 6
    joint_offsets_rad: tuple[float, ...] = (0.0,) * 6
    speed_percent: int = 30  # MOVE J speed, percent of the arm's maximum
    gripper_effort: int = 1000  # 0.001 N·m units, 0..5000
    connect_timeout_s: float = 5.0

    def __post_init__(self):
        if len(self.joint_signs) != 6 or len(self.joint_offsets_rad) != 6 or not all(
                s in (-1.0, 1.0) for s in self.joint_signs):
            raise ValueError(f"Piper {self.can_channel}: joint_signs must be six of +-1 and joint_offsets_rad six "
                             f"numbers, got {self.joint_signs} and {self.joint_offsets_rad}")
        if not 0 < self.speed_percent <= 100 or not 0 <= self.gripper_effort <= 5000:
            raise ValueError(f"Piper {self.can_channel}: speed_percent in 1..100 and gripper_effort in 0..5000, got "
                             f"{self.speed_percent} and {self.gripper_effort}")


def joint_command_units(joints_rad: np.ndarray) -> tuple[list[int], int]:
    """(6,) Piper joint angles (rad) -> JointCtrl's six 0.001-degree integers, within limits, and how many were clipped."""
    clipped = np.clip(joints_rad, PIPER_JOINT_LIMITS_RAD[:, 0], PIPER_JOINT_LIMITS_RAD[:, 1])
    return [round(float(q) * MILLIDEGREES_PER_RAD) for q in clipped], int(np.sum(clipped != joints_rad))


def gripper_command_units(opening: float) -> int:
    """Gripper opening 0 (closed) .. 1 (open) -> GripperCtrl's 0.001 mm integer."""
    return round(float(np.clip(opening, 0.0, 1.0)) * PIPER_GRIPPER_MAX_M * MICROMETRES_PER_M)


class PiperArm:
    """One Piper on one CAN channel: connect, enable in joint mode, command, read feedback."""

    def __init__(self, cfg: PiperArmConfig):
        from piper_sdk import C_PiperInterface_V2  # hardware SDK: imported only when an arm is used

        self.cfg = cfg
        self._signs, self._offsets = np.array(cfg.joint_signs), np.array(cfg.joint_offsets_rad)
        self.sdk = C_PiperInterface_V2(can_name=cfg.can_channel, judge_flag=False, can_auto_init=False)
        self.sdk.CreateCanBus(cfg.can_channel, bustype=cfg.interface, judge_flag=False)
        self.sdk.ConnectPort()
        self.clipped = 0  # joint values clipped to the Piper's limits so far
        self._wait(lambda: self.sdk.GetArmJointMsgs().time_stamp > 0, "sent no joint feedback")
        self._enable()

    def _wait(self, condition: Callable[[], bool], failure: str, retry: Callable[[], None] = lambda: None) -> None:
        deadline = time.monotonic() + self.cfg.connect_timeout_s
        while not condition():
            if time.monotonic() > deadline:
                raise ConnectionError(f"Piper on {self.cfg.can_channel} {failure} within {self.cfg.connect_timeout_s}s: "
                                      f"check power, the CAN adapter and `ip link show {self.cfg.can_channel}` "
                                      f"(up, bitrate 1000000)")
            retry()
            time.sleep(0.05)

    def _enable(self) -> None:
        self._wait(lambda: all(self.sdk.GetArmEnableStatus()), "did not enable its motors",
                   retry=lambda: self.sdk.EnableArm(ALL_MOTORS))
        self.sdk.MotionCtrl_2(CAN_COMMAND_MODE, MOVE_J, self.cfg.speed_percent, 0x00)

    def command(self, joints_rad: np.ndarray, gripper_opening: float) -> None:
        """Policy-frame joints (6,) and gripper opening -> JointCtrl + GripperCtrl frames."""
        units, clipped = joint_command_units(self._signs * joints_rad + self._offsets)
        self.clipped += clipped
        self.sdk.JointCtrl(*units)
        self.sdk.GripperCtrl(gripper_command_units(gripper_opening), self.cfg.gripper_effort, GRIPPER_ENABLE, 0)

    def state(self) -> tuple[np.ndarray, float]:
        """Measured policy-frame joints (6,) in rad and gripper opening 0..1."""
        joints = self.sdk.GetArmJointMsgs().joint_state
        piper = np.array([getattr(joints, f"joint_{j}") for j in range(1, 7)]) / MILLIDEGREES_PER_RAD
        opening = self.sdk.GetArmGripperMsgs().gripper_state.grippers_angle / (PIPER_GRIPPER_MAX_M * MICROMETRES_PER_M)
        return (piper - self._offsets) * self._signs, float(opening)

    def hold(self) -> None:
        """Command the measured pose: the arm stays put with its motors enabled (disabling drops it)."""
        joints, opening = self.state()
        self.command(joints, opening)

    def close(self) -> None:
        self.sdk.DisconnectPort()


class PiperDualArm:
    """Two Pipers as one Robot in svrl's dual-arm layout; `cameras()` returns the policy's images."""

    action_names = ACTION_NAMES
    done = False  # a real episode ends when the operator stops it

    def __init__(self, left: PiperArmConfig, right: PiperArmConfig, cameras: Callable[[], dict[str, np.ndarray]],
                 instruction: str):
        if left.can_channel == right.can_channel:
            raise ValueError(f"Piper arms need one CAN channel each, both are {left.can_channel!r}")
        self.cameras, self.instruction = cameras, instruction
        self.left = PiperArm(left)
        try:
            self.right = PiperArm(right)
        except BaseException:
            self.left.close()
            raise

    def proprio(self) -> np.ndarray:
        """(14,) measured joints and gripper openings, in the action's layout."""
        (left, left_open), (right, right_open) = self.left.state(), self.right.state()
        return np.r_[left, left_open, right, right_open].astype(np.float32)

    def observe(self) -> Obs:
        return Obs(self.cameras(), self.proprio(), self.instruction)

    def apply(self, action: np.ndarray) -> None:
        action = np.asarray(action, dtype=np.float64)
        if action.shape != (len(ACTION_NAMES),) or not np.all(np.isfinite(action)):
            raise ValueError(f"Piper: an action must be 14 finite numbers {list(ACTION_NAMES)}, got {action}")
        self.left.command(action[0:6], action[6])
        self.right.command(action[7:13], action[13])

    def hold(self) -> None:
        self.left.hold()
        self.right.hold()

    def close(self) -> None:
        self.left.close()
        self.right.close()
