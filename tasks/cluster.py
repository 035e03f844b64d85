"""Dask clusters for env workers: a LocalCluster by default, or a running scheduler."""

from __future__ import annotations

import logging
import threading
from contextlib import contextmanager
from typing import Callable, Iterator, TypeVar

from distributed import Client, LocalCluster, Security

from svrl_core.config import ComputeConfig, EnvConfig
from svrl_core.rollout.dask_pool import DaskEnvPool
from svrl_core.training.ranks import Ranks

T = TypeVar("T")
logger = logging.getLogger("svrl")


@contextmanager
def dask_client(cfg: ComputeConfig, ranks: Ranks = Ranks()) -> Iterator[Client]:
    """Connect to `scheduler_address`, or start a LocalCluster of `n_workers` single-thread processes
    (each rank of a multi-rank run its own).

    Either way the client is handed out only once workers answer (a shared scheduler: `min_workers` per
    rank), within `connect_timeout_s`."""
    if cfg.scheduler_address:
        try:
            client = Client(cfg.scheduler_address, timeout=cfg.connect_timeout_s, security=dask_security(cfg))
        except (OSError, TimeoutError) as err:
            raise RuntimeError(f"compute.scheduler_address={cfg.scheduler_address!r}: no Dask scheduler answered "
                               f"within {cfg.connect_timeout_s:g}s ({err}); start one or set it to null") from None
        with client:
            _wait_for_workers(client, cfg.min_workers * ranks.world, cfg, f"the scheduler at {cfg.scheduler_address}")
            yield client
        return
    cluster = _with_deadline(lambda: LocalCluster(n_workers=cfg.n_workers, threads_per_worker=1, processes=True,
                                                  dashboard_address=cfg.dashboard_address),
                             cfg.connect_timeout_s, f"a local Dask cluster of {cfg.n_workers} workers")
    if cfg.dashboard_address:
        logger.info("Dask dashboard: %s", cluster.dashboard_link)
    try:
        with Client(cluster, timeout=cfg.connect_timeout_s) as client:
            _wait_for_workers(client, cfg.n_workers, cfg, "the local Dask cluster")
            yield client
    finally:
        close_local_cluster(cluster)


def dask_security(cfg: ComputeConfig) -> Security | None:
    """Mutual TLS to the scheduler (and through it the workers) when the config names certificates."""
    if not cfg.tls_ca_file:
        return None
    return Security(tls_ca_file=cfg.tls_ca_file, tls_client_cert=cfg.tls_cert_file, tls_client_key=cfg.tls_key_file,
                    require_encryption=True)


def close_local_cluster(cluster: LocalCluster) -> None:
    """Shut the cluster down; one that is slow to go only warns, so a stage that finished is not lost.

    Under load a worker can outlive its nanny's 5 s kill deadline (seen with five jobs on 2 cores:
    after all 8 RL iterations the stage failed with TimeoutError). The nanny has sent it SIGKILL by then."""
    try:
        cluster.close()
    except TimeoutError:
        logger.warning("the local Dask cluster did not shut down in time; its workers were sent SIGKILL")


def _wait_for_workers(client: Client, n: int, cfg: ComputeConfig, where: str) -> None:
    try:
        client.wait_for_workers(n, timeout=cfg.connect_timeout_s)
    except TimeoutError:
        raise RuntimeError(f"{where}: fewer than {n} worker(s) within compute.connect_timeout_s="
                           f"{cfg.connect_timeout_s:g}s; start workers or raise the timeout") from None


def _with_deadline(start: Callable[[], T], timeout_s: float, what: str) -> T:
    """`start()` in a daemon thread: a start that never returns fails here instead of hanging the stage."""
    outcome: dict = {}

    def run() -> None:
        try:
            outcome["value"] = start()
        except BaseException as err:  # handed to the caller below
            outcome["error"] = err

    thread = threading.Thread(target=run, name="svrl-cluster-start", daemon=True)
    thread.start()
    thread.join(timeout_s)
    if thread.is_alive():
        raise RuntimeError(f"{what} did not start within compute.connect_timeout_s={timeout_s:g}s")
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


@contextmanager
def env_pool(env_cfg: EnvConfig, compute: ComputeConfig, ranks: Ranks = Ranks()) -> Iterator[DaskEnvPool]:
    """Persistent envs on every Dask worker (a shared scheduler's: this rank's share), closed afterwards."""
    with dask_client(compute, ranks) as client:
        pool = DaskEnvPool(client, env_cfg, compute, ranks=ranks if compute.scheduler_address else Ranks())
        try:
            yield pool
        finally:
            pool.close()
