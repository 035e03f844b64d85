import numpy as np
import pytest

from svrl_core.rollout import EpisodeRequest, LocalEnvPool, run_episodes
from svrl_core.rollout.faults import SCENARIOS, Fault
from tests.conftest import free_port


def requests(params, n_per_task=3):
    return [EpisodeRequest(task, 100 + j) for task in params.env.tasks for j in range(n_per_task)]


def test_episodes_run_to_the_end_and_mask_unexecuted_actions(tiny_policy, tiny_params):
    pool = LocalEnvPool(tiny_params.env, 4)  # fewer envs than requests: several waves
    trajectories = run_episodes(tiny_policy, pool, requests(tiny_params), 1.6, seed=0)
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


@pytest.mark.parametrize("stages", [2, 3])
def test_pipelined_stages_give_the_same_greedy_episodes(tiny_policy, tiny_params, stages):
    reqs = requests(tiny_params, n_per_task=5)
    single = run_episodes(tiny_policy, LocalEnvPool(tiny_params.env, 6), reqs, None)
    staged = run_episodes(tiny_policy, LocalEnvPool(tiny_params.env, 6, pipeline_stages=stages), reqs, None)
    assert [t.request for t in staged] == reqs
    for a, b in zip(single, staged):
        assert (a.success, a.steps) == (b.success, b.steps)
        assert all(np.array_equal(x, y) for x, y in zip(a.bins, b.bins))


def test_sampled_episodes_depend_on_their_stream_not_on_pool_batch_or_stage(tiny_policy, tiny_params):
    from svrl_core.rollout import RolloutStats

    reqs = requests(tiny_params)

    def sampled(seed, n_envs=6, stages=2, rows=None):
        stats, rows = RolloutStats(), rows or list(range(len(reqs)))
        pool = LocalEnvPool(tiny_params.env, n_envs, pipeline_stages=stages)
        runs = run_episodes(tiny_policy, pool, [reqs[i] for i in rows], 1.6, seed, stats, streams=rows)
        assert stats.env_steps == sum(t.steps for t in runs)  # the stages' counters add up
        return [[b.tolist() for b in t.bins] for t in runs]

    first = sampled(0)
    assert sampled(0) == first and sampled(1) != first
    assert sampled(0, n_envs=2, stages=1) == first, "another pool size and batch: the same episodes"
    odd = list(range(1, len(reqs), 2))  # what one of two ranks runs
    assert sampled(0, n_envs=3, stages=1, rows=odd) == [first[i] for i in odd]


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


@pytest.fixture(scope="module")
def two_worker_client(tiny_params):
    from tasks.cluster import dask_client

    with dask_client(tiny_params.compute.model_copy(update={"n_workers": 2})) as client:
        yield client


@pytest.mark.integration
@pytest.mark.parametrize("name", list(SCENARIOS))
def test_env_worker_faults_cost_time_not_episodes(tiny_policy, tiny_params, two_worker_client, tmp_path, name):
    """Each fault loses a worker's envs: its episodes re-run; counts and rewards equal a clean run."""
    from svrl_core.rollout import RolloutStats
    from svrl_core.rollout.dask_pool import DaskEnvPool
    from svrl_core.rollout.faults import FaultyEnvGroup, fired_faults, kill_replacement_workers

    scenario = SCENARIOS[name]
    # argmax: one toy episode then succeeds at step 10, so the reset-kill lands while the worker's other
    # episodes are mid-run; with mean decoding all 16 run 16 steps and the second wave's resets meet none
    tiny_policy.decoding = "argmax"
    reqs = requests(tiny_params, n_per_task=8)  # 16 episodes on 8 envs: two waves of resets
    clean = run_episodes(tiny_policy, LocalEnvPool(tiny_params.env, 16), reqs, None)
    compute = tiny_params.compute.model_copy(update={  # a short deadline only where it must expire
        "envs_per_worker": 4, "pipeline_stages": scenario.pipeline_stages, "actor_start_timeout_s": 30,
        "env_call_timeout_s": 10 if scenario.hangs else 60})
    pool = DaskEnvPool(two_worker_client, tiny_params.env, compute, FaultyEnvGroup, (scenario.faults, str(tmp_path)))
    if scenario.kill_replacement:
        kill_replacement_workers(pool)
    stats = RolloutStats()
    try:
        rerun = run_episodes(tiny_policy, pool, reqs, None, stats=stats)
    finally:
        pool.close()
    assert fired_faults(tmp_path) == len(scenario.faults)
    assert 1 <= pool.worker_failures <= 1 + scenario.kill_replacement and len(pool.losses) == 1
    assert stats.restarted_episodes >= 1
    assert [t.request for t in rerun] == reqs
    for a, b in zip(clean, rerun):
        assert (a.success, a.steps, len(a.bins)) == (b.success, b.steps, len(b.bins))
        assert all(np.array_equal(x, y) for x, y in zip(a.bins, b.bins))


@pytest.mark.integration
def test_a_hung_env_call_ends_within_its_deadline(tiny_policy, tiny_params, two_worker_client, tmp_path):
    """With no failures allowed, a step that hangs forever fails the rollout soon after the deadline."""
    import time

    from svrl_core.rollout.dask_pool import DaskEnvPool
    from svrl_core.rollout.faults import FaultyEnvGroup

    compute = tiny_params.compute.model_copy(update={"envs_per_worker": 4, "env_call_timeout_s": 3,
                                                     "max_worker_failures": 0})
    pool = DaskEnvPool(two_worker_client, tiny_params.env, compute, FaultyEnvGroup,
                       ((Fault("step", "hang"),), str(tmp_path)))
    began = time.monotonic()
    with pytest.raises(RuntimeError, match="lost env workers 1 times.*step did not answer within "
                                           "compute.env_call_timeout_s=3s"):
        run_episodes(tiny_policy, pool, requests(tiny_params), None)
    assert time.monotonic() - began < 60  # the 3 s deadline, then ending the stuck worker: seconds, not forever
    pool.close()


def test_a_slow_cluster_shutdown_warns_instead_of_failing_a_finished_stage(caplog):
    import logging

    from tasks.cluster import close_local_cluster

    class SlowToClose:  # a worker outliving its nanny's kill deadline, as seen under load
        closed = False

        def close(self):
            self.closed = True
            raise TimeoutError

    cluster = SlowToClose()
    with caplog.at_level(logging.WARNING, logger="svrl"):
        close_local_cluster(cluster)
    assert cluster.closed and "did not shut down in time" in caplog.text


@pytest.mark.integration
def test_worker_losses_count_within_the_window_only(tiny_params):
    from svrl_core.rollout.dask_pool import DaskEnvPool

    pool = object.__new__(DaskEnvPool)  # the counting alone: no cluster
    pool.compute, pool._loss_times = tiny_params.compute.model_copy(update={"worker_loss_window_s": 60}), []
    assert [pool._count_recent_loss(t) for t in (0.0, 30.0, 59.0, 200.0, 230.0, 261.0)] == [1, 2, 3, 1, 2, 2]


def test_losing_workers_too_often_fails_clearly(tiny_policy, tiny_params):
    import os
    import signal

    from svrl_core.rollout.dask_pool import DaskEnvPool
    from tasks.cluster import dask_client

    compute = tiny_params.compute.model_copy(update={"n_workers": 1, "envs_per_worker": 4, "max_worker_failures": 0})
    with dask_client(compute) as client:
        pool = DaskEnvPool(client, tiny_params.env, compute)
        real_step = pool.step

        def kill_then_step(slots, chunks):
            for pid in client.run(os.getpid).values():
                os.kill(pid, signal.SIGKILL)
            return real_step(slots, chunks)

        pool.step = kill_then_step
        with pytest.raises(RuntimeError, match="lost env workers 1 times"):
            run_episodes(tiny_policy, pool, requests(tiny_params), None)


@pytest.fixture()
def separate_dask_cluster(tmp_path):
    """A scheduler and two workers started by hand, as on a cluster."""
    import subprocess
    import sys
    import time
    from pathlib import Path

    from distributed import Client

    port = free_port()
    dask = str(Path(sys.executable).parent / "dask")
    address = f"tcp://127.0.0.1:{port}"
    processes = [subprocess.Popen([dask, "scheduler", "--host", "127.0.0.1", "--port", str(port),
                                   "--dashboard-address", ":0"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    processes += [subprocess.Popen([dask, "worker", address, "--nthreads", "1", "--no-dashboard",
                                    "--local-directory", str(tmp_path)],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for _ in range(2)]
    try:
        with Client(address, timeout=60) as client:
            client.wait_for_workers(2, timeout=60)
        yield address
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
        time.sleep(0.1)


@pytest.mark.integration
def test_rollouts_on_a_separately_started_scheduler(tiny_policy, tiny_params, separate_dask_cluster):
    from tasks.cluster import env_pool

    compute = tiny_params.compute.model_copy(update={"scheduler_address": separate_dask_cluster,
                                                     "envs_per_worker": 3})
    local = run_episodes(tiny_policy, LocalEnvPool(tiny_params.env, 16), requests(tiny_params), None)
    with env_pool(tiny_params.env, compute) as pool:
        assert len(pool.actors) == 2 and pool.capacity == 6
        remote = run_episodes(tiny_policy, pool, requests(tiny_params), None)
    assert [(t.success, t.steps) for t in remote] == [(t.success, t.steps) for t in local]


def test_a_stage_waits_for_min_workers_and_says_when_they_do_not_come(tiny_params, separate_dask_cluster):
    from tasks.cluster import env_pool

    compute = tiny_params.compute.model_copy(update={"scheduler_address": separate_dask_cluster, "min_workers": 3,
                                                     "connect_timeout_s": 2})
    with pytest.raises(RuntimeError, match=r"fewer than 3 worker\(s\) within compute.connect_timeout_s=2s"):
        with env_pool(tiny_params.env, compute):
            pass
    with env_pool(tiny_params.env, compute.model_copy(update={"min_workers": 2})) as pool:
        assert len(pool.actors) == 2


@pytest.mark.integration
def test_unreachable_scheduler_fails_within_the_timeout(tiny_params):
    import time

    from tasks.cluster import env_pool

    compute = tiny_params.compute.model_copy(update={"scheduler_address": "tcp://127.0.0.1:9", "connect_timeout_s": 3})
    began = time.monotonic()
    with pytest.raises(RuntimeError, match="no Dask scheduler answered within 3s"):
        with env_pool(tiny_params.env, compute):
            pass
    assert time.monotonic() - began < 30


def test_relative_policies_act_from_the_proprio_each_chunk_starts_at(tiny_params, tiny_dataset):
    from svrl_core.policies import new_policy

    policy = new_policy(tiny_params.policy.model_copy(update={"relative_action_dims": [0, 1]}), tiny_dataset, seed=0)
    pool = LocalEnvPool(tiny_params.env, 1)
    sent, step = [], pool.step
    pool.step = lambda slots, actions: sent.append(actions) or step(slots, actions)
    start = pool.reset([0], [requests(tiny_params)[0]])[0].proprio  # what run_episodes' own reset will see
    trajectory = run_episodes(policy, pool, requests(tiny_params)[:1], None)[0]
    assert np.array_equal(sent[0][0], policy.bins_to_actions(trajectory.bins[0][None], start[None])[0])
