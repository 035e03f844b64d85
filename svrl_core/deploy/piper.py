"""Two AgileX Piper arms behind the Robot interface, on the vendor's SDK (piper_sdk, CAN bus).

svrl's dual-arm layout [left 6 joints (rad), left gripper (0 closed .. 1 open), right 6 joints,
right gripper] becomes, per arm on its own CAN channel, the SDK's joint command (0.001 degree
integers, CAN command mode, MOVE J) and gripper command (opening in 0.001 mm). Feedback comes
back the same way into proprio.

Safety (`PiperLimits`, checked for both arms before either is sent anything):
- an action beyond the joint limits by more than a margin, or a joint more than
  `max_joint_step_rad` from the last commanded target, is refused (`UnsafeAction`);
- the commanded target moves toward the action at most `max_joint_speed_rad_s` x the time since
  the last command (the gripper at `max_gripper_speed_per_s`); the arm's own MOVE J planner then
  follows it;
- the first action after connect is compared with the measured pose: within the jump limit it
  goes, within `max_ramp_rad` it is ramped to at the speed cap (blocking), beyond it is refused;
- every command and every state read checks that the joint feedback is recent, and every
  command that the arm reports a normal status (GetArmStatus, CAN 0x2A1): else `RobotFault`,
  nothing is sent and the arm's own controller keeps its last target. Feedback silent for
  `stale_stop_after_s` (noticed by the next call) sends the emergency stop: the arm is unwatched;
- `emergency_stop()` sends the Piper's own stop (the arm lowers itself, damped) and refuses every
  later command; `close()` moves to `rest_pose_rad` if set, then disables the motors;
- `dry_run` checks everything against live feedback but only logs the frames (logger svrl.piper).

Calibration: a policy trained in simulation knows the simulated arm's joint zero and direction.
`joint_signs` and `joint_offsets_rad` map it to the Piper's (piper = sign * policy + offset);
measure them on your setup with the arm at known poses before running a policy. All limits and
the rest pose are in the Piper's frame.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from svrl_core.deploy.robots import RobotFault, UnsafeAction
from svrl_core.envs.base import DUAL_ARM_ACTION_NAMES as ACTION_NAMES
from svrl_core.envs.base import Obs

log = logging.getLogger("svrl.piper")

# joint limits from the SDK's JointCtrl documentation, radians (low, high)
PIPER_JOINT_LIMITS_RAD = np.array([[-2.6179, 2.6179], [0.0, 3.14], [-2.967, 0.0],
                                   [-1.745, 1.745], [-1.22, 1.22], [-2.09439, 2.09439]])
PIPER_GRIPPER_MAX_M = 0.07  # the SDK's gripper range: 0 .. 70 mm
MILLIDEGREES_PER_RAD = 180_000.0 / math.pi  # JointCtrl and joint feedback unit: 0.001 degree
MICROMETRES_PER_M = 1e6  # GripperCtrl and gripper feedback unit: 0.001 mm
ALL_MOTORS = 7
CAN_COMMAND_MODE, MOVE_J, POSITION_VELOCITY = 0x01, 0x01, 0x00  # MotionCtrl_2 (CAN 0x151) bytes 0, 1, 3
GRIPPER_ENABLE = 0x01
EMERGENCY_STOP = 0x01  # MotionCtrl_1 (CAN 0x150) byte 0; 0x02 would reset the arm, which drops it
RAMP_PERIOD_S = 0.02  # a ramp sends a target every 20 ms (the arm reports at 200 Hz)
REST_TOLERANCE_RAD = 0.05  # close() disables the motors once every joint is this near the rest pose

# GetArmStatus (CAN 0x2A1): byte 0 control mode, byte 1 arm status, bytes 6-7 error bits
CTRL_MODES = ("standby", "CAN command", "teaching", "Ethernet", "Wi-Fi", "remote control",
              "linkage teaching input", "offline trajectory")
COMMANDABLE_CTRL_MODES = (0x00, 0x01)  # standby until the first MotionCtrl_2, then CAN command mode
ARM_STATUSES = ("normal", "emergency stop", "no inverse kinematics solution", "singularity",
                "target angle beyond a limit", "joint communication error", "joint brake not released",
                "collision", "overspeed while drag teaching", "joint status error", "other error",
                "teach recording", "teach replaying", "teach paused", "main controller over temperature",
                "brake resistor over temperature")


@dataclass(frozen=True)
class PiperLimits:
    """What an action may do, checked before anything is sent. Conservative defaults for first runs
    (Piper frame: after calibration). Raise them only after watching the policy in dry run."""

    max_joint_step_rad: float = 0.2  # 11.5 degrees from the last target: no sane step at 10+ Hz moves that far
    max_joint_speed_rad_s: float = 1.0  # 57 degrees/s, a third of the joint motors' 3 rad/s range
    max_gripper_speed_per_s: float = 2.0  # opening fraction per second: a full stroke in 0.5 s
    joint_limit_margin_rad: float = 0.05  # beyond the SDK's joint limits by less: clipped; by more: refused
    gripper_margin: float = 0.05  # gripper openings outside -0.05 .. 1.05 are refused, inside clipped to 0 .. 1
    max_ramp_rad: float = 1.0  # the first action may be this far from the measured pose (ramped to, blocking)
    max_feedback_age_s: float = 0.1  # feedback comes at 200 Hz: 20 frames missed is a fault
    stale_stop_after_s: float = 1.0  # feedback silent this long: emergency stop, the arm is not being watched

    def __post_init__(self):
        if min(self.max_joint_step_rad, self.max_joint_speed_rad_s, self.max_gripper_speed_per_s,
               self.max_feedback_age_s) <= 0 or min(self.joint_limit_margin_rad, self.gripper_margin) < 0:
            raise ValueError(f"Piper limits must be positive (margins >= 0), got {self}")
        if self.max_ramp_rad < self.max_joint_step_rad or self.stale_stop_after_s < self.max_feedback_age_s:
            raise ValueError(f"Piper limits: max_ramp_rad >= max_joint_step_rad and stale_stop_after_s >= "
                             f"max_feedback_age_s, got {self}")


@dataclass(frozen=True)
class PiperArmConfig:
    can_channel: str  # e.g. "can_left", as the vendor's can_activate.sh names the adapters
    interface: str = "socketcan"  # python-can interface; tests use "virtual"
    joint_signs: tuple[float, ...] = (1.0,) * 6
    joint_offsets_rad: tuple[float, ...] = (0.0,) * 6
    speed_percent: int = 30  # MOVE J speed, percent of the arm's maximum
    gripper_effort: int = 1000  # 0.001 N·m units, 0..5000
    limits: PiperLimits = field(default_factory=PiperLimits)
    rest_pose_rad: tuple[float, ...] | None = None  # Piper frame; close() moves here before disabling the motors
    dry_run: bool = False  # read feedback, check every action, log the frames instead of sending them
    feedback_timeout_s: float = 5.0  # connect: first joint feedback
    enable_timeout_s: float = 5.0  # connect: every motor enabled; close(): disabled, rest pose reached

    def __post_init__(self):
        if len(self.joint_signs) != 6 or len(self.joint_offsets_rad) != 6 or not all(
                s in (-1.0, 1.0) for s in self.joint_signs):
            raise ValueError(f"Piper {self.can_channel}: joint_signs must be six of +-1 and joint_offsets_rad six "
                             f"numbers, got {self.joint_signs} and {self.joint_offsets_rad}")
        if not 0 < self.speed_percent <= 100 or not 0 <= self.gripper_effort <= 5000:
            raise ValueError(f"Piper {self.can_channel}: speed_percent in 1..100 and gripper_effort in 0..5000, got "
                             f"{self.speed_percent} and {self.gripper_effort}")
        low, high = PIPER_JOINT_LIMITS_RAD.T
        if self.rest_pose_rad is not None and (len(self.rest_pose_rad) != 6 or not np.all(
                (low <= self.rest_pose_rad) & (self.rest_pose_rad <= high))):
            raise ValueError(f"Piper {self.can_channel}: rest_pose_rad must be six joint angles within "
                             f"{PIPER_JOINT_LIMITS_RAD.tolist()}, got {self.rest_pose_rad}")


def joint_command_units(joints_rad: np.ndarray) -> tuple[list[int], int]:
    """(6,) Piper joint angles (rad) -> JointCtrl's six 0.001-degree integers, within limits, and how many were clipped."""
    clipped = np.clip(joints_rad, PIPER_JOINT_LIMITS_RAD[:, 0], PIPER_JOINT_LIMITS_RAD[:, 1])
    return [round(float(q) * MILLIDEGREES_PER_RAD) for q in clipped], int(np.sum(clipped != joints_rad))


def gripper_command_units(opening: float) -> int:
    """Gripper opening 0 (closed) .. 1 (open) -> GripperCtrl's 0.001 mm integer."""
    return round(float(np.clip(opening, 0.0, 1.0)) * PIPER_GRIPPER_MAX_M * MICROMETRES_PER_M)


def status_problems(ctrl_mode: int, arm_status: int, err_code: int) -> list[str]:
    """What is wrong in a GetArmStatus report (empty: the arm can be commanded)."""
    problems = []
    if ctrl_mode not in COMMANDABLE_CTRL_MODES:
        name = CTRL_MODES[ctrl_mode] if ctrl_mode < len(CTRL_MODES) else f"unknown 0x{ctrl_mode:02X}"
        problems.append(f"control mode {name} (a teach button or another controller took the arm)")
    if arm_status != 0:
        problems.append(f"arm status {ARM_STATUSES[arm_status] if arm_status < len(ARM_STATUSES) else hex(arm_status)}")
    # err_code = byte 6 << 8 | byte 7: bits 8-13 a joint beyond its angle limit, bits 0-5 its communication failed
    problems += [f"joint {j + 1} beyond its angle limit" for j in range(6) if err_code >> (8 + j) & 1]
    problems += [f"joint {j + 1} communication error" for j in range(6) if err_code >> j & 1]
    return problems


def toward(current: np.ndarray, goal: np.ndarray, max_step: float) -> tuple[np.ndarray, int]:
    """current moved toward goal by at most max_step per element, and how many elements were held back."""
    delta = goal - current
    held = np.abs(delta) > max_step
    return np.where(held, current + np.sign(delta) * max_step, goal), int(held.sum())


@dataclass(frozen=True, eq=False)
class Goal:
    """A checked action for one arm, Piper frame."""

    joints: np.ndarray  # (6,) rad, within the joint limits
    opening: float  # 0 .. 1
    ramp: bool  # approach it in steps of the speed cap, blocking, rather than one step per call


class PiperArm:
    """One Piper on one CAN channel: connect, enable, check and command actions, read feedback."""

    def __init__(self, cfg: PiperArmConfig):
        from piper_sdk import C_PiperInterface_V2  # hardware SDK: imported only when an arm is used

        self.cfg, self.limits = cfg, cfg.limits
        self._signs, self._offsets = np.array(cfg.joint_signs), np.array(cfg.joint_offsets_rad)
        self.clipped = 0  # joint and gripper values clipped to the limits (within the margin) so far
        self.speed_capped = 0  # joint and gripper values the speed cap held back so far
        self._target: np.ndarray | None = None  # last commanded joints, Piper frame (rad)
        self._opening = 0.0  # last commanded gripper opening
        self._sent_at = -math.inf  # time.monotonic() of the last command
        self._acted = False  # an action was commanded since connect (hold() does not count)
        self._stopped: str | None = None  # why commands are refused for good
        self._closed = False
        # the SDK encodes every frame in one shared message object: one frame at a time, from any thread
        # (re-entrant: a signal handler may stop the arm in the middle of a frame of the main thread)
        self._send_lock = threading.RLock()
        self.sdk = C_PiperInterface_V2(can_name=cfg.can_channel, judge_flag=False, can_auto_init=False)
        self.sdk.CreateCanBus(cfg.can_channel, bustype=cfg.interface, judge_flag=False)
        self.sdk.ConnectPort()
        try:
            if not self._wait(lambda: self.sdk.GetArmJointMsgs().time_stamp > 0, cfg.feedback_timeout_s):
                raise self._connection_error("sent no joint feedback", cfg.feedback_timeout_s)
            if cfg.dry_run:
                log.info("Piper %s: dry run, the motors are not enabled and no command is sent", cfg.can_channel)
            elif not self._wait(lambda: all(self.sdk.GetArmEnableStatus()), cfg.enable_timeout_s,
                                retry=lambda: self._frame(self.sdk.EnableArm, ALL_MOTORS, motion=False)):
                raise self._connection_error("did not enable its motors", cfg.enable_timeout_s)
        except BaseException:
            self._closed = True
            self.sdk.DisconnectPort()
            raise

    @property
    def target(self) -> np.ndarray | None:
        """The last commanded joints, Piper frame (rad); None before the first command."""
        return None if self._target is None else self._target.copy()

    @staticmethod
    def _wait(condition: Callable[[], bool], timeout_s: float, retry: Callable[[], None] = lambda: None) -> bool:
        deadline = time.monotonic() + timeout_s
        while not condition():
            if time.monotonic() > deadline:
                return False
            retry()
            time.sleep(0.05)
        return True

    def _connection_error(self, failure: str, timeout_s: float) -> ConnectionError:
        return ConnectionError(f"Piper on {self.cfg.can_channel} {failure} within {timeout_s}s: check power, the CAN "
                               f"adapter and `ip link show {self.cfg.can_channel}` (up, bitrate 1000000)")

    # -- checks -------------------------------------------------------------------------------

    def _check_feedback(self) -> None:
        """Refuse stale joint feedback; once it has been silent for stale_stop_after_s, stop the arm."""
        if self._closed:
            raise RobotFault(f"Piper {self.cfg.can_channel} is closed")
        # the SDK keeps each frame's receive time (python-can's timestamp: wall clock, the kernel's on socketcan)
        age = time.time() - self.sdk.GetArmJointMsgs().time_stamp
        if age > self.limits.stale_stop_after_s and self._stopped is None:
            self._emergency_stop(f"joint feedback silent for {age:.2f}s (stale_stop_after_s "
                                 f"{self.limits.stale_stop_after_s}s)")
        if age > self.limits.max_feedback_age_s:
            raise RobotFault(f"Piper {self.cfg.can_channel}: joint feedback is {age:.3f}s old (max_feedback_age_s "
                             f"{self.limits.max_feedback_age_s}s); nothing is sent, the arm's controller keeps its "
                             f"last target" + (f"; {self._stopped}" if self._stopped else ""))

    def check(self) -> None:
        """Before every command: not stopped, recent feedback, the arm reports a normal status."""
        if self._stopped is not None:
            raise RobotFault(f"Piper {self.cfg.can_channel}: {self._stopped}; commands are refused")
        self._check_feedback()
        report = self.sdk.GetArmStatus()
        age = time.time() - report.time_stamp
        if age > self.limits.max_feedback_age_s:
            raise RobotFault(f"Piper {self.cfg.can_channel}: arm status (0x2A1) is {age:.3f}s old "
                             f"(max_feedback_age_s {self.limits.max_feedback_age_s}s)")
        status = report.arm_status
        problems = status_problems(int(status.ctrl_mode), int(status.arm_status), int(status.err_code))
        if problems:
            raise RobotFault(f"Piper {self.cfg.can_channel}: {'; '.join(problems)}")

    def _within_limits(self, piper: np.ndarray, opening: float) -> tuple[np.ndarray, float, int]:
        """Refuse values beyond the limits by more than the margins; clip the rest (and say how many)."""
        low, high = PIPER_JOINT_LIMITS_RAD.T
        margin = self.limits.joint_limit_margin_rad
        outside = np.flatnonzero((piper < low - margin) | (piper > high + margin))
        if outside.size:
            j = int(outside[0])
            raise UnsafeAction(f"Piper {self.cfg.can_channel}: joint {j + 1} = {piper[j]:.4g} rad (Piper frame) is "
                               f"beyond its limits [{low[j]}, {high[j]}] by more than {margin} rad")
        if not -self.limits.gripper_margin <= opening <= 1 + self.limits.gripper_margin:
            raise UnsafeAction(f"Piper {self.cfg.can_channel}: gripper opening {opening:.4g} is outside 0 .. 1 by more "
                               f"than {self.limits.gripper_margin}")
        clipped, clipped_opening = np.clip(piper, low, high), min(max(opening, 0.0), 1.0)
        return clipped, clipped_opening, int(np.sum(clipped != piper)) + int(clipped_opening != opening)

    def goal(self, joints_rad: np.ndarray, gripper_opening: float) -> Goal:
        """Check a policy-frame action against the limits and the arm's state; send nothing."""
        piper, opening, clipped = self._within_limits(self._signs * joints_rad + self._offsets, float(gripper_opening))
        self.check()
        first = not self._acted  # the first action is compared with where the arm is
        reference = self._measured()[0] if first else self._target
        bound = self.limits.max_ramp_rad if first else self.limits.max_joint_step_rad
        jump = np.abs(piper - reference)
        j = int(np.argmax(jump))
        if jump[j] > bound:
            raise UnsafeAction(f"Piper {self.cfg.can_channel}: joint {j + 1} would move {jump[j]:.3f} rad from the "
                               f"{'measured pose' if first else 'last target'} (limit {bound} rad, "
                               f"{'max_ramp_rad' if first else 'max_joint_step_rad'}); nothing was sent to either arm")
        self.clipped += clipped
        return Goal(piper, opening, ramp=first and jump[j] > self.limits.max_joint_step_rad)

    # -- commands -----------------------------------------------------------------------------

    def begin_ramp(self) -> None:
        """A ramp starts from the last target, or the measured pose before any command."""
        if self._target is None:
            self._target, self._opening = self._measured()
            self._sent_at = time.monotonic()

    def step(self, goal: Goal, now: float) -> None:
        """Command one target toward the goal: the speed cap since the last command, never beyond the jump limit."""
        if self._target is None:  # the first action, within the jump limit of the measured pose: it goes
            joints, opening = goal.joints, goal.opening
        else:
            elapsed = now - self._sent_at
            max_step = min(self.limits.max_joint_speed_rad_s * elapsed, self.limits.max_joint_step_rad)
            joints, held = toward(self._target, goal.joints, max_step)
            opening, held_gripper = toward(np.array(self._opening), np.array(goal.opening),
                                           self.limits.max_gripper_speed_per_s * elapsed)
            self.speed_capped += held + held_gripper
        self._send(joints, float(opening), now)
        self._acted = True

    def reached(self, goal: Goal) -> bool:
        return self._target is not None and np.array_equal(self._target, goal.joints) and self._opening == goal.opening

    def _send(self, joints: np.ndarray, opening: float, now: float) -> None:
        """MotionCtrl_2 before every JointCtrl, as the vendor's joint example does (the mode is re-asserted if
        anything changed it), then GripperCtrl."""
        units, _ = joint_command_units(joints)
        self._frame(self.sdk.MotionCtrl_2, CAN_COMMAND_MODE, MOVE_J, self.cfg.speed_percent, POSITION_VELOCITY)
        self._frame(self.sdk.JointCtrl, *units)
        self._frame(self.sdk.GripperCtrl, gripper_command_units(opening), self.cfg.gripper_effort, GRIPPER_ENABLE, 0)
        self._target, self._opening, self._sent_at = joints, opening, now

    def _frame(self, send: Callable[..., None], *values: int, motion: bool = True) -> None:
        """One frame through the SDK, or in dry run a log line. No motion frame goes after an emergency stop,
        even if one came in (from a signal handler) since this command's checks."""
        with self._send_lock:
            if motion and self._stopped is not None:
                raise RobotFault(f"Piper {self.cfg.can_channel}: {self._stopped}; commands are refused")
            if self.cfg.dry_run:
                log.info("Piper %s dry run: %s%s", self.cfg.can_channel, send.__name__, values)
            else:
                send(*values)

    def hold(self) -> None:
        """Re-command the last target (the measured pose before any command) with the motors enabled: disabling
        them drops the arm. Raises RobotFault, sending nothing, on stale feedback or an arm error: the arm's own
        controller then keeps its last target."""
        self.check()
        joints, opening = (self._target, self._opening) if self._target is not None else self._measured()
        self._send(joints, opening, time.monotonic())

    def _measured(self) -> tuple[np.ndarray, float]:
        """Measured Piper-frame joints (rad) and gripper opening, unchecked."""
        joints = self.sdk.GetArmJointMsgs().joint_state
        piper = np.array([getattr(joints, f"joint_{j}") for j in range(1, 7)]) / MILLIDEGREES_PER_RAD
        opening = self.sdk.GetArmGripperMsgs().gripper_state.grippers_angle / (PIPER_GRIPPER_MAX_M * MICROMETRES_PER_M)
        return piper, float(opening)

    def state(self) -> tuple[np.ndarray, float]:
        """Measured policy-frame joints (6,) in rad and gripper opening 0..1; RobotFault if the feedback is stale."""
        self._check_feedback()
        piper, opening = self._measured()
        return (piper - self._offsets) * self._signs, opening

    # -- stopping -----------------------------------------------------------------------------

    def emergency_stop(self) -> None:
        """The Piper's own emergency stop (MotionCtrl_1 0x01): the arm lowers itself slowly, damped. Every later
        command is refused; to move again the arm must be reset (which drops it) and re-enabled, so make a new
        PiperArm after the operator has done that. Safe to call again, from any thread or a signal handler."""
        self._emergency_stop("emergency stopped")

    def _emergency_stop(self, reason: str) -> None:
        self._stopped = reason  # first: a command in progress sends no further motion frame
        if not self._closed:
            self._frame(self.sdk.MotionCtrl_1, EMERGENCY_STOP, 0, 0, motion=False)
            log.warning("Piper %s: %s: emergency stop sent", self.cfg.can_channel, reason)

    def close(self) -> None:
        """Leave the arm safe: stop commanding, move to rest_pose_rad if set (at the speed cap), disable the motors,
        disconnect. A disabled Piper sags or drops under gravity unless it rests on something: give it a rest
        pose. After an emergency stop the motors are left alone: the arm is lowering itself, damped."""
        if self._closed:
            return
        try:
            if self._stopped is None:
                if self.cfg.rest_pose_rad is not None:
                    self._rest()
                self._disable()
        finally:
            self._stopped = self._stopped or "closed"
            self._closed = True
            self.sdk.DisconnectPort()

    def _rest(self) -> None:
        rest = Goal(np.array(self.cfg.rest_pose_rad, dtype=float),
                    self._opening if self._target is not None else self._measured()[1], ramp=True)

        def arrived() -> bool:
            return bool(np.max(np.abs(self._measured()[0] - rest.joints)) <= REST_TOLERANCE_RAD)

        try:
            drive([(self, rest)])
        except RobotFault as fault:
            log.warning("Piper %s: no move to the rest pose (%s), disabling where it is", self.cfg.can_channel, fault)
            return
        # the arm follows its target with a lag: disabling before it arrives would drop it from part way
        if not self.cfg.dry_run and not self._wait(arrived, self.cfg.enable_timeout_s):
            log.warning("Piper %s: not at its rest pose after %ss, disabling anyway", self.cfg.can_channel,
                        self.cfg.enable_timeout_s)

    def _disable(self) -> None:
        def disable() -> None:
            self._frame(self.sdk.DisableArm, ALL_MOTORS, motion=False)

        disable()
        if not self.cfg.dry_run and not self._wait(lambda: not any(self.sdk.GetArmEnableStatus()),
                                                   self.cfg.enable_timeout_s, retry=disable):
            log.warning("Piper %s: motors not reported disabled within %ss", self.cfg.can_channel,
                        self.cfg.enable_timeout_s)


def drive(moves: Sequence[tuple[PiperArm, Goal]]) -> None:
    """One step toward each arm's goal, every arm checked before any is sent; while a goal is a ramp, another
    step every RAMP_PERIOD_S until every target is there."""
    for arm, goal in moves:
        if goal.ramp:
            arm.begin_ramp()
    while True:
        for arm, _ in moves:
            arm.check()
        now = time.monotonic()
        for arm, goal in moves:
            arm.step(goal, now)
        if not any(goal.ramp for _, goal in moves) or all(arm.reached(goal) for arm, goal in moves):
            return
        time.sleep(RAMP_PERIOD_S)


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
        """Both arms' goals are checked before either is sent anything; a first action far from the measured
        pose is ramped to, blocking."""
        action = np.asarray(action, dtype=np.float64)
        if action.shape != (len(ACTION_NAMES),) or not np.all(np.isfinite(action)):
            raise ValueError(f"Piper: an action must be 14 finite numbers {list(ACTION_NAMES)}, got {action}")
        moves = [(self.left, self.left.goal(action[0:6], action[6])),
                 (self.right, self.right.goal(action[7:13], action[13]))]
        drive(moves)

    def hold(self) -> None:
        self.left.check()
        self.right.check()
        self.left.hold()
        self.right.hold()

    def emergency_stop(self) -> None:
        try:
            self.left.emergency_stop()
        finally:
            self.right.emergency_stop()

    def close(self) -> None:
        try:
            self.left.close()
        finally:
            self.right.close()
