"""VLAPolicy: the policy contract every stage uses, in bin space 0..n_bins-1.

Contract: prepare, sample, log_probs (+ entropy), greedy, bins_to_actions,
save/load. Families (registry.py): TinyVLA (tiny_policy.py) and OpenVLA-OFT (openvla_oft/).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Sequence, Union

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from svrl_core.envs.base import Obs
from svrl_core.io import local_directory
from svrl_core.policies.tokenizer import ActionTokenizer

STATE_EPS = 1e-6
RandomStreams = Union[torch.Generator, Sequence[torch.Generator], None]  # one stream, one per row, or torch's


class CheckpointError(ValueError):
    """A checkpoint is missing, corrupt, or from another architecture."""


def token_log_probs(logits: torch.Tensor, bins: torch.Tensor, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """logits (..., n_bins), bins (...) -> log-prob of each bin and entropy, both (...)."""
    if bins.shape != logits.shape[:-1]:  # gather would silently read the first tokens' logits
        raise ValueError(f"{tuple(bins.shape)} bins for {tuple(logits.shape[:-1])} token logits")
    log_dist = F.log_softmax(logits / temperature, dim=-1)  # (..., n_bins)
    chosen = log_dist.gather(-1, bins.unsqueeze(-1)).squeeze(-1)
    entropy = -(log_dist.exp() * log_dist).sum(-1)
    return chosen, entropy


def sample_categorical(probs: torch.Tensor, generator: RandomStreams = None) -> torch.Tensor:
    """One draw per row of (..., n) probabilities -> (...) int64, by inverting the row's CDF.

    One uniform number per draw: over 10x faster than torch.multinomial on rollout batches
    (thousands of 256-bin rows), where sampling was the largest part of inference. `generator`
    is one stream for the whole batch, or one per leading row (B): then a row's draws do not
    depend on which other rows share its batch (an episode's own stream).
    """
    cdf = probs.cumsum(-1)  # (..., n)
    if isinstance(generator, (list, tuple)):
        if len(generator) != len(probs):
            raise ValueError(f"{len(generator)} random streams for {len(probs)} rows")
        u = torch.stack([torch.rand(probs.shape[1:-1] + (1,), generator=g, dtype=cdf.dtype) for g in generator])
        u = u.to(cdf.device)  # (B, ..., 1)
    else:
        u = torch.rand(probs.shape[:-1] + (1,), generator=generator, dtype=cdf.dtype, device=cdf.device)  # (..., 1)
    u = u * cdf[..., -1:]  # scaled to the row's total, which rounding keeps from being exactly 1
    # the first bin whose CDF exceeds u: bins of zero probability are never picked
    return torch.searchsorted(cdf, u, right=True).squeeze(-1).clamp_max(probs.shape[-1] - 1)


@dataclass
class PolicyInputs:
    """Tensors one forward pass of any family takes (the exported bundle's three inputs)."""

    images: torch.Tensor  # (B, 3 * cameras, H, W) uint8
    states: torch.Tensor  # (B, S) float32, normalized
    instruction_ids: torch.Tensor  # (B, L) int64: TinyVLA bytes + 1 (0 = pad), OpenVLA-OFT its token sequence

    def __len__(self) -> int:
        return len(self.states)

    def select(self, rows: torch.Tensor) -> "PolicyInputs":
        return PolicyInputs(self.images[rows], self.states[rows], self.instruction_ids[rows])


class VLAPolicy:
    """A VLA network in action-bin space, with its tokenizers and normalization.

    A family implements the network (`model(inputs)` -> (B, K * D, n_bins) float32 logits,
    the logits of all action tokens of a chunk from one forward pass), `prepare_arrays`,
    `save`, `_load_local` and the shape properties. Sampling, log-probs and decoding are
    shared, so RL treats every family alike. `VLAPolicy.load` picks the family from the
    checkpoint.
    """

    family: ClassVar[str]
    model: nn.Module
    actions: ActionTokenizer
    decoding: str = "mean"  # how `greedy` picks bins: argmax | mean (export/runtime.py decode_bins)

    # --- shape of the action chunk and the inputs --------------------------------------
    cameras: tuple[str, ...]  # the env cameras the policy reads, in input order

    @property
    def cfg(self):
        """The network's config: every family's has chunk_size and action_dim."""
        return self.model.cfg

    @property
    def chunk_size(self) -> int:
        return self.cfg.chunk_size

    @property
    def action_dim(self) -> int:
        return self.cfg.action_dim

    @property
    def camera(self) -> str:
        """The main camera (videos, single-camera export)."""
        return self.cameras[0]

    @property
    def n_bins(self) -> int:
        return self.actions.n_bins

    @property
    def state_dim(self) -> int:
        raise NotImplementedError

    @property
    def image_shape(self) -> tuple[int, int]:
        """(H, W) of the camera images the policy takes."""
        raise NotImplementedError

    def architecture(self) -> dict:
        """The network's configuration, as recorded in an exported bundle."""
        raise NotImplementedError

    def bundle_preprocessing(self) -> dict:
        """How the bundle runtime turns proprio and instructions into the network's inputs."""
        raise NotImplementedError

    # --- inputs ----------------------------------------------------------------------
    def prepare_arrays(self, images: dict[str, np.ndarray], states: np.ndarray,
                       instructions: list[str]) -> PolicyInputs:
        """images {camera: (B, H, W, 3) uint8}, states (B, S), texts -> the network's inputs."""
        raise NotImplementedError

    def prepare(self, observations: list[Obs]) -> PolicyInputs:
        images = {camera: np.stack([o.images[camera] for o in observations]) for camera in self.cameras}
        states = np.stack([o.proprio for o in observations])
        return self.prepare_arrays(images, states, [o.instruction for o in observations])

    # --- action distribution ---------------------------------------------------------
    def _chunk(self, flat: torch.Tensor) -> torch.Tensor:
        return flat.view(-1, self.chunk_size, self.action_dim)  # (B, K, D)

    @torch.no_grad()
    def sample(self, inputs: PolicyInputs, temperature: float,
               generator: RandomStreams = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Sample bins at `temperature` -> (bins, log_probs), both (B, K, D); `generator`: one stream, or
        one per row (see `sample_categorical`)."""
        log_dist = F.log_softmax(self.model(inputs) / temperature, dim=-1)  # (B, T, n_bins)
        bins = sample_categorical(log_dist.exp(), generator)  # (B, T)
        return self._chunk(bins), self._chunk(log_dist.gather(-1, bins.unsqueeze(-1)).squeeze(-1))

    @torch.no_grad()
    def greedy(self, inputs: PolicyInputs) -> torch.Tensor:
        """Deterministic bins by `self.decoding`, (B, K, D): evaluation's and the bundle's actions."""
        from svrl_core.export.runtime import decode_bins  # the bundle's own rule; a top-level import is circular

        return self._chunk(decode_bins(self.model(inputs), self.decoding))

    def log_probs(self, inputs: PolicyInputs, bins: torch.Tensor, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
        """Differentiable log-probs and entropies of (B, K, D) bins, both (B, K, D)."""
        logits = self.model(inputs)
        log_probs, entropy = token_log_probs(logits, bins.flatten(1), temperature)
        return self._chunk(log_probs), self._chunk(entropy)

    def bins_to_actions(self, bins: torch.Tensor | np.ndarray, states: np.ndarray | None = None) -> np.ndarray:
        """(B, K, D) bins -> (B, K, D) float32 env actions; `states` (B, S), the raw proprio the chunk was
        predicted from, is needed when the policy's actions are relative to it."""
        return self.actions.decode(np.asarray(bins), states)

    # --- persistence -----------------------------------------------------------------
    def save(self, directory: str | Path) -> None:
        """Write the checkpoint atomically; `load` gives bit-identical outputs."""
        raise NotImplementedError

    def load_weights_of(self, other: "VLAPolicy") -> None:
        """Take `other`'s weights (a resumed run's saved policy of the same family and shape)."""
        self.model.load_state_dict(other.model.state_dict())

    @classmethod
    def load(cls, directory: str | Path) -> "VLAPolicy":
        """Load a checkpoint directory of any family (local, or a complete one at an fsspec URL)."""
        with local_directory(directory) as local:
            if cls is VLAPolicy:
                return family_of_checkpoint(local, directory)._load_local(local, directory)
            return cls._load_local(local, directory)

    @classmethod
    def _load_local(cls, directory: Path, name: str | Path) -> "VLAPolicy":
        raise NotImplementedError


def family_of_checkpoint(directory: Path, name: str | Path) -> type[VLAPolicy]:
    """The policy class whose checkpoint `directory` holds, from its config.json."""
    from svrl_core.policies.registry import FAMILIES

    config = directory / "config.json"
    if not config.is_file():
        raise CheckpointError(f"{name}: not a policy checkpoint, missing ['config.json']")
    raw = read_checkpoint_json(config, name)
    for family in FAMILIES.values():
        if family.recognizes(raw):
            return family
    raise CheckpointError(f"{name}: architecture {raw.get('architecture', raw.get('model_type'))!r} is none that "
                          f"this code loads ({sorted(FAMILIES)})")


def restore_hint(path: str | Path) -> str:
    """What a user does about a damaged stage output."""
    return f"restore it with `dvc checkout {path}` or rerun the stage that writes it (`dvc repro`)"


def read_checkpoint_json(path: Path, name: str | Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{name}/{path.name}: corrupt JSON ({err}); {restore_hint(name)}") from None
