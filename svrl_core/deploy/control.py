"""The robot-side control loop: execute action chunks from a queue at the control rate.

Synchronous (prefetch_at = 0): when the queue runs dry, observe, ask, wait, execute the whole
chunk: exactly what in-process rollouts do. Asynchronous (prefetch_at = n > 0, as LeRobot's
async inference): ask for the next chunk, in the background, once only n actions are left,
and when it arrives drop the actions that were already executed since its observation.
When the server is unreachable the robot holds and the loop reconnects with backoff; the chunk
it was executing is then stale and dropped, and the control clock restarts rather than
catching up with a burst. `emergency_stop()` (from any thread, e.g. a signal handler) stops the
robot and ends the run.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from svrl_core.deploy.client import PolicyClient, ServerUnreachable
from svrl_core.deploy.robots import Robot

log = logging.getLogger("svrl.control")


@dataclass(frozen=True)
class ControlConfig:
    rate_hz: float = 10.0  # actions per second; 0: as fast as the robot takes them (simulation)
    prefetch_at: int = 0  # ask for the next chunk when this many actions are left (0: when none are)
    reconnect_first_s: float = 0.1  # first wait before reconnecting; doubles up to reconnect_max_s
    reconnect_max_s: float = 5.0
    give_up_after_s: float = 60.0  # unreachable this long: stop, with the robot held


@dataclass
class ControlReport:
    actions: list[np.ndarray] = field(default_factory=list)  # every executed action, in order
    chunks: int = 0
    stale_actions_dropped: int = 0
    holds: int = 0
    reconnects: int = 0
    latency_ms: list[float] = field(default_factory=list)  # observation sent -> chunk received


class ChunkRunner:
    """Drives `robot` with chunks from `client` until the episode ends or `max_steps` actions ran."""

    def __init__(self, robot: Robot, client: PolicyClient, cfg: ControlConfig = ControlConfig()):
        self.robot, self.client, self.cfg = robot, client, cfg
        self._requests = ThreadPoolExecutor(1, thread_name_prefix="svrl-request")
        self._stopped = False

    def emergency_stop(self) -> None:
        """Stop the robot now and end the run: the loop executes nothing more."""
        self._stopped = True
        self.robot.emergency_stop()

    def _check_layout(self) -> None:
        names = self.client.metadata.get("action_names")
        if names is not None and tuple(names) != tuple(self.robot.action_names):
            raise ValueError(f"the bundle's actions {names} are not this robot's {list(self.robot.action_names)}")

    def _ask(self, step: int) -> tuple[int, float, Future]:
        return step, time.perf_counter(), self._requests.submit(self.client.infer, self.robot.observe())

    def _reconnect(self, report: ControlReport) -> None:
        """Hold the robot and retry with exponential backoff; give up after give_up_after_s."""
        self.robot.hold()
        report.holds += 1
        wait, start = self.cfg.reconnect_first_s, time.monotonic()
        while True:
            time.sleep(wait)
            try:
                self.client.connect()
                report.reconnects += 1
                return
            except ServerUnreachable as err:
                if time.monotonic() - start > self.cfg.give_up_after_s:
                    raise ServerUnreachable(f"gave up after {self.cfg.give_up_after_s:g}s with the robot held: "
                                            f"{err}") from None
                log.warning("policy server unreachable (%s); robot held, retrying in %.1fs", err, wait)
                wait = min(2 * wait, self.cfg.reconnect_max_s)

    def run(self, max_steps: int) -> ControlReport:
        """Drive the robot; whatever ends the run early (a rejected request, the server gone for good,
        a robot error), the robot is told to hold before the error propagates."""
        try:
            return self._drive(max_steps)
        except Exception:
            if not self._stopped:
                self.robot.hold()
            raise

    def _drive(self, max_steps: int) -> ControlReport:
        report, queue, pending = ControlReport(), deque(), None
        if self.client.metadata is None:
            self.client.connect()
        self._check_layout()
        period = 1.0 / self.cfg.rate_hz if self.cfg.rate_hz > 0 else 0.0
        step, next_tick = 0, time.monotonic()
        while step < max_steps and not self.robot.done and not self._stopped:
            if pending is None and len(queue) <= self.cfg.prefetch_at:
                pending = self._ask(step)
            if pending is not None and (not queue or pending[2].done()):
                asked_at, sent, future = pending
                pending = None
                try:
                    chunk = future.result()
                except ServerUnreachable:
                    self._reconnect(report)
                    queue.clear()  # the robot held meanwhile: what is left of the old chunk is stale
                    next_tick = time.monotonic()
                    continue
                report.latency_ms.append(1e3 * (time.perf_counter() - sent))
                report.chunks += 1
                stale = step - asked_at  # actions executed since the chunk's observation
                report.stale_actions_dropped += min(stale, len(chunk))
                queue = deque(chunk[stale:])
                if not queue:
                    continue
            action = queue.popleft()
            if self._stopped:
                break
            self.robot.apply(action)
            applied_at = time.monotonic()
            report.actions.append(action)
            step += 1
            next_tick += period
            if next_tick < applied_at:  # this action came a period late (waiting for a chunk): no catching up
                next_tick = applied_at + period
            time.sleep(max(0.0, next_tick - time.monotonic()))
        return report

    def close(self) -> None:
        self._requests.shutdown(wait=False, cancel_futures=True)
