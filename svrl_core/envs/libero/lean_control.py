"""robosuite's arm control for the 24 substeps of a control step that set no new goal, without its Python overhead.

Each LIBERO control step runs 25 MuJoCo substeps, and robosuite recomputes the arm's operational
space control (OSC) before each. Its Python (name lookups, limit properties, dimension asserts,
index lists, copies) costs more than MuJoCo's own step. `LeanArmControl` computes the same torques
with the same numpy and numba operations, in the same order, on arrays of the same layouts, from ids
looked up once: episodes stay bit-identical to LIBERO's stock env (tests/test_libero.py). The first
substep of a control step (the new goal, the robot's history buffers) runs robosuite's own code.

It covers what LIBERO builds: one single-arm robot, OSC_POSE with fixed impedance, no interpolator.
`LeanArmControl.supports(env)` says whether an env is such; any other env keeps robosuite's path.
"""

from __future__ import annotations

import numpy as np

_GRIPPER_SIGNS = np.array([-1.0, 1.0])  # PandaGripper.format_action's per-finger signs


class LeanArmControl:
    """Replaces `env._pre_action` on one robosuite env (the inner env, not LIBERO's wrapper)."""

    @staticmethod
    def supports(env) -> bool:
        from robosuite.controllers.osc import OperationalSpaceController
        from robosuite.models.grippers.panda_gripper import PandaGripper
        from robosuite.robots.single_arm import SingleArm

        if len(env.robots) != 1 or not isinstance(env.robots[0], SingleArm):
            return False
        robot, controller = env.robots[0], env.robots[0].controller
        return (not env.hard_reset  # a hard reset loads a new model; the ids below would go stale
                and type(controller) is OperationalSpaceController and controller.impedance_mode == "fixed"
                and controller.interpolator_pos is None and controller.interpolator_ori is None
                and controller.use_ori and type(robot.gripper) is PandaGripper)

    def __init__(self, env):
        import mujoco
        from robosuite.utils.control_utils import nullspace_torques, opspace_matrices, orientation_error

        self._jac_site, self._full_mass = mujoco.mj_jacSite, mujoco.mj_fullM
        self._opspace_matrices, self._nullspace_torques = opspace_matrices, nullspace_torques
        self._orientation_error = orientation_error
        self._stock_pre_action = env._pre_action
        self.robot, self.gripper = env.robots[0], env.robots[0].gripper
        sim = env.sim
        self.model, self.data = sim.model._model, sim.data._data
        self.controller = controller = self.robot.controller  # renewed at each policy step: a reset makes a new one
        self.eef_site = sim.model.site_name2id(controller.eef_name)
        self.qpos_index = np.array(controller.qpos_index)
        self.qvel_index = np.array(controller.qvel_index)
        self.arm_actuators = np.array(self.robot._ref_joint_actuator_indexes)
        self.torque_low, self.torque_high = self.robot.torque_limits
        self.gripper_action = slice(controller.control_dim, self.robot.action_dim)
        self.gripper_actuators = np.array([sim.model.actuator_name2id(name) for name in self.gripper.actuators])
        ctrl_range = sim.model.actuator_ctrlrange[self.gripper_actuators]
        self.gripper_bias = 0.5 * (ctrl_range[:, 1] + ctrl_range[:, 0])
        self.gripper_weight = 0.5 * (ctrl_range[:, 1] - ctrl_range[:, 0])
        self.substeps = 0  # substeps controlled here (the others ran robosuite's code)
        env._pre_action = self.pre_action

    def pre_action(self, action: np.ndarray, policy_step: bool = False) -> None:
        """robosuite's `_pre_action`: the arm's torques and the gripper's command into `data.ctrl`."""
        if policy_step:
            self._stock_pre_action(action, policy_step)
            self.controller = self.robot.controller
            return
        torques = self._run_controller()
        self.robot.torques = np.minimum(np.maximum(torques, self.torque_low), self.torque_high)  # np.clip
        gripper = self.gripper
        gripper.current_action = np.minimum(np.maximum(  # PandaGripper.format_action
            gripper.current_action + _GRIPPER_SIGNS * gripper.speed * np.sign(action[self.gripper_action]), -1.0), 1.0)
        self.data.ctrl[self.gripper_actuators] = self.gripper_bias + self.gripper_weight * gripper.current_action
        self.data.ctrl[self.arm_actuators] = self.robot.torques
        self.substeps += 1

    def _run_controller(self) -> np.ndarray:
        """OperationalSpaceController.run_controller with no interpolator -> (dof,) torques."""
        c = self.controller
        self._update_state()
        ori_error = self._orientation_error(c.goal_ori, c.ee_ori_mat)
        desired_force = np.multiply(c.goal_pos - c.ee_pos, c.kp[0:3]) + np.multiply(-c.ee_pos_vel, c.kd[0:3])
        desired_torque = np.multiply(ori_error, c.kp[3:6]) + np.multiply(-c.ee_ori_vel, c.kd[3:6])
        lambda_full, lambda_pos, lambda_ori, nullspace_matrix = self._opspace_matrices(
            c.mass_matrix, c.J_full, c.J_pos, c.J_ori)
        if c.uncoupling:
            wrench = np.concatenate([np.dot(lambda_pos, desired_force), np.dot(lambda_ori, desired_torque)])
        else:
            wrench = np.dot(lambda_full, np.concatenate([desired_force, desired_torque]))
        c.torques = np.dot(c.J_full.T, wrench) + self.data.qfrc_bias[self.qvel_index]
        c.torques += self._nullspace_torques(c.mass_matrix, nullspace_matrix, c.initial_joint,
                                             c.joint_pos, c.joint_vel)
        c.new_update = True
        return c.torques

    def _update_state(self) -> None:
        """The controller's state update, minus its MuJoCo forward pass (the substep just ran one)."""
        c, data, nv, dofs = self.controller, self.data, self.model.nv, self.qvel_index
        c.ee_pos = np.array(data.site_xpos[self.eef_site])
        c.ee_ori_mat = np.array(data.site_xmat[self.eef_site].reshape([3, 3]))
        jacp, jacr = np.zeros((3, nv)), np.zeros((3, nv))
        self._jac_site(self.model, data, jacp, jacr, self.eef_site)
        c.ee_pos_vel, c.ee_ori_vel = np.dot(jacp, data.qvel), np.dot(jacr, data.qvel)  # (3,) each
        c.joint_pos, c.joint_vel = data.qpos[self.qpos_index], data.qvel[dofs]
        c.J_pos, c.J_ori = jacp[:, dofs], jacr[:, dofs]  # (3, dof) each
        c.J_full = np.vstack([c.J_pos, c.J_ori])  # (6, dof)
        mass_matrix = np.ndarray(shape=(nv, nv), dtype=np.float64, order="C")
        self._full_mass(self.model, data, mass_matrix)
        c.mass_matrix = mass_matrix[dofs, :][:, dofs]  # (dof, dof), the same layout as robosuite's
        c.new_update = False
