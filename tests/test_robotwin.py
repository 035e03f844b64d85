"""RoboTwin box tasks on SAPIEN: physics, success checks, experts, rendering, and the pipeline on them."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml

from svrl_core.config import ConfigError, EnvConfig, Params, parse_params
from svrl_core.envs.robotwin import RoboTwinEnv, rendering
from svrl_core.envs.robotwin.env import HOME_JOINTS
from svrl_core.envs.robotwin.tasks import TASKS
from svrl_core.experts.robotwin import record_demonstration
from tests.conftest import TINY

pytestmark = pytest.mark.integration


def robotwin_cfg(**overrides) -> EnvConfig:
    return EnvConfig(**{"family": "robotwin", "tasks": ["stack_blocks_two"], "image_size": 64, "image_height": 48,
                        "max_steps": "oft", **overrides})


@pytest.fixture(scope="module")
def physics_env():
    env = RoboTwinEnv(robotwin_cfg(tasks=sorted(TASKS)), physics_only=True)
    yield env
    env.close()


@pytest.mark.parametrize("task", sorted(TASKS))
def test_success_is_false_at_reset_and_true_after_the_expert(physics_env, task):
    physics_env.reset(task, 3)
    assert not physics_env.check_success()
    episode, success = record_demonstration(physics_env, task, 3, noise=0.1)
    assert success and physics_env.check_success()
    assert episode.actions.shape[1] == 14 and episode.states.shape[1] == 14
    assert len(episode.actions) < TASKS[task].step_limit


def test_dart_demonstrations_succeed_off_course_and_label_the_way_back(physics_env):
    clean, clean_success = record_demonstration(physics_env, "stack_blocks_two", 3, noise=0.0)
    dart, dart_success = record_demonstration(physics_env, "stack_blocks_two", 3, noise=0.0, execution_noise=0.5)
    assert clean_success and dart_success
    lag = lambda episode: np.abs(episode.states[:, :6] - episode.actions[:, :6]).mean()  # noqa: E731
    assert lag(dart) > 1.2 * lag(clean), "the arm ran off the labelled targets"
    assert np.all(np.isin(dart.actions[:, [6, 13]], [0.0, 1.0])), "gripper labels stay clean"


def test_a_seed_reproduces_the_initial_poses(physics_env):
    def poses(seed):
        obs = physics_env.reset("blocks_ranking_rgb", seed)
        return obs.instruction, {name: p.round(6).tolist() for name, p in physics_env.state().positions.items()}

    assert poses(7) == poses(7)
    assert poses(7)[1] != poses(8)[1]


def test_actions_are_joint_targets_left_then_right_and_gripper_zero_closes(physics_env):
    obs = physics_env.reset("stack_blocks_two", 0)
    assert np.allclose(obs.proprio[:6], HOME_JOINTS, atol=0.01) and obs.proprio[6] > 0.95  # open at reset
    left = HOME_JOINTS + [0.3, 0, 0, 0, 0, 0]
    right = HOME_JOINTS + [0, 0, 0, 0.5, 0, 0]
    chunk = np.tile(np.r_[left, 0.0, right, 1.0], (40, 1))  # (40, 14): close left, keep right open
    result = physics_env.step(chunk)
    assert result.n_executed == 40
    state = result.obs.proprio  # measured, in the action's layout
    assert np.allclose(state[:6], left, atol=0.02) and np.allclose(state[7:13], right, atol=0.02)
    assert state[6] < 0.05 and state[13] > 0.95


def test_bad_input_is_named(physics_env):
    physics_env.reset("stack_blocks_two", 0)
    with pytest.raises(ValueError, match=r"\(K, 14\) joint targets"):
        physics_env.step(np.zeros((4, 7)))
    with pytest.raises(ValueError, match="unknown task 'stack_bowls_two'.*valid"):
        physics_env.reset("stack_bowls_two", 0)
    with pytest.raises(ValueError, match="unknown task"):
        RoboTwinEnv(robotwin_cfg(tasks=["lift_pot"]), physics_only=True)
    with pytest.raises(ConfigError, match="image_height is for RoboTwin"):
        parse_params({"env": {"image_height": 48}})


def test_missing_vulkan_device_says_how_to_fix_it(monkeypatch):
    def no_device():
        raise RuntimeError("failed to find a rendering device")

    monkeypatch.setattr(rendering, "_WARM", None)
    monkeypatch.setattr(rendering.sapien.render, "RenderSystem", no_device)
    with pytest.raises(RuntimeError, match="no Vulkan rendering device.*mesa-vulkan-drivers.*physics_only=True"):
        RoboTwinEnv(robotwin_cfg())


def test_rendered_head_camera_shows_the_blocks():
    env = RoboTwinEnv(robotwin_cfg(image_size=80, image_height=60))
    try:
        image = env.reset("stack_blocks_two", 0).images["head"]
        assert image.shape == (60, 80, 3) and image.dtype == np.uint8
        r, g, b = (image[..., c].astype(int) for c in range(3))
        red, green = (r > g + 80) & (r > b + 80), (g > r + 60) & (g > b + 60)
        assert red.sum() >= 4 and green.sum() >= 4  # both blocks are in view
        other = RoboTwinEnv(robotwin_cfg(image_size=80, image_height=60))  # a second scene in this process
        other.reset("stack_blocks_two", 5)  # with blocks elsewhere
        assert np.array_equal(env.camera.render(), image)  # each camera sees its own scene only
        episode, success = record_demonstration(env, "stack_blocks_two", 0, noise=0.0)
        assert success and episode.images["head"].shape == (len(episode.actions), 60, 80, 3)
        assert not np.array_equal(episode.images["head"][0], episode.images["head"][-1])  # the scene changed
    finally:
        env.close()


def test_pipeline_runs_end_to_end_on_a_dual_arm_task(prefect_server, tmp_path, monkeypatch):
    """ingest -> sft -> eval_sft -> rl -> eval_rl -> export, in-process, tiny settings."""
    from flows.evaluate import eval_rl_flow, eval_sft_flow
    from flows.export import export_flow
    from flows.ingest import ingest_flow
    from flows.rl import rl_flow
    from flows.sft import sft_flow

    params = Params().model_dump()
    for section, values in TINY.items():
        params[section].update(values)
    params["env"].update(family="robotwin", tasks=["stack_blocks_two"], image_size=32, image_height=24,
                         max_steps="oft", solvable_layouts_only=True)
    params["policy"]["unnormalized_action_dims"] = [6, 13]
    params["compute"]["envs_per_worker"] = 4
    params["eval"]["seed_start"] = 100_000
    params["rl"].update(iterations=1, prompts_per_batch=2, group_size=2, mini_batch_trajectories=4, max_refills=0)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))

    assert ingest_flow()["per_task"]["stack_blocks_two"]["expert_success_rate"] > 0
    sft_flow()
    table = eval_sft_flow()
    assert table["episodes"] == 2 and table["per_task"]["stack_blocks_two"]["errors"] == 0
    assert table["unsolvable_layouts"] == {}, "the expert solves these layouts (test_success_is_false_at_reset...)"
    rl_summary = rl_flow()
    assert rl_summary["iterations"] == 1 and rl_summary["env_steps"] > 0 and "unsolvable_layouts" in rl_summary
    eval_rl_flow()
    export_flow()
    spec = json.loads((tmp_path / "exports/policy_bundle/bundle.json").read_text())
    assert spec["postprocessing"]["action_dim"] == 14
    assert (spec["preprocessing"]["image_height"], spec["preprocessing"]["image_width"]) == (24, 32)


# --- success checks and layouts, without a simulator --------------------------------------------
def _state(positions: dict, left_open: bool = True, right_open: bool = True):
    from svrl_core.envs.robotwin.tasks import SceneState

    return SceneState({name: np.asarray(p, dtype=float) for name, p in positions.items()}, left_open, right_open)


def test_stack_check_uses_robotwin_thresholds_and_needs_open_grippers():
    from svrl_core.envs.robotwin.tasks import layout_for

    spec = TASKS["stack_blocks_two"]
    layout = layout_for(spec, 0)
    red = np.array([0.0, -0.13, 0.765])
    assert spec.success(_state({"red": red, "green": red + [0.024, -0.024, 0.0611]}), layout)
    assert not spec.success(_state({"red": red, "green": red + [0.026, 0.0, 0.05]}), layout)  # x off by > 2.5 cm
    assert not spec.success(_state({"red": red, "green": red + [0.0, 0.0, 0.063]}), layout)  # z off by > 1.2 cm
    assert not spec.success(_state({"red": red, "green": red + [0, 0, 0.05]}, right_open=False), layout)


def test_ranking_check_needs_order_along_x_and_a_tight_row():
    from svrl_core.envs.robotwin.tasks import layout_for

    spec = TASKS["blocks_ranking_rgb"]
    layout = layout_for(spec, 0)
    row = {"block1": [-0.1, -0.15, 0.76], "block2": [0.0, -0.15, 0.76], "block3": [0.1, -0.14, 0.76]}
    assert spec.success(_state(row), layout)
    assert not spec.success(_state({**row, "block1": [0.05, -0.15, 0.76]}), layout)  # out of order
    assert not spec.success(_state({**row, "block3": [0.1, -0.11, 0.76]}), layout)  # 4 cm off the row
    assert not spec.success(_state(row, left_open=False), layout)


def test_handover_check_wants_the_box_standing_on_the_pad_and_the_right_gripper_open():
    from svrl_core.envs.robotwin.tasks import PAD, TALL_BOX, layout_for

    spec = TASKS["handover_block"]
    layout = layout_for(spec, 0)
    pad = np.array([0.2, 0.08, 0.745])
    on_pad = pad + [0.02, -0.02, PAD[2] + TALL_BOX[2]]
    assert spec.success(_state({"box": on_pad, "pad": pad}, left_open=False), layout)  # the left may stay closed
    assert not spec.success(_state({"box": on_pad, "pad": pad}, right_open=False), layout)
    assert not spec.success(_state({"box": on_pad + [0.0, 0.0, 0.011], "pad": pad}), layout)
    assert not spec.success(_state({"box": on_pad + [0.011, -0.011, 0.0], "pad": pad}), layout)


@pytest.mark.parametrize("task", sorted(TASKS))
def test_layouts_follow_robotwin_samplers(task):
    from svrl_core.envs.robotwin.tasks import layout_for

    for seed in range(50):
        layout = layout_for(TASKS[task], seed)
        xy = np.array([b.position[:2] for b in layout.blocks if not b.static])
        if task == "handover_block":
            assert -0.25 <= xy[0, 0] <= -0.05  # the left arm's side
            continue
        assert np.all(np.abs(xy[:, 0]) >= 0.05) and np.all((-0.08 <= xy[:, 1]) & (xy[:, 1] <= 0.05))
        gaps = [np.linalg.norm(a - b) for i, a in enumerate(xy) for b in xy[i + 1:]]
        assert min(gaps) >= 0.1
        if task.startswith("blocks_ranking"):
            state = _state({b.name: b.position for b in layout.blocks})
            assert not TASKS[task].success(state, layout)  # never solved at the start
