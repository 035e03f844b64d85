"""The local Prefect server that `make run` and `make ui` start and stop."""

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.conftest import free_port

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parent.parent

SCRIPT = textwrap.dedent("""
    import os, sys
    from pathlib import Path
    from flows import server

    server.STATE_DIR = Path(sys.argv[1])
    server.SERVER_PID, server.WORKER_PID = server.STATE_DIR / "server.pid", server.STATE_DIR / "worker.pid"
    server.ui()
    assert server.healthy()
    pids = [int(path.read_text()) for path in (server.SERVER_PID, server.WORKER_PID)]
    server.down()
    assert not server.healthy()
    for pid in pids:
        try:
            os.kill(pid, 0)
            sys.exit(f"{pid} still alive")
        except ProcessLookupError:
            pass
    print("stopped")
""")


def test_local_server_and_worker_start_and_stop(tmp_path):
    port = free_port()
    env = {"SVRL_PREFECT_PORT": str(port), "PREFECT_HOME": str(tmp_path / "home"), "PATH": "/usr/bin:/bin"}
    result = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path)], cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert f"Prefect UI: http://127.0.0.1:{port}" in result.stdout and "stopped" in result.stdout


def test_unreachable_prefect_server_stops_a_stage_clearly(tmp_path):
    import os
    import time

    began = time.monotonic()
    env = {**os.environ, "PREFECT_API_URL": "http://127.0.0.1:9/api", "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, "-m", "flows.sft", "--params", str(tmp_path / "never-read.yaml")],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0 and "no Prefect server answered" in result.stderr
    assert time.monotonic() - began < 60 and list(tmp_path.iterdir()) == []
