"""Resumable training state: policy, optimizer and progress, written atomically.

A state belongs to one run, named by a fingerprint of everything that determines it
(config, starting checkpoint). A state with another fingerprint is never resumed. The stage
deletes the state once its outputs are written: the fingerprint cannot see code changes, so
a rerun must not reload a finished run.
"""

from __future__ import annotations

import json
import logging
import pickle
from dataclasses import dataclass
from pathlib import Path

import fsspec
import torch

from svrl_core.io import atomic_directory, is_remote, join, local_directory, remove_directory, write_json_atomic
from svrl_core.policies import CheckpointError, VLAPolicy
from svrl_core.training.ranks import Ranks

logger = logging.getLogger("svrl")


class SegmentEnded(Exception):
    """A run's segment used its time budget: its state is saved, and running the stage again continues it."""


@dataclass
class TrainingState:
    policy: VLAPolicy
    optimizer_state: dict
    progress: dict  # json: iteration, cursors, history, ...


def save_training_state(directory: str | Path, fingerprint: str, policy: VLAPolicy, optimizer_state: dict,
                        progress: dict, ranks: Ranks = Ranks(), partitioned: bool = False) -> None:
    """Every rank calls this. Rank 0 writes the policy, its optimizer state and the progress (json,
    with the `step` it follows) as one directory; with a `partitioned` optimizer (ZeRO 1-3) every
    other rank first writes its own partition beside it, under the step, so a kill at any point
    leaves the last complete state and its partitions readable."""
    step = int(progress.get("step", 0))
    if partitioned and ranks.world > 1 and not ranks.is_writer:
        with atomic_directory(partition_directory(directory, step, ranks.rank)) as staging:
            torch.save(optimizer_state, staging / "optimizer.pt")
    ranks.barrier()
    if ranks.is_writer:
        with atomic_directory(directory) as staging:
            policy.save(staging / "policy")
            torch.save(optimizer_state, staging / "optimizer.pt")
            write_json_atomic(staging / "state.json", {"fingerprint": fingerprint, **progress,
                                                       "ranks": ranks.world, "partitioned": partitioned})
        if partitioned and ranks.world > 1:
            remove_partitions(directory, but=f"step-{step}")  # superseded
    ranks.barrier()


def partitions_root(directory: str | Path) -> str | Path:
    """Where ranks other than 0 keep their optimizer partitions: beside the state directory."""
    return f"{str(directory).rstrip('/')}.ranks" if is_remote(directory) else Path(f"{directory}.ranks")


def partition_directory(directory: str | Path, step: int, rank: int) -> str | Path:
    return join(partitions_root(directory), f"step-{step}", f"rank-{rank}")


def remove_partitions(directory: str | Path, but: str | None = None) -> None:
    """Delete the ranks' optimizer partitions of a state directory, all of them or all `but` one step's."""
    fs, root = fsspec.core.url_to_fs(str(partitions_root(directory)))
    if not fs.exists(root):
        return
    for entry in fs.ls(root, detail=False):
        if entry.rstrip("/").rsplit("/", 1)[-1] != but:
            remove_directory(fs.unstrip_protocol(entry) if is_remote(directory) else entry)


def remove_training_state(directory: str | Path) -> None:
    """Delete a run's resumable state, its ranks' partitions and its best policy."""
    remove_directory(directory)
    remove_directory(partitions_root(directory))
    remove_directory(best_policy_dir(directory))


def best_policy_dir(directory: str | Path) -> str:
    """Where a run whose state is in `directory` keeps the policy of its best learning-curve point."""
    return f"{str(directory).rstrip('/')}.best"


def load_training_state(directory: str | Path, fingerprint: str, ranks: Ranks = Ranks(),
                        partitioned: bool = False) -> TrainingState | None:
    """The saved state if it belongs to this run (this rank's optimizer partition with it); None if there
    is none or it is another run's. A partitioned optimizer resumes only on the rank count that saved it."""
    try:
        with local_directory(directory) as local:
            state = _load_local(local, fingerprint, directory)
    except FileNotFoundError:  # no complete state at a remote URL
        return None
    if state is None:
        return None
    saved_ranks, saved_partitioned = state.progress.pop("ranks", 1), state.progress.pop("partitioned", False)
    if (partitioned or saved_partitioned) and saved_ranks != ranks.world:
        raise CheckpointError(f"{directory}: this RL run was saved by {saved_ranks} rank(s) with a partitioned "
                              f"(ZeRO) optimizer and cannot resume on {ranks.world}: run it on {saved_ranks} "
                              f"(compute.ranks), or delete {directory} to start it afresh (its progress is lost)")
    if saved_partitioned and not ranks.is_writer:
        partition = partition_directory(directory, int(state.progress.get("step", 0)), ranks.rank)
        try:
            with local_directory(partition) as local:
                state.optimizer_state = _load_optimizer(Path(local) / "optimizer.pt", partition)
        except (FileNotFoundError, CheckpointError) as err:
            raise CheckpointError(f"{err} (rank {ranks.rank}'s optimizer partition; delete {directory} to start "
                                  f"this RL run afresh)") from None
    return state


def _load_local(directory: Path, fingerprint: str, name: str | Path) -> TrainingState | None:
    if not (directory / "state.json").is_file():
        return None
    fix = f"delete {name} to start this RL run afresh (its progress is lost)"
    try:
        progress = json.loads((directory / "state.json").read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{name}/state.json: corrupt resumable state ({err}); {fix}") from None
    if progress.pop("fingerprint", None) != fingerprint:
        logger.info("%s holds another run's state (different config or start); starting fresh", name)
        return None
    try:
        optimizer_state = _load_optimizer(directory / "optimizer.pt", name)
    except CheckpointError as err:
        raise CheckpointError(f"{err}; {fix}") from None
    try:
        policy = VLAPolicy.load(directory / "policy")
    except CheckpointError as err:
        raise CheckpointError(f"{err} (in the resumable state: {fix})") from None
    return TrainingState(policy, optimizer_state, progress)


def _load_optimizer(path: Path, name: str | Path) -> dict:
    try:
        with torch.serialization.safe_globals(zero_state_types()):
            return torch.load(path, weights_only=True)
    except (OSError, RuntimeError, EOFError, pickle.UnpicklingError) as err:
        raise CheckpointError(f"{name}/optimizer.pt: corrupt resumable state ({err})") from None


def zero_state_types() -> list[type]:
    """The plain DeepSpeed classes inside a ZeRO optimizer's state dict, allowed when loading it."""
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [ZeroStageEnum, LossScaler, DynamicLossScaler, fragment_address]
