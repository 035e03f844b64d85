"""TinyVLAPolicy: TinyVLA plus its byte tokenizer, action bins and state normalization.

A checkpoint directory holds config.json, model.safetensors, tokenizer.json and
norm_stats.json; loading it gives bit-identical outputs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from svrl_core.config import PolicyConfig
from svrl_core.data import DemoDataset
from svrl_core.data.batches import chunk_moves
from svrl_core.data.stats import feature_stats
from svrl_core.io import atomic_directory, write_json_atomic
from svrl_core.policies.policy import (STATE_EPS, CheckpointError, PolicyInputs, VLAPolicy, read_checkpoint_json,
                                       restore_hint)
from svrl_core.policies.text import encode_instructions
from svrl_core.policies.tiny_vla import ARCHITECTURE, TinyVLA, TinyVLAConfig
from svrl_core.policies.tokenizer import ActionTokenizer

FILES = ("config.json", "model.safetensors", "tokenizer.json", "norm_stats.json")


@dataclass
class TinyVLAPolicy(VLAPolicy):
    family: ClassVar[str] = "tiny-vla"
    model: TinyVLA
    actions: ActionTokenizer
    state_mean: np.ndarray  # (S,)
    state_std: np.ndarray  # (S,)
    dataset_stats: dict

    @property
    def cfg(self) -> TinyVLAConfig:
        return self.model.cfg

    @property
    def cameras(self) -> tuple[str, ...]:
        return (self.cfg.camera,)

    @property
    def state_dim(self) -> int:
        return self.cfg.state_dim

    @property
    def image_shape(self) -> tuple[int, int]:
        return self.cfg.image_shape

    def architecture(self) -> dict:
        return self.cfg.to_dict()

    def bundle_preprocessing(self) -> dict:
        return {"state_normalization": "mean_std", "state_mean": self.state_mean.tolist(),
                "state_std": self.state_std.tolist(), "state_eps": STATE_EPS,
                "instruction_encoding": "utf-8 bytes + 1, zero padded",
                "max_instruction_bytes": self.cfg.max_instruction_bytes}

    def prepare_arrays(self, images: dict[str, np.ndarray], states: np.ndarray,
                       instructions: list[str]) -> PolicyInputs:
        norm_states = (np.asarray(states, dtype=np.float32) - self.state_mean) / (self.state_std + STATE_EPS)
        return PolicyInputs(
            images=torch.from_numpy(np.ascontiguousarray(images[self.cfg.camera])).permute(0, 3, 1, 2).contiguous(),
            states=torch.from_numpy(norm_states.astype(np.float32)),
            instruction_ids=torch.from_numpy(encode_instructions(instructions, self.cfg.max_instruction_bytes)),
        )

    def save(self, directory: str | Path) -> None:
        with atomic_directory(directory) as staging:
            save_file({k: v.contiguous() for k, v in self.model.state_dict().items()}, staging / "model.safetensors")
            write_json_atomic(staging / "config.json", self.cfg.to_dict())
            write_json_atomic(staging / "tokenizer.json", {
                "instruction": {"type": "utf8-bytes-plus-one", "max_bytes": self.cfg.max_instruction_bytes, "pad": 0},
                "action": self.actions.to_dict()})
            write_json_atomic(staging / "norm_stats.json", {
                "state_mean": self.state_mean.tolist(), "state_std": self.state_std.tolist(),
                "dataset": self.dataset_stats})

    @staticmethod
    def recognizes(config: dict) -> bool:
        return config.get("architecture") == ARCHITECTURE

    @classmethod
    def _load_local(cls, directory: Path, name: str | Path) -> "TinyVLAPolicy":
        files = {f: directory / f for f in FILES}
        missing = [f for f, path in files.items() if not path.is_file()]
        if missing:
            raise CheckpointError(f"{name}: not a policy checkpoint, missing {missing}")
        raw_cfg, tokenizer, norm = (read_checkpoint_json(files[f], name)
                                    for f in ("config.json", "tokenizer.json", "norm_stats.json"))
        if not cls.recognizes(raw_cfg):
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


def action_label_stats(data: DemoDataset, cfg: PolicyConfig) -> dict[str, list]:
    """The statistics the action bins span: the dataset's action stats, and for `relative_action_dims` those
    of the chunk actions' change from the chunk's first state."""
    if not cfg.relative_action_dims:
        return data.stats["action"]
    moves = feature_stats(chunk_moves(data, cfg.chunk_size))
    relative = np.isin(np.arange(data.actions.shape[1]), cfg.relative_action_dims)
    return {key: np.where(relative, moves[key], data.stats["action"][key]).tolist() for key in ("q01", "q99", "min", "max")}


def new_tiny_policy(cfg: PolicyConfig, data: DemoDataset, seed: int) -> TinyVLAPolicy:
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
        transformer_heads=cfg.transformer_heads, keypoint_gain=cfg.keypoint_gain))
    tokenizer = ActionTokenizer.from_stats(action_label_stats(data, cfg), cfg.n_bins,
                                           tuple(cfg.unnormalized_action_dims), bounds=cfg.action_bounds,
                                           binary_dims=tuple(cfg.binary_action_dims),
                                           relative_dims=tuple(cfg.relative_action_dims))
    return TinyVLAPolicy(model.eval(), tokenizer, np.asarray(state_stats["mean"], dtype=np.float32),
                         np.asarray(state_stats["std"], dtype=np.float32), data.stats)
