"""VLAPolicy: TinyVLA plus its tokenizers and normalization, in bin space 0..n_bins-1.

Contract (DESIGN.md): sample, log_probs (+ entropy), greedy, bins_to_actions, save/load.
A checkpoint directory holds config.json, model.safetensors, tokenizer.json and
norm_stats.json; loading it gives bit-identical outputs.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch.nn import functional as F

from svrl_core.config import PolicyConfig
from svrl_core.data import DemoDataset
from svrl_core.envs.base import Obs
from svrl_core.io import atomic_directory, local_directory, write_json_atomic
from svrl_core.policies.text import encode_instructions
from svrl_core.policies.tiny_vla import ARCHITECTURE, PolicyInputs, TinyVLA, TinyVLAConfig
from svrl_core.policies.tokenizer import ActionTokenizer

STATE_EPS = 1e-6


class CheckpointError(ValueError):
    """A checkpoint is missing, corrupt, or from another architecture."""


def token_log_probs(logits: torch.Tensor, bins: torch.Tensor, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """logits (..., n_bins), bins (...) -> log-prob of each bin and entropy, both (...)."""
    log_dist = F.log_softmax(logits / temperature, dim=-1)  # (..., n_bins)
    chosen = log_dist.gather(-1, bins.unsqueeze(-1)).squeeze(-1)
    entropy = -(log_dist.exp() * log_dist).sum(-1)
    return chosen, entropy


def sample_categorical(probs: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """One draw per row of (..., n) probabilities -> (...) int64, by inverting the row's CDF.

    One uniform number per draw: over 10x faster than torch.multinomial on rollout batches
    (thousands of 256-bin rows), where sampling was the largest part of inference.
    """
    cdf = probs.cumsum(-1)  # (..., n)
    u = torch.rand(probs.shape[:-1] + (1,), generator=generator, dtype=cdf.dtype, device=cdf.device)  # (..., 1)
    u = u * cdf[..., -1:]  # scaled to the row's total, which rounding keeps from being exactly 1
    # the first bin whose CDF exceeds u: bins of zero probability are never picked
    return torch.searchsorted(cdf, u, right=True).squeeze(-1).clamp_max(probs.shape[-1] - 1)


@dataclass
class VLAPolicy:
    model: TinyVLA
    actions: ActionTokenizer
    state_mean: np.ndarray  # (S,)
    state_std: np.ndarray  # (S,)
    dataset_stats: dict

    @property
    def cfg(self) -> TinyVLAConfig:
        return self.model.cfg

    # --- inputs ----------------------------------------------------------------------
    def prepare_arrays(self, images: np.ndarray, states: np.ndarray, instructions: list[str]) -> PolicyInputs:
        """images (B, H, W, 3) uint8, states (B, S), texts -> PolicyInputs."""
        norm_states = (np.asarray(states, dtype=np.float32) - self.state_mean) / (self.state_std + STATE_EPS)
        return PolicyInputs(
            images=torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).contiguous(),
            states=torch.from_numpy(norm_states.astype(np.float32)),
            instruction_ids=torch.from_numpy(encode_instructions(instructions, self.cfg.max_instruction_bytes)),
        )

    def prepare(self, observations: list[Obs]) -> PolicyInputs:
        images = np.stack([o.images[self.cfg.camera] for o in observations])
        states = np.stack([o.proprio for o in observations])
        return self.prepare_arrays(images, states, [o.instruction for o in observations])

    # --- action distribution ---------------------------------------------------------
    def _chunk(self, flat: torch.Tensor) -> torch.Tensor:
        return flat.view(-1, self.cfg.chunk_size, self.cfg.action_dim)  # (B, K, D)

    @torch.no_grad()
    def sample(self, inputs: PolicyInputs, temperature: float,
               generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Sample bins at `temperature` -> (bins, log_probs), both (B, K, D)."""
        log_dist = F.log_softmax(self.model(inputs) / temperature, dim=-1)  # (B, T, n_bins)
        bins = sample_categorical(log_dist.exp(), generator)  # (B, T)
        return self._chunk(bins), self._chunk(log_dist.gather(-1, bins.unsqueeze(-1)).squeeze(-1))

    @torch.no_grad()
    def greedy(self, inputs: PolicyInputs) -> torch.Tensor:
        """Most likely bins, (B, K, D)."""
        return self._chunk(self.model(inputs).argmax(dim=-1))

    def log_probs(self, inputs: PolicyInputs, bins: torch.Tensor, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
        """Differentiable log-probs and entropies of (B, K, D) bins, both (B, K, D)."""
        logits = self.model(inputs)
        log_probs, entropy = token_log_probs(logits, bins.flatten(1), temperature)
        return self._chunk(log_probs), self._chunk(entropy)

    def bins_to_actions(self, bins: torch.Tensor | np.ndarray) -> np.ndarray:
        """(B, K, D) bins -> (B, K, D) float32 env actions."""
        return self.actions.decode(np.asarray(bins))

    # --- persistence -----------------------------------------------------------------
    def save(self, directory: str | Path) -> None:
        """Write the checkpoint atomically."""
        with atomic_directory(directory) as staging:
            save_file({k: v.contiguous() for k, v in self.model.state_dict().items()}, staging / "model.safetensors")
            write_json_atomic(staging / "config.json", self.cfg.to_dict())
            write_json_atomic(staging / "tokenizer.json", {
                "instruction": {"type": "utf8-bytes-plus-one", "max_bytes": self.cfg.max_instruction_bytes, "pad": 0},
                "action": self.actions.to_dict()})
            write_json_atomic(staging / "norm_stats.json", {
                "state_mean": self.state_mean.tolist(), "state_std": self.state_std.tolist(),
                "dataset": self.dataset_stats})

    @classmethod
    def load(cls, directory: str | Path) -> "VLAPolicy":
        """Load a checkpoint directory (local, or a complete one at an fsspec URL)."""
        with local_directory(directory) as local:
            return cls._load_local(local, directory)

    @classmethod
    def _load_local(cls, directory: Path, name: str | Path) -> "VLAPolicy":
        files = {name: directory / name for name in ("config.json", "model.safetensors", "tokenizer.json", "norm_stats.json")}
        missing = [name for name, path in files.items() if not path.is_file()]
        if missing:
            raise CheckpointError(f"{name}: not a policy checkpoint, missing {missing}")
        raw_cfg, tokenizer, norm = (_read_checkpoint_json(files[f], name)
                                    for f in ("config.json", "tokenizer.json", "norm_stats.json"))
        if raw_cfg.get("architecture") != ARCHITECTURE:
            raise CheckpointError(f"{name}: architecture {raw_cfg.get('architecture')!r}, "
                                  f"this code loads {ARCHITECTURE!r}")
        try:
            weights = load_file(files["model.safetensors"])
        except (SafetensorError, OSError) as err:
            raise CheckpointError(f"{name}/model.safetensors: unreadable or truncated ({err}); "
                                  f"{restore_hint(name)}") from None
        try:
            model = TinyVLA(TinyVLAConfig(**raw_cfg))
            model.load_state_dict(weights, strict=True)
            return cls(model, ActionTokenizer.from_dict(tokenizer["action"]),
                       np.asarray(norm["state_mean"], dtype=np.float32),
                       np.asarray(norm["state_std"], dtype=np.float32), norm["dataset"])
        except (TypeError, RuntimeError) as err:
            raise CheckpointError(f"{name}: weights do not match config.json ({err})") from None
        except (KeyError, ValueError) as err:
            raise CheckpointError(f"{name}: tokenizer.json or norm_stats.json lacks or garbles {err}; "
                                  f"{restore_hint(name)}") from None


def restore_hint(path: str | Path) -> str:
    """What a user does about a damaged stage output."""
    return f"restore it with `dvc checkout {path}` or rerun the stage that writes it (`dvc repro`)"


def _read_checkpoint_json(path: Path, name: str | Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{name}/{path.name}: corrupt JSON ({err}); {restore_hint(name)}") from None


def new_policy(cfg: PolicyConfig, data: DemoDataset, seed: int) -> VLAPolicy:
    """A freshly initialized TinyVLA sized for `data` (first camera, its state and action dims)."""
    camera = next(iter(data.images))
    state_stats = data.stats["observation.state"]
    torch.manual_seed(seed)
    model = TinyVLA(TinyVLAConfig(
        image_size=data.images[camera].shape[1], image_width=data.images[camera].shape[2], state_dim=data.states.shape[1], action_dim=data.actions.shape[1],
        chunk_size=cfg.chunk_size, n_bins=cfg.n_bins, conv_channels=cfg.conv_channels, n_keypoints=cfg.n_keypoints,
        instruction_dim=cfg.instruction_dim, hidden_dim=cfg.hidden_dim,
        max_instruction_bytes=cfg.max_instruction_bytes, camera=camera, trunk=cfg.trunk,
        transformer_width=cfg.transformer_width, transformer_layers=cfg.transformer_layers,
        transformer_heads=cfg.transformer_heads))
    tokenizer = ActionTokenizer.from_stats(data.stats["action"], cfg.n_bins, tuple(cfg.unnormalized_action_dims))
    return VLAPolicy(model.eval(), tokenizer, np.asarray(state_stats["mean"], dtype=np.float32),
                     np.asarray(state_stats["std"], dtype=np.float32), data.stats)
