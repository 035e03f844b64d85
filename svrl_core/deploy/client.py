"""The robot side of the policy server: one blocking connection, one chunk per observation.

The robot trusts nothing it is sent: every chunk is checked against the bundle's metadata
(shape, finite, within the action bounds) before the control loop may execute it.
"""

from __future__ import annotations

import ssl

import numpy as np
from websockets.exceptions import InvalidStatus, WebSocketException
from websockets.sync.client import ClientConnection, connect

from svrl_core.deploy.wire import REPLY_LIMITS, pack, unpack
from svrl_core.envs.base import Obs


class ServerUnreachable(ConnectionError):
    """No answer from the server (refused, dropped, or too slow): retry later, hold the robot meanwhile."""


class RequestRejected(ValueError):
    """The server answered with an error: retrying the same request will not help."""

    def __init__(self, status: int, message: str):
        super().__init__(f"policy server refused the request ({status}): {message}")
        self.status = status


class UnsafeReply(ValueError):
    """The server sent a chunk this robot must not execute (wrong shape, not finite, out of bounds)."""


BOUND_TOLERANCE = 1e-4  # float32 rounding of the bounds and of the actions


def check_chunk(actions: object, metadata: dict, proprio: np.ndarray) -> np.ndarray:
    """A reply's actions, if they are a finite (chunk_size, action_dim) array within the bundle's bounds."""
    shape = (metadata["chunk_size"], metadata["action_dim"])
    if not isinstance(actions, np.ndarray) or actions.shape != shape or actions.dtype != np.float32:
        got = f"{actions.dtype} {actions.shape}" if isinstance(actions, np.ndarray) else type(actions).__name__
        raise UnsafeReply(f"policy server sent actions of {got}, the bundle makes float32 {shape}")
    if not np.all(np.isfinite(actions)):
        raise UnsafeReply(f"policy server sent non-finite actions: {actions.tolist()}")
    if "action_low" in metadata:
        relative = np.asarray(metadata["action_relative_to_proprio"], bool)  # such dims have the proprio's layout
        offset = np.where(relative, np.asarray(proprio, np.float64), 0.0) if relative.any() else 0.0
        low, high = np.asarray(metadata["action_low"]) + offset, np.asarray(metadata["action_high"]) + offset
        outside = (actions < low - BOUND_TOLERANCE) | (actions > high + BOUND_TOLERANCE)  # (K, D)
        if outside.any():
            step, dim = np.argwhere(outside)[0]
            raise UnsafeReply(f"policy server sent action {step} dim {dim} = {actions[step, dim]:g}, outside the "
                              f"bundle's range [{low[dim]:g}, {high[dim]:g}]")
    return actions


class PolicyClient:
    """client = PolicyClient("ws://127.0.0.1:8765", api_key); chunk = client.infer(obs)  # (K, D)

    For a wss:// server with a self-signed certificate, pass the certificate (or its CA) as ca_file."""

    def __init__(self, url: str, api_key: str | None, timeout_s: float = 5.0, max_message_bytes: int = 16 << 20,
                 ca_file: str | None = None):
        self.url, self.timeout_s = url, timeout_s
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._max_message_bytes = max_message_bytes
        self._tls = ssl.create_default_context(cafile=ca_file) if url.startswith("wss://") else None
        self._connection: ClientConnection | None = None
        self.metadata: dict | None = None

    def connect(self) -> dict:
        """Open the connection and read the bundle's metadata."""
        self.close()
        try:
            self._connection = connect(self.url, additional_headers=self._headers, open_timeout=self.timeout_s,
                                       close_timeout=1.0, compression=None, max_size=self._max_message_bytes,
                                       proxy=None, ssl=self._tls)
        except InvalidStatus as err:
            status = err.response.status_code
            if status == 503:
                raise ServerUnreachable(f"{self.url}: server busy or shutting down (503)") from None
            raise RequestRejected(status, err.response.body.decode(errors="replace")) from None
        except (OSError, TimeoutError, WebSocketException) as err:
            raise ServerUnreachable(f"{self.url}: {type(err).__name__}: {err}") from None
        self.metadata = self.request({"type": "metadata"})
        return self.metadata

    def request(self, message: dict) -> dict:
        """Send one message, wait (up to timeout_s) for its answer; error answers raise RequestRejected."""
        if self._connection is None:
            raise ServerUnreachable(f"{self.url}: not connected")
        try:
            self._connection.send(pack(message))
            reply = unpack(self._connection.recv(timeout=self.timeout_s), REPLY_LIMITS)
        except (OSError, TimeoutError, WebSocketException) as err:
            self.close()
            raise ServerUnreachable(f"{self.url}: {type(err).__name__}: {err}") from None
        if reply.get("type") == "error":
            if reply["status"] == 503:
                raise ServerUnreachable(f"{self.url}: {reply['error']}")
            raise RequestRejected(reply["status"], reply["error"])
        return reply

    def observation_message(self, obs: Obs) -> dict:
        """The infer request for `obs`, carrying only the cameras the bundle reads."""
        images = {camera: obs.images[camera] for camera in self.metadata["cameras"]}
        return {"type": "infer", "observation": {"images": images, "proprio": np.asarray(obs.proprio, np.float32),
                                                 "instruction": obs.instruction}}

    def infer(self, obs: Obs) -> np.ndarray:
        """obs -> (K, D) float32 action chunk, checked (UnsafeReply when it must not be executed)."""
        if self.metadata is None:
            self.connect()
        return check_chunk(self.request(self.observation_message(obs)).get("actions"), self.metadata, obs.proprio)

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None
