"""The policy server and the robot-side client, talking over loopback for real."""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request

import numpy as np
import pytest
from websockets.sync.client import connect

from svrl_core.deploy import (ChunkRunner, ControlConfig, PolicyClient, PolicyServer, RequestRejected, ServeConfig,
                              ServerThread, ServerUnreachable, SimulatedRobot)
from svrl_core.deploy.wire import WireError, pack, unpack
from svrl_core.envs.base import Obs
from svrl_core.envs.toy import ToyReachEnv
from svrl_core.export import BundleError, BundlePolicy, export_bundle

KEY = "test-key-0123456789"


@pytest.fixture(scope="module")
def server(bundle_dir):
    with ServerThread(PolicyServer(bundle_dir, ServeConfig(port=0, api_keys=(KEY,), max_request_bytes=64 << 10,
                                                           max_connections=12))) as running:
        yield running


@pytest.fixture()
def client(server):
    client = PolicyClient(server.url, KEY)
    client.connect()
    yield client
    client.close()


def observations(tiny_params, n: int) -> list:
    env = ToyReachEnv(tiny_params.env)
    return [env.reset(tiny_params.env.tasks[k % 2], k) for k in range(n)]


def raw_request(server, payload) -> dict:
    with connect(server.url, additional_headers={"Authorization": f"Bearer {KEY}"}, proxy=None,
                 max_size=None) as ws:
        ws.send(payload)
        return unpack(ws.recv(timeout=10))


def http_get(url: str, key: str | None = None) -> tuple[int, dict]:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {key}"} if key else {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def test_wire_round_trips_arrays_and_refuses_what_is_not_a_message():
    message = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.ones((2, 2), np.uint8), "s": "x",
               "n": np.int64(3)}
    back = unpack(pack(message))
    assert back["a"].dtype == np.float32 and np.array_equal(back["a"], message["a"]) and back["n"] == 3
    assert np.array_equal(back["b"], message["b"]) and back["s"] == "x"
    for bad, reason in [(b"\xc1garbage", "not a msgpack message"), (pack({"x": 1})[:-1], "not a msgpack"),
                        (b"\x93\x01\x02\x03", "must be a map"),
                        (pack({"a": {"__ndarray__": "object", "shape": [1], "data": b"x"}}), "dtype 'object'"),
                        (pack({"a": {"__ndarray__": "uint8", "shape": [4], "data": b"xyz"}}), "does not hold")]:
        with pytest.raises(WireError, match=reason):
            unpack(bad)
    with pytest.raises(TypeError, match="cannot be sent"):
        pack({"a": np.array(["text"])})


def test_round_trip_equals_in_process_inference(server, client, bundle_dir, tiny_params):
    bundle = BundlePolicy(bundle_dir)
    for obs in observations(tiny_params, 6):
        got = client.infer(obs)
        assert got.dtype == np.float32 and got.shape == (4, 2)
        assert np.array_equal(got, bundle.act(obs.images["main"], obs.proprio, obs.instruction))


def test_health_metadata_and_authentication(server, bundle_dir):
    http = server.url.replace("ws://", "http://")
    status, health = http_get(f"{http}/health")
    assert status == 200 and health["status"] == "ok"
    assert http_get(f"{http}/metadata")[0] == 401
    assert http_get(f"{http}/metadata", "wrong-key")[0] == 401
    status, metadata = http_get(f"{http}/metadata", KEY)
    manifest = json.loads((bundle_dir / "manifest.json").read_text())
    assert status == 200 and metadata["cameras"] == ["main"] and metadata["action_names"] == ["dx", "dy"]
    assert metadata["chunk_size"] == 4 and metadata["checksums"]["policy.safetensors"] == manifest["files"]["policy.safetensors"]["sha256"]
    assert metadata["provenance"]["git"]["commit"] == "abc" and metadata["provenance"]["metrics"]["eval_rl"]["mean"] == 0.5
    with pytest.raises(RequestRejected, match=r"\(401\)") as rejected:
        PolicyClient(server.url, "wrong-key").connect()
    assert rejected.value.status == 401
    with pytest.raises(RequestRejected, match=r"\(401\)"):
        PolicyClient(server.url, None).connect()


def test_bad_requests_get_a_clear_4xx_and_the_server_keeps_serving(server, client, tiny_params):
    obs = observations(tiny_params, 1)[0]
    good = client.observation_message(obs)

    def with_observation(**changes):
        return pack({"type": "infer", "observation": {**good["observation"], **changes}})

    cases = [
        (b"\x00\xff not msgpack", 400, "malformed request"),
        ("a text frame", 400, "binary msgpack"),
        (pack({"type": "teleport"}), 400, "unknown message type"),
        (pack({"type": "infer", "observation": {"images": {}}}), 422, "exactly"),
        (with_observation(images={"wrist": obs.images["main"]}), 422, r"cameras \['main'\]"),
        (with_observation(images={"main": obs.images["main"][:16]}), 422, r"shape \(32, 32, 3\)"),
        (with_observation(images={"main": obs.images["main"].astype(np.float32)}), 422, "dtype uint8"),
        (with_observation(proprio=np.zeros(5, np.float32)), 422, r"proprio must have shape \(2,\)"),
        (with_observation(proprio=np.array([np.nan, 0], np.float32)), 422, "finite"),
        (with_observation(proprio=np.array([9e4, 0.0])), 422, "SI units"),
        (with_observation(instruction=""), 422, "non-empty"),
        (with_observation(instruction="x" * 2000), 422, "longer than 1024"),
        (pack({"type": "infer", "observation": good["observation"], "pad": b"x" * (70 << 10)}), 413, "exceeds"),
    ]
    for payload, status, reason in cases:
        reply = raw_request(server, payload)
        assert reply["type"] == "error" and reply["status"] == status, (reason, reply)
        assert __import__("re").search(reason, reply["error"]), (reason, reply["error"])
    with pytest.raises(Exception):  # beyond twice the limit the connection itself is closed (1009)
        raw_request(server, pack({"type": "infer", "pad": b"x" * (200 << 10)}))
    assert client.infer(obs).shape == (4, 2)  # the same connection as before all that, still served


def test_concurrent_robots_are_batched_and_each_gets_its_own_chunk(server, bundle_dir, tiny_params):
    bundle = BundlePolicy(bundle_dir)
    obs = observations(tiny_params, 8)
    expected = [bundle.act(o.images["main"], o.proprio, o.instruction) for o in obs]
    batches_before, served_before = server.server.batches, server.server.served
    results, errors = {}, []
    barrier = threading.Barrier(len(obs))

    def robot(k: int) -> None:
        try:
            client = PolicyClient(server.url, KEY)
            client.connect()
            barrier.wait(10)
            results[k] = [client.infer(obs[k]) for _ in range(10)]
            client.close()
        except Exception as err:  # reported below
            errors.append(err)

    threads = [threading.Thread(target=robot, args=(k,)) for k in range(len(obs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    for k in range(len(obs)):
        assert all(np.array_equal(chunk, expected[k]) for chunk in results[k])
    served, batches = server.server.served - served_before, server.server.batches - batches_before
    assert served == 80 and batches < served / 2, (served, batches)


def test_too_many_connections_get_503(bundle_dir):
    with ServerThread(PolicyServer(bundle_dir, ServeConfig(port=0, api_keys=(KEY,), max_connections=1))) as running:
        first = PolicyClient(running.url, KEY)
        first.connect()
        with pytest.raises(ServerUnreachable, match="503"):
            PolicyClient(running.url, KEY).connect()
        first.close()


def run_in_process(bundle: BundlePolicy, env, task: str, seed: int) -> list[np.ndarray]:
    """The reference: what an in-process rollout executes, chunk by chunk."""
    obs, executed = env.reset(task, seed), []
    while True:
        chunk = bundle.act(obs.images["main"], obs.proprio, obs.instruction)
        result = env.step(chunk)
        executed += list(chunk[: result.n_executed])
        obs = result.obs
        if result.done:
            return executed


def test_replay_through_server_client_and_simulated_robot_equals_in_process(server, client, bundle_dir, tiny_params):
    bundle = BundlePolicy(bundle_dir)
    for task, seed in [("red", 3), ("blue", 7)]:
        expected = run_in_process(bundle, ToyReachEnv(tiny_params.env), task, seed)
        robot = SimulatedRobot(ToyReachEnv(tiny_params.env), task, seed)
        report = ChunkRunner(robot, client, ControlConfig(rate_hz=0)).run(max_steps=1000)
        assert robot.done and len(report.actions) == len(expected) > 4
        assert np.array_equal(np.stack(report.actions), np.stack(expected))


def test_prefetch_asks_early_and_drops_actions_already_executed(server, client, tiny_params):
    robot = SimulatedRobot(ToyReachEnv(tiny_params.env), "red", 1)
    report = ChunkRunner(robot, client, ControlConfig(rate_hz=100, prefetch_at=2)).run(max_steps=12)
    assert len(report.actions) == 12 or robot.done
    assert report.chunks >= 3 and len(report.latency_ms) == report.chunks


def test_the_robot_holds_while_the_server_is_away_and_resumes_when_it_returns(bundle_dir, tiny_params):
    cfg = ServeConfig(port=0, api_keys=(KEY,))
    first = ServerThread(PolicyServer(bundle_dir, cfg))
    port = first.server.port
    client = PolicyClient(first.url, KEY, timeout_s=2)
    robot = SimulatedRobot(ToyReachEnv(tiny_params.env), "red", 2)
    runner = ChunkRunner(robot, client, ControlConfig(rate_hz=0, reconnect_first_s=0.2, give_up_after_s=30))
    runner.run(max_steps=4)
    first.stop()
    restarted = threading.Timer(1.0, lambda: holder.append(
        ServerThread(PolicyServer(bundle_dir, ServeConfig(port=port, api_keys=(KEY,))))))
    holder: list = []
    restarted.start()
    try:
        report = runner.run(max_steps=8)
        assert len(report.actions) == 8 and report.holds >= 1 and report.reconnects == 1 and robot.holds >= 1
    finally:
        restarted.join()
        holder[0].stop()


def test_the_robot_gives_up_held_when_the_server_never_returns(bundle_dir, tiny_params):
    with ServerThread(PolicyServer(bundle_dir, ServeConfig(port=0, api_keys=(KEY,)))) as running:
        client = PolicyClient(running.url, KEY, timeout_s=1)
        client.connect()
    robot = SimulatedRobot(ToyReachEnv(tiny_params.env), "red", 2)
    runner = ChunkRunner(robot, client, ControlConfig(rate_hz=0, reconnect_first_s=0.05, give_up_after_s=0.3))
    with pytest.raises(ServerUnreachable, match="gave up after 0.3s with the robot held"):
        runner.run(max_steps=4)
    assert robot.holds >= 1


def test_a_rejected_request_stops_the_run_with_the_robot_held(server, client, tiny_params):
    robot = SimulatedRobot(ToyReachEnv(tiny_params.env), "red", 0)
    robot.observe = lambda: Obs({"main": np.zeros((8, 8, 3), np.uint8)}, np.zeros(2, np.float32), "x")  # a bad camera
    with pytest.raises(RequestRejected, match=r"\(422\).*shape \(32, 32, 3\)"):
        ChunkRunner(robot, client).run(max_steps=4)
    assert robot.holds == 1


def test_a_bundle_for_another_robot_is_refused(server, client, tiny_params):
    robot = SimulatedRobot(ToyReachEnv(tiny_params.env), "red", 0)
    robot.action_names = ("left_joint1", "left_joint2")
    with pytest.raises(ValueError, match=r"the bundle's actions \['dx', 'dy'\] are not this robot's"):
        ChunkRunner(robot, client).run(max_steps=1)


def test_a_server_needs_an_api_key_unless_told_otherwise():
    with pytest.raises(ValueError, match="set SVRL_API_KEY"):
        ServeConfig()
    assert ServeConfig(allow_no_auth=True).api_keys == ()
    with pytest.raises(ValueError, match="API key 2 must be at least 16"):
        ServeConfig(api_keys=(KEY, "short"))


def test_a_tampered_or_incomplete_bundle_is_refused(bundle_dir, tmp_path):
    import shutil

    for damage, reason in [(lambda d: (d / "policy.safetensors").write_bytes((d / "policy.safetensors").read_bytes()[:-1] + b"!"),
                            "policy.safetensors does not match its sha256"),
                           (lambda d: (d / "bundle.json").unlink(), "bundle.json is missing"),
                           (lambda d: (d / "manifest.json").write_text("{"), "no readable manifest.json")]:
        copy = tmp_path / f"copy{len(list(tmp_path.iterdir()))}"
        shutil.copytree(bundle_dir, copy)
        damage(copy)
        with pytest.raises(BundleError, match=reason):
            BundlePolicy(copy)
        with pytest.raises(BundleError, match="re-export it"):
            PolicyServer(copy, ServeConfig(port=0, api_keys=(KEY,)))


def test_svrl_sign_serve_and_drive_from_the_command_line(bundle_dir, tiny_params, tmp_path):
    """A signed bundle served with --require-signature; drive simulates the env of the bundle's provenance."""
    import os
    import shutil
    import signal
    import subprocess
    import sys
    import time

    from tests.conftest import free_port

    port, signed = free_port(), tmp_path / "signed"
    shutil.copytree(bundle_dir, signed)
    env = {**os.environ, "SVRL_API_KEY": KEY, "SVRL_BUNDLE_KEY": "bundle-signing-key-0123"}
    svrl = [sys.executable, "-m", "flows.svrl"]
    assert "set SVRL_API_KEY" in subprocess.run([*svrl, "serve", str(bundle_dir)], capture_output=True, text=True,
                                                env={**os.environ, "SVRL_API_KEY": ""}, timeout=120).stderr
    assert subprocess.run([*svrl, "sign", str(signed)], env=env, timeout=120).returncode == 0
    server = subprocess.Popen([*svrl, "serve", str(signed), "--port", str(port), "--require-signature"], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if http_get(f"http://127.0.0.1:{port}/health")[0] == 200:
                    break
            except OSError:
                assert time.monotonic() < deadline and server.poll() is None, server.stdout.read()
                time.sleep(0.2)
        drive = subprocess.run([*svrl, "drive", "--server", f"ws://127.0.0.1:{port}", "--episodes", "2"],
                               capture_output=True, text=True, env=env, timeout=120)
        assert drive.returncode == 0, drive.stderr
        first = tiny_params.eval.seed_start  # drive evaluates on the eval states by default
        assert f"red seed {first}:" in drive.stdout and f"blue seed {first + 1}:" in drive.stdout
        assert drive.stdout.strip().splitlines()[-1].endswith("/4")
        server.send_signal(signal.SIGTERM)  # graceful: exits 0
        assert server.wait(30) == 0
        assert "connection rejected (200" not in server.stdout.read()  # health checks are not rejections
    finally:
        server.kill()


@pytest.mark.integration
def test_dual_arm_replay_on_sapien_through_the_server_equals_in_process(tiny_params, tmp_path):
    """A RoboTwin episode (SAPIEN, head camera, 14-D joint actions) driven through server, client
    and simulated robot executes exactly the actions of in-process inference."""
    from svrl_core.config import EnvConfig
    from svrl_core.data import load_dataset, write_dataset
    from svrl_core.envs.base import DUAL_ARM_ACTION_NAMES
    from svrl_core.envs.robotwin import RoboTwinEnv
    from svrl_core.experts.robotwin import record_demonstration
    from svrl_core.policies import new_policy

    cfg = EnvConfig(family="robotwin", tasks=["handover_block"], image_size=64, image_height=48, max_steps=40)
    env = RoboTwinEnv(cfg)
    try:
        episode, _ = record_demonstration(env, "handover_block", 0, noise=0.0)
        write_dataset(tmp_path / "demos", [episode], fps=25, robot_type="dual-arm")
        policy = new_policy(tiny_params.policy, load_dataset(tmp_path / "demos"), seed=0)
        export_bundle(policy, tmp_path / "bundle", "dual-arm", {}, list(env.action_names))
        bundle = BundlePolicy(tmp_path / "bundle")
        obs, expected = env.reset("handover_block", 3), []
        while True:  # in process
            chunk = bundle.act(obs.images["head"], obs.proprio, obs.instruction)
            result = env.step(chunk)
            expected += list(chunk[: result.n_executed])
            obs = result.obs
            if result.done:
                break
        with ServerThread(PolicyServer(tmp_path / "bundle", ServeConfig(port=0, api_keys=(KEY,)))) as running:
            client = PolicyClient(running.url, KEY)
            assert client.connect()["action_names"] == list(DUAL_ARM_ACTION_NAMES)
            robot = SimulatedRobot(env, "handover_block", 3)
            report = ChunkRunner(robot, client, ControlConfig(rate_hz=0)).run(max_steps=1000)
            client.close()
        assert len(report.actions) == len(expected) == 40
        assert np.array_equal(np.stack(report.actions), np.stack(expected))
    finally:
        env.close()
