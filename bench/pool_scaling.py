"""How many env calls per second the Dask env pool carries through the driver, and where it saturates.

    python -m bench.pool_scaling [--workers 1 2 4 8 16] [--envs-per-worker 4] [--step-ms 0 20] [--seconds 8]
                                 [--elastic]

The envs sleep instead of computing (`SleepingEnvGroup`), so 2 cores measure the pool (driver,
scheduler, actor calls, pickling the observations), not CPU contention. A round steps every env
once, as a rollout does: one actor call per worker, all in flight at once. Per worker count it
prints actor calls/s, env steps/s against the ideal (every worker busy sleeping all the time),
and the p50 / p99 of a round. Last, the projection to the paper's load: 512 parallel envs at
20 Hz control with chunks of 8, i.e. 1,280 env steps (chunks) per second, on 200 workers.
With --elastic: a running scheduler with 1 worker, then a second joins and the pool grows.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from distributed import LocalCluster

from svrl_core.config import ComputeConfig, EnvConfig
from svrl_core.envs import Obs, StepResult
from svrl_core.rollout import EpisodeRequest
from svrl_core.rollout.dask_pool import DaskEnvPool
from tasks.cluster import dask_client

PAPER_ENVS, PAPER_CONTROL_HZ, PAPER_CHUNK = 512, 20, 8
PAPER_WORKERS = 200


class SleepingEnvGroup:
    """An EnvGroup whose envs take `step_s` per step and return a `image_size` RGB frame, computing nothing."""

    def __init__(self, env_cfg: EnvConfig, n_envs: int, step_s: float, image_size: int):
        self.n_envs, self.step_s = n_envs, step_s
        frame = np.zeros((image_size, image_size, 3), np.uint8)
        self.obs = Obs({"agentview": frame}, np.zeros(8, np.float32), "pick up the bowl")

    def reset(self, ids: list[int], requests: list[EpisodeRequest]) -> list[Obs]:
        return [self.obs for _ in ids]

    def step(self, ids: list[int], chunks: list[np.ndarray]) -> list[StepResult]:
        time.sleep(self.step_s * len(ids))  # one worker steps its envs one after another
        return [StepResult(self.obs, False, False, len(chunk)) for chunk in chunks]

    def close(self) -> None:
        pass


def measure(workers: int, envs_per_worker: int, step_s: float, image_size: int, seconds: float) -> dict:
    """Rounds of stepping every env through a DaskEnvPool on `workers` local worker processes."""
    compute = ComputeConfig(n_workers=workers, envs_per_worker=envs_per_worker, connect_timeout_s=120)
    with dask_client(compute) as client:
        pool = DaskEnvPool(client, EnvConfig(), compute, SleepingEnvGroup, (step_s, image_size))
        row = step_rounds(pool, seconds)
        pool.close()
    ideal_round = envs_per_worker * step_s
    return {**row, "ideal_steps_per_s": pool.capacity / ideal_round if ideal_round else float("inf")}


def step_rounds(pool: DaskEnvPool, seconds: float) -> dict:
    """Step every env of `pool` round after round for `seconds` (at least 10 rounds)."""
    slots = list(range(pool.capacity))
    pool.reset(slots, [EpisodeRequest("task", seed) for seed in slots])
    chunks = np.zeros((len(slots), PAPER_CHUNK, 7), np.float32)
    for _ in range(3):  # warm up: connections, first pickles
        pool.step(slots, chunks)
    rounds, began = [], time.perf_counter()
    while time.perf_counter() - began < seconds or len(rounds) < 10:
        start = time.perf_counter()
        pool.step(slots, chunks)
        rounds.append(time.perf_counter() - start)
    elapsed = time.perf_counter() - began
    return {"workers": len(pool.actors), "calls_per_s": len(pool.actors) * len(rounds) / elapsed,
            "steps_per_s": len(slots) * len(rounds) / elapsed,
            "p50_ms": 1e3 * float(np.percentile(rounds, 50)), "p99_ms": 1e3 * float(np.percentile(rounds, 99))}


def elastic(envs_per_worker: int, step_s: float, image_size: int, seconds: float) -> tuple[dict, dict]:
    """Env steps/s on a running scheduler with 1 worker, then after a second joins and the pool grows."""
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        compute = ComputeConfig(scheduler_address=cluster.scheduler_address, envs_per_worker=envs_per_worker)
        with dask_client(compute) as client:
            pool = DaskEnvPool(client, EnvConfig(), compute, SleepingEnvGroup, (step_s, image_size))
            before = step_rounds(pool, seconds)
            cluster.scale(2)
            client.wait_for_workers(2, timeout=120)
            pool.grow()  # what each rollout does first
            after = step_rounds(pool, seconds)
            pool.close()
    return before, after


def projection(rows: list[dict]) -> str:
    """The paper's load against the call rate measured with the most workers (zero-cost envs). Here the
    worker processes share the driver's 2 cores, so this is a lower bound on what the driver carries."""
    need_steps = PAPER_ENVS * PAPER_CONTROL_HZ / PAPER_CHUNK  # chunks per second, all envs
    envs_per_worker = PAPER_ENVS / PAPER_WORKERS
    need_calls = need_steps / envs_per_worker  # one actor call carries a worker's envs
    last = rows[-1]
    verdict = "carries it" if last["calls_per_s"] >= need_calls else "saturates below it"
    return (f"paper's load: {PAPER_ENVS} envs x {PAPER_CONTROL_HZ} Hz / chunks of {PAPER_CHUNK} = {need_steps:.0f} "
            f"env steps/s; on {PAPER_WORKERS} workers ({envs_per_worker:.2f} envs each) {need_calls:.0f} actor "
            f"calls/s. With {last['workers']} workers (zero-cost envs, all on these cores) the driver made "
            f"{last['calls_per_s']:.0f} calls/s: it {verdict} ({last['calls_per_s'] / need_calls:.1f}x the need)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    parser.add_argument("--envs-per-worker", type=int, default=4)
    parser.add_argument("--step-ms", type=float, nargs="+", default=[0.0, 20.0],
                        help="sleep per env step: 0 measures the pool's own cost, 20 a busy simulator")
    parser.add_argument("--image-size", type=int, default=64, help="side of the frame each observation carries")
    parser.add_argument("--seconds", type=float, default=8.0, help="per measurement")
    parser.add_argument("--elastic", action="store_true", help="also: 1 worker, then a second joins mid-run")
    args = parser.parse_args()
    zero_cost = []
    for step_ms in args.step_ms:
        print(f"envs sleep {step_ms:g} ms per step, {args.envs_per_worker} envs per worker, "
              f"{args.image_size}x{args.image_size} frames")
        print(f"{'workers':>8} {'calls/s':>9} {'steps/s':>9} {'ideal':>9} {'round p50':>10} {'p99 ms':>8}")
        for workers in args.workers:
            row = measure(workers, args.envs_per_worker, step_ms / 1e3, args.image_size, args.seconds)
            print(f"{workers:>8} {row['calls_per_s']:9.0f} {row['steps_per_s']:9.0f} {row['ideal_steps_per_s']:9.0f} "
                  f"{row['p50_ms']:10.2f} {row['p99_ms']:8.2f}", flush=True)
            if step_ms == 0:
                zero_cost.append(row)
    if zero_cost:
        print(projection(zero_cost))
    if args.elastic:
        step_ms = max(args.step_ms)
        before, after = elastic(args.envs_per_worker, step_ms / 1e3, args.image_size, args.seconds)
        print(f"elastic pool, envs sleep {step_ms:g} ms per step: {before['steps_per_s']:.0f} env steps/s on "
              f"{before['workers']} worker; a second joins, the pool grows: {after['steps_per_s']:.0f} env steps/s "
              f"on {after['workers']} workers ({after['steps_per_s'] / before['steps_per_s']:.2f}x)")


if __name__ == "__main__":
    main()
