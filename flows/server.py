"""A local Prefect server (SQLite) shared by the UI and every stage process.

    python -m flows.server up        start it (or find it running) and wait until healthy
    python -m flows.server down      stop the server this module started
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

from flows import settings

PID_FILE = settings.ROOT / ".prefect" / "server.pid"
LOG_FILE = settings.ROOT / ".prefect" / "server.log"
STARTUP_TIMEOUT_S = 180


def healthy() -> bool:
    try:
        with urllib.request.urlopen(f"{settings.LOCAL_API_URL}/health", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def up() -> bool:
    """Ensure a server answers; returns True if this call started it."""
    if healthy():
        return False
    PID_FILE.parent.mkdir(parents=True, exist_ok=True)
    with open(LOG_FILE, "ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "prefect", "server", "start", "--host", settings.LOCAL_SERVER_HOST,
             "--port", str(settings.LOCAL_SERVER_PORT)], stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True)
    PID_FILE.write_text(str(process.pid))
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while not healthy():
        if process.poll() is not None or time.monotonic() > deadline:
            down()
            sys.exit(f"prefect server did not become healthy on {settings.LOCAL_API_URL}; see {LOG_FILE}")
        time.sleep(1)
    print(f"Prefect UI: http://{settings.LOCAL_SERVER_HOST}:{settings.LOCAL_SERVER_PORT}", flush=True)
    return True


def down() -> None:
    """Stop the server started by `up` (SIGINT, then SIGKILL)."""
    if not PID_FILE.is_file():
        return
    pid = int(PID_FILE.read_text())
    PID_FILE.unlink()
    for sig, wait_s in ((signal.SIGINT, 15), (signal.SIGKILL, 5)):
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
                os.waitpid(pid, os.WNOHANG)
            except (ProcessLookupError, ChildProcessError):
                return
            time.sleep(0.2)


def exec_with_server(command: list[str]) -> int:
    started = up()
    try:
        env = {**os.environ, "PREFECT_API_URL": settings.LOCAL_API_URL}
        return subprocess.call(command, env=env)
    finally:
        if started:
            down()


if __name__ == "__main__":
    verb, rest = (sys.argv[1], sys.argv[2:]) if len(sys.argv) > 1 else ("", [])
    if verb == "up":
        up()
    elif verb == "down":
        down()
    elif verb == "exec" and rest:
        sys.exit(exec_with_server(rest))
    else:
        sys.exit("usage: python -m flows.server up | down | exec COMMAND...")
