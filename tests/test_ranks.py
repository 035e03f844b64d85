"""RL on two ranks (gloo, CPU) gives the one-rank result on the same global batch."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from svrl_core.config import parse_params
from tests.conftest import TINY, assert_weights_close, free_port
from tests.grpo_ranks import run
from tests.test_pipeline import child_environ

ROOT = Path(__file__).resolve().parent.parent
METRIC_TOLERANCE = {"rtol": 1e-5, "atol": 1e-7}  # the summation order differs (micro-batches, all-reduce)


def ranks_params(tmp_path: Path, demos: Path, family: str) -> dict:
    raw = {section: dict(values) for section, values in TINY.items()}
    raw["paths"] = {"demos": str(demos), "rl_state": str(tmp_path / "state")}
    raw["policy"]["family"] = family
    raw["rl"].update(iterations=2, prompts_per_batch=8, group_size=4, min_valid_groups=2, max_refills=2, seed=1,
                     mini_batch_trajectories=8, micro_batch_chunks=5)  # with seed 1: updates on 1 and 2 groups
    return raw


def run_on_two_ranks(raw: dict, out: Path) -> subprocess.CompletedProcess:
    config = out.parent / f"{out.name}.json"
    config.write_text(json.dumps({"params": raw}))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()),
           str(ROOT / "tests/grpo_ranks.py"), str(config), str(out)]
    env = {**child_environ(), "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)


def without_timings(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if not k.endswith(("_time_s", "_per_s"))} for row in history]


def assert_same_run(one: Path, two: Path, lr: float) -> None:
    a, b = (json.loads((p / "run.json").read_text()) for p in (one, two))
    assert b["ranks"] == 2 and a["ranks"] == 1
    assert len(a["batches"]) == len(b["batches"]) == 2, "the test needs real updates"
    for x, y in zip(a["batches"], b["batches"]):
        assert (x["rewards"], x["advantages"], x["tokens"]) == (y["rewards"], y["advantages"], y["tokens"])
        every = list(range(len(x["rewards"])))
        assert sorted(y["held"][0] + y["held"][1]) == every and y["held"][0] and y["held"][1], "split over ranks"
    for row_a, row_b in zip(without_timings(a["history"]), without_timings(b["history"]), strict=True):
        assert row_a.keys() == row_b.keys()
        for key, value in row_a.items():
            if isinstance(value, float):
                np.testing.assert_allclose(row_b[key], value, **METRIC_TOLERANCE, err_msg=key)
            else:
                assert row_b[key] == value, key
    weights_a, weights_b = (load_file(str(p / "weights.safetensors")) for p in (one, two))
    assert_weights_close(weights_b, weights_a, lr)


def test_two_ranks_train_as_one_on_the_same_global_batch(tmp_path, tiny_dataset_dir):
    """On the tiny OpenVLA-OFT (TinyVLA: the killed-rank test in test_pipeline.py compares two ranks with one)."""
    raw = ranks_params(tmp_path / "one", tiny_dataset_dir, "openvla-oft")
    run(raw, tmp_path / "one")
    two = run_on_two_ranks(ranks_params(tmp_path / "two", tiny_dataset_dir, "openvla-oft"), tmp_path / "two")
    assert two.returncode == 0, two.stderr[-3000:]
    assert_same_run(tmp_path / "one", tmp_path / "two", parse_params(raw).rl.lr)


def test_a_partitioned_optimizer_resumes_only_on_the_rank_count_that_saved_it(tiny_policy, tmp_path):
    from svrl_core.policies import CheckpointError
    from svrl_core.training.checkpoint import load_training_state, save_training_state

    state = tmp_path / "rl_state"
    save_training_state(state, "run-a", tiny_policy, {"moments": 1}, {"step": 3}, partitioned=True)
    assert load_training_state(state, "run-a", partitioned=True).progress["step"] == 3
    saved = json.loads((state / "state.json").read_text())
    (state / "state.json").write_text(json.dumps({**saved, "ranks": 2}))  # as 2 ranks of ZeRO-2 save it
    with pytest.raises(CheckpointError, match="saved by 2 rank.* cannot resume on 1: run it on 2 "
                                              r"\(compute.ranks\), or delete"):
        load_training_state(state, "run-a", partitioned=True)
    (state / "state.json").write_text(json.dumps({**saved, "ranks": 2, "partitioned": False}))  # ZeRO 0
    assert load_training_state(state, "run-a").optimizer_state == {"moments": 1}, "the same on every rank"
