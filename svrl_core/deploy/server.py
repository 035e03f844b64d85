"""A policy server: one exported bundle behind a WebSocket, batching concurrent robots.

Why WebSocket + msgpack (as openpi): a robot asks for a chunk several times a second, and a
persistent connection pays no per-request HTTP handshake or header parsing; arrays travel as
raw bytes. bench/serve.py measures the transport against HTTP keep-alive on the same payload.
Plain HTTP GETs on the same port answer /health (no key: for probes) and /metadata.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path

import numpy as np
from websockets.asyncio.server import ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from svrl_core.deploy.protocol import BadRequest, Observation, bundle_metadata, parse_observation
from svrl_core.deploy.wire import WireError, pack, unpack
from svrl_core.export import BundlePolicy

log = logging.getLogger("svrl.serve")


@dataclass(frozen=True)
class ServeConfig:
    """How the server listens, authenticates, batches and bounds its work."""

    host: str = "127.0.0.1"  # loopback unless told otherwise: a policy server drives hardware
    port: int = 8765  # 0: any free port (see PolicyServer.port)
    api_key: str | None = None  # None only with allow_no_auth
    allow_no_auth: bool = False
    max_batch: int = 16  # observations per forward pass
    batch_window_ms: float = 5.0  # longest wait for more requests once one is queued
    max_connections: int = 64  # more get HTTP 503 at the handshake
    max_request_bytes: int = 4 << 20  # larger requests get 413; twice this closes the connection
    drain_timeout_s: float = 10.0  # on shutdown, time to finish the requests already accepted

    def __post_init__(self):
        if not self.api_key and not self.allow_no_auth:
            raise ValueError("serve: no API key; set SVRL_API_KEY (any long random string, the robot uses the same), "
                             "or pass --no-auth to serve without authentication on a trusted network")
        if self.max_batch < 1 or self.max_connections < 1 or self.batch_window_ms < 0:
            raise ValueError(f"serve: max_batch and max_connections must be >= 1 and batch_window_ms >= 0, got {self}")


def _json_response(status: HTTPStatus, body: dict, headers: dict | None = None) -> Response:
    payload = json.dumps(body).encode()
    return Response(status.value, status.phrase, Headers({"Content-Type": "application/json",
                                                          "Content-Length": str(len(payload)), **(headers or {})}),
                    payload)


class PolicyServer:
    """Serves BundlePolicy.act_batch to any number of robots; run() until `stop` is set."""

    def __init__(self, bundle_dir: str | Path, cfg: ServeConfig):
        self.cfg = cfg
        self.policy = BundlePolicy(bundle_dir)  # verifies the manifest: a tampered bundle never serves
        self.metadata = {**bundle_metadata(bundle_dir, self.policy.spec, self.policy.manifest),
                         "max_request_bytes": cfg.max_request_bytes, "max_batch": cfg.max_batch}
        self.port: int | None = None
        self.connections = 0
        self.served = 0
        self.batches = 0
        self._draining = False
        self._pending: list[tuple[Observation, asyncio.Future]] = []
        self._arrived: asyncio.Event | None = None
        self._running = False
        self._inference = ThreadPoolExecutor(1, thread_name_prefix="svrl-inference")

    # --- HTTP side: health, metadata, authentication, admission -------------------------
    def _authorized(self, request: Request) -> bool:
        if self.cfg.api_key is None:
            return True
        given = request.headers.get("Authorization", "")
        return hmac.compare_digest(given.encode(), f"Bearer {self.cfg.api_key}".encode())

    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        path = request.path.split("?")[0]
        if path == "/health":
            return _json_response(HTTPStatus.OK, {"status": "draining" if self._draining else "ok",
                                                  "connections": self.connections, "served": self.served})
        if not self._authorized(request):
            return _json_response(HTTPStatus.UNAUTHORIZED, {"error": "missing or wrong API key: send the header "
                                                            "'Authorization: Bearer <SVRL_API_KEY>'"},
                                  {"WWW-Authenticate": "Bearer"})
        if path == "/metadata":
            return _json_response(HTTPStatus.OK, self.metadata)
        if path != "/":
            return _json_response(HTTPStatus.NOT_FOUND, {"error": f"no {path}: use /, /health or /metadata"})
        if self._draining or self.connections >= self.cfg.max_connections:
            return _json_response(HTTPStatus.SERVICE_UNAVAILABLE,
                                  {"error": f"server busy ({self.connections} robots connected) or shutting down"})
        return None

    # --- WebSocket side ----------------------------------------------------------------
    async def _handle(self, connection: ServerConnection) -> None:
        self.connections += 1
        try:
            async for payload in connection:
                await connection.send(pack(await self._answer(payload)))
        except ConnectionClosed:
            pass
        finally:
            self.connections -= 1

    async def _answer(self, payload: bytes | str) -> dict:
        try:
            if isinstance(payload, str):
                raise BadRequest(400, "send binary msgpack frames, not text")
            if len(payload) > self.cfg.max_request_bytes:
                raise BadRequest(413, f"request of {len(payload)} bytes exceeds {self.cfg.max_request_bytes}")
            message = unpack(payload)
            kind = message.get("type")
            if kind == "metadata":
                return {"type": "metadata", **self.metadata}
            if kind != "infer":
                raise BadRequest(400, f"unknown message type {kind!r}: use 'infer' or 'metadata'")
            if self._draining:
                raise BadRequest(503, "server is shutting down")
            observation = parse_observation(message, self.metadata)
            start = time.perf_counter()
            actions, inference_ms = await self._submit(observation)
            return {"type": "actions", "actions": actions, "inference_ms": inference_ms,
                    "server_ms": 1e3 * (time.perf_counter() - start)}
        except WireError as err:
            return {"type": "error", "status": 400, "error": f"malformed request: {err}"}
        except BadRequest as err:
            return {"type": "error", "status": err.status, "error": str(err)}
        except Exception as err:  # the policy failed on valid input: report it, keep serving
            log.exception("inference failed")
            return {"type": "error", "status": 500, "error": f"inference failed: {type(err).__name__}: {err}"}

    # --- batching ----------------------------------------------------------------------
    async def _submit(self, observation: Observation) -> tuple[np.ndarray, float]:
        """The (K, D) chunk for `observation` and the milliseconds of the forward pass that made it."""
        future = asyncio.get_running_loop().create_future()
        self._pending.append((observation, future))
        self._arrived.set()
        return await future

    async def _collect(self) -> list:
        """Requests for one forward pass: wait for the first, then up to the window for as many
        more as there are other connected robots (never for requests that cannot come)."""
        loop = asyncio.get_running_loop()
        while not self._pending:
            self._arrived.clear()
            await self._arrived.wait()
        deadline = loop.time() + self.cfg.batch_window_ms / 1e3
        while len(self._pending) < min(self.cfg.max_batch, self.connections) and loop.time() < deadline:
            self._arrived.clear()
            try:  # waiting on an event loses nothing when it times out
                await asyncio.wait_for(self._arrived.wait(), deadline - loop.time())
            except TimeoutError:
                break
        batch, self._pending = self._pending[: self.cfg.max_batch], self._pending[self.cfg.max_batch:]
        return batch

    def _act(self, observations: list[Observation]) -> tuple[np.ndarray, float]:
        start = time.perf_counter()
        actions = self.policy.act_batch(np.stack([o.image for o in observations]),
                                        np.stack([o.proprio for o in observations]),
                                        [o.instruction for o in observations])  # (B, K, D)
        return actions, 1e3 * (time.perf_counter() - start)

    async def _batch_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._collect()
            self._running = True
            try:
                actions, inference_ms = await loop.run_in_executor(self._inference, self._act,
                                                                   [obs for obs, _ in batch])
            except Exception as err:
                for _, future in batch:
                    future.done() or future.set_exception(err)
            else:
                for row, (_, future) in enumerate(batch):
                    future.done() or future.set_result((actions[row], inference_ms))
                self.served += len(batch)
                self.batches += 1
            finally:
                self._running = False

    async def _drain(self) -> None:
        """Wait (up to drain_timeout_s) until every accepted request has its answer."""
        deadline = time.monotonic() + self.cfg.drain_timeout_s
        while (self._pending or self._running) and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        if self._pending or self._running:
            log.warning("shutdown: %d requests unanswered after %.0fs", len(self._pending), self.cfg.drain_timeout_s)

    # --- lifecycle ---------------------------------------------------------------------
    async def run(self, stop: asyncio.Event, ready: threading.Event | None = None) -> None:
        """Serve until `stop` is set, then drain: refuse new work, answer what was accepted, close."""
        self._pending, self._arrived, self._running = [], asyncio.Event(), False
        batcher = asyncio.create_task(self._batch_loop())
        hard_limit = 2 * self.cfg.max_request_bytes  # between the two limits a request gets a 413 reply
        async with serve(self._handle, self.cfg.host, self.cfg.port, process_request=self._process_request,
                         max_size=hard_limit, compression=None, max_queue=4) as server:
            self.port = server.sockets[0].getsockname()[1]
            log.info("serving %s on ws://%s:%d", self.metadata["name"], self.cfg.host, self.port)
            if ready is not None:
                ready.set()
            await stop.wait()
            self._draining = True
            await self._drain()
            await asyncio.sleep(0.05)  # let handlers send the last answers before the close frames
            server.close()
        batcher.cancel()
        self._inference.shutdown(wait=False)


class ServerThread:
    """A PolicyServer on its own event loop thread (tests, benchmarks, embedding in a process)."""

    def __init__(self, server: PolicyServer, start_timeout_s: float = 30.0):
        self.server = server
        self._loop = asyncio.new_event_loop()
        self._stop = asyncio.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._loop.run_until_complete,
                                        args=(server.run(self._stop, self._ready),), daemon=True)
        self._thread.start()
        if not self._ready.wait(start_timeout_s):
            raise RuntimeError(f"policy server did not start within {start_timeout_s}s")

    @property
    def url(self) -> str:
        return f"ws://{self.server.cfg.host}:{self.server.port}"

    def stop(self, timeout_s: float = 30.0) -> None:
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            raise RuntimeError(f"policy server did not stop within {timeout_s}s")
        self._loop.close()

    def __enter__(self) -> ServerThread:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
