"""Scripted experts for the RoboTwin box tasks: inverse kinematics plus grasp / lift / place primitives.

Like RoboTwin's experts, each task is a sequence of primitives on one arm at a time (the arm on
the block's side of the table): move above, descend, close, lift, carry, lower, open, retreat,
return home. Motions are straight lines of the TCP, solved to joint targets by SAPIEN's
Pinocchio IK every control step; the action is the 14 joint targets [left 6, left gripper,
right 6, right gripper]. Noise (std `noise` x 0.02 rad, a quarter of it while holding) is
added to the joint targets so that demonstrations differ. With `execution_noise` (DART), the env
runs joint targets pushed off by a slowly drifting offset while the episode records the script's
clean targets, so the demonstrations show how to get back on course.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np
import sapien

from svrl_core.data import Episode
from svrl_core.envs.robotwin.arm import tool_pose, top_down
from svrl_core.envs.robotwin.env import HOME_JOINTS, RoboTwinEnv
from svrl_core.envs.robotwin.tasks import TABLE_Z, TALL_BOX, Layout
from svrl_core.experts.recording import record_episode

OPEN, CLOSED = 1.0, 0.0
SPEED = 0.012  # metres of TCP travel per control step (0.3 m/s)
HOVER = 0.08  # above an object before descending onto it
LIFT = 0.07
JOINT_NOISE = 0.02  # radians per unit of ingest's expert_noise and execution_noise
DRIFT_DECAY = 0.9  # per step: the executed offset wanders for about 10 steps (0.4 s) before it fades
FINGER_CLEARANCE = 0.02  # the fingertips stay this far above the table


def _yaw_of(pose: sapien.Pose, axis: int = 0) -> float:
    """Heading of one of the pose's axes in the xy plane (a block's x axis, a top-down TCP's closing axis y)."""
    direction = pose.to_transformation_matrix()[:3, axis]
    return float(np.arctan2(direction[1], direction[0]))


def _grasp_yaw(block_yaw: float, current: float) -> float:
    """The finger direction across one pair of the block's faces that is closest to `current`."""
    options = block_yaw + np.pi / 2 * np.arange(-4, 5)
    return float(options[np.argmin(np.abs(options - current))])


class BoxExpert:
    """Runs one task's script; `act()` returns the next 14-D action."""

    def __init__(self, env: RoboTwinEnv, rng: np.random.Generator, noise: float):
        self.env, self.rng, self.noise = env, rng, noise
        self.joints = {side: arm.joints() for side, arm in env.arms.items()}
        self.gripper = {side: OPEN for side in env.arms}
        self.pose = {side: arm.tcp_pose() for side, arm in env.arms.items()}
        self._script = self._plan(env.layout)

    def act(self) -> np.ndarray:
        try:
            return next(self._script)
        except StopIteration:  # the script is over: hold still until the episode ends
            return self._action(holding=False)

    # --- scripts -------------------------------------------------------------------
    def _plan(self, layout: Layout) -> Iterator[np.ndarray]:
        task = self.env.task_spec.name
        if task == "handover_block":
            yield from self._handover()
            return
        last_side, below = None, None
        for block in layout.blocks:  # in the order the task wants them placed
            side = "left" if self.env.block_pose(block.name).p[0] < 0 else "right"
            if last_side not in (None, side):
                yield from self._go_home(last_side)
            target = layout.targets[block.name]
            if task.startswith("stack") and below is not None:  # onto the block below, wherever it ended up
                target = np.asarray(self.env.block_pose(below).p) + [0.0, 0.0, 0.05]
            yield from self._pick_and_place(side, block.name, target)
            last_side, below = side, block.name
        yield from self._go_home(last_side)

    def _pick_and_place(self, side: str, name: str, target: np.ndarray) -> Iterator[np.ndarray]:
        block = self.env.block_pose(name)
        half = self._half_height(name)
        yaw = _grasp_yaw(_yaw_of(block), _yaw_of(self.pose[side], axis=1))
        grasp_z = max(block.p[2], TABLE_Z + FINGER_CLEARANCE)
        above = np.r_[block.p[:2], block.p[2] + half + HOVER]
        yield from self._move(side, top_down(above, yaw))
        yield from self._move(side, top_down(np.r_[block.p[:2], grasp_z], yaw))
        yield from self._grip(side, CLOSED)
        held_above_centre = grasp_z - block.p[2]
        carry_z = max(target[2], block.p[2]) + half + LIFT + held_above_centre
        yield from self._move(side, top_down(np.r_[block.p[:2], carry_z], yaw))
        yield from self._move(side, top_down(np.r_[target[:2], carry_z], yaw))
        yield from self._move(side, top_down(np.r_[target[:2], target[2] + held_above_centre + 0.004], yaw))
        yield from self._grip(side, OPEN)
        yield from self._move(side, top_down(np.r_[target[:2], carry_z], yaw))

    def _handover(self) -> Iterator[np.ndarray]:
        """Left arm lifts the tall box by its top, turns it square in the middle, the right arm takes it
        from the side lower down, the left lets go, the right stands it on the pad."""
        box = self.env.block_pose("box")
        top = box.p[2] + TALL_BOX[2]
        yaw = _grasp_yaw(_yaw_of(box), _yaw_of(self.pose["left"], axis=1))
        grip_z = top - 0.035
        yield from self._move("left", top_down(np.r_[box.p[:2], top + HOVER], yaw))
        yield from self._move("left", top_down(np.r_[box.p[:2], grip_z], yaw))
        yield from self._grip("left", CLOSED)
        lift_z = grip_z + 0.1
        yield from self._move("left", top_down(np.r_[box.p[:2], lift_z], yaw))
        square = _grasp_yaw(0.0, yaw)  # box faces along the world axes
        middle = np.array([-0.03, -0.02])
        yield from self._move("left", top_down(np.r_[middle, lift_z], square))
        held = self.env.block_pose("box").p
        side_grip = np.r_[held[:2], held[2] - 0.045]
        sideways = dict(tool_x=[-1.0, 0.0, 0.0], tool_y=[0.0, 1.0, 0.0])
        yield from self._move("right", tool_pose(side_grip + [0.12, 0.0, 0.0], **sideways))
        yield from self._move("right", tool_pose(side_grip + [0.005, 0.0, 0.0], **sideways))
        yield from self._grip("right", CLOSED)
        yield from self._grip("left", OPEN)
        yield from self._move("left", top_down(np.r_[middle, lift_z + 0.1], square))
        yield from self._go_home("left")
        pad = self.env.block_pose("pad").p
        below_centre = held[2] - side_grip[2]
        place = np.r_[pad[:2], TABLE_Z + 0.01 + TALL_BOX[2] * 2 - TALL_BOX[2] - below_centre]
        carry = np.r_[pad[:2], place[2] + 0.05]
        yield from self._move("right", tool_pose(carry, **sideways))
        yield from self._move("right", tool_pose(place + [0.0, 0.0, 0.004], **sideways))
        yield from self._grip("right", OPEN)
        yield from self._move("right", tool_pose(place + [0.1, 0.0, 0.03], **sideways))

    def _half_height(self, name: str) -> float:
        block = next(b for b in self.env.layout.blocks if b.name == name)
        return block.half_size[2]

    # --- primitives ----------------------------------------------------------------
    def _move(self, side: str, goal: sapien.Pose) -> Iterator[np.ndarray]:
        """A straight TCP line from the last commanded pose to `goal`, orientation slerped."""
        start = self.pose[side]
        distance = np.linalg.norm(goal.p - start.p)
        turn = np.linalg.norm((start.inv() * goal).to_transformation_matrix()[:3, :3] - np.eye(3))
        steps = int(max(6, np.ceil(distance / SPEED), np.ceil(turn / 0.06)))
        for step in range(1, steps + 1):
            fraction = step / steps
            pose = sapien.Pose(start.p + fraction * (goal.p - start.p), _slerp(start.q, goal.q, fraction))
            self.joints[side], _ = self.env.arms[side].solve_ik(pose, self.joints[side])
            yield self._action(holding=self.gripper[side] == CLOSED)
        self.pose[side] = goal
        for _ in range(3):  # let the drives catch up before the next primitive reads the scene
            yield self._action(holding=self.gripper[side] == CLOSED)

    def _grip(self, side: str, value: float, steps: int = 10) -> Iterator[np.ndarray]:
        self.gripper[side] = value
        for _ in range(steps):
            yield self._action(holding=True)

    def _go_home(self, side: str) -> Iterator[np.ndarray]:
        start = self.joints[side]
        for fraction in np.linspace(0.0, 1.0, 25)[1:]:
            self.joints[side] = start + fraction * (HOME_JOINTS - start)
            yield self._action(holding=False)
        self.pose[side] = self.env.arms[side].tcp_pose_at(HOME_JOINTS)

    def _action(self, holding: bool) -> np.ndarray:
        scale = self.noise * JOINT_NOISE * (0.25 if holding else 1.0)
        left, right = (self.joints[s] + self.rng.normal(0.0, scale, 6) for s in ("left", "right"))
        return np.r_[left, self.gripper["left"], right, self.gripper["right"]].astype(np.float32)  # (14,)


def _slerp(q0: np.ndarray, q1: np.ndarray, fraction: float) -> np.ndarray:
    q0, q1 = np.asarray(q0, np.float64), np.asarray(q1, np.float64)
    dot = float(np.dot(q0, q1))
    if dot < 0.0:
        q1, dot = -q1, -dot
    if dot > 0.9995:
        q = q0 + fraction * (q1 - q0)
        return q / np.linalg.norm(q)
    angle = np.arccos(dot)
    return (np.sin((1 - fraction) * angle) * q0 + np.sin(fraction * angle) * q1) / np.sin(angle)


class JointDrift:
    """DART's perturbation: an offset on the 12 arm joints that follows an AR(1) random walk (std
    `scale` x JOINT_NOISE per step), a quarter of it on an arm whose gripper is closed."""

    ARM_JOINTS = (slice(0, 6), slice(7, 13))  # left, right; their grippers are 6 and 13
    GRIPPERS = (6, 13)

    def __init__(self, rng: np.random.Generator, scale: float):
        self.rng, self.scale = rng, scale
        self.offset = np.zeros(14)

    def __call__(self, action: np.ndarray) -> np.ndarray:
        """(14,) clean joint targets -> (14,) executed ones; the grippers are never perturbed."""
        for joints, gripper in zip(self.ARM_JOINTS, self.GRIPPERS):
            std = self.scale * JOINT_NOISE * (0.25 if action[gripper] == CLOSED else 1.0)
            self.offset[joints] = DRIFT_DECAY * self.offset[joints] + self.rng.normal(0.0, std, 6)
        return (action + self.offset).astype(np.float32)


def record_demonstration(env: RoboTwinEnv, task: str, seed: int, noise: float,
                         execution_noise: float = 0.0) -> tuple[Episode, bool]:
    """Run the task's script from layout `seed`, one action per step; returns the episode and its success.
    `execution_noise` > 0: the env runs the script's targets plus a JointDrift, the episode keeps them clean."""
    rng = np.random.default_rng([seed, 7919])
    drift = JointDrift(np.random.default_rng([seed, 104729]), execution_noise) if execution_noise else None
    return record_episode(env, task, seed, lambda: BoxExpert(env, rng, noise).act, execute=drift)
