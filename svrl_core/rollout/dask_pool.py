"""Env pool on Dask workers: one persistent actor per worker holds its envs between calls.

Every wait has a deadline. An actor call whose worker died ("Unable to contact Actor's
worker"), that raised, or that outlived `compute.env_call_timeout_s` loses that worker's
envs: the pool answers `None` for their slots, restarts a hung worker, starts a new actor on
a worker that is alive now (never the lost one), and the rollout loop re-runs the affected
episodes from their initial state. After more than `max_worker_failures` losses within
`worker_loss_window_s` the pool gives up with an error that names the last cause, rather than
spinning; losses further apart (a long run's occasional preemption) are each survived.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import Counter
from dataclasses import dataclass

import numpy as np
from distributed import Client

from svrl_core.config import ComputeConfig, EnvConfig
from svrl_core.envs import Obs, StepResult
from svrl_core.rollout.pool import EnvGroup, EpisodeRequest
from svrl_core.training.ranks import Ranks

logger = logging.getLogger("svrl")
WORKER_WAIT_S = 60  # a lost worker's replacement (a restarted process, or another worker) must appear by then
FRESH_WORKER_GRACE_S = 10  # wait this long for a worker without envs before doubling up on a busy one
CLOSE_TIMEOUT_S = 60
RESTART_TIMEOUT_S = 30


class EnvWorkerLost(RuntimeError):
    """An env actor could not be started, or one of its calls failed, raised or timed out."""


class EnvStartTimeout(EnvWorkerLost):
    """An env actor did not finish starting in time: its worker may be stuck."""


@dataclass(frozen=True)
class WorkerLoss:
    """One lost env worker: why, and when (wall clock) the loss was seen and its replacement was ready."""

    cause: str
    detected_at: float
    recovered_at: float


class DaskEnvPool:
    """Slots are spread over workers; each call fans out to the workers involved, in parallel.

    `group_cls(env_cfg, envs_per_worker, *group_args)` builds one worker's envs (EnvGroup, or a
    subclass such as the fault-injecting one in rollout/faults.py). On a cluster shared by the ranks
    of a multi-rank run, the workers are split between the ranks round-robin, each to one rank.

    On a running scheduler the pool is elastic: `grow()`, called by every rank at the start of each
    rollout, starts envs on the workers that joined since, up to `compute.max_workers` per rank. Which
    worker runs an episode never changes what it computes (each episode has its own random stream)."""

    def __init__(self, client: Client, env_cfg: EnvConfig, compute: ComputeConfig,
                 group_cls: type[EnvGroup] = EnvGroup, group_args: tuple = (), ranks: Ranks = Ranks()):
        self.client, self.env_cfg, self.compute, self.ranks = client, env_cfg, compute, ranks
        self.group_cls, self.group_args = group_cls, group_args
        self.envs_per_worker, self.pipeline_stages = compute.envs_per_worker, compute.pipeline_stages
        self.worker_failures, self.losses = 0, []  # list[WorkerLoss]
        self._loss_times: list[float] = []  # monotonic times of the losses within worker_loss_window_s
        self._lost_addresses: set[str] = set()
        self._replacing = threading.Lock()  # pipeline stages may see the same worker die at once
        self.split: list[str] = []  # every worker the ranks have shared out, in order: the same on every rank
        self.actors: list = []
        self.generations: list[int] = []  # per actor, bumped when it is replaced
        self._reset_generation: dict[int, int] = {}  # slot -> its actor's generation at the slot's last reset
        failures = self._start_actors(self._my_newcomers())
        if failures:
            raise RuntimeError(f"DaskEnvPool: {failures[0]}")
        if not self.actors:
            raise RuntimeError(f"DaskEnvPool: the Dask cluster has {len(self.split)} workers, none usable by rank "
                               f"{ranks.rank} of {ranks.world}: start at least one worker per rank with svrl "
                               "installed (the log names the others and why)")

    @property
    def capacity(self) -> int:
        return self.envs_per_worker * len(self.actors)

    def grow(self) -> None:
        """Start envs on the workers that joined since the last call (this rank's share, up to the cap).

        A worker that cannot import svrl or build its envs is named in the log and left out; the pool
        goes on with the workers it has. A LocalCluster has its n_workers from the start: a worker
        that its nanny restarted after a loss is a spare for the next one, not a newcomer."""
        if not self.compute.scheduler_address:
            return
        before = len(self.actors)
        for failure in self._start_actors(self._my_newcomers()):
            logger.warning("env pool: a joining worker is left out: %s", failure)
        if len(self.actors) > before:
            joined = [actor._address for actor in self.actors[before:]]
            logger.info("env pool: %d worker(s) joined (%s): now %d envs on %d workers", len(joined),
                        ", ".join(joined), self.capacity, len(self.actors))

    def _my_newcomers(self) -> list[str]:
        """This rank's share of the workers that no rank has taken yet, that can run svrl, within the cap.

        Every rank calls this at the same point and all split rank 0's view of the cluster, leaving out
        the workers any rank holds envs on or has lost: each newcomer goes to exactly one rank."""
        view = (self._live_workers() if self.ranks.is_writer else [], [a._address for a in self.actors],
                sorted(self._lost_addresses))
        gathered = self.ranks.gather(view)
        taken = set(self.split).union(*(set(hosted) | set(lost) for _, hosted, lost in gathered))
        newcomers = [worker for worker in gathered[0][0] if worker not in taken]
        first, self.split = len(self.split), self.split + newcomers
        mine = usable_workers(self.client, [worker for i, worker in enumerate(newcomers, first)
                                            if i % self.ranks.world == self.ranks.rank])
        cap = self.compute.max_workers
        room = len(mine) if cap is None else max(0, cap - len(self.actors))
        if len(mine) > room:
            logger.info("env pool: worker(s) %s left idle: this rank already uses compute.max_workers=%d",
                        ", ".join(mine[room:]), cap)
        return mine[:room]

    def _start_actors(self, workers: list[str]) -> list[str]:
        """Build envs on `workers` at once; the causes of those that failed."""
        starting = [(w, self._submit_actor(w)) for w in workers]
        failures = []
        for worker, future in starting:
            try:
                self.actors.append(self._await_actor(future, worker))
                self.generations.append(0)
            except EnvWorkerLost as err:
                failures.append(str(err))
        return failures

    # --- actors ----------------------------------------------------------------------
    def _submit_actor(self, worker: str):
        # allow_other_workers: if `worker` dies before the actor starts, the scheduler places it elsewhere
        return self.client.submit(self.group_cls, self.env_cfg, self.envs_per_worker, *self.group_args,
                                  actor=True, workers=[worker], allow_other_workers=True, pure=False)

    def _await_actor(self, future, worker: str):
        timeout = self.compute.actor_start_timeout_s
        try:
            return future.result(timeout=timeout)
        except TimeoutError:
            future.cancel()
            raise EnvStartTimeout(f"envs on {worker} did not start within compute.actor_start_timeout_s="
                                f"{timeout:g}s") from None
        except Exception as err:  # the worker died, or building the envs raised
            raise EnvWorkerLost(f"starting envs on {worker} failed: {_describe(err)}") from None

    def _replace(self, index: int, lost, cause: str, kind: str) -> None:
        """Replace actor `index` after a loss of `kind`: "hung" (restart the worker, avoid it), "dead"
        (avoid its address) or "raised" (the worker is healthy: it may host the replacement)."""
        with self._replacing:
            if self.actors[index] is lost:  # another stage may have replaced it already
                self._release(lost)
                self._replace_locked(index, lost._address, cause, kind)

    def _release(self, actor) -> None:
        """Forget a lost actor: while its future is held, the scheduler rebuilds its envs elsewhere."""
        try:
            self.client.cancel([actor._future])
        except Exception as err:  # the scheduler may already have dropped it
            logger.debug("releasing a lost env actor: %s", _describe(err))

    def _replace_locked(self, index: int, address: str, cause: str, kind: str) -> None:
        detected_at = time.time()
        while True:
            self.worker_failures += 1
            recent = self._count_recent_loss(time.monotonic())
            logger.warning("env worker %s lost (%s); restarting its envs and re-running their episodes",
                           address, cause)
            if kind == "hung":  # its actor thread is stuck: only a new process frees it (also when giving up)
                self._restart_worker(address)
            if recent > self.compute.max_worker_failures:
                raise RuntimeError(f"DaskEnvPool: lost env workers {recent} times within compute.worker_loss_window_s="
                                   f"{self.compute.worker_loss_window_s:g}s (limit compute.max_worker_failures="
                                   f"{self.compute.max_worker_failures}); giving up on this rollout. Last cause: {cause}")
            if kind != "raised":
                self._lost_addresses.add(address)
            worker = self._live_worker(exclude=index)
            try:
                self.actors[index] = self._await_actor(self._submit_actor(worker), worker)
            except EnvWorkerLost as err:  # e.g. killed while starting: count it and try again
                address, cause, kind = worker, str(err), "hung" if isinstance(err, EnvStartTimeout) else "raised"
                continue
            self.generations[index] += 1  # after the new actor: a reader never pairs the new number with the old actor
            self.losses.append(WorkerLoss(cause, detected_at, time.time()))
            return

    def _count_recent_loss(self, now: float) -> int:
        """Record a loss at `now` (monotonic s); how many fall within the window, this one included."""
        self._loss_times = [t for t in self._loss_times if now - t < self.compute.worker_loss_window_s] + [now]
        return len(self._loss_times)

    def _restart_worker(self, address: str) -> None:
        """End a stuck worker's process from its event loop (free while its actor thread hangs), so that its
        Nanny starts a new one as after any crash. Nanny.restart is the fallback: under load it can close the
        Nanny for good (dask/distributed#7312), shrinking the cluster."""
        try:
            self.client.run(os._exit, 1, workers=[address], wait=False)
            return
        except Exception as err:
            logger.warning("could not end stuck env worker %s (%s); asking its Nanny", address, _describe(err))
        try:
            self.client.restart_workers([address], timeout=RESTART_TIMEOUT_S, raise_for_error=False)
        except Exception as err:  # no nanny, or the worker is already gone: it is avoided either way
            logger.warning("could not restart env worker %s (%s); avoiding it", address, _describe(err))

    def _live_worker(self, exclude: int) -> str:
        """A worker alive now and never lost, preferring one that holds no other actor's envs."""
        busy = Counter(actor._address for i, actor in enumerate(self.actors) if i != exclude)
        began = time.monotonic()
        while True:
            live = self._live_workers()
            waited = time.monotonic() - began
            if live and (min(busy[w] for w in live) == 0 or waited > FRESH_WORKER_GRACE_S):
                return min(live, key=lambda w: busy[w])
            if waited > WORKER_WAIT_S:
                raise RuntimeError(f"DaskEnvPool: no live Dask worker within {WORKER_WAIT_S}s "
                                   f"(lost: {sorted(self._lost_addresses)})")
            time.sleep(0.2)

    def _live_workers(self) -> list[str]:
        """The cluster's workers now, less those this pool lost, sorted."""
        return sorted(w for w in self.client.scheduler_info(n_workers=-1)["workers"] if w not in self._lost_addresses)

    # --- calls -----------------------------------------------------------------------
    def _fan_out(self, method: str, slots: list[int], payload: list) -> list:
        """Call `method` on each involved actor at once; None for the slots of a lost worker.

        A slot whose actor was replaced since the slot's last reset answers None to `step` without a
        call: its env was rebuilt, so its episode is lost even if this stage's own calls never failed."""
        results: list = [None] * len(slots)
        by_actor: dict[int, list[int]] = {}
        for position, slot in enumerate(slots):
            a = slot // self.envs_per_worker
            if method == "reset" or self._reset_generation.get(slot) == self.generations[a]:
                by_actor.setdefault(a, []).append(position)
        generations = {a: self.generations[a] for a in by_actor}  # read before the actor (see _replace_locked)
        actors = {a: self.actors[a] for a in by_actor}
        calls = {a: _start_call(actors[a], method, [slots[p] % self.envs_per_worker for p in positions],
                                [payload[p] for p in positions])
                 for a, positions in by_actor.items()}
        deadline = time.monotonic() + self.compute.env_call_timeout_s
        failed: dict[int, tuple[str, str]] = {}  # actor -> (cause, kind); replaced once every call has answered
        for a, positions in by_actor.items():
            try:
                values = _result(calls[a], deadline)
            except TimeoutError:
                failed[a] = (f"{method} did not answer within compute.env_call_timeout_s="
                             f"{self.compute.env_call_timeout_s:g}s", "hung")
                continue
            except OSError as err:  # "Unable to contact Actor's worker": the process died
                failed[a] = (f"{method} failed: {_describe(err)}", "dead")
                continue
            except Exception as err:  # the env raised: its state is unknown, so its envs are rebuilt
                failed[a] = (f"{method} raised {_describe(err)}", "raised")
                continue
            for position, value in zip(positions, values):
                results[position] = value
                if method == "reset":
                    self._reset_generation[slots[position]] = generations[a]
        for a, (cause, kind) in failed.items():
            self._replace(a, actors[a], cause, kind)
        return results

    def reset(self, slots: list[int], requests: list[EpisodeRequest]) -> list[Obs | None]:
        return self._fan_out("reset", slots, requests)

    def step(self, slots: list[int], chunks: np.ndarray) -> list[StepResult | None]:
        return self._fan_out("step", slots, list(chunks))

    def timings(self) -> Counter:
        """Seconds and counts spent inside every worker's envs since they started, summed (`EnvGroup.timings`)."""
        deadline = time.monotonic() + self.compute.env_call_timeout_s
        calls = [_start_call(actor, "timings") for actor in self.actors]
        return sum((Counter(_result(call, deadline)) for call in calls), Counter())

    def close(self) -> None:
        """Close every actor's envs, waiting at most CLOSE_TIMEOUT_S in all."""
        deadline = time.monotonic() + CLOSE_TIMEOUT_S
        closing = [_start_call(actor, "close") for actor in self.actors]
        for actor, call in zip(self.actors, closing):
            try:
                _result(call, deadline)
            except Exception as err:  # a dead or stuck worker: its envs go with the process
                logger.warning("closing the envs on %s: %s", actor._address, _describe(err))


def _imports_svrl() -> bool:
    import svrl_core.envs  # noqa: F401  (what an env actor needs; raises where svrl is not installed)

    return True


def usable_workers(client: Client, workers: list[str]) -> list[str]:
    """The workers that can import svrl; each other one is named in the log with the cause and left out
    (a worker without svrl would otherwise fail its env actor, which the scheduler quietly moves elsewhere)."""
    answers = client.run(_imports_svrl, workers=workers, on_error="return") if workers else {}
    for worker, answer in sorted(answers.items()):
        if answer is not True:
            logger.warning("env worker %s cannot run svrl's envs (%s): left out; install svrl there (`make setup` "
                           "or the image)", worker, _describe(answer))
    return [worker for worker in workers if answers.get(worker) is True]


def _start_call(actor, method: str, *args):
    """The call's future, or, when the actor's worker is already known lost, that error as an OSError."""
    try:
        return getattr(actor, method)(*args)
    except RuntimeError as err:  # "Worker holding Actor was lost": raised before any call is made
        return OSError(str(err))


def _result(call, deadline: float):
    """The call's answer, waiting until `deadline` at most; an answer that already came is never late (a
    zero timeout would call it so when another actor's wait used up the shared deadline)."""
    if isinstance(call, Exception):
        raise call
    return call.result(timeout=None if call.done() else max(0.0, deadline - time.monotonic()))


def _describe(err: BaseException) -> str:
    return f"{type(err).__name__}: {err}" if str(err) else type(err).__name__
