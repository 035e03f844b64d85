"""LIBERO on the real simulator (robosuite + MuJoCo, headless EGL), tiny image sizes."""

import json

import numpy as np
import pytest

from svrl_core.config import ConfigError, EnvConfig, parse_params
from svrl_core.data import DatasetError, load_dataset, write_dataset
from svrl_core.data.libero_hdf5 import read_libero_hdf5
from svrl_core.envs.libero import LiberoEnv, suites
from svrl_core.envs.libero.env import NOOP, make_control_env
from svrl_core.envs.libero.lean_control import LeanArmControl
from svrl_core.experts.libero import record_demonstration

SOUP = "pick_up_the_alphabet_soup_and_place_it_in_the_basket"


def libero_cfg(**overrides) -> EnvConfig:
    return EnvConfig(**{"family": "libero", "suite": "libero_object", "tasks": [SOUP], "image_size": 32,
                        "max_steps": "oft", **overrides})


@pytest.mark.parametrize("suite", suites.SUITES)
def test_every_suite_first_task_builds_resets_and_steps(suite):
    first = suites.suite_tasks(suite)[0]
    env = LiberoEnv(libero_cfg(suite=suite, tasks=["0"], cameras=["agentview", "robot0_eye_in_hand"]))
    try:
        obs = env.reset("0", 0)
        assert obs.instruction == first.instruction
        assert {k: v.shape for k, v in obs.images.items()} == {"agentview": (32, 32, 3),
                                                               "robot0_eye_in_hand": (32, 32, 3)}
        assert obs.proprio.shape == (8,) and obs.images["agentview"].std() > 5  # a scene, not a blank frame
        result = env.step(np.tile(NOOP, (3, 1)))
        assert result.n_executed == 3 and not result.done and result.info["steps"] == 3
        assert env.max_steps == suites.STEP_LIMIT_PRESETS["oft"][suite]
        assert len(suites.init_states(suite, 0)) == 50
    finally:
        env.close()


def test_cheap_env_keeps_physics_and_success_identical_to_the_stock_env():
    """The expert's actions, replayed in LIBERO's stock OffScreenRenderEnv (hard reset, MSAA,
    full meshes, rendering every step) give the same MuJoCo states and the same success step;
    so does a second episode in the reused (soft-reset) env. Ours splits each substep into MuJoCo's
    two phases (SplitPhysicsStep) and runs the arm's controller lean (LeanArmControl): the states and
    observations stay bit-identical."""
    env = LiberoEnv(libero_cfg())
    try:
        env.reset(SOUP, 5)  # an earlier episode in the same scene, so the next reset is a soft one
        env.step(np.random.default_rng(0).uniform(-1, 1, (20, 7)))
        episode, success = record_demonstration(env, SOUP, 3, noise=0.0)
        assert success
        ours = []
        env.reset(SOUP, 3)
        for action in episode.actions:
            result = env.step(action[None])
            ours.append((env.control_env.get_sim_state().copy(), result.success, dict(env.raw_obs)))
        steps = len(episode.actions)
        assert env._sim.physics.split >= 25 * steps and env._sim.arm.substeps >= 24 * steps
        robosuite_env = env._sim.env.env
        robosuite_env.robots[0].controller.interpolator_pos = object()  # a controller it does not cover
        assert not LeanArmControl.supports(robosuite_env)
    finally:
        env.close()
    task = suites.find_task("libero_object", SOUP)
    stock = make_control_env(task, 32, ("agentview",), stock=True)
    try:
        stock.seed(0)
        stock.reset()
        stock.set_init_state(suites.init_state(task, 3))
        for _ in range(suites.SETTLE_STEPS):
            stock.step(NOOP)
        for (state, success, observation), action in zip(ours, episode.actions):
            stock_observation = stock.step(action)[0]
            np.testing.assert_array_equal(stock.get_sim_state(), state)
            assert bool(stock.check_success()) == success
            for key, value in observation.items():  # every non-image observation robosuite returns
                np.testing.assert_array_equal(stock_observation[key], value, err_msg=key)
    finally:
        stock.close()
    assert ours[-1][1] and not any(s for _, s, _ in ours[:-1])


def test_images_are_upright_and_close_to_the_stock_render():
    """Same scene, stock meshes and MSAA: our frame is robosuite's frame turned upright."""
    env = LiberoEnv(libero_cfg(image_size=64, render_mesh_faces=0, msaa=True))
    task = suites.find_task("libero_object", SOUP)
    stock = make_control_env(task, 64, ("agentview",), stock=True)
    try:
        ours = env.reset(SOUP, 0).images["agentview"].astype(float)
        stock.seed(0)
        stock.reset()
        stock.set_init_state(suites.init_state(task, 0))
        for _ in range(suites.SETTLE_STEPS):
            raw, *_ = stock.step(NOOP)
        theirs = raw["agentview_image"].astype(float)
        assert np.abs(ours - theirs[::-1]).mean() < 3 < np.abs(ours - theirs).mean()
    finally:
        env.close()
        stock.close()


def test_failing_episode_is_recorded_with_its_error(monkeypatch):
    env = LiberoEnv(libero_cfg())
    try:
        env.reset(SOUP, 0)

        def explode(action):
            raise ValueError("simulation unstable")

        monkeypatch.setattr(env.control_env, "step", explode)
        result = env.step(np.tile(NOOP, (4, 1)))
        assert result.done and not result.success and result.n_executed == 0
        assert result.info["error"] == "ValueError: simulation unstable"
        monkeypatch.undo()
        assert env.reset(SOUP, 1).images["agentview"].max() > 0  # the scene is rebuilt for the next episode
    finally:
        env.close()


@pytest.mark.parametrize("suite", ["libero_object", "libero_spatial"])
def test_scripted_expert_succeeds(suite):
    env = LiberoEnv(libero_cfg(suite=suite, tasks=["2"]))
    try:
        episode, success = record_demonstration(env, "2", 0, noise=0.05)
    finally:
        env.close()
    assert success and episode.actions.shape[1] == 7 and len(episode.actions) == len(episode.states) < 220
    assert episode.images["agentview"].shape[1:] == (32, 32, 3)


def test_bad_input_names_valid_choices():
    with pytest.raises(ConfigError, match="libero_spatial"):
        parse_params({"env": {"family": "libero", "suite": "libero_100"}})
    with pytest.raises(ValueError, match=r"no task 'pick_up_the_moon'.*\n  0: pick_up_the_alphabet_soup"):
        LiberoEnv(libero_cfg(tasks=["pick_up_the_moon"]))
    env = LiberoEnv(libero_cfg())
    with pytest.raises(ValueError, match=r"init-state index 50 out of range .* valid: 0\.\.49"):
        env.reset(SOUP, 50)
    with pytest.raises(ValueError, match="unknown step-limit preset 'long'"):
        suites.step_limit("libero_10", "long")
    with pytest.raises(ConfigError, match="presets .* are for LIBERO"):
        parse_params({"env": {"max_steps": "oft"}})


# --- official HDF5 demonstrations --------------------------------------------------------
def write_official_file(path, n_demos=2, steps=5, size=16,
                        language="pick up the alphabet soup and place it in the basket"):
    import h5py

    rng = np.random.default_rng(0)
    with h5py.File(path, "w") as f:
        data = f.create_group("data")
        data.attrs["problem_info"] = json.dumps({"language_instruction": language, "problem_name": "libero"})
        data.attrs["macros_image_convention"] = "opengl"
        for n in range(n_demos):
            demo = data.create_group(f"demo_{n}")
            demo["actions"] = rng.uniform(-1, 1, (steps, 7))
            demo["obs/agentview_rgb"] = rng.integers(0, 255, (steps, size, size, 3), dtype=np.uint8)
            demo["obs/eye_in_hand_rgb"] = rng.integers(0, 255, (steps, size, size, 3), dtype=np.uint8)
            demo["obs/ee_pos"] = rng.normal(size=(steps, 3))
            demo["obs/ee_ori"] = rng.normal(size=(steps, 3))
            demo["obs/gripper_states"] = rng.normal(size=(steps, 2))
    return path


def test_official_hdf5_import_round_trips(tmp_path):
    import h5py

    path = write_official_file(tmp_path / "task_demo.hdf5")
    episodes = read_libero_hdf5(path, ["agentview"])
    assert [e.task for e in episodes] == ["pick up the alphabet soup and place it in the basket"] * 2
    with h5py.File(path) as f:
        demo = f["data/demo_1"]
        np.testing.assert_array_equal(episodes[1].images["agentview"], demo["obs/agentview_rgb"][:][:, ::-1])
        np.testing.assert_allclose(episodes[1].actions, demo["actions"][:], rtol=1e-6)
        expected_state = np.concatenate([demo["obs/ee_pos"], demo["obs/ee_ori"], demo["obs/gripper_states"]], 1)
        np.testing.assert_allclose(episodes[1].states, expected_state, rtol=1e-6)
    write_dataset(tmp_path / "demos", episodes, fps=20, robot_type="panda")
    data = load_dataset(tmp_path / "demos")
    np.testing.assert_array_equal(data.images["agentview"][5:], episodes[1].images["agentview"])
    np.testing.assert_allclose(data.actions[5:], episodes[1].actions)
    assert read_libero_hdf5(path, ["agentview"], image_size=8)[0].images["agentview"].shape == (5, 8, 8, 3)


def test_imported_demos_carry_the_instruction_the_env_gives(tmp_path):
    """The BDDL wording in the file ("pick the ...") differs from the benchmark's ("pick up the ..."):
    imports take the benchmark's, so a policy trained on them sees the same string at evaluation."""
    from tasks.ingest import import_official_demos

    path = write_official_file(tmp_path / f"{SOUP}_demo.hdf5", language="pick the alphabet soup and place it "
                                                                        "in the basket")
    params = parse_params({"env": {"family": "libero", "suite": "libero_object", "tasks": [SOUP], "image_size": 16,
                                   "max_steps": "oft"}, "ingest": {"hdf5_files": [str(path)]}})
    episodes, per_file = import_official_demos(params)
    env = LiberoEnv(libero_cfg(image_size=16))
    try:
        evaluated = env.reset(SOUP, 0).instruction
    finally:
        env.close()
    assert evaluated == "pick up the alphabet soup and place it in the basket"
    assert {e.task for e in episodes} == {evaluated} and per_file[str(path)]["task"] == SOUP
    unnamed = write_official_file(tmp_path / "demos.hdf5")
    with pytest.raises(DatasetError, match=r"demos.hdf5: LIBERO names its demo files `<task name>_demo.hdf5`"):
        import_official_demos(params.model_copy(update={"ingest": params.ingest.model_copy(
            update={"hdf5_files": [str(unnamed)]})}))


def test_malformed_hdf5_is_named(tmp_path):
    import h5py

    junk = tmp_path / "junk.hdf5"
    junk.write_text("not hdf5")
    with pytest.raises(DatasetError, match="not a readable HDF5 file"):
        read_libero_hdf5(junk, ["agentview"])
    path = write_official_file(tmp_path / "broken_demo.hdf5")
    with h5py.File(path, "a") as f:
        del f["data/demo_1/obs/ee_pos"]
    with pytest.raises(DatasetError, match=r"demo_1 lacks \['obs/ee_pos'\]"):
        read_libero_hdf5(path, ["agentview"])
    with pytest.raises(DatasetError, match=r"unknown camera\(s\) \['wrist'\]; valid"):
        read_libero_hdf5(path, ["wrist"])
