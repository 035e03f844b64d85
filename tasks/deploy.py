"""`svrl serve BUNDLE` (the policy server) and `svrl drive` (a simulated robot driven through it)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys

import torch

from svrl_core.config import load_params
from svrl_core.deploy import (ChunkRunner, ControlConfig, PolicyClient, PolicyServer, RequestRejected, ServeConfig,
                              ServerUnreachable, SimulatedRobot)
from svrl_core.envs import make_env
from svrl_core.export import BundleError

API_KEY_VARIABLE = "SVRL_API_KEY"


def serve_main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="svrl serve", description="Serve an exported policy bundle to robots over "
                                     f"WebSocket (msgpack). The API key is read from ${API_KEY_VARIABLE}.")
    parser.add_argument("bundle", help="bundle directory, e.g. exports/policy_bundle")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--no-auth", action="store_true", help="serve without an API key (trusted networks only)")
    parser.add_argument("--max-batch", type=int, default=16)
    parser.add_argument("--batch-window-ms", type=float, default=5.0)
    parser.add_argument("--max-connections", type=int, default=64)
    parser.add_argument("--threads", type=int, default=0, help="torch threads for inference (0: all cores)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        cfg = ServeConfig(host=args.host, port=args.port, api_key=os.environ.get(API_KEY_VARIABLE) or None,
                          allow_no_auth=args.no_auth, max_batch=args.max_batch, batch_window_ms=args.batch_window_ms,
                          max_connections=args.max_connections)
        server = PolicyServer(args.bundle, cfg)
    except (BundleError, ValueError, OSError) as err:
        sys.exit(f"error: {err}")

    async def run() -> None:
        stop = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):  # graceful: answer what was accepted, then close
            asyncio.get_running_loop().add_signal_handler(sig, stop.set)
        await server.run(stop)

    try:
        asyncio.run(run())
    except OSError as err:  # the port is taken, or the address is not this machine's
        sys.exit(f"error: cannot listen on {args.host}:{args.port}: {err}")


def drive_main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="svrl drive", description="Drive a simulated robot (the config's env) "
                                     f"with a policy server, as a real robot would. API key: ${API_KEY_VARIABLE}.")
    parser.add_argument("--server", default="ws://127.0.0.1:8765")
    parser.add_argument("--params", default="params.yaml", help="the env to simulate (env section)")
    parser.add_argument("--episodes", type=int, default=1, help="episodes per task")
    parser.add_argument("--seed", type=int, default=None, help="first initial state (default: eval.seed_start)")
    parser.add_argument("--rate-hz", type=float, default=0.0, help="control rate (0: as fast as the simulator)")
    parser.add_argument("--prefetch-at", type=int, default=0, help="ask for the next chunk with this many actions left")
    args = parser.parse_args(argv)
    try:
        params = load_params(args.params)
        client = PolicyClient(args.server, os.environ.get(API_KEY_VARIABLE) or None)
        client.connect()
    except (ValueError, ServerUnreachable, RequestRejected) as err:
        sys.exit(f"error: {err}")
    cfg = ControlConfig(rate_hz=args.rate_hz, prefetch_at=args.prefetch_at)
    first_seed = params.eval.seed_start if args.seed is None else args.seed
    successes, env = 0, make_env(params.env)
    for task in params.env.tasks:
        for seed in range(first_seed, first_seed + args.episodes):
            robot = SimulatedRobot(env, task, seed)
            runner = ChunkRunner(robot, client, cfg)
            try:
                report = runner.run(env.max_steps)
            except (ValueError, ServerUnreachable, RequestRejected) as err:
                env.close()
                sys.exit(f"error: {err}")
            finally:
                runner.close()
            successes += robot.success
            latency = sorted(report.latency_ms)[len(report.latency_ms) // 2] if report.latency_ms else float("nan")
            print(f"{task} seed {seed}: {'success' if robot.success else 'failure'} after {len(report.actions)} "
                  f"actions, {report.chunks} chunks, median latency {latency:.1f} ms")
    env.close()
    total = len(params.env.tasks) * args.episodes
    print(f"success {successes}/{total}")
