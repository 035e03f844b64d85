"""The robot side of the policy server: one blocking connection, one chunk per observation."""

from __future__ import annotations

import numpy as np
from websockets.exceptions import InvalidStatus, WebSocketException
from websockets.sync.client import ClientConnection, connect

from svrl_core.deploy.wire import pack, unpack
from svrl_core.envs.base import Obs


class ServerUnreachable(ConnectionError):
    """No answer from the server (refused, dropped, or too slow): retry later, hold the robot meanwhile."""


class RequestRejected(ValueError):
    """The server answered with an error: retrying the same request will not help."""

    def __init__(self, status: int, message: str):
        super().__init__(f"policy server refused the request ({status}): {message}")
        self.status = status


class PolicyClient:
    """client = PolicyClient("ws://127.0.0.1:8765", api_key); chunk = client.infer(obs)  # (K, D)"""

    def __init__(self, url: str, api_key: str | None, timeout_s: float = 5.0, max_message_bytes: int = 16 << 20):
        self.url, self.timeout_s = url, timeout_s
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._max_message_bytes = max_message_bytes
        self._connection: ClientConnection | None = None
        self.metadata: dict | None = None

    def connect(self) -> dict:
        """Open the connection and read the bundle's metadata."""
        self.close()
        try:
            self._connection = connect(self.url, additional_headers=self._headers, open_timeout=self.timeout_s,
                                       close_timeout=1.0, compression=None, max_size=self._max_message_bytes,
                                       proxy=None)
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
            reply = unpack(self._connection.recv(timeout=self.timeout_s))
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
        """obs -> (K, D) float32 action chunk."""
        if self.metadata is None:
            self.connect()
        return self.request(self.observation_message(obs))["actions"]

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None
