"""Reading an OpenVLA / OpenVLA-OFT checkpoint's weights by name, and picking its statistics."""

from __future__ import annotations

import re
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from svrl_core.policies.openvla_oft.model import OpenVLAOFT
from svrl_core.policies.policy import CheckpointError, read_checkpoint_json, restore_hint

STATS_FILE = "dataset_statistics.json"
WEIGHTS_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
# Checkpoint weights the forward pass never uses: each tower's last block (features come from
# the one before), the towers' final norms and SigLIP's attention-pooling head.
UNUSED = re.compile(r"vision_backbone\.(featurizer|fused_featurizer)\.(norm|fc_norm|head|attn_pool)\b")


def read_weights(directory: Path, name: str | Path) -> dict[str, torch.Tensor]:
    """Every tensor of the checkpoint: single or sharded safetensors, plus OFT's proprio projector file."""
    if (directory / INDEX_FILE).is_file():
        shards = sorted(set(read_checkpoint_json(directory / INDEX_FILE, name)["weight_map"].values()))
    elif (directory / WEIGHTS_FILE).is_file():
        shards = [WEIGHTS_FILE]
    else:
        raise CheckpointError(f"{name}: no {WEIGHTS_FILE} or {INDEX_FILE}")
    weights: dict[str, torch.Tensor] = {}
    for shard in shards:
        try:
            weights.update(load_file(directory / shard))
        except (SafetensorError, OSError) as err:
            raise CheckpointError(f"{name}/{shard}: unreadable or truncated ({err}); {restore_hint(name)}") from None
    for extra in sorted(directory.glob("proprio_projector--*.pt")):  # OFT keeps it beside the VLA
        state = torch.load(extra, map_location="cpu", weights_only=True)
        weights.update({"proprio_projector." + k.removeprefix("module."): v for k, v in state.items()})
    return weights


def load_matching_weights(model: OpenVLAOFT, weights: dict[str, torch.Tensor], name: str | Path) -> None:
    """Load by OpenVLA's parameter names; refuse (listing them) missing or unexpected keys."""
    weights = {k.replace(".gamma", ".scale_factor"): v for k, v in weights.items()}  # timm's own LayerScale name
    for prefix, tower in (("featurizer", model.vision_backbone.featurizer),
                          ("fused_featurizer", model.vision_backbone.fused_featurizer)):
        last = f"vision_backbone.{prefix}.blocks.{tower.spec.depth - 1}."
        weights = {k: v for k, v in weights.items() if not k.startswith(last)}
    weights = {k: v for k, v in weights.items() if not UNUSED.match(k)}
    expected = model.state_dict()
    missing = sorted(set(expected) - set(weights))
    unexpected = sorted(set(weights) - set(expected))
    wrong_shape = sorted(k for k in set(expected) & set(weights) if expected[k].shape != weights[k].shape)
    if missing or unexpected or wrong_shape:
        def few(keys: list[str]) -> str:
            return f"{len(keys)} {keys[:8]}{' ...' if len(keys) > 8 else ''}"
        raise CheckpointError(f"{name}: weights do not match the OpenVLA-OFT layout of config.json: missing "
                              f"{few(missing)}, unexpected {few(unexpected)}, wrong shape {few(wrong_shape)}")
    model.load_state_dict(weights, strict=True)


def pick_unnorm_key(stats: dict, wanted: str | None, name: str | Path) -> str:
    if wanted is not None and wanted not in stats:
        raise CheckpointError(f"{name}: no dataset statistics {wanted!r}; it has {sorted(stats)}")
    if wanted is None and len(stats) != 1:
        raise CheckpointError(f"{name}: dataset statistics for {sorted(stats)}: set policy.oft.unnorm_key to one")
    return wanted or next(iter(stats))
