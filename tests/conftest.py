"""Shared fixtures: tiny configs, a tiny dataset and policy, one Prefect server per session."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from flows import settings as _prefect_settings  # noqa: F401  (Prefect settings before Prefect)
from svrl_core.config import Params, parse_params
from svrl_core.data import load_dataset, write_dataset
from svrl_core.envs.toy import ToyReachEnv
from svrl_core.experts.toy_reach import record_demonstration
from svrl_core.policies import new_policy

torch.set_num_threads(1)

LONGEST_FILE = "test_pipeline.py"  # about half the suite's time: `make test` starts it first


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The longest file's tests first, every file's tests in their own order: with `-n 2 --dist loadfile`
    one worker starts on it while the other runs the rest."""
    items.sort(key=lambda item: item.path.name != LONGEST_FILE)


TINY = {
    "env": {"tasks": ["red", "blue"], "max_steps": 16},
    "policy": {"chunk_size": 4, "n_bins": 32, "conv_channels": 8, "n_keypoints": 4, "instruction_dim": 16,
               "hidden_dim": 32, "max_instruction_bytes": 32},
    "compute": {"n_workers": 1, "envs_per_worker": 16},
    "tracking": {"wandb_mode": "disabled"},
    "ingest": {"episodes_per_task": 2},
    "sft": {"steps": 5, "batch_size": 16, "log_every": 1},
    "eval": {"episodes_per_task": 2, "n_videos": 2},
    "rl": {"iterations": 2, "prompts_per_batch": 4, "group_size": 4, "min_valid_groups": 1, "max_refills": 2,
           "mini_batch_trajectories": 4, "max_idle_iterations": 2},
}


@pytest.fixture(scope="session")
def tiny_params() -> Params:
    return parse_params(TINY)


@pytest.fixture(scope="session")
def tiny_dataset_dir(tmp_path_factory, tiny_params):
    env = ToyReachEnv(tiny_params.env)
    episodes = [record_demonstration(env, task, seed, 0.1)[0] for task in tiny_params.env.tasks for seed in range(2)]
    root = tmp_path_factory.mktemp("demos") / "toy"
    write_dataset(root, episodes, fps=10, robot_type="toy-reach")
    return root


@pytest.fixture(scope="session")
def tiny_dataset(tiny_dataset_dir):
    return load_dataset(tiny_dataset_dir)


@pytest.fixture()
def tiny_policy(tiny_params, tiny_dataset):
    return new_policy(tiny_params.policy, tiny_dataset, seed=0)


@pytest.fixture(scope="session")
def bundle_dir(tmp_path_factory, tiny_params, tiny_dataset):
    """The tiny policy exported, with the provenance an export stage writes (params included)."""
    from svrl_core.export import export_bundle

    directory = tmp_path_factory.mktemp("bundle") / "b"
    provenance = {"git": {"commit": "abc", "dirty": False}, "dvc": {}, "metrics": {"eval_rl": {"mean": 0.5}},
                  "params": tiny_params.model_dump(mode="json")}
    export_bundle(new_policy(tiny_params.policy, tiny_dataset, seed=0), directory, "tiny", provenance,
                  list(ToyReachEnv.action_names))
    return directory


@pytest.fixture(params=["mlp", "oft-transformer"])
def tiny_policy_any_trunk(request, tiny_params, tiny_dataset):
    cfg = tiny_params.policy.model_copy(update={"trunk": request.param, "transformer_width": 16})
    return new_policy(cfg, tiny_dataset, seed=0)


@pytest.fixture(scope="session")
def prefect_server():
    """One real Prefect server for the session; subprocesses reach it through PREFECT_API_URL."""
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=180):
        url = PREFECT_API_URL.value()
        previous = os.environ.get("PREFECT_API_URL")
        os.environ["PREFECT_API_URL"] = url
        yield url
        if previous is None:
            os.environ.pop("PREFECT_API_URL", None)
        else:
            os.environ["PREFECT_API_URL"] = previous


def free_port() -> int:
    """A loopback port nobody listens on right now."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def assert_weights_close(actual: dict, expected: dict, lr: float) -> None:
    """Weights trained the same way in another summation order (ranks, micro-batches): 99% of the values
    within 1e-6, and none more than a tenth of a step (lr): Adam's step is about lr per value whatever the
    gradient's size, so rounding in a near-zero gradient can move that one value by a fraction of it."""
    diffs = np.concatenate([np.abs(actual[name] - value).ravel() for name, value in expected.items()])
    assert diffs.max() <= 0.1 * lr, f"a weight differs by {diffs.max():.3g}"
    assert (diffs > 1e-6).mean() < 0.01, f"{(diffs > 1e-6).mean():.2%} of the weights differ by more than 1e-6"
