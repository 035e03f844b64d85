"""The AgileX Piper adapter against python-can's virtual bus: the vendor SDK's real frames go to a
small simulated arm written here, which decodes them by the protocol and answers with feedback."""

from __future__ import annotations

import itertools
import threading
import time

import can
import numpy as np
import pytest

from svrl_core.deploy.piper import PiperArmConfig, PiperDualArm, gripper_command_units, joint_command_units

JOINT_CTRL_IDS = (0x155, 0x156, 0x157)  # J1&J2, J3&J4, J5&J6: two big-endian int32, 0.001 degree
GRIPPER_CTRL_ID = 0x159  # int32 opening (0.001 mm), uint16 effort, uint8 code, uint8 set-zero
ENABLE_ID = 0x471
JOINT_FEEDBACK_IDS = (0x2A5, 0x2A6, 0x2A7)
GRIPPER_FEEDBACK_ID = 0x2A8
LOW_SPEED_FEEDBACK_IDS = range(0x261, 0x267)  # byte 5 bit 6: the motor's driver is enabled
_channels = itertools.count()


def int32(data: bytes, start: int) -> int:
    return int.from_bytes(data[start:start + 4], "big", signed=True)


class SimulatedPiper(threading.Thread):
    """A Piper's CAN side: commands take effect at once; feedback every 5 ms."""

    def __init__(self, channel: str, enables: bool = True):
        super().__init__(daemon=True)
        self.bus = can.Bus(channel=channel, interface="virtual")
        self.enables, self.enabled = enables, False
        self.joints = [10_000, 20_000, -30_000, 0, 5_000, -5_000]  # 0.001 degree
        self.gripper = 12_000  # 0.001 mm
        self.received: list[can.Message] = []
        self._stopping = threading.Event()
        self.start()

    def run(self) -> None:
        while not self._stopping.is_set():
            message = self.bus.recv(0.005)
            if message is not None:
                self.received.append(message)
                self._apply(message)
            self._feedback()

    def _apply(self, message: can.Message) -> None:
        data = bytes(message.data)
        if message.arbitration_id == ENABLE_ID and data[1] == 0x02 and self.enables:
            self.enabled = True
        elif message.arbitration_id in JOINT_CTRL_IDS:
            pair = JOINT_CTRL_IDS.index(message.arbitration_id)
            self.joints[2 * pair: 2 * pair + 2] = [int32(data, 0), int32(data, 4)]
        elif message.arbitration_id == GRIPPER_CTRL_ID:
            self.gripper = int32(data, 0)

    def _feedback(self) -> None:
        def send(arbitration_id: int, data: bytes) -> None:
            self.bus.send(can.Message(arbitration_id=arbitration_id, data=data, is_extended_id=False))

        for pair, arbitration_id in enumerate(JOINT_FEEDBACK_IDS):
            send(arbitration_id, b"".join(q.to_bytes(4, "big", signed=True) for q in self.joints[2 * pair:2 * pair + 2]))
        send(GRIPPER_FEEDBACK_ID, self.gripper.to_bytes(4, "big", signed=True) + bytes(4))
        for arbitration_id in LOW_SPEED_FEEDBACK_IDS:
            send(arbitration_id, bytes([0, 0, 0, 0, 0, 0x40 if self.enabled else 0, 0, 0]))

    def commands(self) -> tuple[list[int], int]:
        """The last joint and gripper commands received, decoded by the protocol."""
        joints = [None] * 6
        gripper = None
        for message in self.received:
            data = bytes(message.data)
            if message.arbitration_id in JOINT_CTRL_IDS:
                pair = JOINT_CTRL_IDS.index(message.arbitration_id)
                joints[2 * pair: 2 * pair + 2] = [int32(data, 0), int32(data, 4)]
            elif message.arbitration_id == GRIPPER_CTRL_ID:
                gripper = int32(data, 0)
        return joints, gripper

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


def configs(names, **overrides):
    return [PiperArmConfig(can_channel=name, interface="virtual", **overrides) for name in names]


def wait_until(condition, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_unit_conversions_by_hand():
    # 0.1 rad = 5.7296 deg; 1 rad = 57.2958 deg; 0.5 rad = 28.6479 deg; 2 rad = 114.5916 deg
    units, clipped = joint_command_units(np.array([0.1, 1.0, -1.0, 0.5, -0.5, 2.0]))
    assert units == [5730, 57296, -57296, 28648, -28648, 114592] and clipped == 0
    # joint 2 cannot go below 0, joint 3 above 0, joint 5 beyond 1.22 rad (69.9008 deg)
    units, clipped = joint_command_units(np.array([0.0, -0.3, 0.2, 0.0, 1.5, 0.0]))
    assert units == [0, 0, 0, 0, 69901, 0] and clipped == 3
    assert [gripper_command_units(x) for x in (0.0, 0.5, 1.0, 1.7, -1.0)] == [0, 35000, 70000, 70000, 0]


def test_commands_reach_the_bus_as_the_sdk_encodes_them_and_feedback_becomes_proprio(two_arms):
    names, (left_arm, right_arm) = two_arms
    image = np.zeros((8, 8, 3), np.uint8)
    robot = PiperDualArm(*configs(names), cameras=lambda: {"head": image}, instruction="stack the blocks")
    try:
        assert left_arm.enabled and right_arm.enabled
        start = robot.proprio()  # the simulated arms' initial pose, converted to rad and 0..1
        assert np.allclose(start[:6], np.deg2rad([10, 20, -30, 0, 5, -5]), atol=1e-6)
        assert start[6] == pytest.approx(12 / 70)
        chunk = np.array([[0.1, 1.0, -1.0, 0.5, -0.5, 2.0, 0.5, 0.0, 0.2, -0.2, 0.0, 0.0, 0.0, 1.0],
                          [0.2, 1.1, -0.9, 0.4, -0.4, 1.9, 0.0, 0.1, 0.3, -0.3, 0.1, 0.1, 0.1, 0.25]])
        for action in chunk:
            robot.apply(action)
        wait_until(lambda: right_arm.commands()[1] == 17500)
        assert left_arm.commands() == ([11459, 63025, -51566, 22918, -22918, 108862], 0)
        assert right_arm.commands() == ([5730, 17189, -17189, 5730, 5730, 5730], 17500)
        wait_until(lambda: np.allclose(robot.proprio(), chunk[-1], atol=2e-5))  # 0.001 degree = 1.7e-5 rad
        obs = robot.observe()
        assert obs.instruction == "stack the blocks" and obs.images["head"] is image and obs.proprio.shape == (14,)
    finally:
        robot.close()


def test_hold_commands_the_measured_pose_and_bad_actions_send_nothing(two_arms):
    names, (left_arm, _) = two_arms
    robot = PiperDualArm(*configs(names), cameras=dict, instruction="x")
    try:
        robot.hold()
        wait_until(lambda: left_arm.commands()[1] is not None)
        assert left_arm.commands() == ([10_000, 20_000, -30_000, 0, 5_000, -5_000], 12_000)
        sent = len(left_arm.received)
        for bad in (np.full(14, np.nan), np.zeros(7)):
            with pytest.raises(ValueError, match="14 finite numbers"):
                robot.apply(bad)
        time.sleep(0.05)
        assert all(m.arbitration_id not in (*JOINT_CTRL_IDS, GRIPPER_CTRL_ID) for m in left_arm.received[sent:])
    finally:
        robot.close()


def test_calibration_maps_policy_joints_to_piper_joints_and_back(two_arms):
    names, (left_arm, _) = two_arms
    signs, offsets = (1, -1, 1, 1, 1, -1), (0.0, 1.0, -0.5, 0.0, 0.0, 0.1)
    robot = PiperDualArm(*configs(names, joint_signs=signs, joint_offsets_rad=offsets), cameras=dict, instruction="x")
    try:
        action = np.r_[[0.1, 0.2, -0.3, 0.0, 0.1, 0.2], 1.0, np.zeros(6), 1.0]
        robot.apply(action)
        piper = np.array(signs) * action[:6] + np.array(offsets)  # [0.1, 0.8, -0.8, 0, 0.1, -0.1]
        wait_until(lambda: left_arm.commands()[0] == [round(q * 180_000 / np.pi) for q in piper])
        wait_until(lambda: np.allclose(robot.proprio()[:6], action[:6], atol=2e-5))
    finally:
        robot.close()


def test_an_arm_that_never_enables_fails_clearly_and_two_arms_need_two_channels():
    n = next(_channels)
    arm = SimulatedPiper(f"svrl_test_dead_{n}", enables=False)
    try:
        left, right = configs([f"svrl_test_dead_{n}", f"svrl_test_unused_{n}"], connect_timeout_s=0.5)
        with pytest.raises(ConnectionError, match=rf"svrl_test_dead_{n} did not enable its motors within 0.5s"):
            PiperDualArm(left, right, cameras=dict, instruction="x")
        with pytest.raises(ValueError, match="one CAN channel each"):
            PiperDualArm(left, left, cameras=dict, instruction="x")
    finally:
        arm.stop()
