"""Env workers on a Dask cluster: one secured with TLS (the driver with certificates signed by the cluster's
CA runs rollouts on it, a client whose certificate the CA did not sign is refused), and a worker without
svrl, named in the log and left out."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from distributed import Client, LocalCluster, Security

from svrl_core.config import ComputeConfig, ConfigError, parse_params
from svrl_core.rollout import EpisodeRequest, LocalEnvPool, run_episodes
from svrl_core.rollout.dask_pool import DaskEnvPool
from tasks.cluster import dask_client


def self_signed(directory) -> tuple[str, str]:
    """A self-signed certificate for 127.0.0.1 and its key."""
    directory.mkdir()
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                    "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True, timeout=60)
    return str(cert), str(key)


@pytest.fixture()
def certificate(tmp_path):
    """The cluster's: one certificate acting as the CA and as every party's certificate."""
    return self_signed(tmp_path / "cluster")


def test_a_tls_cluster_runs_rollouts_and_refuses_a_client_it_did_not_certify(certificate, tiny_policy, tiny_params):
    cert, key = certificate
    security = Security(tls_ca_file=cert, tls_scheduler_cert=cert, tls_scheduler_key=key, tls_worker_cert=cert,
                        tls_worker_key=key, tls_client_cert=cert, tls_client_key=key, require_encryption=True)
    requests = [EpisodeRequest(task, seed) for task in tiny_params.env.tasks for seed in range(2)]
    expected = run_episodes(tiny_policy, LocalEnvPool(tiny_params.env, 4), requests, temperature=None)
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, protocol="tls", security=security,
                      dashboard_address=None, host="127.0.0.1") as cluster:
        assert cluster.scheduler_address.startswith("tls://")
        compute = ComputeConfig(scheduler_address=cluster.scheduler_address, envs_per_worker=4, connect_timeout_s=30,
                                tls_ca_file=cert, tls_cert_file=cert, tls_key_file=key)
        with dask_client(compute) as client:
            pool = DaskEnvPool(client, tiny_params.env, compute)
            episodes = run_episodes(tiny_policy, pool, requests, temperature=None)
            pool.close()
        assert [(e.success, e.steps) for e in episodes] == [(e.success, e.steps) for e in expected]
        other_cert, other_key = self_signed(Path(cert).parent.parent / "stranger")
        stranger = Security(tls_ca_file=cert, tls_client_cert=other_cert, tls_client_key=other_key,
                            require_encryption=True)
        with pytest.raises((OSError, TimeoutError)):  # a certificate the cluster's CA did not sign
            Client(cluster.scheduler_address, timeout=5, security=stranger)


def test_tls_files_come_together_and_need_a_tls_address():
    with pytest.raises(ConfigError, match="tls_ca_file, tls_cert_file and tls_key_file together"):
        parse_params({"compute": {"scheduler_address": "tls://h:8786", "tls_ca_file": "ca.pem"}})
    with pytest.raises(ConfigError, match="is not tls://"):
        parse_params({"compute": {"scheduler_address": "tcp://h:8786", "tls_ca_file": "a", "tls_cert_file": "b",
                                  "tls_key_file": "c"}})


# A dask worker that cannot import svrl: without the editable install's import hooks, outside the checkout, and in
# this one process (a nanny would start the worker in a fresh interpreter, hooks and all).
WORKER_WITHOUT_SVRL = (
    "import sys; from_editable = lambda hook: getattr(hook, '__module__', '').startswith('__editable__');"
    "sys.meta_path[:] = [f for f in sys.meta_path if not from_editable(f)];"
    "sys.path_hooks[:] = [h for h in sys.path_hooks if not from_editable(h)]; sys.path_importer_cache.clear();"
    "from distributed.cli.dask_worker import main; sys.argv[0] = 'dask-worker'; main()")


def test_a_worker_without_svrl_is_named_with_the_cause_and_left_out(tmp_path, tiny_params, caplog):
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        bare = subprocess.Popen([sys.executable, "-c", WORKER_WITHOUT_SVRL, cluster.scheduler_address, "--nthreads",
                                 "1", "--no-dashboard", "--no-nanny", "--name", "bare-worker"], cwd=tmp_path,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            with Client(cluster) as client:
                client.wait_for_workers(2, timeout=60)
                bare_address = next(address for address, info in client.scheduler_info(n_workers=-1)["workers"].items()
                                    if info["name"] == "bare-worker")
                caplog.set_level(logging.WARNING, logger="svrl")
                pool = DaskEnvPool(client, tiny_params.env, ComputeConfig(envs_per_worker=2))
                assert pool.capacity == 2 and [actor._address for actor in pool.actors] != [bare_address]
                assert re.search(rf"env worker {bare_address} cannot run svrl's envs \(.*No module named "
                                 r"'svrl_core'.*\): left out", caplog.text)
                pool.close()
        finally:
            bare.terminate()
            bare.wait(30)


def test_workers_that_join_mid_run_are_used_from_the_next_rollout_up_to_the_cap(tiny_policy, tiny_params, caplog):
    requests = [EpisodeRequest(task, seed) for task in tiny_params.env.tasks for seed in range(4)]
    expected = run_episodes(tiny_policy, LocalEnvPool(tiny_params.env, 8), requests, temperature=None)
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        compute = ComputeConfig(scheduler_address=cluster.scheduler_address, envs_per_worker=2, max_workers=2)
        with dask_client(compute) as client:
            pool = DaskEnvPool(client, tiny_params.env, compute)
            stepped, step = set(), pool.step
            pool.step = lambda slots, chunks: stepped.update(slots) or step(slots, chunks)
            first = run_episodes(tiny_policy, pool, requests, temperature=None)
            assert pool.capacity == 2 and stepped == {0, 1}
            cluster.scale(3)
            client.wait_for_workers(3, timeout=60)
            caplog.set_level(logging.INFO, logger="svrl")
            second = run_episodes(tiny_policy, pool, requests, temperature=None)
            pool.close()
    assert len({actor._address for actor in pool.actors}) == 2 and pool.capacity == 4
    assert stepped == {0, 1, 2, 3}, "the joined worker's envs step episodes"
    assert re.search(r"1 worker\(s\) joined \(tcp://.*\): now 4 envs on 2 workers", caplog.text)
    assert re.search(r"left idle: this rank already uses compute.max_workers=2", caplog.text)
    outcomes = [(e.success, e.steps) for e in expected]
    assert [(e.success, e.steps) for e in first] == outcomes == [(e.success, e.steps) for e in second]


class ThreadRanks:
    """Ranks of a world whose members are threads of this process: `gather` meets at a barrier."""

    def __init__(self, rank: int, world: int, shared: dict):
        self.rank, self.world, self.shared, self.is_writer = rank, world, shared, rank == 0

    def gather(self, item):
        self.shared["items"][self.rank] = item
        self.shared["barrier"].wait()
        everyone = list(self.shared["items"])
        self.shared["barrier"].wait()  # nobody overwrites an item before all have read
        return everyone


def test_ranks_share_out_the_workers_and_the_newcomers_each_to_one_rank(tiny_params):
    import threading
    from concurrent.futures import ThreadPoolExecutor

    shared = {"items": [None, None], "barrier": threading.Barrier(2, timeout=120)}
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        compute = ComputeConfig(scheduler_address=cluster.scheduler_address, envs_per_worker=1)
        with Client(cluster) as client, ThreadPoolExecutor(2) as threads:
            make = lambda rank: DaskEnvPool(client, tiny_params.env, compute, ranks=ThreadRanks(rank, 2, shared))
            pools = list(threads.map(make, [0, 1]))
            assert [len(p.actors) for p in pools] == [1, 1]
            cluster.scale(3)
            client.wait_for_workers(3, timeout=60)
            list(threads.map(lambda p: p.grow(), pools))
            hosts = [[actor._address for actor in p.actors] for p in pools]
            for pool in pools:
                pool.close()
    assert [len(h) for h in hosts] == [2, 1] and len(set(hosts[0] + hosts[1])) == 3  # the third: index 2, rank 0


def test_the_local_cluster_serves_its_dashboard_when_asked(caplog):
    import urllib.request

    caplog.set_level(logging.INFO, logger="svrl")
    with dask_client(ComputeConfig(n_workers=1, dashboard_address="127.0.0.1:0")) as client:
        with urllib.request.urlopen(client.dashboard_link, timeout=60) as page:  # .../status: bokeh's page
            assert page.status == 200 and b"Dask" in page.read()
    assert f"Dask dashboard: {client.dashboard_link}" in caplog.text
