"""Outputs that a reader sees whole or not at all, on local disk or any fsspec URL (s3://...).

Local directories are staged next to the target and swapped in with a rename. Object stores
have no rename: a remote directory is uploaded, then a `_COMPLETE` marker is written last,
and readers (`local_directory`) refuse a directory without it. Remote operations are retried
with backoff on transient errors (a dropped connection, a timeout, a throttled request): each
one is idempotent, so a retry can only finish what the failed attempt started.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, TypeVar

import fsspec

COMPLETE_MARKER = "_COMPLETE"
REMOTE_ATTEMPTS = 4
FIRST_RETRY_DELAY_S = 0.5  # doubled after every failed attempt
NOT_TRANSIENT = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)
logger = logging.getLogger("svrl")
T = TypeVar("T")


def with_retries(operation: Callable[[], T], what: str) -> T:
    """Run an idempotent remote operation, retrying transient I/O errors with exponential backoff."""
    delay = FIRST_RETRY_DELAY_S
    for attempt in range(1, REMOTE_ATTEMPTS + 1):
        try:
            return operation()
        except NOT_TRANSIENT:
            raise
        except (OSError, TimeoutError) as err:  # ConnectionError is an OSError
            if attempt == REMOTE_ATTEMPTS:
                raise OSError(f"{what}: failed {REMOTE_ATTEMPTS} times, last error: {err}") from err
            logger.warning("%s: %s; retrying in %.1f s (attempt %d of %d)", what, err, delay, attempt + 1,
                           REMOTE_ATTEMPTS)
            time.sleep(delay)
            delay *= 2


def is_remote(path: str | Path) -> bool:
    return "://" in str(path)


def join(base: str | Path, *parts: str) -> str | Path:
    """`base / parts` for local paths and URLs alike (Path would mangle 's3://')."""
    if is_remote(base):
        return "/".join([str(base).rstrip("/"), *parts])
    return Path(base).joinpath(*parts)


@contextmanager
def atomic_directory(target: str | Path) -> Iterator[Path]:
    """Yield a local staging directory that becomes `target` only if the block succeeds."""
    if is_remote(target):
        staging = Path(tempfile.mkdtemp(prefix="svrl-upload-"))
        try:
            yield staging
            with_retries(lambda: _publish(staging, str(target)), f"uploading {target}")
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    retired = target.parent / f".{target.name}.old-{os.getpid()}"
    if target.exists():
        os.replace(target, retired)
    os.replace(staging, target)
    shutil.rmtree(retired, ignore_errors=True)


def _publish(local: Path, url: str) -> None:
    """Replace the remote directory `url` with `local`; the marker goes last."""
    fs, root = fsspec.core.url_to_fs(url)
    if fs.exists(root):
        fs.rm(root, recursive=True)  # the marker goes first with it: readers stop trusting the old copy
    fs.put(f"{local}/", root, recursive=True)
    fs.pipe(f"{root}/{COMPLETE_MARKER}", b"")


def remove_directory(target: str | Path) -> None:
    """Delete a directory output if it exists; readers stop trusting it first (marker / rename)."""
    if is_remote(target):
        fs, root = fsspec.core.url_to_fs(str(target))
        if with_retries(lambda: fs.exists(f"{root}/{COMPLETE_MARKER}"), f"checking {target}"):
            with_retries(lambda: fs.rm(f"{root}/{COMPLETE_MARKER}"), f"deleting {target}")
        if with_retries(lambda: fs.exists(root), f"checking {target}"):
            with_retries(lambda: fs.rm(root, recursive=True), f"deleting {target}")
        return
    target = Path(target)
    if target.exists():
        retired = target.parent / f".{target.name}.old-{os.getpid()}"
        os.replace(target, retired)
        shutil.rmtree(retired)


@contextmanager
def local_directory(source: str | Path) -> Iterator[Path]:
    """A local view of a directory output: the path itself, or a download of a complete remote one."""
    if not is_remote(source):
        yield Path(source)
        return
    fs, root = fsspec.core.url_to_fs(str(source))
    if not with_retries(lambda: fs.exists(f"{root}/{COMPLETE_MARKER}"), f"checking {source}"):
        raise FileNotFoundError(f"{source}: missing or incompletely written (no {COMPLETE_MARKER} marker); "
                                f"rerun the stage that writes it")
    local = Path(tempfile.mkdtemp(prefix="svrl-download-"))
    try:
        with_retries(lambda: fs.get(f"{root}/", str(local), recursive=True), f"downloading {source}")
        yield local
    finally:
        shutil.rmtree(local, ignore_errors=True)


def write_json_atomic(path: str | Path, payload: object) -> None:
    """Write JSON through a temp file and a rename (one PUT on an object store)."""
    text = json.dumps(payload, indent=2, sort_keys=True) + "\n"
    if is_remote(path):
        fs, key = fsspec.core.url_to_fs(str(path))
        with_retries(lambda: fs.pipe(key, text.encode()), f"writing {path}")
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_json(path: str | Path) -> object:
    def read() -> object:
        with fsspec.open(str(path), "r") as handle:
            return json.load(handle)

    return with_retries(read, f"reading {path}") if is_remote(path) else read()
