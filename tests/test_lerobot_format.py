"""Demonstrations read by LeRobot's rules (LeRobotDataset of lerobot 0.4.4, codebase v3.0).

The `lerobot` package itself cannot be installed beside this project's pins (it requires
torch < 2.11 and wandb < 0.25), so each rule its reader applies is encoded here as it
applies it: the task string is `tasks.iloc[task_index].name` of meta/tasks.parquet read with
pandas; every feature has statistics (images per channel, shape (3, 1, 1), in [0, 1]);
`delta_timestamps` become frame offsets `round(dt * fps)`, clamped to the episode's
`[dataset_from_index, dataset_to_index)` with `<key>_is_pad` marking frames outside it.
"""

import json

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from svrl_core.data import Episode, chunk_indices, load_dataset, write_dataset

FPS = 10
LEROBOT_INFO_KEYS = {"codebase_version", "robot_type", "total_episodes", "total_frames", "total_tasks", "chunks_size",
                     "data_files_size_in_mb", "video_files_size_in_mb", "fps", "splits", "data_path", "video_path",
                     "features"}
STAT_KEYS = {"min", "max", "mean", "std", "count", "q01", "q10", "q50", "q90", "q99"}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    rng = np.random.default_rng(0)
    episodes = [Episode(task=task, images={"agentview": rng.integers(0, 256, (n, 12, 12, 3), dtype=np.uint8)},
                        states=rng.normal(size=(n, 8)).astype(np.float32),
                        actions=rng.normal(size=(n, 7)).astype(np.float32))
                for task, n in [("put the bowl on the plate", 9), ("open the drawer", 5), ("put the bowl on the plate", 12)]]
    root = tmp_path_factory.mktemp("lerobot") / "demos"
    write_dataset(root, episodes, fps=FPS, robot_type="panda")
    return root, episodes


def lerobot_frames(root):
    """What LeRobotDataset loads: info, the frame table, the episodes table and the tasks table."""
    info = json.loads((root / "meta/info.json").read_text())
    frames = pq.read_table(root / info["data_path"].format(chunk_index=0, file_index=0)).to_pydict()
    episodes = pq.read_table(root / "meta/episodes/chunk-000/file-000.parquet").to_pydict()
    return info, frames, episodes, pd.read_parquet(root / "meta/tasks.parquet")


def test_lerobot_finds_the_instruction_of_every_frame(dataset):
    root, episodes = dataset
    info, frames, _, tasks = lerobot_frames(root)
    assert LEROBOT_INFO_KEYS <= set(info) and info["codebase_version"] == "v3.0"
    assert info["total_tasks"] == len(tasks) == 2
    expected = [ep.task for ep in episodes for _ in range(len(ep.actions))]
    assert [tasks.iloc[i].name for i in frames["task_index"]] == expected  # LeRobot: item["task"]
    assert all(tasks.loc[task].task_index == i for i, task in enumerate(tasks.index))  # get_task_index


def test_stats_cover_every_feature_with_lerobots_shapes(dataset):
    root, episodes = dataset
    info, _, _, _ = lerobot_frames(root)
    stats = json.loads((root / "meta/stats.json").read_text())
    assert set(stats) == set(info["features"])
    for key, feature in info["features"].items():
        assert set(stats[key]) == STAT_KEYS, key
        assert np.shape(stats[key]["count"]) == (1,)
        shape = (3, 1, 1) if feature["dtype"] == "image" else tuple(feature["shape"])
        assert all(np.shape(stats[key][s]) == shape for s in STAT_KEYS - {"count"}), key
    image = stats["observation.images.agentview"]
    frames = np.concatenate([ep.images["agentview"] for ep in episodes]) / 255.0  # (N, H, W, 3)
    np.testing.assert_allclose(np.array(image["mean"])[:, 0, 0], frames.mean((0, 1, 2)), rtol=1e-9)
    np.testing.assert_allclose(np.array(image["max"])[:, 0, 0], frames.max((0, 1, 2)))
    assert image["count"] == [len(frames)] and 0 <= np.min(image["min"]) and np.max(image["max"]) <= 1


def test_delta_timestamp_action_chunks_pad_past_the_episode_end(dataset):
    root, _ = dataset
    info, frames, episodes, _ = lerobot_frames(root)
    chunk = 8
    delta_timestamps = [k / info["fps"] for k in range(chunk)]
    offsets = [round(dt * info["fps"]) for dt in delta_timestamps]  # LeRobot's get_delta_indices
    assert all(abs(dt * info["fps"] - round(dt * info["fps"])) < 1e-4 * info["fps"] for dt in delta_timestamps)
    np.testing.assert_allclose(frames["timestamp"], np.array(frames["frame_index"]) / info["fps"], atol=1e-6)
    actions = np.asarray(frames["action"])
    ours, our_mask = chunk_indices(np.asarray(frames["episode_index"]), chunk)
    for i, ep in enumerate(frames["episode_index"]):
        start, end = episodes["dataset_from_index"][ep], episodes["dataset_to_index"][ep]
        assert frames["index"][i] == i and start <= i < end
        query = [max(start, min(end - 1, i + d)) for d in offsets]  # LeRobot's _get_query_indices
        is_pad = [not start <= i + d < end for d in offsets]
        np.testing.assert_array_equal(actions[query], actions[ours[i]])  # svrl trains on LeRobot's chunks
        assert is_pad == list(~our_mask[i])
    last_of_first = episodes["dataset_to_index"][0] - 1
    assert list(our_mask[last_of_first]) == [True] + [False] * (chunk - 1)  # the last frame: 7 padded actions


def test_datasets_with_the_older_tasks_table_still_load(dataset, tmp_path):
    import shutil

    import pyarrow as pa

    root, episodes = dataset
    old = tmp_path / "old"
    shutil.copytree(root, old)
    tasks = pd.read_parquet(old / "meta/tasks.parquet")
    pq.write_table(pa.table({"task_index": tasks["task_index"].tolist(), "task": list(tasks.index)}),
                   old / "meta/tasks.parquet")  # svrl's layout before LeRobot's: a `task` column
    assert load_dataset(old).tasks == load_dataset(root).tasks == sorted({ep.task for ep in episodes})
