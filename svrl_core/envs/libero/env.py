"""LIBERO behind the VLAEnv contract: official tasks and init states, cheap CPU rendering.

One `LiberoEnv` is one simulator slot. It keeps the robosuite env of each task it has
seen alive (up to `cached_tasks`) and moves between episodes with a soft reset plus the
official init state, instead of rebuilding the scene (3.5-5 CPU-s) every time. Cameras are
rendered only when an observation is returned (once per action chunk), by our own
renderer with MSAA off and simplified visual meshes (render.py); robosuite itself never
renders. `seed` is the index of the official initial state.
"""

from __future__ import annotations

import time
from collections import Counter, OrderedDict

import numpy as np

from svrl_core.config import EnvConfig
from svrl_core.envs.base import Obs, StepResult
from svrl_core.envs.libero import suites
from svrl_core.envs.libero.lean_control import LeanArmControl
from svrl_core.envs.libero.render import CameraRenderer, simplify_render_meshes
from svrl_core.envs.libero.split_step import SplitPhysicsStep

NOOP = np.array([0, 0, 0, 0, 0, 0, -1], dtype=np.float64)  # OSC_POSE delta, gripper open
CAMERAS = ("agentview", "robot0_eye_in_hand")


def make_control_env(task: suites.LiberoTask, image_size: int, cameras: tuple[str, ...], stock: bool):
    """The robosuite env of a task. stock=True: LIBERO's OffScreenRenderEnv exactly as the
    official eval builds it (renders every step); stock=False: no robosuite rendering, soft resets."""
    from libero.libero.envs import OffScreenRenderEnv
    from libero.libero.envs.env_wrapper import ControlEnv

    size = dict(camera_heights=image_size, camera_widths=image_size)
    if stock:
        return OffScreenRenderEnv(bddl_file_name=task.bddl_path, camera_names=list(cameras), **size)
    return ControlEnv(bddl_file_name=task.bddl_path, has_offscreen_renderer=False, use_camera_obs=False,
                      hard_reset=False, ignore_done=True, camera_names=list(cameras), **size)


def proprio_of(raw: dict) -> np.ndarray:
    """(8,) float32: eef position, eef axis-angle, two gripper joints (OpenVLA-OFT's LIBERO state)."""
    return np.concatenate([raw["robot0_eef_pos"], quat_to_axis_angle(raw["robot0_eef_quat"]),
                           raw["robot0_gripper_qpos"]]).astype(np.float32)


def quat_to_axis_angle(quat_xyzw: np.ndarray) -> np.ndarray:
    x, y, z, w = np.asarray(quat_xyzw, dtype=np.float64)
    w = np.clip(w, -1.0, 1.0)
    sin_half = np.sqrt(max(1.0 - w * w, 0.0))
    if sin_half < 1e-8:
        return np.zeros(3)
    return np.array([x, y, z]) / sin_half * 2.0 * np.arccos(w)


class _TaskSim:
    """One task's live robosuite env and its renderer."""

    def __init__(self, task: suites.LiberoTask, cfg: EnvConfig):
        self.task = task
        self.env = make_control_env(task, cfg.image_size, tuple(cfg.cameras), stock=False)
        model = self.env.sim.model._model
        if cfg.render_mesh_faces:
            simplify_render_meshes(model, cfg.render_mesh_faces)
        self.renderer = CameraRenderer(model, cfg.image_size, cfg.image_size, msaa=cfg.msaa)
        self.env.seed(0)  # the official eval seeds once; init states fix everything else
        self.physics = SplitPhysicsStep(self.env.sim) if cfg.fast_substeps else None
        robosuite_env = self.env.env  # under LIBERO's wrapper
        fast_arm = cfg.fast_substeps and LeanArmControl.supports(robosuite_env)
        self.arm = LeanArmControl(robosuite_env) if fast_arm else None

    def step(self, action: np.ndarray) -> dict:
        """One control step (robosuite's 25 physics substeps) -> robosuite's observation dict."""
        if self.physics is None:
            return self.env.step(action)[0]
        return self.physics.control_step(self.env.step, action)[0]

    def reset(self, state: np.ndarray) -> dict:
        self.env.reset()
        for robot in self.env.robots:  # a soft reset keeps the gripper's command ramp; a rebuild zeroes it
            robot.gripper.current_action = np.zeros(robot.gripper.dof)
        return self.env.set_init_state(state)

    def close(self) -> None:
        self.renderer.close()
        self.env.close()


class LiberoEnv:
    """VLAEnv over the tasks of one LIBERO suite (names or indices in `cfg.tasks`)."""

    action_dim = 7
    action_names = ("eef_dx", "eef_dy", "eef_dz", "eef_drx", "eef_dry", "eef_drz", "gripper")  # gripper -1 = open

    def __init__(self, cfg: EnvConfig):
        self.cfg = cfg
        self.suite = cfg.suite
        self._tasks = {name: suites.find_task(cfg.suite, name) for name in cfg.tasks}
        self.tasks = tuple(cfg.tasks)
        self.max_steps = suites.step_limit(cfg.suite, cfg.max_steps)
        self._sims: OrderedDict[str, _TaskSim] = OrderedDict()  # least recently used first
        self._sim: _TaskSim | None = None
        self._error: str | None = None
        self.timings: Counter = Counter()  # seconds and counts by kind: where a rollout's env time goes

    def task_info(self, task: str) -> suites.LiberoTask:
        if task not in self._tasks:  # tasks outside the config (e.g. an eval split) are looked up too
            self._tasks[task] = suites.find_task(self.suite, task)
        return self._tasks[task]

    # --- VLAEnv --------------------------------------------------------------------
    def reset(self, task: str, seed: int) -> Obs:
        info = self.task_info(task)
        state = suites.init_state(info, seed)
        self._steps, self._success, self._error, self._task = 0, False, None, task
        self._sim = self._sim_for(info)  # a scene that cannot be built is a setup error: it raises
        began = time.perf_counter()
        try:
            self._raw = self._sim.reset(state)
            for _ in range(suites.SETTLE_STEPS):
                self._raw = self._sim.step(NOOP)
        except Exception as err:  # noqa: BLE001 - recorded as this episode's failure, never dropped
            self._fail(err)
            return self._blank_obs()
        finally:
            self.timings.update(resets=1, reset_s=time.perf_counter() - began)
        return self._observe()

    def step(self, action_chunk: np.ndarray) -> StepResult:
        if self._sim is None and self._error is None:
            raise RuntimeError("LIBERO env: call reset() before step()")
        chunk = np.asarray(action_chunk, dtype=np.float64)
        if chunk.ndim != 2 or chunk.shape[1] != self.action_dim:
            raise ValueError(f"LIBERO env: action chunk must be (K, {self.action_dim}), got {chunk.shape}")
        executed = 0
        if self._error is None:
            try:
                began = time.perf_counter()
                for action in chunk:
                    if self._success or self._steps >= self.max_steps:
                        break
                    self._raw = self._sim.step(np.clip(action, -1.0, 1.0))
                    self._steps += 1
                    executed += 1
                    self._success = bool(self._sim.env.check_success())
                self.timings.update(steps=executed, physics_s=time.perf_counter() - began)
                obs = self._observe()
            except Exception as err:  # noqa: BLE001
                self._fail(err)
        if self._error is not None:
            return StepResult(self._blank_obs(), True, False, executed, {"steps": self._steps, "error": self._error})
        done = self._success or self._steps >= self.max_steps
        return StepResult(obs, done, self._success, executed, {"steps": self._steps})

    def close(self) -> None:
        for sim in self._sims.values():
            sim.close()
        self._sims.clear()
        self._sim = None

    # --- privileged access (scripted experts, tests) --------------------------------
    @property
    def raw_obs(self) -> dict:
        """robosuite's last observation dict: eef pose, gripper, every object's pose."""
        return self._raw

    @property
    def control_env(self):
        return self._sim.env

    # --- internals -----------------------------------------------------------------
    def _sim_for(self, task: suites.LiberoTask) -> _TaskSim:
        if task.name in self._sims:
            self._sims.move_to_end(task.name)
            return self._sims[task.name]
        while len(self._sims) >= self.cfg.cached_tasks:
            self._sims.popitem(last=False)[1].close()
        began = time.perf_counter()
        self._sims[task.name] = _TaskSim(task, self.cfg)
        self.timings.update(builds=1, build_s=time.perf_counter() - began)
        return self._sims[task.name]

    def _fail(self, err: Exception) -> None:
        self._error = f"{type(err).__name__}: {err}"
        if self._sim is not None:  # its state is suspect: rebuild it next time
            self._sims.pop(self._sim.task.name, None)
            try:
                self._sim.close()
            finally:
                self._sim = None

    def _observe(self) -> Obs:
        data, began = self._sim.env.sim.data._data, time.perf_counter()
        images = {camera: self._sim.renderer.render(data, camera) for camera in self.cfg.cameras}
        self.timings.update(renders=1, render_s=time.perf_counter() - began)
        return Obs(images, proprio_of(self._raw), self._tasks[self._task].instruction)

    def _blank_obs(self) -> Obs:
        size = self.cfg.image_size
        images = {camera: np.zeros((size, size, 3), np.uint8) for camera in self.cfg.cameras}
        return Obs(images, np.zeros(8, np.float32), self._tasks[self._task].instruction)
