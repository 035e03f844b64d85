"""Deployment safety: one robot (or an attacker with a key) cannot stall, lock out or fail another; the robot side
executes nothing it should not; TLS."""

from __future__ import annotations

import base64
import http.client
import logging
import os
import socket
import subprocess
import threading
import time

import msgpack
import numpy as np
import pytest

from svrl_core.deploy import (ChunkRunner, ControlConfig, PolicyClient, PolicyServer, ServeConfig, ServerThread,
                              ServerUnreachable, SimulatedRobot, UnsafeReply)
from svrl_core.deploy.client import check_chunk
from svrl_core.deploy.protocol import BadRequest, Observation
from svrl_core.deploy.wire import pack, unpack
from svrl_core.envs.base import Obs
from svrl_core.envs.toy import ToyReachEnv

KEY, OTHER_KEY = "test-key-0123456789", "other-key-0123456789"


def serving(bundle_dir, **overrides) -> ServerThread:
    return ServerThread(PolicyServer(bundle_dir, ServeConfig(port=0, api_keys=(KEY,), **overrides)))


def toy_obs(tiny_params, task="red", seed=0) -> Obs:
    return ToyReachEnv(tiny_params.env).reset(task, seed)


def test_a_flood_of_empty_containers_does_not_stall_another_robot(bundle_dir, tiny_params):
    n = (4 << 20) - 16
    flood = b"\xdd" + n.to_bytes(4, "big") + b"\x90" * n  # an array of 4 Mi empty arrays: 3 s to decode unbounded
    with serving(bundle_dir) as running:
        attacks, stop = [], threading.Event()

        def attacker() -> None:
            client = PolicyClient(running.url, KEY, timeout_s=30)
            client.connect()
            while not stop.is_set():
                client._connection.send(flood)
                attacks.append(unpack(client._connection.recv(timeout=30)))

        thread = threading.Thread(target=attacker)
        thread.start()
        robot = PolicyClient(running.url, KEY)
        robot.connect()
        obs, latencies = toy_obs(tiny_params), []
        began = time.monotonic()
        while time.monotonic() - began < 3 or len(attacks) < 5:
            start = time.perf_counter()
            robot.infer(obs)
            latencies.append(time.perf_counter() - start)
        stop.set()
        thread.join(30)
    assert attacks[0]["status"] == 400 and "max_array_len" in attacks[0]["error"]
    assert 1e3 * np.percentile(latencies, 99) < 100, f"p99 {1e3 * np.percentile(latencies, 99):.0f} ms"


def silent_connection(url: str, key: str) -> tuple[socket.socket, int]:
    """A WebSocket opened by hand that never reads again, so never answers a ping; and its HTTP status."""
    host, port = url.removeprefix("ws://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=10)
    nonce = base64.b64encode(os.urandom(16)).decode()
    sock.sendall((f"GET / HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                  f"Sec-WebSocket-Key: {nonce}\r\nSec-WebSocket-Version: 13\r\nAuthorization: Bearer {key}\r\n\r\n")
                 .encode())
    status = int(sock.recv(4096).split(b" ")[1])
    return sock, status


def test_silent_connections_are_dropped_and_one_key_cannot_take_every_place(bundle_dir):
    with ServerThread(PolicyServer(bundle_dir, ServeConfig(port=0, api_keys=(KEY, OTHER_KEY), max_connections=8,
                                                           max_connections_per_key=4, ping_interval_s=0.3,
                                                           ping_timeout_s=0.3))) as running:
        opened = [silent_connection(running.url, KEY) for _ in range(6)]
        assert [status for _, status in opened] == [101] * 4 + [503] * 2  # that key's share is 4
        other = PolicyClient(running.url, OTHER_KEY)
        other.connect()  # a robot with a key of its own still gets in
        deadline = time.monotonic() + 10
        while running.server.connections > 1:  # the silent four miss their pings and are closed
            assert time.monotonic() < deadline, running.server.connections
            time.sleep(0.1)
        again = PolicyClient(running.url, KEY)
        again.connect()
        assert other.request({"type": "metadata"})["name"] == "tiny"
        for sock, _ in opened:
            sock.close()
        other.close()
        again.close()


def test_one_robots_failure_in_a_batch_reaches_only_that_robot(bundle_dir, tiny_params, monkeypatch):
    with serving(bundle_dir, batch_window_ms=200) as running:
        policy = running.server.policy
        act_batch = policy.act_batch

        def fails_on_poison(images, proprio, instructions):
            if any("poison" in text for text in instructions):
                raise RuntimeError(f"cannot act on {instructions}")
            return act_batch(images, proprio, instructions)

        monkeypatch.setattr(policy, "act_batch", fails_on_poison)
        healthy, poisoned = toy_obs(tiny_params), toy_obs(tiny_params, "blue", 1)
        poisoned = Obs(poisoned.images, poisoned.proprio, "poison the blue target")
        expected = act_batch(healthy.images["main"][None], healthy.proprio[None], [healthy.instruction])[0]
        clients = [PolicyClient(running.url, KEY), PolicyClient(running.url, KEY)]
        for client in clients:
            client.connect()
        results: dict = {}
        barrier = threading.Barrier(2)

        def robot(k: int, obs: Obs) -> None:
            barrier.wait(10)
            try:
                results[k] = clients[k].infer(obs)
            except Exception as err:  # noqa: BLE001  (checked below)
                results[k] = err

        threads = [threading.Thread(target=robot, args=(k, obs)) for k, obs in enumerate([healthy, poisoned])]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        assert np.array_equal(results[0], expected)
        assert "(500)" in str(results[1]) and healthy.instruction not in str(results[1])


def test_an_instruction_the_bundle_cannot_encode_is_that_robots_422(bundle_dir, tiny_params, monkeypatch):
    with serving(bundle_dir) as running:
        def refuses(instructions):  # as an OFT bundle's tokenizer refuses a prompt too long
            raise ValueError(f"instruction {instructions[0]!r} is 300 tokens, the bundle takes 64")

        monkeypatch.setattr(running.server.policy, "encode_instructions", refuses)
        obs = toy_obs(tiny_params)
        with pytest.raises(BadRequest, match="300 tokens") as refused:
            running.server._checked(Observation(obs.images["main"], obs.proprio, obs.instruction))
        assert refused.value.status == 422


def raw_get(url: str, headers: list[tuple[str, bytes]]) -> int:
    host, port = url.removeprefix("ws://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=10)
    connection.putrequest("GET", "/metadata")
    for name, value in headers:
        connection.putheader(name, value)
    connection.endheaders()
    return connection.getresponse().status


def test_client_mistakes_get_4xx_and_leave_no_traceback(bundle_dir, tiny_params, caplog):
    caplog.set_level(logging.INFO)
    with serving(bundle_dir) as running:
        assert raw_get(running.url, [("Authorization", f"Bearer {KEY}".encode())] * 2) == 400
        assert raw_get(running.url, [("Authorization", "Bearer clé-0123456789abcdef".encode())]) == 401
        assert raw_get(running.url, [("Authorization", f"Bearer {KEY}".encode())]) == 200
        client = PolicyClient(running.url, KEY)
        client.connect()
        good = client.observation_message(toy_obs(tiny_params))
        for payload, status, reason in [
            (pack({"type": np.array([1, 2], np.int64)}), 400, "message type of type ndarray"),
            (pack({"type": ["infer"]}), 400, "message type of type list"),
            (msgpack.packb({"type": "infer", 1: "x"}), 400, "map key"),
            (pack({**good, "observation": {**good["observation"], b"bytes": 1}}), 400, "map keys must be strings"),
        ]:
            client._connection.send(payload)
            reply = unpack(client._connection.recv(timeout=10))
            assert reply["status"] == status and reason in reply["error"], reply
        client.close()
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR], caplog.text
    assert "connection rejected (200" not in caplog.text


class ScriptedClient:
    """A policy client whose k-th chunk holds only the value k; `failures` are the calls that find the server gone."""

    def __init__(self, chunk_size: int, failures: set[int]):
        self.metadata = {"action_names": list(ToyReachEnv.action_names)}
        self.chunk_size, self.failures, self.calls = chunk_size, failures, 0

    def infer(self, obs: Obs) -> np.ndarray:
        self.calls += 1
        if self.calls in self.failures:
            raise ServerUnreachable("scripted: server gone")
        return np.full((self.chunk_size, 2), float(self.calls), np.float32)

    def connect(self) -> dict:
        return self.metadata


class RecordingRobot(SimulatedRobot):
    def __init__(self, *args):
        super().__init__(*args)
        self.log: list[tuple[float, float, int]] = []  # (time, action's chunk, holds so far)

    def apply(self, action: np.ndarray) -> None:
        self.log.append((time.monotonic(), float(action[0]), self.holds))


def test_after_a_hold_no_stale_action_runs_and_the_clock_does_not_burst(tiny_params):
    robot = RecordingRobot(ToyReachEnv(tiny_params.env), "red", 0)
    client = ScriptedClient(chunk_size=4, failures={2})
    runner = ChunkRunner(robot, client, ControlConfig(rate_hz=50, prefetch_at=2, reconnect_first_s=0.3))
    runner.run(max_steps=10)
    assert robot.holds == 1
    after_hold = [chunk for _, chunk, holds in robot.log if holds == 1]
    assert after_hold and min(after_hold) >= 3  # chunk 1 was asked before the hold: none of it runs after
    gaps = np.diff([t for t, _, _ in robot.log])
    assert gaps.min() > 0.5 / 50, gaps  # a steady 50 Hz: never a burst to catch up


def test_the_robot_refuses_non_finite_oversized_and_out_of_range_chunks(bundle_dir, tiny_params, monkeypatch):
    with serving(bundle_dir) as running:
        client = PolicyClient(running.url, KEY)
        metadata = client.connect()
        obs, policy = toy_obs(tiny_params), running.server.policy
        low, high = np.array(metadata["action_low"]), np.array(metadata["action_high"])
        good = check_chunk(client.infer(obs), metadata, obs.proprio)
        for bad, reason in [(np.full((1, 4, 2), np.nan, np.float32), "non-finite"),
                            (np.zeros((1, 400, 2), np.float32), r"float32 \(4, 2\)"),
                            (np.full((1, 4, 2), high + 1.0, np.float32), "outside the bundle's range")]:
            monkeypatch.setattr(policy, "act_batch", lambda *args, chunk=bad: chunk)
            robot = SimulatedRobot(ToyReachEnv(tiny_params.env), "red", 0)
            with pytest.raises(UnsafeReply, match=reason):
                ChunkRunner(robot, client, ControlConfig(rate_hz=0)).run(max_steps=4)
            assert robot.holds == 1 and np.all(np.isfinite(robot.observe().proprio))
        assert np.all((good >= low - 1e-4) & (good <= high + 1e-4))
        client.close()


def test_tls_serves_wss_with_the_users_certificate(bundle_dir, tiny_params, tmp_path):
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                    "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True, timeout=60)
    with serving(bundle_dir, tls_cert=str(cert), tls_key=str(key)) as running:
        assert running.url.startswith("wss://")
        client = PolicyClient(running.url, KEY, ca_file=str(cert))
        assert client.infer(toy_obs(tiny_params)).shape == (4, 2)
        client.close()
        with pytest.raises(ServerUnreachable, match="CERTIFICATE_VERIFY_FAILED"):
            PolicyClient(running.url, KEY).connect()  # a certificate nobody vouched for
        with pytest.raises(ServerUnreachable):
            PolicyClient(running.url.replace("wss://", "ws://"), KEY).connect()  # plain text to a TLS port
    with pytest.raises(ValueError, match="both a certificate"):
        ServeConfig(api_keys=(KEY,), tls_cert=str(cert))


def test_an_emergency_stop_from_another_thread_ends_the_run_at_once(tiny_params):
    robot = RecordingRobot(ToyReachEnv(tiny_params.env), "red", 0)
    runner = ChunkRunner(robot, ScriptedClient(chunk_size=4, failures=set()), ControlConfig(rate_hz=50))
    stopped_at: list[float] = []
    stopper = threading.Timer(0.2, lambda: (stopped_at.append(time.monotonic()), runner.emergency_stop()))
    stopper.start()
    report = runner.run(max_steps=1000)
    stopper.join()
    assert robot.stopped and 3 < len(report.actions) < 50 and robot.holds == 0
    assert sum(t > stopped_at[0] for t, _, _ in robot.log) <= 1  # at most the action already on its way
