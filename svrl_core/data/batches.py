"""Training batches of action chunks from a demo dataset."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np

from svrl_core.data.lerobot import DemoDataset


@dataclass
class ChunkBatch:
    """Observations at time t and the next K actions of the same episode."""

    images: dict[str, np.ndarray]  # camera -> (B, H, W, 3) uint8
    states: np.ndarray  # (B, S)
    instructions: list[str]
    actions: np.ndarray  # (B, K, A)
    action_mask: np.ndarray  # (B, K) bool; False where the chunk ran past the episode end


def chunk_indices(episode_index: np.ndarray, chunk_size: int) -> tuple[np.ndarray, np.ndarray]:
    """For every frame, the frame indices of its K-action chunk and which are real.

    Past an episode's end the last action repeats (and is masked out of the loss).
    """
    n = len(episode_index)
    offsets = np.arange(chunk_size)
    raw = np.arange(n)[:, None] + offsets[None, :]  # (N, K)
    clipped = np.minimum(raw, n - 1)
    same_episode = episode_index[clipped] == episode_index[:, None]
    mask = (raw < n) & same_episode
    indices = np.maximum.accumulate(np.where(mask, raw, 0), axis=1)  # past the end: last frame
    return indices, mask


def chunk_moves(data: DemoDataset, chunk_size: int) -> np.ndarray:
    """(M, D) every real chunk action minus the state at its chunk's first frame: what relative actions bin.

    Needs states in the action's layout (RoboTwin's proprio: joints and gripper openings)."""
    if data.states.shape[1] != data.actions.shape[1]:
        raise ValueError(f"relative actions need a state in the action's layout: the demos have {data.states.shape[1]} "
                         f"state dims and {data.actions.shape[1]} action dims; leave policy.relative_action_dims empty")
    indices, mask = chunk_indices(data.episode_index, chunk_size)
    moves = data.actions[indices] - data.states[:, None, :]  # (N, K, D)
    return moves[mask]


def iterate_chunk_batches(data: DemoDataset, instructions: list[str], chunk_size: int,
                          batch_size: int, rng: np.random.Generator) -> Iterator[ChunkBatch]:
    """Endless shuffled batches; `instructions[i]` is the text of `data.tasks[i]`."""
    indices, mask = chunk_indices(data.episode_index, chunk_size)
    n = len(data.actions)
    while True:
        order = rng.permutation(n)
        for start in range(0, max(n - batch_size, 0) + 1, batch_size):
            rows = order[start:start + batch_size]
            yield ChunkBatch(
                images={cam: frames[rows] for cam, frames in data.images.items()},
                states=data.states[rows],
                instructions=[instructions[i] for i in data.task_index[rows]],
                actions=data.actions[indices[rows]],
                action_mask=mask[rows],
            )
