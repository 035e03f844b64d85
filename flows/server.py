"""A local Prefect server (SQLite) shared by the UI and every stage process.

    python -m flows.server up        start it (or find it running), wait until healthy
    python -m flows.server ui        `up`, plus a worker for the deployments' process pool
    python -m flows.server down      stop what `up` / `ui` started (worker first)
    python -m flows.server exec CMD  run CMD against the server, starting one only if none
                                     runs, and stopping only what it started
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from flows import settings

STATE_DIR = settings.ROOT / ".prefect"
SERVER_PID = STATE_DIR / "server.pid"
WORKER_PID = STATE_DIR / "worker.pid"
STARTUP_TIMEOUT_S = 180
CLI_TIMEOUT_S = 120
WORK_POOL = "svrl-process"
ENV_TAG = "envs"


def healthy() -> bool:
    try:
        with urllib.request.urlopen(f"{settings.LOCAL_API_URL}/health", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def _spawn(pid_file: Path, *args: str) -> subprocess.Popen:
    """Start `python -m prefect ARGS` in its own session, logging next to its pid file."""
    STATE_DIR.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PREFECT_API_URL": settings.LOCAL_API_URL}
    with open(pid_file.with_suffix(".log"), "ab") as log:
        process = subprocess.Popen([sys.executable, "-m", "prefect", *args], stdout=log, stderr=subprocess.STDOUT,
                                   env=env, start_new_session=True)
    pid_file.write_text(str(process.pid))
    return process


def _stop(pid_file: Path) -> None:
    """SIGINT, then SIGKILL (a Prefect worker ignores SIGTERM)."""
    if not pid_file.is_file():
        return
    pid = int(pid_file.read_text())
    pid_file.unlink()
    for sig, wait_s in ((signal.SIGINT, 15), (signal.SIGKILL, 5)):
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            try:
                if os.waitpid(pid, os.WNOHANG)[0] == pid:
                    return
            except ChildProcessError:  # not our child: poll for its exit instead
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    return
            time.sleep(0.2)
    print(f"warning: process {pid} ({pid_file.stem}) survived SIGKILL for 5 s; it may still hold port "
          f"{settings.LOCAL_SERVER_PORT}", file=sys.stderr)


def up() -> bool:
    """Ensure a server answers; returns True if this call started it."""
    if healthy():
        return False
    process = _spawn(SERVER_PID, "server", "start", "--host", settings.LOCAL_SERVER_HOST,
                     "--port", str(settings.LOCAL_SERVER_PORT))
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while not healthy():
        if process.poll() is not None or time.monotonic() > deadline:
            _stop(SERVER_PID)
            sys.exit(f"prefect server did not become healthy on {settings.LOCAL_API_URL}; "
                     f"see {SERVER_PID.with_suffix('.log')}")
        time.sleep(1)
    print(f"Prefect UI: http://{settings.LOCAL_SERVER_HOST}:{settings.LOCAL_SERVER_PORT}", flush=True)
    return True


def ui() -> None:
    """Server plus a worker that runs the deployments of infra/prefect/prefect.yaml."""
    up()
    env = {**os.environ, "PREFECT_API_URL": settings.LOCAL_API_URL}
    _prefect_cli(env, "work-pool", "create", WORK_POOL, "--type", "process", "--overwrite")
    # one env-heavy task (rollouts, evaluation) at a time on this machine: they use every core
    _prefect_cli(env, "concurrency-limit", "create", ENV_TAG, "1")
    if not WORKER_PID.is_file():
        _spawn(WORKER_PID, "worker", "start", "--pool", WORK_POOL)
    print(f"worker polling work pool {WORK_POOL!r}; `make ui-down` stops it and the server", flush=True)


def _prefect_cli(env: dict, *args: str) -> None:
    try:
        subprocess.run([sys.executable, "-m", "prefect", *args], env=env, check=True, capture_output=True,
                       timeout=CLI_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        sys.exit(f"`prefect {' '.join(args)}` did not finish within {CLI_TIMEOUT_S}s; is the server at "
                 f"{settings.LOCAL_API_URL} healthy? (`make ui-down`, then `make ui`)")
    except subprocess.CalledProcessError as err:
        sys.exit(f"`prefect {' '.join(args)}` failed: {err.stderr.decode(errors='replace').strip()[-500:]}")


def down() -> None:
    _stop(WORKER_PID)
    _stop(SERVER_PID)


def exec_with_server(command: list[str]) -> int:
    started = up()
    try:
        return subprocess.call(command, env={**os.environ, "PREFECT_API_URL": settings.LOCAL_API_URL})
    finally:
        if started:
            _stop(SERVER_PID)


if __name__ == "__main__":
    verb, rest = (sys.argv[1], sys.argv[2:]) if len(sys.argv) > 1 else ("", [])
    if verb in ("up", "ui", "down") and not rest:
        {"up": up, "ui": ui, "down": down}[verb]()
    elif verb == "exec" and rest:
        sys.exit(exec_with_server(rest))
    else:
        sys.exit("usage: python -m flows.server up | ui | down | exec COMMAND...")
