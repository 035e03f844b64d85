"""`svrl serve BUNDLE` (the policy server), `svrl drive` (a simulated robot driven through it) and
`svrl sign BUNDLE` (an HMAC signature that `svrl serve --require-signature` checks)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys

import torch

from svrl_core.config import EnvConfig, load_params
from svrl_core.deploy import (ChunkRunner, ControlConfig, PolicyClient, PolicyServer, RequestRejected, ServeConfig,
                              ServerUnreachable, SimulatedRobot, UnsafeReply)
from svrl_core.envs import make_env
from svrl_core.export import BundleError, sign_bundle

API_KEY_VARIABLE = "SVRL_API_KEY"
BUNDLE_KEY_VARIABLE = "SVRL_BUNDLE_KEY"


def api_keys_from_environment() -> tuple[str, ...]:
    """$SVRL_API_KEY: one key, or several separated by commas (one per robot)."""
    return tuple(key.strip() for key in os.environ.get(API_KEY_VARIABLE, "").split(",") if key.strip())


def bundle_key_from_environment() -> bytes:
    key = os.environ.get(BUNDLE_KEY_VARIABLE, "")
    if len(key) < 16:
        sys.exit(f"error: set ${BUNDLE_KEY_VARIABLE} to the bundle signing key (at least 16 characters; make one "
                 "with `python -c 'import secrets; print(secrets.token_urlsafe(32))'` and keep it secret)")
    return key.encode()


def serve_main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="svrl serve", description="Serve an exported policy bundle to robots over "
                                     f"WebSocket (msgpack). API keys are read from ${API_KEY_VARIABLE}.")
    parser.add_argument("bundle", help="bundle directory, e.g. exports/policy_bundle")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--no-auth", action="store_true", help="serve without an API key (trusted networks only)")
    parser.add_argument("--tls-cert", help="PEM certificate chain: serve wss:// (needs --tls-key)")
    parser.add_argument("--tls-key", help="PEM private key of --tls-cert")
    parser.add_argument("--require-signature", action="store_true",
                        help=f"refuse a bundle without a valid `svrl sign` signature (key: ${BUNDLE_KEY_VARIABLE})")
    parser.add_argument("--max-batch", type=int, default=16)
    parser.add_argument("--batch-window-ms", type=float, default=5.0)
    parser.add_argument("--max-connections", type=int, default=64)
    parser.add_argument("--max-connections-per-key", type=int, default=16)
    parser.add_argument("--threads", type=int, default=0, help="torch threads for inference (0: all cores)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    signing_key = bundle_key_from_environment() if args.require_signature else None
    try:
        cfg = ServeConfig(host=args.host, port=args.port, api_keys=api_keys_from_environment(),
                          allow_no_auth=args.no_auth, max_batch=args.max_batch, batch_window_ms=args.batch_window_ms,
                          max_connections=args.max_connections, max_connections_per_key=args.max_connections_per_key,
                          tls_cert=args.tls_cert, tls_key=args.tls_key)
        server = PolicyServer(args.bundle, cfg, signing_key)
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


def sign_main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="svrl sign", description="Sign a bundle's manifest with the key in "
                                     f"${BUNDLE_KEY_VARIABLE} (HMAC-SHA256), for `svrl serve --require-signature`.")
    parser.add_argument("bundle")
    args = parser.parse_args(argv)
    try:
        sign_bundle(args.bundle, bundle_key_from_environment())
    except (BundleError, OSError) as err:
        sys.exit(f"error: {err}")
    print(f"signed {args.bundle}")


def simulated_env(client: PolicyClient, params_path: str | None) -> tuple[EnvConfig, int]:
    """The env to simulate and its first evaluation seed: --params, else the bundle's own provenance."""
    if params_path is not None:
        params = load_params(params_path)
        return params.env, params.eval.seed_start
    provenance = client.metadata.get("provenance") or {}
    if not provenance.get("env"):
        raise ValueError("the bundle records no env in its provenance; pass --params PARAMS.yaml to choose one")
    return EnvConfig.model_validate(provenance["env"]), provenance.get("eval_seed_start") or 0


def drive_main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="svrl drive", description="Drive a simulated robot with a policy server, "
                                     f"as a real robot would. API key: ${API_KEY_VARIABLE}.")
    parser.add_argument("--server", default="ws://127.0.0.1:8765")
    parser.add_argument("--ca-file", help="certificate (or CA) of a wss:// server whose certificate is self-signed")
    parser.add_argument("--params", default=None, help="simulate this params file's env (default: the env the "
                        "bundle was trained on, from its provenance)")
    parser.add_argument("--episodes", type=int, default=1, help="episodes per task")
    parser.add_argument("--seed", type=int, default=None, help="first initial state (default: eval.seed_start)")
    parser.add_argument("--rate-hz", type=float, default=0.0, help="control rate (0: as fast as the simulator)")
    parser.add_argument("--prefetch-at", type=int, default=0, help="ask for the next chunk with this many actions left")
    args = parser.parse_args(argv)
    keys = api_keys_from_environment()
    try:
        client = PolicyClient(args.server, keys[0] if keys else None, ca_file=args.ca_file)
        client.connect()
        env_cfg, seed_start = simulated_env(client, args.params)
    except (ValueError, OSError, ServerUnreachable, RequestRejected) as err:
        sys.exit(f"error: {err}")
    cfg = ControlConfig(rate_hz=args.rate_hz, prefetch_at=args.prefetch_at)
    first_seed = seed_start if args.seed is None else args.seed
    successes, env = 0, make_env(env_cfg)
    runner: ChunkRunner | None = None

    def stop_now(signum, frame) -> None:  # Ctrl-C / SIGTERM: stop the robot, do not let it coast
        if runner is not None:
            runner.emergency_stop()
        raise SystemExit(f"emergency stop ({signal.Signals(signum).name})")

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, stop_now)
    try:
        for task in env_cfg.tasks:
            for seed in range(first_seed, first_seed + args.episodes):
                robot = SimulatedRobot(env, task, seed)
                runner = ChunkRunner(robot, client, cfg)
                try:
                    report = runner.run(env.max_steps)
                except (ValueError, ServerUnreachable, RequestRejected, UnsafeReply) as err:
                    sys.exit(f"error: {err}")
                finally:
                    runner.close()
                successes += robot.success
                latency = sorted(report.latency_ms)[len(report.latency_ms) // 2] if report.latency_ms else float("nan")
                print(f"{task} seed {seed}: {'success' if robot.success else 'failure'} after {len(report.actions)} "
                      f"actions, {report.chunks} chunks, median latency {latency:.1f} ms")
    finally:
        env.close()
    print(f"success {successes}/{len(env_cfg.tasks) * args.episodes}")
