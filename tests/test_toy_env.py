import numpy as np
import pytest

from svrl_core.config import EnvConfig
from svrl_core.envs import make_env
from svrl_core.envs.toy import COLOURS, ToyReachEnv
from svrl_core.experts.toy_reach import record_demonstration


@pytest.fixture()
def env():
    return ToyReachEnv(EnvConfig())


def test_reset_is_seeded(env):
    a, b = env.reset("red", 3), env.reset("red", 3)
    assert np.array_equal(a.images["main"], b.images["main"]) and np.array_equal(a.proprio, b.proprio)
    c = env.reset("red", 4)
    assert not np.array_equal(a.images["main"], c.images["main"])


def test_observation_contract(env):
    obs = env.reset("blue", 0)
    assert obs.images["main"].shape == (32, 32, 3) and obs.images["main"].dtype == np.uint8
    assert obs.proprio.shape == (2,) and obs.instruction == "move to the blue disc"
    assert (obs.images["main"] == COLOURS["blue"]).all(axis=-1).any(), "the target must be visible"


def test_target_is_only_in_the_image_and_the_instruction(env):
    """Same agent start, different target layouts: proprio cannot tell where to go."""
    targets = set()
    for seed in range(20):
        env.reset("red", seed)
        targets.add(tuple(np.round(env.target_xy, 2)))
    assert len(targets) == 20
    env.reset("red", 0)
    red = env.target_xy
    env.reset("green", 0)
    assert not np.allclose(red, env.target_xy)


def test_expert_succeeds_and_chunk_stops_at_success(env):
    for task in ("red", "green", "blue", "yellow"):
        episode, success = record_demonstration(env, task, seed=11, noise=0.0)
        assert success and len(episode.actions) < env.max_steps
    env.reset("red", 5)
    offset = env.target_xy - env.agent_xy
    direction = 0.5 * offset / np.linalg.norm(offset)  # a straight line through the target
    result = env.step(np.repeat(direction[None], 32, axis=0))
    assert result.success and result.done and result.n_executed < 32


def test_step_limit_ends_episode(env):
    env.reset("red", 1)
    executed = 0
    result = None
    while result is None or not result.done:
        result = env.step(np.zeros((4, 2)))
        executed += result.n_executed
    assert not result.success and executed == env.max_steps
    assert env.step(np.zeros((4, 2))).n_executed == 0


def test_bad_input(env):
    with pytest.raises(ValueError, match="valid"):
        env.reset("purple", 0)
    env.reset("red", 0)
    with pytest.raises(ValueError, match=r"\(K, 2\)"):
        env.step(np.zeros(2))
    with pytest.raises(ValueError, match="unknown task"):
        make_env(EnvConfig(tasks=["red", "octarine"]))


def test_demonstrations_keep_only_successes_and_report_expert_success():
    from svrl_core.experts import collect_demonstrations

    short = ToyReachEnv(EnvConfig(max_steps=6))  # the expert often runs out of steps
    episodes, report = collect_demonstrations(short, record_demonstration, ["red", "blue"], per_task=3,
                                              seed_start=0, noise=0.0)
    assert len(episodes) == 6 and [e.task for e in episodes] == ["move to the red disc"] * 3 + ["move to the blue disc"] * 3
    for task in ("red", "blue"):
        attempts = report[task]["attempts"]
        assert attempts >= 3 and report[task]["expert_success_rate"] == 3 / attempts
    assert report["red"]["attempts"] > 3, "this layout has a failure to drop"
    assert all(len(e.actions) <= 6 for e in episodes)
    with pytest.raises(RuntimeError, match="expert succeeded only"):
        collect_demonstrations(ToyReachEnv(EnvConfig(max_steps=1)), record_demonstration, ["red"], 2, 0, 0.0)
