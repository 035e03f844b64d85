"""Chaos check for the Dask env pool: kill, hang and raise faults, N rounds each.

    python -m bench.faults --rounds 50

Each round runs every scenario on the toy task (2 workers x 4 envs, 16 greedy episodes)
with a fault-injecting env group, and compares the episodes with a clean in-process run.
It prints, per scenario: hangs (a rollout that did not end within --hang-after seconds),
recoveries (lost workers replaced), recovery time from the fault to the replacement's envs
being ready (p50 / max), and mismatches (episodes whose success, length or actions differ
from the clean run). Exit status 1 if any hang or mismatch was seen.
"""

from __future__ import annotations

import argparse
import contextlib
import faulthandler
import os
import sys
import tempfile
import threading
import time
import traceback

import numpy as np
import torch

from svrl_core.config import parse_params
from svrl_core.data import load_dataset, write_dataset
from svrl_core.envs.toy import ToyReachEnv
from svrl_core.experts.toy_reach import record_demonstration
from svrl_core.policies import new_policy
from svrl_core.rollout import EpisodeRequest, LocalEnvPool, run_episodes
from svrl_core.rollout.dask_pool import DaskEnvPool
from svrl_core.rollout.faults import SCENARIOS, FaultyEnvGroup, fault_times, kill_replacement_workers
from tasks.cluster import dask_client

HANG_CALL_TIMEOUT_S = 10  # env_call_timeout_s in the hang scenario; 60 elsewhere
ACTOR_START_TIMEOUT_S = 30  # toy envs build in seconds; a replacement stuck longer is given up and retried
PARAMS = {
    "env": {"tasks": ["red", "blue"], "max_steps": 16},
    "policy": {"chunk_size": 4, "n_bins": 32, "conv_channels": 8, "n_keypoints": 4, "instruction_dim": 16,
               "hidden_dim": 32, "max_instruction_bytes": 32},
    "compute": {"n_workers": 2, "envs_per_worker": 4},
}


def tiny_policy(params, workdir: str):
    env = ToyReachEnv(params.env)
    episodes = [record_demonstration(env, task, seed, 0.1)[0] for task in params.env.tasks for seed in range(2)]
    write_dataset(f"{workdir}/demos", episodes, fps=10, robot_type="toy-reach")
    return new_policy(params.policy, load_dataset(f"{workdir}/demos"), seed=0)


def same_episodes(clean, rerun) -> bool:
    return all((a.success, a.steps, len(a.bins)) == (b.success, b.steps, len(b.bins))
               and all(np.array_equal(x, y) for x, y in zip(a.bins, b.bins)) for a, b in zip(clean, rerun))


def run_scenario(policy, params, requests, clean, name: str, hang_after_s: float) -> dict:
    """One faulty rollout on a fresh local cluster, in a watchdog thread.

    A fresh cluster per scenario keeps one scenario's damage out of the next: a Nanny can
    occasionally close for good when its worker dies during a restart (dask/distributed#7312)."""
    scenario = SCENARIOS[name]
    call_timeout = HANG_CALL_TIMEOUT_S if scenario.hangs else 60
    compute = params.compute.model_copy(update={"pipeline_stages": scenario.pipeline_stages,
                                                "env_call_timeout_s": call_timeout,
                                                "actor_start_timeout_s": ACTOR_START_TIMEOUT_S})
    with tempfile.TemporaryDirectory(prefix="svrl-faults-") as markers, contextlib.ExitStack() as stack:
        client = stack.enter_context(dask_client(params.compute))
        outcome: dict = {}

        def rollout() -> None:
            pool = None
            try:
                pool = outcome["pool"] = DaskEnvPool(client, params.env, compute, FaultyEnvGroup,
                                                     (scenario.faults, markers))
                if scenario.kill_replacement:
                    kill_replacement_workers(pool)
                outcome["episodes"] = run_episodes(policy, pool, requests, None)
            except Exception:
                outcome["error"] = traceback.format_exc()
            finally:
                if pool is not None:
                    pool.close()

        worker = threading.Thread(target=rollout, daemon=True)
        worker.start()
        worker.join(hang_after_s)
        if worker.is_alive():
            faulthandler.dump_traceback(sys.stderr)
            stack.pop_all()  # closing the stuck cluster could wait forever: the caller exits instead
            return {"hung": True}
        fired = fault_times(markers)
    if "error" in outcome:
        return {"hung": False, "error": outcome["error"], "recoveries": len(getattr(outcome.get("pool"), "losses", []))}
    losses = outcome["pool"].losses
    return {"hung": False, "mismatch": not same_episodes(clean, outcome["episodes"]), "recoveries": len(losses),
            "recovery_s": [loss.recovered_at - fired[0] for loss in losses[:1]] if fired else []}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--scenarios", nargs="+", choices=list(SCENARIOS), default=list(SCENARIOS))
    parser.add_argument("--hang-after", type=float, default=180.0, help="a rollout still running after this "
                                                                         "many seconds counts as a hang")
    args = parser.parse_args()
    torch.set_num_threads(1)
    params = parse_params(PARAMS)
    requests = [EpisodeRequest(task, 100 + j) for task in params.env.tasks for j in range(8)]
    results: dict[str, list[dict]] = {name: [] for name in args.scenarios}
    began = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="svrl-faults-") as workdir:
        policy = tiny_policy(params, workdir)
        clean = run_episodes(policy, LocalEnvPool(params.env, 16), requests, None)
        for round_index in range(args.rounds):
            for name in args.scenarios:
                results[name].append(run_scenario(policy, params, requests, clean, name, args.hang_after))
                if results[name][-1]["hung"]:
                    print(f"{name}: the rollout hung (stacks above)", flush=True)
                    summarize(results, began)
                    os._exit(1)  # a clean exit would wait on the stuck cluster
            print(f"round {round_index + 1}/{args.rounds} done ({time.monotonic() - began:.0f}s)", flush=True)
            if (round_index + 1) % 10 == 0 and round_index + 1 < args.rounds:
                summarize(results, began)  # partial results survive an interrupted long run
    sys.exit(summarize(results, began))


def summarize(results: dict[str, list[dict]], began: float) -> int:
    """Print the table; the exit status: 1 if anything hung, failed or differed from the clean run."""
    print(f"\n{'scenario':<22} {'rounds':>6} {'hangs':>5} {'errors':>6} {'recoveries':>10} {'p50 s':>6} {'max s':>6} "
          f"{'mismatches':>10}")
    for name, rows in results.items():
        times = [t for r in rows for t in r.get("recovery_s", [])]
        p50, worst = (f"{np.median(times):.2f}", f"{max(times):.2f}") if times else ("-", "-")
        print(f"{name:<22} {len(rows):>6} {sum(r['hung'] for r in rows):>5} {sum('error' in r for r in rows):>6} "
              f"{sum(r.get('recoveries', 0) for r in rows):>10} {p50:>6} {worst:>6} "
              f"{sum(r.get('mismatch', False) for r in rows):>10}")
    for name, rows in results.items():
        for r in rows:
            if "error" in r:
                print(f"\n{name}: the rollout failed (a clear error, not a hang):\n{r['error']}")
    all_rows = [r for rows in results.values() for r in rows]
    hangs, mismatches = sum(r["hung"] for r in all_rows), sum(r.get("mismatch", False) for r in all_rows)
    errors = sum("error" in r for r in all_rows)
    print(f"\ntotal: {len(all_rows)} faulty rollouts, {hangs} hangs, {errors} errors, {mismatches} mismatches, "
          f"{time.monotonic() - began:.0f}s")
    return 1 if hangs or mismatches or errors else 0


if __name__ == "__main__":
    main()
