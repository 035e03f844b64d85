"""Stage metrics: one json file per stage under paths.metrics (DVC metrics)."""

from __future__ import annotations

import json
from pathlib import Path

from svrl_core.config import Params
from svrl_core.io import is_remote, join, read_json, write_json_atomic


def write_metrics(params: Params, name: str, payload: object) -> None:
    write_json_atomic(join(params.paths.metrics, f"{name}.json"), payload)


def read_metrics(params: Params, name: str) -> dict | list:
    path = join(params.paths.metrics, f"{name}.json")
    return read_existing_json(path, f"{path} is missing: run the stage that writes it (`dvc repro`)")


def read_existing_json(path: str, missing: str) -> dict | list:
    """A json file; a local one that does not exist raises FileNotFoundError(`missing`), which says what to do."""
    if not is_remote(path) and not Path(path).is_file():
        raise FileNotFoundError(missing)
    return read_json(path)


def engine_overrides(params: Params) -> dict | None:
    """The DeepSpeed config file named by compute.deepspeed_config, if any."""
    path = params.compute.deepspeed_config
    if path is None:
        return None
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise FileNotFoundError(f"compute.deepspeed_config={path!r}: cannot read it as JSON ({err})") from None
