"""OpenVLAOFTPolicy: OpenVLA-OFT behind the VLAPolicy contract, saved in OpenVLA's own layout.

A checkpoint directory is what OpenVLA / OpenVLA-OFT release: config.json, safetensors
(one file, or shards with model.safetensors.index.json), dataset_statistics.json and
tokenizer.json; OFT's `proprio_projector--*.pt` is read when the run uses proprio (see checkpoint.py
for the other companion files). svrl writes the same
layout (proprio projector inside the safetensors) plus an `svrl` section in config.json,
so its checkpoints load in the same way. Nothing is downloaded; no remote code runs.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from safetensors.torch import save_file

from svrl_core.config import ConfigError, OftPolicyConfig, PolicyConfig
from svrl_core.data import DemoDataset
from svrl_core.io import atomic_directory, write_json_atomic
from svrl_core.policies.openvla_oft.checkpoint import (STATS_FILE, WEIGHTS_FILE, load_matching_weights,
                                                       pick_unnorm_key, read_weights, refuse_continuous_head)
from svrl_core.policies.openvla_oft.config import ARCHITECTURE, PROMPT, OftConfig, oft_tiny
from svrl_core.policies.openvla_oft.conventions import (Conventions, action_tokenizer, check_settings, model_images,
                                                        preset)
from svrl_core.policies.openvla_oft.lora import add_lora, has_lora, load_merged, merged_state_dict
from svrl_core.policies.openvla_oft.model import OpenVLAOFT
from svrl_core.policies.openvla_oft.prompt import TOKENIZER_FILE, PromptEncoder, byte_tokenizer, load_tokenizer
from svrl_core.policies.policy import CheckpointError, PolicyInputs, VLAPolicy, read_checkpoint_json
from svrl_core.policies.tokenizer import ActionTokenizer

SVRL_UNNORM_KEY = "svrl"
log = logging.getLogger("svrl")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


@dataclass
class OpenVLAOFTPolicy(VLAPolicy):
    family: ClassVar[str] = "openvla-oft"
    model: OpenVLAOFT
    actions: ActionTokenizer
    prompts: PromptEncoder
    proprio_low: np.ndarray  # (S,) q01 of the proprio, mapped to -1
    proprio_high: np.ndarray  # (S,) q99, mapped to 1
    dataset_stats: dict  # dataset_statistics.json: {unnorm_key: {"action": ..., "proprio": ...}}

    def __post_init__(self) -> None:
        # env actions <-> bins under the checkpoint's gripper convention: SFT labels (actions.encode) and
        # executed actions (bins_to_actions -> actions.decode) both go through this one tokenizer
        self.actions = action_tokenizer(self.conventions, self.actions)

    @property
    def cfg(self) -> OftConfig:
        return self.model.cfg

    @property
    def conventions(self) -> Conventions:
        """The checkpoint's image and gripper conventions (`svrl` when it records none)."""
        return preset(self.cfg.conventions)

    @property
    def cameras(self) -> tuple[str, ...]:
        return self.cfg.cameras

    @property
    def state_dim(self) -> int:
        return len(self.proprio_low)

    @property
    def image_shape(self) -> tuple[int, int]:
        return self.cfg.input_image_shape

    def architecture(self) -> dict:
        return self.cfg.to_openvla_config()

    def bundle_preprocessing(self) -> dict:
        cfg = self.cfg
        return {"state_normalization": "bounds_q01_q99", "state_low": self.proprio_low.tolist(),
                "state_high": self.proprio_high.tolist(), "instruction_encoding": "openvla-prompt",
                "tokenizer_file": TOKENIZER_FILE, "prompt": PROMPT, "max_prompt_tokens": cfg.max_prompt_tokens,
                "bos_token_id": cfg.bos_token_id, "space_token_id": cfg.space_token_id, "pad_token_id": cfg.pad_token_id,
                "placeholder_token_id": self.prompts.placeholder, "stop_token_id": cfg.stop_token_id,
                "n_action_tokens": cfg.n_action_tokens, **self.conventions.bundle_preprocessing()}

    def prepare_arrays(self, images: dict[str, np.ndarray], states: np.ndarray,
                       instructions: list[str]) -> PolicyInputs:
        conventions = self.conventions  # upstream checkpoints: mirrored, JPEG + lanczos3 to 224; svrl: as given
        frames = [model_images(conventions, images[c]) for c in self.cameras]  # [(B, H, W, 3)]
        stacked = np.concatenate(frames, axis=-1)  # (B, H, W, 3 * cameras)
        span = np.where(self.proprio_high > self.proprio_low, self.proprio_high - self.proprio_low, 1.0)
        proprio = np.clip(2.0 * (np.asarray(states, np.float64) - self.proprio_low) / span - 1.0, -1.0, 1.0)
        return PolicyInputs(torch.from_numpy(np.ascontiguousarray(stacked)).permute(0, 3, 1, 2).contiguous(),
                            torch.from_numpy(proprio.astype(np.float32)),
                            torch.from_numpy(self.prompts.encode(instructions)))

    def configure(self, oft: OftPolicyConfig) -> "OpenVLAOFTPolicy":
        """Apply the run's LoRA, dtype, device and gradient checkpointing (not stored in checkpoints), and
        settle the conventions (stored): see `settle_conventions`."""
        self.settle_conventions(oft.conventions)
        if oft.lora_rank and not has_lora(self.model):
            add_lora(self.model, oft.lora_rank, oft.lora_alpha)
        self.model.to(dtype=DTYPES[oft.dtype], device=oft.device)
        if oft.gradient_checkpointing:
            self.model.gradient_checkpointing_enable()
        return self

    def settle_conventions(self, name: str) -> None:
        """Adopt the run's `policy.oft.conventions` if the checkpoint records none (an official release, a
        fresh model); refuse a different one than it records (it was trained under that one). Then check
        the policy's layout against them: a ConfigError for what would train wrongly, a logged warning for
        what differs from the released checkpoints."""
        recorded = self.cfg.conventions
        if recorded is not None and recorded != name:
            raise ConfigError(f"policy.oft.conventions: this checkpoint was trained with {recorded!r}, the run sets "
                              f"{name!r}: set policy.oft.conventions: {recorded}")
        if recorded is None:
            self.model.cfg = replace(self.cfg, conventions=name)
            self.prompts.cfg = self.model.cfg
            self.actions = action_tokenizer(self.conventions, self.actions)
        unnormalized = [d for d, normalized in enumerate(self.actions.normalize_mask) if not normalized]
        mismatches = check_settings(self.conventions, self.cameras, self.cfg.proprio_dim > 0, self.cfg.center_crop,
                                    unnormalized, self.action_dim, self.cfg.input_image_shape[1])
        errors = [m.text for m in mismatches if m.severity == "error"]
        if errors:
            raise ConfigError("; ".join(errors))
        for mismatch in mismatches:
            log.warning("%s", mismatch.text)

    # --- persistence -----------------------------------------------------------------
    def save(self, directory: str | Path) -> None:
        with atomic_directory(directory) as staging:
            state = merged_state_dict(self.model) if has_lora(self.model) else self.model.state_dict()
            save_file({k: v.detach().cpu().contiguous() for k, v in state.items()}, staging / WEIGHTS_FILE)
            write_json_atomic(staging / "config.json", self.cfg.to_openvla_config())
            write_json_atomic(staging / STATS_FILE, self.dataset_stats)
            self.prompts.tokenizer.save(str(staging / TOKENIZER_FILE))

    def load_weights_of(self, other: VLAPolicy) -> None:
        if has_lora(self.model):
            load_merged(self.model, other.model.state_dict())
        else:
            super().load_weights_of(other)

    @staticmethod
    def recognizes(config: dict) -> bool:
        return config.get("model_type") in ("openvla", "prismatic")

    @classmethod
    def _load_local(cls, directory: Path, name: str | Path) -> "OpenVLAOFTPolicy":
        return load_oft_checkpoint(directory, name)


def read_oft_model(directory: Path, name: str | Path, **overrides) -> tuple[OpenVLAOFT, PromptEncoder, dict]:
    """An OpenVLA / OpenVLA-OFT / svrl checkpoint directory's network, prompt encoder and config.json.

    `overrides` set what an official config.json does not say (chunk_size, action_dim, cameras,
    proprio_dim, ...)."""
    config = directory / "config.json"
    if not config.is_file():
        raise CheckpointError(f"{name}: not an OpenVLA checkpoint directory, missing ['config.json']")
    raw = read_checkpoint_json(config, name)
    if not OpenVLAOFTPolicy.recognizes(raw):
        raise CheckpointError(f"{name}: config.json has model_type {raw.get('model_type')!r}, not 'openvla'")
    svrl = raw.get("svrl", {})
    if not svrl and not {"chunk_size", "action_dim"} <= set(overrides):
        raise CheckpointError(f"{name}: an official OpenVLA checkpoint does not record the action chunk; "
                              "set policy.chunk_size and the env's action dim")
    if svrl.get("architecture", ARCHITECTURE) != ARCHITECTURE:
        raise CheckpointError(f"{name}: svrl architecture {svrl['architecture']!r}, this code loads {ARCHITECTURE!r}")
    try:
        tokenizer = load_tokenizer(directory)
    except Exception as err:  # noqa: BLE001 - tokenizers raises plain Exception for a corrupt file
        raise CheckpointError(f"{name}: {err}") from None
    if not svrl:  # OpenVLA appends the word-boundary token to each prompt: Llama's id 29871
        overrides.setdefault("space_token_id", tokenizer.token_to_id("\u2581"))
    try:
        cfg = OftConfig.from_openvla_config(raw, **overrides)
        model = OpenVLAOFT(cfg)
    except (KeyError, TypeError, ValueError) as err:
        raise CheckpointError(f"{name}: config.json does not describe a model svrl can build ({err})") from None
    load_matching_weights(model, read_weights(directory, name, proprio=cfg.proprio_dim > 0), name)
    return model.eval(), PromptEncoder(tokenizer, cfg), raw


def load_oft_checkpoint(directory: Path, name: str | Path, unnorm_key: str | None = None,
                        **overrides) -> OpenVLAOFTPolicy:
    """A checkpoint to act with as it is (evaluation, RL, or adopted by `sft.steps: 0`), with its own dataset
    statistics `unnorm_key` (needed when it has several). A checkpoint that acts through a continuous
    head is refused: its action tokens were never trained."""
    refuse_continuous_head(directory, name)
    model, prompts, raw = read_oft_model(directory, name, **overrides)
    try:
        stats = json.loads((directory / STATS_FILE).read_text()) if (directory / STATS_FILE).is_file() \
            else raw["norm_stats"]
    except (KeyError, ValueError) as err:
        raise CheckpointError(f"{name}: no readable {STATS_FILE} or config.json norm_stats ({err})") from None
    key = pick_unnorm_key(stats, unnorm_key or raw.get("svrl", {}).get("unnorm_key"), name)
    return policy_from_stats(model, prompts, stats, key)


def policy_from_stats(model: OpenVLAOFT, prompts: PromptEncoder, stats: dict, key: str) -> OpenVLAOFTPolicy:
    """Action bins (OpenVLA's binning) and proprio bounds from dataset_statistics[key]."""
    action = stats[key]["action"]
    mask = np.asarray(action.get("mask", [True] * len(action["q01"])), dtype=bool)
    actions = ActionTokenizer(np.asarray(action["q01"], np.float64), np.asarray(action["q99"], np.float64), mask,
                              model.cfg.n_bins, "openvla")
    proprio = stats[key].get("proprio", {"q01": [0.0] * model.cfg.proprio_dim, "q99": [0.0] * model.cfg.proprio_dim})
    if actions.action_dim != model.cfg.action_dim:
        raise CheckpointError(f"dataset statistics {key!r} are {actions.action_dim}-D actions, the model predicts "
                              f"{model.cfg.action_dim}-D")
    return OpenVLAOFTPolicy(model, actions, prompts, np.asarray(proprio["q01"], np.float64),
                            np.asarray(proprio["q99"], np.float64), {key: stats[key]})


def new_oft_policy(cfg: PolicyConfig, data: DemoDataset, seed: int, adopt: bool = False) -> OpenVLAOFTPolicy:
    """The SFT start: `policy.oft.checkpoint` if set (e.g. an OpenVLA release), else fresh at `policy.oft.size`.

    Fine-tuning acts with the demonstrations' statistics, whatever the checkpoint's (as OFT's fine-tuning
    does). `adopt` (sft.steps: 0) takes the checkpoint as the SFT output, acting with its own statistics."""
    oft = cfg.oft
    cameras = tuple(oft.cameras or [next(iter(data.images))])
    missing = [c for c in cameras if c not in data.images]
    if missing:
        raise ValueError(f"policy.oft.cameras {missing} are not in the demonstrations (they have {sorted(data.images)})")
    action_dim, proprio_dim = data.actions.shape[1], data.states.shape[1] if oft.use_proprio else 0
    shape = dict(chunk_size=cfg.chunk_size, action_dim=action_dim, cameras=cameras, proprio_dim=proprio_dim,
                 max_prompt_tokens=oft.max_prompt_tokens or (48 if oft.checkpoint else 160), center_crop=oft.center_crop,
                 input_image_shape=tuple(data.images[cameras[0]].shape[1:3]))
    stats = demo_statistics(data, cfg.unnormalized_action_dims)
    if adopt:
        if not oft.checkpoint:
            raise ValueError("sft.steps: 0 takes policy.oft.checkpoint as the SFT output: set it, or train (steps > 0)")
        policy = load_oft_checkpoint(Path(oft.checkpoint), oft.checkpoint, oft.unnorm_key, **shape)
    elif oft.checkpoint:
        model, prompts, _ = read_oft_model(Path(oft.checkpoint), oft.checkpoint, **shape)
        if oft.unnorm_key:
            log.info("fine-tuning acts with the demonstrations' statistics; policy.oft.unnorm_key %r applies to "
                     "a checkpoint adopted as it is (sft.steps: 0)", oft.unnorm_key)
        policy = policy_from_stats(model, prompts, stats, SVRL_UNNORM_KEY)
    else:
        torch.manual_seed(seed)
        tokenizer = byte_tokenizer(cfg.n_bins) if oft.size == "tiny" else None
        if tokenizer is None:
            raise ValueError("policy.oft.size: 7b starts from an OpenVLA checkpoint: set policy.oft.checkpoint")
        image_size = oft.image_size or data.images[cameras[0]].shape[1]
        model_cfg = oft_tiny(text_vocab_size=tokenizer.get_vocab_size(), image_size=image_size, n_bins=cfg.n_bins,
                             space_token_id=tokenizer.token_to_id("\u2581"), **shape)
        model = OpenVLAOFT(model_cfg).eval()
        policy = policy_from_stats(model, PromptEncoder(tokenizer, model_cfg), stats, SVRL_UNNORM_KEY)
    return policy.configure(oft)


def demo_statistics(data: DemoDataset, unnormalized_dims: list[int]) -> dict:
    """dataset_statistics.json of the demonstrations, in OpenVLA's format."""
    action = dict(data.stats["action"])
    action["mask"] = [i not in unnormalized_dims for i in range(data.actions.shape[1])]
    return {SVRL_UNNORM_KEY: {"action": action, "proprio": dict(data.stats["observation.state"]),
                              "num_trajectories": data.n_episodes}}


__all__ = ["OpenVLAOFTPolicy", "load_oft_checkpoint", "new_oft_policy"]
