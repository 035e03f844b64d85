"""Remote outputs: whole-or-nothing directories and retries on transient errors (fsspec memory://)."""

from __future__ import annotations

import pytest
from fsspec.implementations.memory import MemoryFileSystem

from svrl_core import io


@pytest.fixture(autouse=True)
def fast_retries(monkeypatch):
    monkeypatch.setattr(io, "FIRST_RETRY_DELAY_S", 0.0)
    MemoryFileSystem.store.clear()
    MemoryFileSystem.pseudo_dirs[:] = [""]


def flaky(monkeypatch, method: str, failures: int, error: Exception) -> list[int]:
    """Make MemoryFileSystem.<method> raise `error` on its first `failures` calls."""
    calls = []
    original = getattr(MemoryFileSystem, method)

    def sometimes_failing(self, *args, **kwargs):
        calls.append(1)
        if len(calls) <= failures:
            raise error
        return original(self, *args, **kwargs)

    monkeypatch.setattr(MemoryFileSystem, method, sometimes_failing)
    return calls


def test_upload_survives_dropped_connections(monkeypatch, tmp_path):
    calls = flaky(monkeypatch, "put", failures=2, error=ConnectionResetError("connection reset by peer"))
    with io.atomic_directory("memory://bucket/model") as staging:
        (staging / "weights.bin").write_bytes(b"123")
    assert len(calls) == 3
    with io.local_directory("memory://bucket/model") as local:
        assert (local / "weights.bin").read_bytes() == b"123"


def test_json_round_trip_survives_timeouts(monkeypatch):
    writes = flaky(monkeypatch, "pipe_file", failures=1, error=TimeoutError("read timed out"))
    io.write_json_atomic("memory://bucket/metrics/sft.json", {"loss": 0.5})
    reads = flaky(monkeypatch, "_open", failures=1, error=ConnectionError("throttled"))
    assert io.read_json("memory://bucket/metrics/sft.json") == {"loss": 0.5}
    assert len(writes) == 2 and len(reads) == 2


def test_persistent_failure_gives_up_with_the_last_error(monkeypatch):
    calls = flaky(monkeypatch, "pipe_file", failures=100, error=ConnectionRefusedError("connection refused"))
    with pytest.raises(OSError, match=r"writing memory://bucket/x.json: failed 4 times.*connection refused"):
        io.write_json_atomic("memory://bucket/x.json", {})
    assert len(calls) == io.REMOTE_ATTEMPTS


def test_missing_or_forbidden_is_not_retried(monkeypatch):
    calls = flaky(monkeypatch, "put", failures=100, error=PermissionError("access denied"))
    with pytest.raises(PermissionError):
        with io.atomic_directory("memory://bucket/model") as staging:
            (staging / "w").write_bytes(b"1")
    assert len(calls) == 1
    with pytest.raises(FileNotFoundError, match="no _COMPLETE marker"):
        with io.local_directory("memory://bucket/model"):
            pass


@pytest.mark.parametrize("root", ["memory://bucket", "local"])
def test_removed_directory_is_gone_and_removing_nothing_is_fine(monkeypatch, tmp_path, root):
    target = f"{root}/state" if root != "local" else tmp_path / "state"
    with io.atomic_directory(target) as staging:
        (staging / "state.json").write_text("{}")
    if root != "local":
        flaky(monkeypatch, "rm", failures=1, error=ConnectionResetError("connection reset by peer"))
    io.remove_directory(target)
    with pytest.raises(FileNotFoundError):
        with io.local_directory(target) as local:
            (local / "state.json").read_text()
    io.remove_directory(target)  # already gone: nothing to do
    if root == "local":
        assert list(tmp_path.iterdir()) == []  # no staging or retired copies left behind
