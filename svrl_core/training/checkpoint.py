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

import torch

from svrl_core.io import atomic_directory, local_directory, write_json_atomic
from svrl_core.policies import CheckpointError, VLAPolicy

logger = logging.getLogger("svrl")


@dataclass
class TrainingState:
    policy: VLAPolicy
    optimizer_state: dict
    progress: dict  # json: iteration, cursors, history, ...


def save_training_state(directory: str | Path, fingerprint: str, policy: VLAPolicy,
                        optimizer_state: dict, progress: dict) -> None:
    with atomic_directory(directory) as staging:
        policy.save(staging / "policy")
        torch.save(optimizer_state, staging / "optimizer.pt")
        write_json_atomic(staging / "state.json", {"fingerprint": fingerprint, **progress})


def load_training_state(directory: str | Path, fingerprint: str) -> TrainingState | None:
    """The saved state if it belongs to this run; None if there is none or it is another run's."""
    try:
        with local_directory(directory) as local:
            return _load_local(local, fingerprint, directory)
    except FileNotFoundError:  # no complete state at a remote URL
        return None


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
        with torch.serialization.safe_globals(zero_state_types()):
            optimizer_state = torch.load(directory / "optimizer.pt", weights_only=True)
    except (OSError, RuntimeError, EOFError, pickle.UnpicklingError) as err:
        raise CheckpointError(f"{name}/optimizer.pt: corrupt resumable state ({err}); {fix}") from None
    try:
        policy = VLAPolicy.load(directory / "policy")
    except CheckpointError as err:
        raise CheckpointError(f"{err} (in the resumable state: {fix})") from None
    return TrainingState(policy, optimizer_state, progress)


def zero_state_types() -> list[type]:
    """The plain DeepSpeed classes inside a ZeRO optimizer's state dict, allowed when loading it."""
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [ZeroStageEnum, LossScaler, DynamicLossScaler, fragment_address]
