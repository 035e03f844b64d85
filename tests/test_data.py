import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from svrl_core.data import DatasetError, Episode, chunk_indices, iterate_chunk_batches, load_dataset, write_dataset


def test_lerobot_v3_layout(tiny_dataset_dir):
    for rel in ("meta/info.json", "meta/stats.json", "meta/tasks.parquet",
                "meta/episodes/chunk-000/file-000.parquet", "data/chunk-000/file-000.parquet"):
        assert (tiny_dataset_dir / rel).is_file(), rel
    info = json.loads((tiny_dataset_dir / "meta/info.json").read_text())
    assert info["codebase_version"] == "v3.0" and info["total_episodes"] == 4
    assert info["features"]["observation.images.main"]["dtype"] == "image"
    episodes = pq.read_table(tiny_dataset_dir / "meta/episodes/chunk-000/file-000.parquet").to_pydict()
    assert episodes["dataset_to_index"][-1] == info["total_frames"]
    stats = json.loads((tiny_dataset_dir / "meta/stats.json").read_text())
    assert set(stats["action"]) >= {"min", "max", "mean", "std", "q01", "q99"}


def test_round_trip_is_exact(tmp_path):
    rng = np.random.default_rng(0)
    episodes = [Episode("task a", {"main": rng.integers(0, 255, (5, 8, 8, 3), dtype=np.uint8)},
                        rng.normal(size=(5, 2)).astype(np.float32), rng.normal(size=(5, 3)).astype(np.float32)),
                Episode("task b", {"main": rng.integers(0, 255, (3, 8, 8, 3), dtype=np.uint8)},
                        rng.normal(size=(3, 2)).astype(np.float32), rng.normal(size=(3, 3)).astype(np.float32))]
    write_dataset(tmp_path / "ds", episodes, fps=10, robot_type="test")
    data = load_dataset(tmp_path / "ds")
    assert np.array_equal(data.images["main"], np.concatenate([e.images["main"] for e in episodes]))
    assert np.array_equal(data.actions, np.concatenate([e.actions for e in episodes]))
    assert data.tasks == ["task a", "task b"] and data.episode_index.tolist() == [0] * 5 + [1] * 3
    assert np.allclose(data.stats["action"]["q99"], np.quantile(data.actions, 0.99, axis=0))


def test_chunks_pad_with_last_action_and_mask_it():
    indices, mask = chunk_indices(np.array([0, 0, 0, 1, 1]), chunk_size=3)
    assert indices.tolist() == [[0, 1, 2], [1, 2, 2], [2, 2, 2], [3, 4, 4], [4, 4, 4]]
    assert mask.tolist() == [[True, True, True], [True, True, False], [True, False, False],
                             [True, True, False], [True, False, False]]


def test_batches(tiny_dataset):
    batch = next(iterate_chunk_batches(tiny_dataset, tiny_dataset.tasks, 4, 8, np.random.default_rng(0)))
    assert batch.actions.shape == (8, 4, 2) and batch.action_mask.shape == (8, 4)
    assert batch.images["main"].shape == (8, 32, 32, 3) and len(batch.instructions) == 8


def test_missing_dataset_is_explained(tmp_path):
    with pytest.raises(DatasetError, match="dvc repro ingest"):
        load_dataset(tmp_path / "nothing")


def test_corrupt_dataset_is_explained(tmp_path, tiny_dataset_dir):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(tiny_dataset_dir, broken)
    (broken / "data/chunk-000/file-000.parquet").write_bytes(b"not parquet")
    with pytest.raises(DatasetError, match="unreadable"):
        load_dataset(broken)
    (broken / "meta/info.json").write_text("{")
    with pytest.raises(DatasetError, match="unreadable"):
        load_dataset(broken)


@pytest.mark.parametrize("damage", ["truncated parquet", "corrupt frame", "corrupt stats", "corrupt tasks table"])
def test_damaged_dataset_names_the_file_and_the_fix(tmp_path, tiny_dataset_dir, damage):
    import shutil

    import pyarrow as pa
    import pyarrow.parquet as pq

    broken = tmp_path / "broken"
    shutil.copytree(tiny_dataset_dir, broken)
    data = broken / "data/chunk-000/file-000.parquet"
    if damage == "truncated parquet":
        data.write_bytes(data.read_bytes()[:1000])
        expected = f"{data}: unreadable parquet"
    elif damage == "corrupt frame":
        table = pq.read_table(data)
        column = table.column("observation.images.main").to_pylist()
        column[3] = {"bytes": column[3]["bytes"][:40], "path": None}  # a PNG cut short
        index = table.schema.get_field_index("observation.images.main")
        pq.write_table(table.set_column(index, table.schema.field(index), pa.array(column)), data)
        expected = "frame 3 of observation.images.main is not a readable image"
    elif damage == "corrupt stats":
        (broken / "meta/stats.json").write_text('{"action": {')
        expected = "stats.json: unreadable"
    else:
        (broken / "meta/tasks.parquet").write_bytes(b"PAR1 cut")
        expected = "tasks.parquet: unreadable parquet"
    with pytest.raises(DatasetError) as err:
        load_dataset(broken)
    assert expected in str(err.value) and "dvc repro ingest" in str(err.value) and "dvc checkout" in str(err.value)


def test_failed_write_leaves_previous_dataset_intact(tmp_path, tiny_dataset_dir):
    import shutil

    target = tmp_path / "ds"
    shutil.copytree(tiny_dataset_dir, target)
    bad = Episode("x", {"main": np.zeros((2, 8, 8, 3), np.uint8)}, np.zeros((2, 2), np.float32),
                  np.zeros((3, 2), np.float32))  # 3 actions for 2 frames
    with pytest.raises(Exception):
        write_dataset(target, [bad], fps=10, robot_type="test")
    assert load_dataset(target).n_episodes == 4
    assert [p.name for p in tmp_path.iterdir()] == ["ds"], "no staging directory left behind"
