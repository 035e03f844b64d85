"""The AgileX Piper adapter against python-can's virtual bus: the vendor SDK's real frames go to a
small simulated arm written here, which decodes them by the protocol and answers with feedback.

Timing: CI runs these on 2 loaded cores, where the SDK's reader thread can lag by tenths of a
second. Tests that are not about feedback age or the speed caps use TEST_LIMITS (generous age,
caps a 10 ms pause satisfies); the others only assert bounds that load cannot break (ages only
grow while feedback is paused; a cap bounds a move from above whatever the elapsed time)."""

from __future__ import annotations

import dataclasses
import itertools
import logging
import threading
import time

import can
import numpy as np
import pytest

from svrl_core.deploy.piper import (PiperArmConfig, PiperDualArm, PiperLimits, RobotFault, UnsafeAction,
                                    gripper_command_units, joint_command_units, status_problems)
from svrl_core.deploy.robots import SimulatedRobot
from svrl_core.envs.base import Obs, StepResult

MOTION_CTRL_1_ID = 0x150  # byte 0: 0x01 emergency stop
MOTION_CTRL_2_ID = 0x151  # control mode, move mode, speed percent, MIT mode
JOINT_CTRL_IDS = (0x155, 0x156, 0x157)  # J1&J2, J3&J4, J5&J6: two big-endian int32, 0.001 degree
GRIPPER_CTRL_ID = 0x159  # int32 opening (0.001 mm), uint16 effort, uint8 code, uint8 set-zero
ENABLE_ID = 0x471  # motor (7: all), 0x01 disable / 0x02 enable
COMMAND_IDS = {MOTION_CTRL_1_ID, MOTION_CTRL_2_ID, *JOINT_CTRL_IDS, GRIPPER_CTRL_ID, ENABLE_ID}
STATUS_FEEDBACK_ID = 0x2A1  # control mode, arm status, ..., error code (big-endian uint16, bytes 6-7)
JOINT_FEEDBACK_IDS = (0x2A5, 0x2A6, 0x2A7)
GRIPPER_FEEDBACK_ID = 0x2A8
LOW_SPEED_FEEDBACK_IDS = range(0x261, 0x267)  # byte 5 bit 6: the motor's driver is enabled
START_DEG = [10, 20, -30, 0, 5, -5]  # the simulated arms' initial pose
TEST_LIMITS = PiperLimits(max_feedback_age_s=1.0, stale_stop_after_s=30.0, max_joint_speed_rad_s=1000.0,
                          max_gripper_speed_per_s=1000.0)
_channels = itertools.count()


def int32(data: bytes, start: int) -> int:
    return int.from_bytes(data[start:start + 4], "big", signed=True)


class SimulatedPiper(threading.Thread):
    """A Piper's CAN side: commands take effect at once; feedback (status, joints, gripper, drivers) every 5 ms
    unless paused; `arm_status` and `err_code` can be set to inject a fault. Received frames keep the bus's
    timestamps."""

    def __init__(self, channel: str, enables: bool = True):
        super().__init__(daemon=True)
        self.bus = can.Bus(channel=channel, interface="virtual")
        self.enables, self.enabled = enables, False
        self.joints = [q * 1000 for q in START_DEG]  # 0.001 degree
        self.gripper = 12_000  # 0.001 mm
        self.ctrl_mode, self.arm_status, self.err_code = 0x00, 0x00, 0
        self.received: list[can.Message] = []
        self.feedback = threading.Event()
        self.feedback.set()
        self.iterations = 0
        self._stopping = threading.Event()
        self.start()

    def run(self) -> None:
        while not self._stopping.is_set():
            message = self.bus.recv(0.005)
            if message is not None:
                self.received.append(message)
                self._apply(message)
            if self.feedback.is_set():
                self._feedback()
            self.iterations += 1

    def _apply(self, message: can.Message) -> None:
        data = bytes(message.data)
        if message.arbitration_id == ENABLE_ID:
            self.enabled = data[1] == 0x02 and self.enables
        elif message.arbitration_id == MOTION_CTRL_1_ID and data[0] == 0x01:
            self.arm_status = 0x01  # emergency stop
        elif message.arbitration_id == MOTION_CTRL_2_ID:
            self.ctrl_mode = data[0]
        elif message.arbitration_id in JOINT_CTRL_IDS:
            pair = JOINT_CTRL_IDS.index(message.arbitration_id)
            self.joints[2 * pair: 2 * pair + 2] = [int32(data, 0), int32(data, 4)]
        elif message.arbitration_id == GRIPPER_CTRL_ID:
            self.gripper = int32(data, 0)

    def _feedback(self) -> None:
        def send(arbitration_id: int, data: bytes) -> None:
            self.bus.send(can.Message(arbitration_id=arbitration_id, data=data, is_extended_id=False))

        status = bytes([self.ctrl_mode, self.arm_status, 0x01, 0, 0, 0]) + self.err_code.to_bytes(2, "big")
        send(STATUS_FEEDBACK_ID, status)  # control mode, arm status, MOVE J, ..., error bits
        for pair, arbitration_id in enumerate(JOINT_FEEDBACK_IDS):
            send(arbitration_id, b"".join(q.to_bytes(4, "big", signed=True) for q in self.joints[2 * pair:2 * pair + 2]))
        send(GRIPPER_FEEDBACK_ID, self.gripper.to_bytes(4, "big", signed=True) + bytes(4))
        for arbitration_id in LOW_SPEED_FEEDBACK_IDS:
            send(arbitration_id, bytes([0, 0, 0, 0, 0, 0x40 if self.enabled else 0, 0, 0]))

    def settle(self) -> None:
        """Wait until every frame sent to this arm so far is received and applied (none still queued)."""
        wait_until(self.bus.queue.empty)
        seen = self.iterations
        wait_until(lambda: self.iterations > seen)  # the iteration holding the last frame has ended

    def commands(self, since: int = 0) -> list[can.Message]:
        """Command frames (motion, joints, gripper, enable) received after the first `since` frames."""
        return [m for m in self.received[since:] if m.arbitration_id in COMMAND_IDS]

    def joint_commands(self) -> list[list[int]]:
        """Every complete JointCtrl (three frames), decoded by the protocol."""
        commands, joints = [], [0] * 6
        for message in self.commands():
            if message.arbitration_id in JOINT_CTRL_IDS:
                pair = JOINT_CTRL_IDS.index(message.arbitration_id)
                joints[2 * pair: 2 * pair + 2] = [int32(bytes(message.data), 0), int32(bytes(message.data), 4)]
                if pair == 2:
                    commands.append(list(joints))
        return commands

    def last_commands(self) -> tuple[list[int] | None, int | None]:
        """The last joint and gripper commands received."""
        joints = self.joint_commands()
        grippers = [int32(bytes(m.data), 0) for m in self.commands() if m.arbitration_id == GRIPPER_CTRL_ID]
        return (joints[-1] if joints else None), (grippers[-1] if grippers else None)

    def stop(self) -> None:
        self._stopping.set()
        self.join(2)
        self.bus.shutdown()


@pytest.fixture()
def two_arms():
    """A fresh pair of virtual channels (the SDK keeps one interface per channel name for the process)."""
    n = next(_channels)
    names = (f"svrl_test_left_{n}", f"svrl_test_right_{n}")
    arms = [SimulatedPiper(name) for name in names]
    yield names, arms
    for arm in arms:
        arm.stop()


def configs(names, limits: PiperLimits = TEST_LIMITS, **overrides):
    return [PiperArmConfig(can_channel=name, interface="virtual", limits=limits, **overrides) for name in names]


def settled(arms) -> list[int]:
    """Frames each simulated arm received, once all sent so far have arrived."""
    for arm in arms:
        arm.settle()
    return [len(arm.received) for arm in arms]


def wait_until(condition, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def start_action() -> np.ndarray:
    """Both arms where the simulated arms start, grippers as measured."""
    arm = np.r_[np.deg2rad(START_DEG), 12 / 70]
    return np.r_[arm, arm]


def succeeds(call) -> bool:
    try:
        call()
        return True
    except RobotFault:
        return False


def test_unit_conversions_by_hand():
    # 0.1 rad = 5.7296 deg; 1 rad = 57.2958 deg; 0.5 rad = 28.6479 deg; 2 rad = 114.5916 deg
    units, clipped = joint_command_units(np.array([0.1, 1.0, -1.0, 0.5, -0.5, 2.0]))
    assert units == [5730, 57296, -57296, 28648, -28648, 114592] and clipped == 0
    # joint 2 cannot go below 0, joint 3 above 0, joint 5 beyond 1.22 rad (69.9008 deg)
    units, clipped = joint_command_units(np.array([0.0, -0.3, 0.2, 0.0, 1.5, 0.0]))
    assert units == [0, 0, 0, 0, 69901, 0] and clipped == 3
    assert [gripper_command_units(x) for x in (0.0, 0.5, 1.0, 1.7, -1.0)] == [0, 35000, 70000, 70000, 0]


def test_arm_status_reports_decode_by_the_protocol():
    assert status_problems(0x00, 0x00, 0) == [] and status_problems(0x01, 0x00, 0) == []
    # byte 6 bit 2 (err_code bit 10): joint 3 beyond its limit; byte 7 bit 5 (err_code bit 5): joint 6 communication
    assert status_problems(0x01, 0x07, 0x0420) == ["arm status collision", "joint 3 beyond its angle limit",
                                                   "joint 6 communication error"]
    assert status_problems(0x02, 0x00, 0)[0].startswith("control mode teaching")


def test_commands_reach_the_bus_as_the_sdk_encodes_them_and_feedback_becomes_proprio(two_arms):
    names, (left_arm, right_arm) = two_arms
    image = np.zeros((8, 8, 3), np.uint8)
    robot = PiperDualArm(*configs(names), cameras=lambda: {"head": image}, instruction="stack the blocks")
    try:
        assert left_arm.enabled and right_arm.enabled
        start = robot.proprio()  # the simulated arms' initial pose, converted to rad and 0..1
        assert np.allclose(start[:6], np.deg2rad(START_DEG), atol=1e-6)
        assert start[6] == pytest.approx(12 / 70)
        chunk = np.array([[0.2, 0.4, -0.5, 0.1, 0.0, -0.1, 0.5, 0.1, 0.3, -0.6, -0.1, 0.1, 0.0, 1.0],
                          [0.25, 0.45, -0.45, 0.15, 0.05, -0.05, 0.0, 0.15, 0.25, -0.55, -0.05, 0.15, 0.05, 0.25]])
        for action in chunk:
            robot.apply(action)
            time.sleep(0.01)  # TEST_LIMITS' speed caps allow the whole step after 10 ms
        wait_until(lambda: right_arm.last_commands()[1] == 17500)
        # 0.25 rad = 14.3239 deg, 0.45 = 25.7831, 0.15 = 8.5944, 0.05 = 2.8648, 0.55 = 31.5127
        assert left_arm.last_commands() == ([14324, 25783, -25783, 8594, 2865, -2865], 0)
        assert right_arm.last_commands() == ([8594, 14324, -31513, -2865, 8594, 2865], 17500)
        wait_until(lambda: np.allclose(robot.proprio(), chunk[-1], atol=2e-5))  # 0.001 degree = 1.7e-5 rad
        obs = robot.observe()
        assert obs.instruction == "stack the blocks" and obs.images["head"] is image and obs.proprio.shape == (14,)
    finally:
        robot.close()


def test_hold_commands_the_measured_pose_then_the_last_target_and_bad_actions_send_nothing(two_arms):
    names, (left_arm, _) = two_arms
    robot = PiperDualArm(*configs(names), cameras=dict, instruction="x")
    try:
        robot.hold()
        wait_until(lambda: left_arm.last_commands()[1] is not None)
        assert left_arm.last_commands() == ([10_000, 20_000, -30_000, 0, 5_000, -5_000], 12_000)
        sent = len(left_arm.received)
        for bad in (np.full(14, np.nan), np.zeros(7)):
            with pytest.raises(ValueError, match="14 finite numbers"):
                robot.apply(bad)
        left_arm.settle()
        assert left_arm.commands(sent) == []
        action = start_action() + 0.05
        robot.apply(action)
        wait_until(lambda: len(left_arm.joint_commands()) == 2)
        left_arm.joints[0] += 3_000  # the arm sags 3 degrees (0.052 rad): hold re-commands the target
        wait_until(lambda: robot.proprio()[0] > action[0] + 0.05)
        robot.hold()
        wait_until(lambda: len(left_arm.joint_commands()) == 3)
        assert left_arm.joint_commands()[-1] == left_arm.joint_commands()[-2]
    finally:
        robot.close()


def test_calibration_maps_policy_joints_to_piper_joints_and_back(two_arms):
    names, (left_arm, _) = two_arms
    signs, offsets = (1, -1, 1, 1, 1, -1), (0.0, 1.0, -0.5, 0.0, 0.0, 0.1)
    robot = PiperDualArm(*configs(names, joint_signs=signs, joint_offsets_rad=offsets), cameras=dict, instruction="x")
    try:
        arm = np.array([0.2, 0.6, 0.0, 0.0, 0.1, 0.2])
        action = np.r_[arm, 1.0, arm, 1.0]
        robot.apply(action)
        piper = np.array(signs) * arm + np.array(offsets)  # [0.2, 0.4, -0.5, 0, 0.1, -0.1]
        wait_until(lambda: left_arm.last_commands()[0] == [11459, 22918, -28648, 0, 5730, -5730])
        assert np.allclose(piper, [0.2, 0.4, -0.5, 0.0, 0.1, -0.1])
        wait_until(lambda: np.allclose(robot.proprio()[:6], arm, atol=2e-5))
    finally:
        robot.close()


def test_an_arm_that_never_enables_fails_clearly_and_two_arms_need_two_channels():
    n = next(_channels)
    arm = SimulatedPiper(f"svrl_test_dead_{n}", enables=False)
    try:
        # first feedback may take seconds under load (feedback_timeout_s stays 5 s); enabling is given 0.5 s
        left, right = configs([f"svrl_test_dead_{n}", f"svrl_test_unused_{n}"], enable_timeout_s=0.5)
        with pytest.raises(ConnectionError, match=rf"svrl_test_dead_{n} did not enable its motors within 0.5s"):
            PiperDualArm(left, right, cameras=dict, instruction="x")
        with pytest.raises(ValueError, match="one CAN channel each"):
            PiperDualArm(left, left, cameras=dict, instruction="x")
    finally:
        arm.stop()


def test_a_joint_jump_is_refused_and_nothing_is_sent_to_either_arm(two_arms):
    names, arms = two_arms
    robot = PiperDualArm(*configs(names), cameras=dict, instruction="x")
    try:
        robot.apply(start_action())
        sent = settled(arms)
        jump = start_action()
        jump[0] += 0.1  # the left arm's step is fine
        jump[7 + 2] += 0.3  # the right arm's joint 3 jumps 0.3 rad
        with pytest.raises(UnsafeAction, match=r"right_\d+: joint 3 would move 0.300 rad from the last target "
                                               r"\(limit 0.2 rad"):
            robot.apply(jump)
        settled(arms)
        assert [arm.commands(since) for arm, since in zip(arms, sent)] == [[], []]
    finally:
        robot.close()


def test_the_speed_cap_moves_the_target_only_speed_times_elapsed(two_arms):
    names, (left_arm, _) = two_arms
    limits = dataclasses.replace(TEST_LIMITS, max_joint_speed_rad_s=0.05, max_gripper_speed_per_s=0.1)
    robot = PiperDualArm(*configs(names, limits), cameras=dict, instruction="x")
    try:
        first = start_action()
        t0 = time.monotonic()
        robot.apply(first)  # the first action, at the measured pose: goes at once
        time.sleep(0.001)
        second = first.copy()
        second[0] += 0.15  # within the jump limit, but 3 s at 0.05 rad/s
        second[6] += 0.5  # gripper: 5 s at 0.1/s
        robot.apply(second)
        elapsed_at_most = time.monotonic() - t0
        moved = robot.left.target[0] - first[0]
        assert 0 < moved <= 0.05 * elapsed_at_most + 1e-12 and moved < 0.15
        assert robot.left.speed_capped == 2  # joint 1 and the gripper
        left_arm.settle()
        joints, gripper = left_arm.last_commands()
        assert joints[0] == round(robot.left.target[0] * (180_000 / np.pi))
        assert 12_000 <= gripper <= 12_000 + 0.1 * elapsed_at_most * 70_000 + 1
    finally:
        robot.close()


def test_values_beyond_the_joint_limits_are_refused_and_within_the_margin_clipped(two_arms):
    names, arms = two_arms
    robot = PiperDualArm(*configs(names), cameras=dict, instruction="x")
    try:
        sent = settled(arms)
        with pytest.raises(UnsafeAction, match=r"left_\d+: joint 1 = 1e\+09 rad \(Piper frame\) is beyond its limits"):
            robot.apply(np.full(14, 1e9))
        slightly = start_action()
        slightly[7 + 1] = -0.03  # right joint 2 cannot go below 0: 0.03 rad is within the 0.05 margin
        slightly[6] = 1.03
        with pytest.raises(UnsafeAction, match="gripper opening 1.1"):
            robot.apply(np.r_[slightly[:6], 1.1, slightly[7:]])
        settled(arms)
        assert [arm.commands(since) for arm, since in zip(arms, sent)] == [[], []]
        robot.apply(slightly)  # right joint 2 is 0.38 rad from the measured pose: ramped to 0
        assert robot.left.clipped == 1 and robot.right.clipped == 1
        settled(arms)
        assert arms[1].last_commands()[0][1] == 0 and arms[0].last_commands()[1] == 70_000
    finally:
        robot.close()


def test_the_first_action_is_ramped_from_the_measured_pose_and_refused_beyond_the_ramp_bound(two_arms):
    names, (left_arm, right_arm) = two_arms
    limits = dataclasses.replace(TEST_LIMITS, max_joint_speed_rad_s=2.5)
    robot = PiperDualArm(*configs(names, limits), cameras=dict, instruction="x")
    try:
        sent = settled([left_arm, right_arm])
        far = start_action()
        far[0] += 1.2
        with pytest.raises(UnsafeAction, match=r"joint 1 would move 1.200 rad from the measured pose \(limit 1.0 rad"):
            robot.apply(far)
        settled([left_arm, right_arm])
        assert left_arm.commands(sent[0]) == [] and right_arm.commands(sent[1]) == []
        ramp = start_action()
        ramp[0] += 0.5
        start = time.monotonic()
        robot.apply(ramp)  # blocks until the target is there: at 2.5 rad/s no sooner than 0.2 s
        assert time.monotonic() - start >= 0.19
        settled([left_arm, right_arm])
        assert left_arm.last_commands()[0][0] == 38648  # 10 deg + 0.5 rad = 38.6479 deg
        steps = [joints[0] for joints in left_arm.joint_commands()]
        assert len(steps) >= 3 and steps == sorted(steps)  # 0.5 rad in steps of at most 0.2 rad (11459)
        assert max(np.diff([10_000, *steps])) <= 11_459 + 1
        assert right_arm.joint_commands()[-1] == [q * 1000 for q in START_DEG]
    finally:
        robot.close()


def test_stale_feedback_is_a_fault_and_hold_sends_nothing(two_arms):
    names, arms = two_arms
    limits = dataclasses.replace(TEST_LIMITS, max_feedback_age_s=0.2)
    robot = PiperDualArm(*configs(names, limits), cameras=dict, instruction="x")
    try:
        wait_until(lambda: succeeds(lambda: robot.apply(start_action())))
        arms[0].feedback.clear()
        time.sleep(0.4)
        sent = settled(arms)
        with pytest.raises(RobotFault, match=r"left_\d+: joint feedback is \d\.\d+s old \(max_feedback_age_s 0.2s\)"):
            robot.hold()
        for call in (robot.proprio, lambda: robot.apply(start_action())):
            with pytest.raises(RobotFault, match="joint feedback is"):
                call()
        settled(arms)
        assert [arm.commands(since) for arm, since in zip(arms, sent)] == [[], []]  # neither arm was commanded
        arms[0].feedback.set()
        wait_until(lambda: succeeds(robot.hold))  # not latched: fresh feedback, commands go again
    finally:
        robot.close()


def test_feedback_silent_past_stale_stop_after_s_stops_the_arm_for_good(two_arms):
    names, (left_arm, _) = two_arms
    limits = dataclasses.replace(TEST_LIMITS, max_feedback_age_s=0.2, stale_stop_after_s=0.5)
    robot = PiperDualArm(*configs(names, limits), cameras=dict, instruction="x")
    try:
        left_arm.feedback.clear()
        time.sleep(0.7)
        with pytest.raises(RobotFault, match="joint feedback silent for"):
            robot.proprio()
        wait_until(lambda: any(m.arbitration_id == MOTION_CTRL_1_ID and m.data[0] == 0x01 for m in left_arm.received))
        left_arm.feedback.set()
        wait_until(lambda: succeeds(robot.proprio))
        with pytest.raises(RobotFault, match="silent for .* commands are refused"):
            robot.apply(start_action())
    finally:
        robot.close()


def test_an_arm_status_error_is_a_fault_and_nothing_is_sent(two_arms):
    names, arms = two_arms
    robot = PiperDualArm(*configs(names), cameras=dict, instruction="x")
    try:
        sent = settled(arms)
        arms[1].err_code = 1 << 10  # byte 6 bit 2: joint 3 beyond its angle limit
        arms[1].arm_status = 0x07
        wait_until(lambda: robot.right.sdk.GetArmStatus().arm_status.err_code != 0)
        wait_until(lambda: int(robot.right.sdk.GetArmStatus().arm_status.arm_status) == 0x07)
        with pytest.raises(RobotFault, match=r"right_\d+: arm status collision; joint 3 beyond its angle limit"):
            robot.apply(start_action())
        with pytest.raises(RobotFault, match="collision"):
            robot.hold()
        settled(arms)
        assert [arm.commands(since) for arm, since in zip(arms, sent)] == [[], []]
        arms[1].err_code, arms[1].arm_status = 0, 0x00
        wait_until(lambda: succeeds(lambda: robot.apply(start_action())))
    finally:
        robot.close()


def test_emergency_stop_sends_the_arms_stop_and_refuses_every_later_command(two_arms):
    names, arms = two_arms
    robot = PiperDualArm(*configs(names), cameras=dict, instruction="x")
    try:
        robot.apply(start_action())
        robot.emergency_stop()
        robot.emergency_stop()  # again: harmless
        settled(arms)
        for arm in arms:
            stops = [bytes(m.data) for m in arm.commands() if m.arbitration_id == MOTION_CTRL_1_ID]
            assert stops == [bytes([0x01, 0, 0, 0, 0, 0, 0, 0])] * 2  # MotionCtrl_1: emergency stop, twice
        for call in (lambda: robot.apply(start_action()), robot.hold):
            with pytest.raises(RobotFault, match="emergency stopped; commands are refused"):
                call()
        assert robot.proprio().shape == (14,)  # still observable
        sent = settled(arms)
    finally:
        robot.close()
    settled(arms)
    # close() leaves the motors alone: the stopped arm lowers itself, damped; disabling would drop it
    assert [arm.commands(since) for arm, since in zip(arms, sent)] == [[], []]
    assert arms[0].enabled and arms[1].enabled


def test_simulated_robot_refuses_actions_after_an_emergency_stop():
    class OneStepEnv:
        action_names = ("x",)

        def reset(self, task, seed):
            return Obs({}, np.zeros(1, np.float32), task)

        def step(self, actions):
            return StepResult(Obs({}, actions[-1].astype(np.float32), "t"), False, False, len(actions))

        def close(self):
            pass

    robot = SimulatedRobot(OneStepEnv(), "t", 0)
    robot.apply(np.zeros(1))
    robot.emergency_stop()
    with pytest.raises(RobotFault, match="emergency stopped"):
        robot.apply(np.zeros(1))


def test_close_moves_to_the_rest_pose_then_disables_the_motors(two_arms):
    names, arms = two_arms
    rest = (0.1, 0.3, -0.5, 0.0, 0.0, 0.0)  # Piper frame
    left, right = configs(names)
    robot = PiperDualArm(dataclasses.replace(left, rest_pose_rad=rest), right, cameras=dict, instruction="x")
    robot.apply(start_action())
    robot.close()
    settled(arms)
    assert not arms[0].enabled and not arms[1].enabled
    for arm in arms:
        last = arm.commands()[-1]
        assert (last.arbitration_id, bytes(last.data[:2])) == (ENABLE_ID, bytes([7, 0x01]))  # DisableArm(7), last
    assert arms[0].joint_commands()[-1] == [5730, 17189, -28648, 0, 0, 0]  # the rest pose, in 0.001 degree
    assert arms[1].joint_commands()[-1] == [q * 1000 for q in START_DEG]
    with pytest.raises(RobotFault, match="closed"):
        robot.proprio()


def test_motion_ctrl_2_precedes_every_joint_command(two_arms):
    names, arms = two_arms
    robot = PiperDualArm(*configs(names, speed_percent=20), cameras=dict, instruction="x")
    try:
        for k in range(3):
            robot.apply(start_action() + 0.01 * k)
            time.sleep(0.01)
        robot.hold()
        for arm in arms:
            wait_until(lambda: len(arm.joint_commands()) == 4)
            frames = arm.commands()
            starts = [i for i, m in enumerate(frames) if m.arbitration_id == JOINT_CTRL_IDS[0]]
            assert len(starts) == 4
            for i in starts:  # CAN command mode, MOVE J, 20 %, position-velocity
                assert (frames[i - 1].arbitration_id, bytes(frames[i - 1].data[:4])) == (MOTION_CTRL_2_ID,
                                                                                         bytes([1, 1, 20, 0]))
    finally:
        robot.close()


def test_dry_run_sends_no_command_frame_and_logs_each_one(two_arms, caplog):
    names, arms = two_arms
    caplog.set_level(logging.INFO, logger="svrl.piper")
    robot = PiperDualArm(*configs(names, dry_run=True), cameras=dict, instruction="x")
    try:
        assert np.allclose(robot.proprio()[:6], np.deg2rad(START_DEG), atol=1e-6)
        robot.apply(start_action())
        robot.hold()
    finally:
        robot.close()
    settled(arms)
    assert [arm.commands() for arm in arms] == [[], []] and not any(arm.enabled for arm in arms)
    lines = [r.getMessage() for r in caplog.records if r.name == "svrl.piper" and r.levelno == logging.INFO]
    left = [line.split("dry run: ")[1] for line in lines if f"{names[0]} dry run: " in line]
    assert left == ["MotionCtrl_2(1, 1, 30, 0)", "JointCtrl(10000, 20000, -30000, 0, 5000, -5000)",
                    "GripperCtrl(12000, 1000, 1, 0)"] * 2 + ["DisableArm(7,)"]
