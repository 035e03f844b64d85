import numpy as np
import pytest
import torch

from svrl_core.rollout import EpisodeRequest, LocalEnvPool, run_episodes


def requests(params, n_per_task=3):
    return [EpisodeRequest(task, 100 + j) for task in params.env.tasks for j in range(n_per_task)]


def test_episodes_run_to_the_end_and_mask_unexecuted_actions(tiny_policy, tiny_params):
    pool = LocalEnvPool(tiny_params.env, 4)  # fewer envs than requests: several waves
    trajectories = run_episodes(tiny_policy, pool, requests(tiny_params), 1.6, torch.Generator().manual_seed(0))
    assert [t.request for t in trajectories] == requests(tiny_params)
    for traj in trajectories:
        assert traj.final_obs is not None
        assert traj.steps <= tiny_params.env.max_steps
        assert traj.success or traj.steps == tiny_params.env.max_steps
        mask = traj.action_mask(2)
        assert mask.shape == (len(traj.bins), 4, 2)
        assert mask.sum() == 2 * traj.steps
        assert all(n == 4 for n in traj.n_executed[:-1]), "only the last chunk may stop early"


def test_greedy_rollouts_are_reproducible(tiny_policy, tiny_params):
    runs = [run_episodes(tiny_policy, LocalEnvPool(tiny_params.env, n), requests(tiny_params), None) for n in (2, 6)]
    for a, b in zip(*runs):
        assert a.success == b.success and a.steps == b.steps
        assert all(np.array_equal(x, y) for x, y in zip(a.bins, b.bins))


@pytest.mark.integration
def test_dask_pool_matches_the_local_pool(tiny_policy, tiny_params):
    from tasks.cluster import env_pool

    local = run_episodes(tiny_policy, LocalEnvPool(tiny_params.env, 16), requests(tiny_params), None)
    compute = tiny_params.compute.model_copy(update={"n_workers": 2, "envs_per_worker": 2})
    with env_pool(tiny_params.env, compute) as pool:
        assert pool.capacity == 4
        remote = run_episodes(tiny_policy, pool, requests(tiny_params), None)
    for a, b in zip(local, remote):
        assert a.success == b.success and a.steps == b.steps
        assert np.array_equal(a.final_obs.images["main"], b.final_obs.images["main"])
