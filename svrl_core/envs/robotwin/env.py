"""RoboTwin-style dual-arm tabletop on SAPIEN behind the VLAEnv contract.

One `RoboTwinEnv` is one simulator slot: a scene with a table, two arms and a head camera,
kept alive across episodes; a reset removes the previous task's blocks and builds the next
layout. Actions are RoboTwin's 14 joint targets [left 6, left gripper, right 6, right
gripper] (gripper 0 = closed, 1 = open); proprio is the same 14 numbers measured. One action
is held for 0.04 s (10 physics steps of 4 ms). `physics_only=True` builds no renderer and
needs no Vulkan device (tests of physics and success checks, benchmarks).
"""

from __future__ import annotations

import numpy as np
import sapien

from svrl_core.config import EnvConfig
from svrl_core.envs.base import DUAL_ARM_ACTION_NAMES, Obs, StepResult
from svrl_core.envs.robotwin import tasks as task_specs
from svrl_core.envs.robotwin.arm import Arm, build_arm
from svrl_core.envs.robotwin.rendering import HeadCamera, render_system

ACTION_NAMES = DUAL_ARM_ACTION_NAMES
ACTION_DIM = len(ACTION_NAMES)
TIMESTEP, SUBSTEPS = 1 / 250, 10
ARM_BASES = {"left": [-0.3, -0.32, task_specs.TABLE_Z], "right": [0.3, -0.32, task_specs.TABLE_Z]}
HOME_JOINTS = np.array([0.0, -1.75, 1.967, 0.0, 1.354, 0.0])  # TCP 0.22 m ahead of the base, 0.24 m up, fingers down
TABLE_HALF = (0.6, 0.35, 0.37)
TABLE_CENTRE_Y = -0.05


def facing_forward(position) -> sapien.Pose:
    """An arm base at `position` whose x axis points away from the robot (world +y)."""
    return sapien.Pose(position, q=[np.sqrt(0.5), 0.0, 0.0, np.sqrt(0.5)])


class RoboTwinEnv:
    """VLAEnv over RoboTwin's box-only tasks; `seed` picks the layout."""

    action_dim = ACTION_DIM
    action_names = ACTION_NAMES

    def __init__(self, cfg: EnvConfig, physics_only: bool = False):
        self.cfg = cfg
        self._known_tasks = {name: task_specs.find_task(name) for name in cfg.tasks}
        self.tasks = tuple(cfg.tasks)
        self.max_steps = max(self._step_limit(spec) for spec in self._known_tasks.values())
        systems = [sapien.physx.PhysxCpuSystem()] + ([] if physics_only else [render_system()])
        self.scene = sapien.Scene(systems)
        self.scene.set_timestep(TIMESTEP)
        self.material = sapien.physx.PhysxMaterial(static_friction=1.0, dynamic_friction=1.0, restitution=0.0)
        self.visuals = not physics_only
        self._build_table()
        self.arms = {side: Arm(build_arm(self.scene, side, facing_forward(base), self.visuals, self.material))
                     for side, base in ARM_BASES.items()}
        self._ignore_robot_self_collisions()
        self.camera = None if physics_only else HeadCamera(self.scene, cfg.image_size, cfg.image_height or cfg.image_size)
        self._actors: dict[str, sapien.Entity] = {}
        self.task_spec: task_specs.TaskSpec | None = None  # of the current episode
        self.layout: task_specs.Layout | None = None

    # --- VLAEnv --------------------------------------------------------------------
    def reset(self, task: str, seed: int) -> Obs:
        spec = self._known_tasks.get(task) or task_specs.find_task(task)  # eval splits may name other tasks
        self.task_spec, self.layout = spec, task_specs.layout_for(spec, seed)
        self._limit = self._step_limit(spec)
        self._place_blocks(self.layout)
        for arm in self.arms.values():
            arm.reset(HOME_JOINTS)
        self._steps, self._success = 0, False
        for _ in range(SUBSTEPS):  # let the blocks settle onto the table
            self.scene.step()
        return self._observe()

    def step(self, action_chunk: np.ndarray) -> StepResult:
        if self.task_spec is None:
            raise RuntimeError("robotwin env: call reset() before step()")
        chunk = np.asarray(action_chunk, dtype=np.float64)
        if chunk.ndim != 2 or chunk.shape[1] != ACTION_DIM:
            raise ValueError(f"robotwin env: an action chunk must be (K, {ACTION_DIM}) joint targets "
                             f"[left 6, left gripper, right 6, right gripper], got shape {chunk.shape}")
        executed = 0
        for action in chunk:
            if self._success or self._steps >= self._limit:
                break
            self.apply(action)
            executed += 1
            self._success = self.check_success()
        done = self._success or self._steps >= self._limit
        return StepResult(self._observe(), done, self._success, executed, {"steps": self._steps})

    def close(self) -> None:
        self._actors.clear()
        self.scene = None

    # --- physics -------------------------------------------------------------------
    def apply(self, action: np.ndarray) -> None:
        """Hold one 14-D action for one control period."""
        self.arms["left"].command(action[:6], action[6])
        self.arms["right"].command(action[7:13], action[13])
        for _ in range(SUBSTEPS):
            self.scene.step()
        self._steps += 1

    def proprio(self) -> np.ndarray:
        """(14,) measured joints and gripper openness, in the action's layout."""
        left, right = self.arms["left"], self.arms["right"]
        return np.r_[left.joints(), left.gripper_opening(), right.joints(), right.gripper_opening()].astype(np.float32)

    def state(self) -> task_specs.SceneState:
        positions = {name: np.asarray(actor.pose.p, dtype=np.float64) for name, actor in self._actors.items()}
        opening = {side: arm.gripper_opening() > 0.8 for side, arm in self.arms.items()}
        return task_specs.SceneState(positions, opening["left"], opening["right"])

    def check_success(self) -> bool:
        return bool(self.task_spec.success(self.state(), self.layout))

    def block_pose(self, name: str) -> sapien.Pose:
        return self._actors[name].pose

    # --- internals -----------------------------------------------------------------
    def _step_limit(self, spec: task_specs.TaskSpec) -> int:
        return spec.step_limit if self.cfg.max_steps in ("oft", "simplevla") else int(self.cfg.max_steps)

    def _build_table(self) -> None:
        builder = self.scene.create_actor_builder()
        centre = sapien.Pose([0.0, TABLE_CENTRE_Y, task_specs.TABLE_Z - TABLE_HALF[2]])
        builder.add_box_collision(centre, half_size=TABLE_HALF, material=self.material)
        if self.visuals:
            builder.add_box_visual(centre, half_size=TABLE_HALF, material=[0.62, 0.5, 0.38])
            wall = sapien.Pose([0.0, TABLE_CENTRE_Y + TABLE_HALF[1] + 0.05, task_specs.TABLE_Z + 0.4])
            builder.add_box_visual(wall, half_size=[1.5, 0.01, 0.6], material=[0.8, 0.82, 0.85])  # a backdrop
        builder.build_static(name="table")

    def _ignore_robot_self_collisions(self) -> None:
        """The arms never collide with themselves or each other (as RoboTwin's planner keeps them apart)."""
        for arm in self.arms.values():
            for link in arm.robot.links:
                for shape in link.collision_shapes:
                    group = shape.get_collision_groups()
                    shape.set_collision_groups([group[0], group[1], group[2] | 1, group[3]])

    def _place_blocks(self, layout: task_specs.Layout) -> None:
        for actor in self._actors.values():
            self.scene.remove_entity(actor)
        self._actors = {block.name: self._build_block(block) for block in layout.blocks}

    def _build_block(self, block: task_specs.Block) -> sapien.Entity:
        builder = self.scene.create_actor_builder()
        builder.add_box_collision(half_size=block.half_size, material=self.material, density=500)
        if self.visuals:
            builder.add_box_visual(half_size=block.half_size, material=list(block.colour))
        pose = sapien.Pose(block.position, q=[np.cos(block.yaw / 2), 0.0, 0.0, np.sin(block.yaw / 2)])
        builder.set_initial_pose(pose)
        return builder.build_static(name=block.name) if block.static else builder.build(name=block.name)

    def _observe(self) -> Obs:
        images = {} if self.camera is None else {"head": self.camera.render()}
        return Obs(images, self.proprio(), self.layout.instruction)
