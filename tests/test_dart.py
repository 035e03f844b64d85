"""DART demonstrations: the env runs perturbed actions, the episode keeps the expert's clean ones."""

from __future__ import annotations

import numpy as np
import pytest

from svrl_core.config import ConfigError, EnvConfig, parse_params
from svrl_core.envs.toy import ToyReachEnv
from svrl_core.experts.recording import record_episode
from svrl_core.experts.robotwin import JOINT_NOISE, JointDrift
from svrl_core.experts.toy_reach import expert_action


def test_the_episode_records_the_controllers_action_and_the_env_runs_the_executed_one():
    env = ToyReachEnv(EnvConfig(max_steps=8))
    executed, labels = [], []
    real_step = env.step

    def spy_step(chunk):
        executed.append(chunk[0].copy())
        return real_step(chunk)

    def controller():
        rng = np.random.default_rng(0)

        def act():
            labels.append(expert_action(env, rng, 0.0))
            return labels[-1]
        return act

    env.step = spy_step
    episode, _ = record_episode(env, "red", 0, controller, execute=lambda action: action + 0.5)
    np.testing.assert_array_equal(episode.actions, np.stack(labels))
    np.testing.assert_allclose(np.stack(executed), np.stack(labels) + 0.5)


def test_joint_drift_moves_only_arm_joints_a_quarter_as_much_under_a_closed_gripper():
    drift = JointDrift(np.random.default_rng(0), scale=1.0)
    clean = np.zeros(14, np.float32)
    clean[13] = 1.0  # left gripper closed (0), right open (1)
    offsets = np.stack([drift(clean) - clean for _ in range(4000)])  # (T, 14)
    assert np.all(offsets[:, [6, 13]] == 0.0), "grippers are never perturbed"
    left, right = offsets[:, 0:6].std(), offsets[:, 7:13].std()
    stationary = JOINT_NOISE / np.sqrt(1 - 0.9 ** 2)  # AR(1) with decay 0.9
    assert right == pytest.approx(stationary, rel=0.15) and left == pytest.approx(stationary / 4, rel=0.15)
    lag_one = np.corrcoef(offsets[:-1, 7], offsets[1:, 7])[0, 1]
    assert lag_one > 0.8, "the offset drifts: consecutive steps are pushed the same way"


@pytest.mark.parametrize("env", [{"family": "toy", "tasks": ["red"], "max_steps": 10},
                                 {"family": "libero", "suite": "libero_object", "tasks": ["0"]}])
def test_execution_noise_outside_robotwin_is_refused(env):
    with pytest.raises(ConfigError, match="execution_noise.*RoboTwin.*set it to 0"):
        parse_params({"env": env, "ingest": {"execution_noise": 0.5}})
