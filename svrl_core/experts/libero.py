"""Scripted pick-and-place expert for LIBERO-Object and LIBERO-Spatial, from privileged state.

Both suites are "pick up A and place it in/on B" (`obj_of_interest` = [A, B]). The expert
reads object geometry from the simulator, then runs fixed phases: move above the grasp
point with the fingers across the object's narrow side, descend, close, lift, carry over
B, lower, open. Bowls (Spatial) are pinched at the rim; everything else around its body.
Actions are OSC_POSE deltas (one unit = 0.05 m or 0.5 rad), gripper -1 open / +1 close.
"""

from __future__ import annotations

from dataclasses import dataclass

import mujoco
import numpy as np

from svrl_core.data import Episode
from svrl_core.envs.libero.env import LiberoEnv
from svrl_core.experts.recording import record_episode

POS_UNIT, ROT_UNIT = 0.05, 0.5  # metres / radians per action unit (robosuite OSC_POSE defaults)
OPEN, CLOSE = -1.0, 1.0
CLEARANCE = 0.08  # above an object's top before descending
CARRY_HEIGHT = 0.12  # of the held object's bottom above the container's top
CLOSE_STEPS, RELEASE_STEPS = 10, 12
MAX_GRASP_WIDTH = 0.07  # the Panda's fingers open to 0.08 m
HAND_HALF_SPAN = 0.11  # the hand reaches this far from the grasp point along the finger axis
RIM_DEPTH = 0.025  # bowls are pinched this far below the rim
PHASES = ("above", "descend", "close", "lift", "carry", "lower", "release", "retreat")


@dataclass(frozen=True)
class Footprint:
    """An object's collision geometry, in world coordinates."""

    centre: np.ndarray  # (3,) centre of the bounding box
    bottom: float
    top: float
    narrow_axis: np.ndarray  # (2,) unit xy direction across the narrow side
    narrow_width: float
    radius: float  # half of the wide side
    up: np.ndarray  # (3,) the body's z-axis (tilted when the object leans on something)
    top_centre: np.ndarray  # (3,) where that axis leaves the top of the object

    def top_at(self, xy: np.ndarray) -> float:
        """Height of the (possibly tilted) top plane above the point `xy`."""
        return float(self.top_centre[2] - np.dot(self.up[:2], xy - self.top_centre[:2]) / self.up[2])


def footprint(model: mujoco.MjModel, data: mujoco.MjData, body: int) -> Footprint:
    geoms = [g for g in range(model.ngeom) if model.body_rootid[model.geom_bodyid[g]] == body
             and (model.geom_contype[g] or model.geom_conaffinity[g])]
    signs = np.array([[i, j, k] for i in (-1, 1) for j in (-1, 1) for k in (-1, 1)], dtype=np.float64)  # (8, 3)
    corners = np.concatenate([
        data.geom_xpos[g] + (model.geom_aabb[g, :3] + signs * model.geom_aabb[g, 3:]) @ data.geom_xmat[g].reshape(3, 3).T
        for g in geoms])  # (8 * n_geoms, 3)
    xy = corners[:, :2] - corners[:, :2].mean(axis=0)
    _, vectors = np.linalg.eigh(xy.T @ xy)  # ascending: vectors[:, 0] spans the narrow side
    narrow = vectors[:, 0]
    wide = vectors[:, 1]
    lo, hi = corners.min(axis=0), corners.max(axis=0)
    rotation = data.xmat[body].reshape(3, 3)
    local_top = ((corners - data.xpos[body]) @ rotation)[:, 2].max()
    return Footprint((lo + hi) / 2, float(lo[2]), float(hi[2]), narrow, float(np.ptp(xy @ narrow)),
                     float(np.ptp(xy @ wide) / 2), rotation[:, 2].copy(), data.xpos[body] + rotation[:, 2] * local_top)


def _directions(angles: np.ndarray) -> list[np.ndarray]:
    return [np.array([np.cos(a), np.sin(a)]) for a in angles]


def _segment_distance(point: np.ndarray, centre: np.ndarray, half: np.ndarray) -> float:
    """Distance from `point` to the segment centre +- half (all xy)."""
    t = np.clip(np.dot(point - centre, half) / np.dot(half, half), -1.0, 1.0)
    return float(np.linalg.norm(point - centre - t * half))


def wrap_half_turn(angle: float) -> float:
    """Angle in [-pi/2, pi/2): a parallel gripper is symmetric under a half turn."""
    return (angle + np.pi / 2) % np.pi - np.pi / 2


class PickPlaceExpert:
    """One episode's controller; call `act()` once per env step."""

    def __init__(self, env: LiberoEnv, rng: np.random.Generator, noise: float):
        self.env, self.rng, self.noise = env, rng, noise
        control = env.control_env.env
        self.model, self.data = control.sim.model._model, control.sim.data._data
        target, container = control.obj_of_interest[:2]
        self.target_body, self.container_body = control.obj_body_id[target], control.obj_body_id[container]
        self.is_bowl = "bowl" in target
        name = lambda body: mujoco.mj_name2id(self.model, mujoco.mjtObj.mjOBJ_BODY, body)  # noqa: E731
        self.fingers = name("gripper0_leftfinger"), name("gripper0_rightfinger")
        self.phase, self.phase_steps = "above", 0
        self.hold_offset = np.zeros(2)  # eef minus held object's centre, xy
        self._plan_grasp()

    # --- geometry ------------------------------------------------------------------
    def _plan_grasp(self) -> None:
        obj = footprint(self.model, self.data, self.target_body)
        if self.is_bowl:  # pinch the rim wall, fingers radial; the robot's side first
            centre = obj.top_centre[:2]
            candidates = [(centre + axis * (obj.radius - 0.012), axis)
                          for axis in _directions(np.pi + np.radians([0, 30, -30, 60, -60, 90, -90, 120, -120, 180]))]
        else:  # around the body, fingers across its narrow side (or turned, if it still fits)
            base = np.arctan2(obj.narrow_axis[1], obj.narrow_axis[0])
            offsets = np.radians([0, 15, -15, 30, -30, 45, -45, 60, -60, 75, -75, 90])
            widths = np.abs(np.cos(offsets)) * obj.narrow_width + np.abs(np.sin(offsets)) * 2 * obj.radius
            candidates = [(obj.centre[:2], axis) for axis in _directions(base + offsets[widths <= MAX_GRASP_WIDTH])]
        self.grasp_xy, self.finger_axis = self._clearest(candidates or [(obj.centre[:2], obj.narrow_axis)])
        if self.is_bowl:
            self.grasp_z = obj.top_at(self.grasp_xy) - RIM_DEPTH
        else:  # a few cm below the top, but clear of the floor for flat boxes
            self.grasp_z = max(obj.top - min(0.035, (obj.top - obj.bottom) / 2), obj.bottom + 0.01)
        self.grip_above_bottom = self.grasp_z - obj.bottom
        self.object_top = obj.top

    def _clearest(self, candidates: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
        """The (grasp point, finger axis) that keeps the wide hand farthest from other objects;
        earlier candidates win unless a later one is clearly (1 cm) clearer."""
        control = self.env.control_env.env
        neighbours = [footprint(self.model, self.data, body) for body in control.obj_body_id.values()
                      if body not in (self.target_body, self.container_body)]
        best, best_clearance = candidates[0], -np.inf
        for point, axis in candidates:
            clearance = min((_segment_distance(n.centre[:2], point, axis * HAND_HALF_SPAN) - n.radius
                             for n in neighbours), default=np.inf)
            if clearance > best_clearance + 0.01:
                best, best_clearance = (point, axis), clearance
        return best

    def _eef(self) -> np.ndarray:
        return np.asarray(self.env.raw_obs["robot0_eef_pos"], dtype=np.float64)

    def _rotation_action(self) -> tuple[np.ndarray, float]:
        """Keep the gripper pointing down and turn its fingers onto `finger_axis`."""
        left, right = (self.data.xpos[f] for f in self.fingers)
        axis = (left - right)[:2]
        yaw_error = wrap_half_turn(np.arctan2(self.finger_axis[1], self.finger_axis[0]) - np.arctan2(axis[1], axis[0]))
        approach = self.data.xmat[self.fingers[0]].reshape(3, 3)[:, 2]  # finger z-axis: along the approach
        tilt = np.cross(approach, np.array([0.0, 0.0, -1.0]))  # rotation axis * sin(angle) to point down
        rotation = tilt + np.array([0.0, 0.0, yaw_error])
        return np.clip(rotation / ROT_UNIT, -1.0, 1.0), abs(yaw_error)

    # --- control -------------------------------------------------------------------
    def act(self) -> np.ndarray:
        eef = self._eef()
        if self.phase == "above":  # objects may still be settling: aim at where they are now
            self._plan_grasp()
        container = footprint(self.model, self.data, self.container_body)
        if self.phase == "lift":  # where the object hangs from the hand, fixed once lifted
            self.hold_offset = eef[:2] - footprint(self.model, self.data, self.target_body).centre[:2]
        drop_xy = container.centre[:2] + self.hold_offset  # object centre over container centre
        carry_z = max(container.top + CARRY_HEIGHT + self.grip_above_bottom, self.grasp_z + CARRY_HEIGHT)
        place_z = container.top + 0.02 + self.grip_above_bottom
        targets = {
            "above": (np.r_[self.grasp_xy, self.object_top + CLEARANCE], OPEN),
            "descend": (np.r_[self.grasp_xy, self.grasp_z], OPEN),
            "close": (np.r_[self.grasp_xy, self.grasp_z], CLOSE),
            "lift": (np.r_[eef[:2], carry_z], CLOSE),
            "carry": (np.r_[drop_xy, carry_z], CLOSE),
            "lower": (np.r_[drop_xy, place_z], CLOSE),
            "release": (np.r_[eef[:2], place_z], OPEN),
            "retreat": (np.r_[eef[:2], carry_z + 0.05], OPEN),
        }
        goal, gripper = targets[self.phase]
        error = goal - eef
        rotation, yaw_error = self._rotation_action()
        self._advance(error, yaw_error)
        noise = self.noise if gripper == OPEN else self.noise / 4  # a held object slips under jerky motion
        translation = np.clip(error / POS_UNIT, -1.0, 1.0) + self.rng.normal(0.0, noise, 3)
        return np.r_[np.clip(translation, -1.0, 1.0), rotation, gripper].astype(np.float32)  # (7,)

    def _advance(self, error: np.ndarray, yaw_error: float) -> None:
        self.phase_steps += 1
        done = {
            "above": np.linalg.norm(error) < 0.01 and yaw_error < 0.05,
            "descend": np.linalg.norm(error) < 0.008 or self.phase_steps > 60,
            "close": self.phase_steps >= CLOSE_STEPS,
            "lift": abs(error[2]) < 0.02,
            "carry": np.linalg.norm(error[:2]) < 0.02,
            "lower": abs(error[2]) < 0.015 or self.phase_steps > 40,
            "release": self.phase_steps >= RELEASE_STEPS,
            "retreat": False,
        }[self.phase]
        if done:
            self.phase, self.phase_steps = PHASES[PHASES.index(self.phase) + 1], 0


def record_demonstration(env: LiberoEnv, task: str, seed: int, noise: float) -> tuple[Episode, bool]:
    """Run the expert from init state `seed`, one action per step; returns the episode and its success."""
    rng = np.random.default_rng([seed, 7919])
    return record_episode(env, task, seed, lambda: PickPlaceExpert(env, rng, noise).act)
