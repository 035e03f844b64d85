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
import ssl
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from collections import Counter
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path
from weakref import WeakKeyDictionary

import numpy as np
from websockets.asyncio.server import ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from svrl_core.deploy.protocol import BadRequest, Observation, bundle_metadata, parse_observation
from svrl_core.deploy.wire import WireError, pack, unpack
from svrl_core.export import BundlePolicy

log = logging.getLogger("svrl.serve")


MIN_KEY_BYTES = 16


@dataclass(frozen=True)
class ServeConfig:
    """How the server listens, authenticates, batches and bounds its work."""

    host: str = "127.0.0.1"  # loopback unless told otherwise: a policy server drives hardware
    port: int = 8765  # 0: any free port (see PolicyServer.port)
    api_keys: tuple[str, ...] = ()  # one per robot (or fleet); empty only with allow_no_auth
    allow_no_auth: bool = False
    max_batch: int = 16  # observations per forward pass
    batch_window_ms: float = 5.0  # longest wait for more requests once one is queued
    max_connections: int = 64  # more get HTTP 503 at the handshake
    max_connections_per_key: int = 16  # so one key's connections cannot take every other robot's place
    max_request_bytes: int = 4 << 20  # larger requests get 413; twice this closes the connection
    ping_interval_s: float = 5.0  # a connection that leaves a ping unanswered for ping_timeout_s is dropped
    ping_timeout_s: float = 5.0
    tls_cert: str | None = None  # PEM certificate chain and its private key: serve wss:// instead of ws://
    tls_key: str | None = None
    drain_timeout_s: float = 10.0  # on shutdown, time to finish the requests already accepted

    def __post_init__(self):
        if not self.api_keys and not self.allow_no_auth:
            raise ValueError("serve: no API key; set SVRL_API_KEY (a long random string, the robot uses the same; "
                             "several, comma-separated, give robots keys of their own), or pass --no-auth to serve "
                             "without authentication on a trusted network")
        for number, key in enumerate(self.api_keys, 1):
            if len(key.encode()) < MIN_KEY_BYTES or not key.isascii() or not key.isprintable() or " " in key:
                raise ValueError(f"serve: API key {number} must be at least {MIN_KEY_BYTES} printable ASCII characters "
                                 "without spaces; make one with `python -c 'import secrets; "
                                 "print(secrets.token_urlsafe(24))'`")
        if min(self.max_batch, self.max_connections, self.max_connections_per_key) < 1 or self.batch_window_ms < 0:
            raise ValueError(f"serve: max_batch and the connection limits must be >= 1 and batch_window_ms >= 0, "
                             f"got {self}")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("serve: TLS needs both a certificate (--tls-cert) and its private key (--tls-key)")

    def tls_context(self) -> ssl.SSLContext | None:
        """The server's TLS context, or None for plain ws:// (fine on loopback or a trusted private link)."""
        if self.tls_cert is None:
            return None
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        try:
            context.load_cert_chain(self.tls_cert, self.tls_key)
        except (OSError, ssl.SSLError) as err:
            raise ValueError(f"serve: cannot load the TLS certificate {self.tls_cert} with key {self.tls_key}: "
                             f"{err}") from None
        return context


class _HealthChecksAreNotRejections(logging.Filter):
    """websockets logs every plain-HTTP answer as "connection rejected"; /health and /metadata are not."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.msg.startswith("connection rejected") and record.args and record.args[0] == 200)


_websocket_log = logging.getLogger("svrl.serve.websocket")
_websocket_log.addFilter(_HealthChecksAreNotRejections())


def _json_response(status: HTTPStatus, body: dict, headers: dict | None = None) -> Response:
    payload = json.dumps(body).encode()
    return Response(status.value, status.phrase, Headers({"Content-Type": "application/json",
                                                          "Content-Length": str(len(payload)), **(headers or {})}),
                    payload)


class PolicyServer:
    """Serves BundlePolicy.act_batch to any number of robots; run() until `stop` is set."""

    def __init__(self, bundle_dir: str | Path, cfg: ServeConfig, signing_key: bytes | None = None):
        self.cfg = cfg
        self._tls = cfg.tls_context()
        # verifies the manifest (and its signature when a key is given): a tampered bundle never serves
        self.policy = BundlePolicy(bundle_dir, signing_key=signing_key)
        self.metadata = {**bundle_metadata(self.policy.spec, self.policy.manifest, self.policy.provenance),
                         "max_request_bytes": cfg.max_request_bytes, "max_batch": cfg.max_batch}
        self.port: int | None = None
        self.connections = 0
        self.served = 0
        self.batches = 0
        self._draining = False
        self._per_key: Counter[int] = Counter()  # open connections per API key (its index)
        self._key_of: WeakKeyDictionary[ServerConnection, int] = WeakKeyDictionary()
        self._pending: list[tuple[Observation, asyncio.Future]] = []
        self._arrived: asyncio.Event | None = None
        self._running = False
        self._inference = ThreadPoolExecutor(1, thread_name_prefix="svrl-inference")

    @property
    def scheme(self) -> str:
        return "ws" if self._tls is None else "wss"

    # --- HTTP side: health, metadata, authentication, admission -------------------------
    def _key_index(self, request: Request) -> int:
        """Which API key the request carries (0 without authentication); BadRequest(400/401) otherwise."""
        if self.cfg.allow_no_auth and not self.cfg.api_keys:
            return 0
        values = request.headers.get_all("Authorization")
        if len(values) > 1:
            raise BadRequest(400, "send one Authorization header, not several")
        given = (values[0] if values else "").encode("utf-8", "surrogateescape")
        matches = [hmac.compare_digest(given, f"Bearer {key}".encode()) for key in self.cfg.api_keys]  # every key
        if True not in matches:
            raise BadRequest(401, "missing or wrong API key: send the header 'Authorization: Bearer <SVRL_API_KEY>'")
        return matches.index(True)

    def _admit(self, connection: ServerConnection, request: Request) -> Response | None:
        path = request.path.split("?")[0]
        if path == "/health":
            log.debug("health check")
            return _json_response(HTTPStatus.OK, {"status": "draining" if self._draining else "ok",
                                                  "connections": self.connections, "served": self.served})
        key = self._key_index(request)
        if path == "/metadata":
            return _json_response(HTTPStatus.OK, self.metadata)
        if path != "/":
            raise BadRequest(404, f"no {path}: use /, /health or /metadata")
        if self._draining or self.connections >= self.cfg.max_connections:
            raise BadRequest(503, f"server busy ({self.connections} robots connected) or shutting down")
        if self._per_key[key] >= self.cfg.max_connections_per_key:
            raise BadRequest(503, f"this API key already has {self._per_key[key]} connections, its share; close "
                                  "idle ones or give each robot a key of its own")
        self._key_of[connection] = key
        return None

    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        try:
            return self._admit(connection, request)
        except BadRequest as err:
            headers = {"WWW-Authenticate": "Bearer"} if err.status == 401 else None
            return _json_response(HTTPStatus(err.status), {"error": str(err)}, headers)

    # --- WebSocket side ----------------------------------------------------------------
    async def _handle(self, connection: ServerConnection) -> None:
        key = self._key_of.get(connection, 0)
        self.connections += 1
        self._per_key[key] += 1
        try:
            async for payload in connection:
                await connection.send(pack(await self._answer(payload)))
        except ConnectionClosed:
            pass
        finally:
            self.connections -= 1
            self._per_key[key] -= 1

    async def _answer(self, payload: bytes | str) -> dict:
        try:
            if isinstance(payload, str):
                raise BadRequest(400, "send binary msgpack frames, not text")
            if len(payload) > self.cfg.max_request_bytes:
                raise BadRequest(413, f"request of {len(payload)} bytes exceeds {self.cfg.max_request_bytes}")
            message = unpack(payload)  # bounded: see wire.REQUEST_LIMITS
            kind = message.get("type")
            if not isinstance(kind, str) or kind not in ("infer", "metadata"):
                shown = repr(kind) if isinstance(kind, str | None) else f"of type {type(kind).__name__}"
                raise BadRequest(400, f"unknown message type {shown}: use 'infer' or 'metadata'")
            if kind == "metadata":
                return {"type": "metadata", **self.metadata}
            if self._draining:
                raise BadRequest(503, "server is shutting down")
            observation = self._checked(parse_observation(message, self.metadata))
            start = time.perf_counter()
            actions, inference_ms = await self._submit(observation)
            return {"type": "actions", "actions": actions, "inference_ms": inference_ms,
                    "server_ms": 1e3 * (time.perf_counter() - start)}
        except WireError as err:
            return {"type": "error", "status": 400, "error": f"malformed request: {err}"}
        except BadRequest as err:
            return {"type": "error", "status": err.status, "error": str(err)}
        except Exception as err:  # the policy failed on valid input, alone in its batch: report it, keep serving
            return {"type": "error", "status": 500, "error": f"inference failed: {type(err).__name__}: {err}"}

    def _checked(self, observation: Observation) -> Observation:
        """Encode the instruction alone before it joins a batch: one the bundle cannot take (an OFT bundle's
        prompt over its token budget) is this robot's 422, not a failed batch. Images and proprio were
        checked by parse_observation."""
        try:
            self.policy.encode_instructions([observation.instruction])
        except ValueError as err:
            raise BadRequest(422, str(err)) from None
        return observation

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

    async def _run_batch(self, batch: list[tuple[Observation, asyncio.Future]]) -> None:
        """One forward pass; if it fails, each request again on its own, so a failure (and its message,
        which may quote the input) reaches only the robot whose request caused it."""
        try:
            actions, inference_ms = await asyncio.get_running_loop().run_in_executor(
                self._inference, self._act, [obs for obs, _ in batch])
        except Exception as err:
            if len(batch) > 1:
                for request in batch:
                    await self._run_batch([request])
                return
            log.exception("inference failed")
            batch[0][1].done() or batch[0][1].set_exception(err)
            return
        for row, (_, future) in enumerate(batch):
            future.done() or future.set_result((actions[row], inference_ms))
        self.served += len(batch)
        self.batches += 1

    async def _batch_loop(self) -> None:
        while True:
            batch = await self._collect()
            self._running = True
            try:
                await self._run_batch(batch)
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
                         max_size=hard_limit, compression=None, max_queue=4, ssl=self._tls,
                         ping_interval=self.cfg.ping_interval_s, ping_timeout=self.cfg.ping_timeout_s,
                         close_timeout=self.cfg.ping_timeout_s,  # a silent peer is not waited for twice
                         logger=_websocket_log) as server:
            self.port = server.sockets[0].getsockname()[1]
            log.info("serving %s on %s://%s:%d", self.metadata["name"], self.scheme, self.cfg.host, self.port)
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
        return f"{self.server.scheme}://{self.server.cfg.host}:{self.server.port}"

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
