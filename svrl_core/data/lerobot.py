"""Demonstration datasets in the LeRobot v3 on-disk layout.

    <root>/meta/info.json                          features, fps, counts, path templates
    <root>/meta/stats.json                         min/max/mean/std/quantiles/count per feature
                                                   (images: per channel, (3, 1, 1), in [0, 1])
    <root>/meta/tasks.parquet                      index: the task string; column task_index
    <root>/meta/episodes/chunk-000/file-000.parquet  one row per episode
    <root>/data/chunk-000/file-000.parquet         one row per frame; images as PNG bytes

LeRobot's own reader (LeRobotDataset, codebase v3.0) depends on these layouts: it looks a
frame's task up as `tasks.iloc[task_index].name` and normalizes every feature, images
included, with stats.json. Datasets written before tasks.parquet took that layout (a `task`
column) still load here.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from svrl_core.data.stats import feature_stats, image_stats
from svrl_core.io import atomic_directory, is_remote, local_directory, write_json_atomic

CODEBASE_VERSION = "v3.0"
DATA_FILE = "data/chunk-000/file-000.parquet"
REGENERATE = "restore it with `dvc checkout` or regenerate the dataset with `dvc repro ingest`"
EPISODES_FILE = "meta/episodes/chunk-000/file-000.parquet"
STATE_KEY = "observation.state"
ACTION_KEY = "action"


def image_key(camera: str) -> str:
    return f"observation.images.{camera}"


class DatasetError(ValueError):
    """A dataset is missing, incomplete or does not match the expected layout."""


@dataclass
class Episode:
    """One demonstration, frame-aligned."""

    task: str
    images: dict[str, np.ndarray]  # camera -> (T, H, W, 3) uint8
    states: np.ndarray  # (T, S) float32
    actions: np.ndarray  # (T, A) float32


@dataclass
class DemoDataset:
    """A whole dataset in memory, images decoded."""

    images: dict[str, np.ndarray]  # camera -> (N, H, W, 3) uint8
    states: np.ndarray  # (N, S)
    actions: np.ndarray  # (N, A)
    episode_index: np.ndarray  # (N,)
    task_index: np.ndarray  # (N,)
    tasks: list[str]
    stats: dict[str, dict[str, list[float]]]
    info: dict

    @property
    def n_episodes(self) -> int:
        return int(self.info["total_episodes"])


def _png(frame: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(frame).save(buffer, format="PNG")
    return buffer.getvalue()


def _features(episode: Episode) -> dict:
    features = {
        image_key(cam): {"dtype": "image", "shape": list(frames.shape[1:]), "names": ["height", "width", "channel"]}
        for cam, frames in episode.images.items()
    }
    features[STATE_KEY] = {"dtype": "float32", "shape": [episode.states.shape[1]], "names": None}
    features[ACTION_KEY] = {"dtype": "float32", "shape": [episode.actions.shape[1]], "names": None}
    features["timestamp"] = {"dtype": "float32", "shape": [1], "names": None}
    for key in ("frame_index", "episode_index", "index", "task_index"):
        features[key] = {"dtype": "int64", "shape": [1], "names": None}
    return features


def write_dataset(root: str | Path, episodes: list[Episode], fps: int, robot_type: str) -> None:
    """Write `episodes` atomically: `root` is replaced only when everything is written."""
    if not episodes:
        raise DatasetError("write_dataset: no episodes to write")
    tasks = sorted({ep.task for ep in episodes})
    columns: dict[str, list] = {key: [] for key in _features(episodes[0])}
    episode_rows: dict[str, list] = {k: [] for k in (
        "episode_index", "tasks", "length", "data/chunk_index", "data/file_index",
        "dataset_from_index", "dataset_to_index")}
    index = 0
    for ep_idx, ep in enumerate(episodes):
        length = len(ep.actions)
        for cam, frames in ep.images.items():
            columns[image_key(cam)] += [{"bytes": _png(f), "path": None} for f in frames]
        columns[STATE_KEY] += [row.tolist() for row in ep.states.astype(np.float32)]
        columns[ACTION_KEY] += [row.tolist() for row in ep.actions.astype(np.float32)]
        columns["timestamp"] += [t / fps for t in range(length)]
        columns["frame_index"] += list(range(length))
        columns["episode_index"] += [ep_idx] * length
        columns["index"] += list(range(index, index + length))
        columns["task_index"] += [tasks.index(ep.task)] * length
        for key, value in zip(episode_rows, (ep_idx, [ep.task], length, 0, 0, index, index + length)):
            episode_rows[key].append(value)
        index += length

    info = {
        "codebase_version": CODEBASE_VERSION, "robot_type": robot_type, "fps": fps,
        "total_episodes": len(episodes), "total_frames": index, "total_tasks": len(tasks),
        "chunks_size": 1000, "data_files_size_in_mb": 100, "video_files_size_in_mb": 200,  # LeRobot's defaults
        "splits": {"train": f"0:{len(episodes)}"},
        "data_path": "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet", "video_path": None,
        "features": _features(episodes[0]),
    }
    import pandas as pd  # the parquet stack loads on first use: policy code imports this module too
    import pyarrow as pa
    import pyarrow.parquet as pq

    with atomic_directory(root) as staging:
        for sub in ("data/chunk-000", "meta/episodes/chunk-000"):
            (staging / sub).mkdir(parents=True)
        pq.write_table(pa.table(columns), staging / DATA_FILE)
        pq.write_table(pa.table(episode_rows), staging / EPISODES_FILE)
        pd.DataFrame({"task_index": range(len(tasks))}, index=tasks).to_parquet(staging / "meta/tasks.parquet")
        write_json_atomic(staging / "meta/stats.json", _dataset_stats(columns, episodes))
        write_json_atomic(staging / "meta/info.json", info)


def _dataset_stats(columns: dict[str, list], episodes: list[Episode]) -> dict:
    """Statistics of every feature, as LeRobot computes them (images per channel, scaled to [0, 1])."""
    stats = {image_key(cam): image_stats(np.concatenate([ep.images[cam] for ep in episodes]))
             for cam in episodes[0].images}
    for key, values in columns.items():
        if key not in stats:
            values = np.asarray(values, dtype=np.float64)
            stats[key] = feature_stats(values.reshape(len(values), -1))  # scalars: (N, 1), as LeRobot's (1,)
    return stats


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise DatasetError(f"{path}: unreadable ({err}); {REGENERATE}") from None


def _read_parquet(path: Path) -> dict:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        return pq.read_table(path).to_pydict()
    except (OSError, pa.ArrowInvalid) as err:
        raise DatasetError(f"{path}: unreadable parquet ({err}); {REGENERATE}") from None


def _read_tasks(path: Path) -> list[str]:
    """Task strings in task_index order: LeRobot v3 keeps them as the index; older svrl datasets as a column."""
    import pandas as pd
    import pyarrow as pa

    try:
        table = pd.read_parquet(path)
    except (OSError, pa.ArrowInvalid, ValueError) as err:
        raise DatasetError(f"{path}: unreadable parquet ({err}); {REGENERATE}") from None
    names = table["task"] if "task" in table.columns else table.index
    return [str(name) for _, name in sorted(zip(table["task_index"], names))]


def _decode_frame(cell: dict, root: Path, camera: str, index: int) -> np.ndarray:
    try:
        return np.asarray(Image.open(io.BytesIO(cell["bytes"])).convert("RGB"))
    except (OSError, ValueError, TypeError) as err:
        raise DatasetError(f"{root / DATA_FILE}: frame {index} of {image_key(camera)} is not a readable image "
                           f"({err}); {REGENERATE}") from None


def load_dataset(root: str | Path) -> DemoDataset:
    """Read and validate a dataset written by `write_dataset` (or LeRobot v3 with PNG images).

    `root` may be an fsspec URL of a completely written dataset (s3://...)."""
    if is_remote(root):
        with local_directory(root) as local:
            return load_dataset(local)
    root = Path(root)
    if not (root / "meta/info.json").is_file():
        raise DatasetError(f"{root}: no dataset here (meta/info.json missing); run `dvc repro ingest` first")
    info = _read_json(root / "meta/info.json")
    stats = _read_json(root / "meta/stats.json")
    if info.get("codebase_version") != CODEBASE_VERSION:
        raise DatasetError(f"{root}: codebase_version {info.get('codebase_version')!r}, expected {CODEBASE_VERSION!r}")
    frames, tasks = _read_parquet(root / DATA_FILE), _read_tasks(root / "meta/tasks.parquet")
    cameras = [k.removeprefix("observation.images.") for k, f in info["features"].items() if f["dtype"] == "image"]
    missing = [k for k in info["features"] if k not in frames]
    if missing or len(frames.get(ACTION_KEY, [])) != info["total_frames"]:
        raise DatasetError(f"{root}: data does not match meta/info.json (missing columns {missing} or frame count)")
    images = {cam: np.stack([_decode_frame(cell, root, cam, i) for i, cell in enumerate(frames[image_key(cam)])])
              for cam in cameras}
    return DemoDataset(
        images=images,
        states=np.asarray(frames[STATE_KEY], dtype=np.float32),
        actions=np.asarray(frames[ACTION_KEY], dtype=np.float32),
        episode_index=np.asarray(frames["episode_index"], dtype=np.int64),
        task_index=np.asarray(frames["task_index"], dtype=np.int64),
        tasks=tasks,
        stats=stats,
        info=info,
    )
