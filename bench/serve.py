"""Served latency and throughput against in-process inference of the same bundle, same cores.

    python -m bench.serve [--bundle exports/policy_bundle] [--seconds 10] [--clients 1 4 16]

Without --bundle, the default config's policy (params.yaml sizes, random weights: timing does not
depend on the weights) is exported to a temporary bundle. The server runs as `svrl serve` in its
own process with the same torch threads as the in-process baseline; robots are threads here.
Goals: p50 overhead under 20% at 1 client; throughput at 16 clients >= 3x that at 1.
Last, the transport alone (no model, same payload): WebSocket vs HTTP keep-alive, the measurement
behind serving over WebSocket.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import torch
from aiohttp import web
from websockets.asyncio.client import connect as ws_connect
from websockets.asyncio.server import serve
from websockets.sync.client import connect

from svrl_core.config import load_params
from svrl_core.data.lerobot import DemoDataset
from svrl_core.data.stats import feature_stats, image_stats
from svrl_core.deploy import PolicyClient
from svrl_core.deploy.wire import pack, unpack
from svrl_core.envs.base import Obs
from svrl_core.export import BundlePolicy, export_bundle
from svrl_core.policies import new_policy

KEY = "bench-key-0123456789"  # svrl serve takes keys of 16 bytes or more


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def default_bundle(directory: Path, params_path: str = "params.yaml", image_size: int | None = None) -> Path:
    """A config's policy, exported (random weights, dataset-shaped statistics)."""
    params = load_params(params_path)
    size = image_size or params.env.image_size
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (16, size, size, 3), dtype=np.uint8)
    states, actions = rng.normal(size=(16, 8)).astype(np.float32), rng.uniform(-1, 1, (16, 7)).astype(np.float32)
    stats = {"observation.state": feature_stats(states), "action": feature_stats(actions),
             f"observation.images.{params.env.cameras[0]}": image_stats(images)}
    data = DemoDataset({params.env.cameras[0]: images}, states, actions, np.zeros(16, int), np.zeros(16, int),
                       ["task"], stats, {"total_episodes": 1})
    export_bundle(new_policy(params.policy, data, seed=0), directory / "bundle", "bench")
    return directory / "bundle"


def observation(bundle: BundlePolicy) -> Obs:
    pre = bundle.spec["preprocessing"]
    image = np.random.default_rng(1).integers(0, 255, (pre["image_height"], pre["image_width"], 3), dtype=np.uint8)
    return Obs({bundle.spec["inputs"]["camera"]: image}, np.zeros(bundle.spec["inputs"]["proprio_dim"], np.float32),
               "pick up the alphabet soup and place it in the basket")


def percentiles(latencies_s: list[float]) -> tuple[float, float]:
    return 1e3 * float(np.percentile(latencies_s, 50)), 1e3 * float(np.percentile(latencies_s, 99))


def in_process(bundle: BundlePolicy, obs: Obs, seconds: float, idle_s: float = 0.0) -> tuple[list[float], float]:
    """Back-to-back act() calls, or with `idle_s` of sleep between them (as a served forward pass has)."""
    camera = bundle.spec["inputs"]["camera"]
    latencies, began = [], time.perf_counter()
    while time.perf_counter() - began < seconds or len(latencies) < 20:
        time.sleep(idle_s)
        start = time.perf_counter()
        bundle.act(obs.images[camera], obs.proprio, obs.instruction)
        latencies.append(time.perf_counter() - start)
    return latencies, len(latencies) / (time.perf_counter() - began)


def served(url: str, payload: bytes, clients: int, seconds: float) -> tuple[list[float], float, list[float]]:
    """Round-trip latencies, chunks/s over all robots, and the server's own forward-pass times.

    The robots are connections of one asyncio load generator: 16 robots on real machines cost the
    server's cores nothing, and 16 client threads here would take CPU from the server."""
    latencies, forward_ms = [], []

    async def robot(stop_at: float) -> None:
        async with ws_connect(url, additional_headers={"Authorization": f"Bearer {KEY}"}, compression=None,
                              max_size=None, proxy=None) as ws:
            await ws.send(payload)
            await ws.recv()
            while time.perf_counter() < stop_at:
                start = time.perf_counter()
                await ws.send(payload)
                reply = unpack(await ws.recv())
                latencies.append(time.perf_counter() - start)
                forward_ms.append(reply["inference_ms"])

    async def all_robots() -> float:
        began = time.perf_counter()
        await asyncio.gather(*[robot(began + seconds) for _ in range(clients)])
        return time.perf_counter() - began

    elapsed = asyncio.run(all_robots())
    return latencies, len(latencies) / elapsed, forward_ms


def robot_client_p50(url: str, obs: Obs, n: int) -> float:
    """p50 ms of PolicyClient.infer, the blocking client a robot runs."""
    client = PolicyClient(url, KEY, timeout_s=60)
    client.connect()
    p50 = _p50(lambda: client.infer(obs), n)
    client.close()
    return p50


def start_server(bundle_dir: Path, threads: int) -> tuple[subprocess.Popen, str]:
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "flows.svrl", "serve", str(bundle_dir),
                                "--port", str(port), "--threads", str(threads)], env={**os.environ, "SVRL_API_KEY": KEY},
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while True:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return process, f"ws://127.0.0.1:{port}"
        except httpx.HTTPError:
            if time.monotonic() > deadline or process.poll() is not None:
                raise RuntimeError("svrl serve did not start") from None
            time.sleep(0.2)


def transport_round_trips(payload: bytes, n: int) -> dict[str, float]:
    """p50 ms of echoing `payload`: WebSocket vs HTTP POST with keep-alive, both servers in a thread."""
    ws_port, http_port, ready = free_port(), free_port(), threading.Event()

    async def echo_ws(connection) -> None:
        async for message in connection:
            await connection.send(message)

    async def echo_http(request: web.Request) -> web.Response:
        return web.Response(body=await request.read(), content_type="application/msgpack")

    async def servers() -> None:
        app = web.Application(client_max_size=8 << 20)
        app.router.add_post("/infer", echo_http)
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", http_port).start()
        async with serve(echo_ws, "127.0.0.1", ws_port, compression=None, max_size=None):
            ready.set()
            await asyncio.Future()

    threading.Thread(target=lambda: asyncio.run(servers()), daemon=True).start()
    ready.wait(30)
    times = {}
    with connect(f"ws://127.0.0.1:{ws_port}", compression=None, max_size=None, proxy=None) as ws:
        def ws_call():
            ws.send(payload)
            ws.recv()
        times["websocket"] = _p50(ws_call, n)
    with httpx.Client() as http:
        times["http keep-alive"] = _p50(lambda: http.post(f"http://127.0.0.1:{http_port}/infer", content=payload), n)
    return times


def _p50(call, n: int) -> float:
    for _ in range(10):
        call()
    latencies = []
    for _ in range(n):
        start = time.perf_counter()
        call()
        latencies.append(time.perf_counter() - start)
    return percentiles(latencies)[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", type=Path, help="an exported bundle (default: the policy of --params)")
    parser.add_argument("--params", default="params.yaml", help="the config whose policy size to serve")
    parser.add_argument("--image-size", type=int, help="override the config's image size (a slower forward pass)")
    parser.add_argument("--seconds", type=float, default=10.0, help="per measurement")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--threads", type=int, default=1, help="torch threads, in process and in the server")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        bundle_dir = args.bundle or default_bundle(Path(tmp), args.params, args.image_size)
        bundle = BundlePolicy(bundle_dir)
        obs = observation(bundle)
        base_latencies, base_rate = in_process(bundle, obs, args.seconds)
        base_p50, base_p99 = percentiles(base_latencies)
        idle_p50, idle_p99 = percentiles(in_process(bundle, obs, args.seconds, idle_s=1e-3)[0])
        print(f"bundle {bundle_dir}: image {obs.images[bundle.spec['inputs']['camera']].shape}, torch threads "
              f"{args.threads}, {os.cpu_count()} cores")
        print(f"{'':>12} {'p50 ms':>8} {'p99 ms':>8} {'chunks/s':>9}")
        print(f"{'in-process':>12} {base_p50:8.2f} {base_p99:8.2f} {base_rate:9.1f}   back to back")
        print(f"{'in-process':>12} {idle_p50:8.2f} {idle_p99:8.2f} {'':>9}   1 ms idle before each call")
        payload = pack(_message(bundle, obs))
        process, url = start_server(bundle_dir, args.threads)
        try:
            rates = {}
            for clients in args.clients:
                latencies, rates[clients], forward_ms = served(url, payload, clients, args.seconds)
                p50, p99 = percentiles(latencies)
                print(f"{f'{clients} client' + 's' * (clients > 1):>12} {p50:8.2f} {p99:8.2f} {rates[clients]:9.1f}"
                      f"   server forward pass p50 {np.median(forward_ms):.2f} ms")
                if clients == 1:
                    overhead = (f"served p50 overhead at 1 client: {100 * (p50 / base_p50 - 1):+.0f}% vs back to back, "
                                f"{100 * (p50 / idle_p50 - 1):+.0f}% vs in-process with idle gaps")
            robot_p50 = robot_client_p50(url, obs, 300)
            print(f"robot client (PolicyClient.infer), 1 client: p50 {robot_p50:.2f} ms")
        finally:
            process.terminate()
            process.wait(30)
        if 1 in rates:
            print(overhead)
            for clients in args.clients[1:]:
                print(f"throughput {clients} clients / 1 client: {rates[clients] / rates[1]:.2f}x")
        times = transport_round_trips(payload, 300)
        print(f"transport only, {len(payload)} byte request echoed: "
              + ", ".join(f"{name} p50 {ms:.3f} ms" for name, ms in times.items()))


def _message(bundle: BundlePolicy, obs: Obs) -> dict:
    camera = bundle.spec["inputs"]["camera"]
    return {"type": "infer", "observation": {"images": {camera: obs.images[camera]}, "proprio": obs.proprio,
                                             "instruction": obs.instruction}}


if __name__ == "__main__":
    main()
