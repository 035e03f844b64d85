"""Reading an OpenVLA / OpenVLA-OFT checkpoint's weights by name, and picking its statistics.

Released OpenVLA-OFT directories keep components beside the VLA as `<component>--<step>_checkpoint.pt`
(DDP state dicts, `module.`-prefixed): the proprio projector (read when the run uses proprio), and
for OFT's LIBERO checkpoints a continuous action head (L1 regression or diffusion), which svrl
does not run: such a checkpoint's action tokens were never trained, so it can be fine-tuned
(SFT learns the token head from the LM rows) but not evaluated or trained with RL as it is.
Everything used and skipped is logged.
"""

from __future__ import annotations

import logging
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
PROPRIO_PROJECTOR, CONTINUOUS_HEADS = "proprio_projector", ("action_head", "noisy_action_projector")
NOT_READ = {"lora_adapter": "a LoRA adapter: the safetensors hold the merged weights", ".py": "remote code, never run"}

log = logging.getLogger("svrl")


class ContinuousHeadError(CheckpointError):
    """A checkpoint whose actions come from a continuous head: usable as an SFT start only."""


def companion_files(directory: Path, name: str | Path) -> dict[str, Path]:
    """OFT's `<component>--<step>_checkpoint.pt` files by component; several of one component are refused."""
    found: dict[str, list[Path]] = {}
    for path in sorted(directory.glob("*--*checkpoint.pt")):
        found.setdefault(path.name.split("--")[0], []).append(path)
    several = {component: [p.name for p in paths] for component, paths in found.items() if len(paths) > 1}
    if several:
        raise CheckpointError(f"{name}: several files of one component {several}: keep the step you want")
    return {component: paths[0] for component, paths in found.items()}


def refuse_continuous_head(directory: Path, name: str | Path) -> None:
    """A checkpoint that acts through a continuous head cannot be evaluated or trained with RL as it is."""
    heads = [path.name for component, path in companion_files(directory, name).items() if component in CONTINUOUS_HEADS]
    if heads:
        raise ContinuousHeadError(
            f"{name}: its actions come from a continuous action head ({', '.join(heads)}: OpenVLA-OFT's L1 "
            "regression or diffusion), which svrl does not run; its action tokens were never trained, so decoding "
            "them would act at random. Fine-tune it first (sft.steps > 0: SFT learns the token head from the LM "
            "rows), or bring a discrete-token checkpoint (SimpleVLA-RL's SFT checkpoints are) for evaluation and RL")


def read_weights(directory: Path, name: str | Path, proprio: bool) -> dict[str, torch.Tensor]:
    """Every tensor the model uses: single or sharded safetensors, plus OFT's proprio projector file when
    `proprio`; logs what it read and what it skipped, and why."""
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
    used, skipped = [f"{len(shards)} safetensors file(s)"], []
    for component, path in companion_files(directory, name).items():
        if component == PROPRIO_PROJECTOR and proprio:
            state = torch.load(path, map_location="cpu", weights_only=True)  # tensors only: no code can run
            weights.update({f"{PROPRIO_PROJECTOR}.{k.removeprefix('module.')}": v for k, v in state.items()})
            used.append(path.name)
        elif component == PROPRIO_PROJECTOR:
            skipped.append(f"{path.name} (policy.oft.use_proprio is false)")
        else:
            skipped.append(f"{path.name} ({'a continuous action head' if component in CONTINUOUS_HEADS else 'unknown'}"
                           ": svrl decodes action tokens)")
    skipped += [f"{path.name} ({why})" for path in sorted(directory.iterdir())
                for suffix, why in NOT_READ.items() if path.name.endswith(suffix)]
    log.info("%s: read %s; skipped %s", name, ", ".join(used), ", ".join(skipped) or "nothing")
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
    """The dataset whose statistics the checkpoint acts with: `wanted` (or `wanted`_no_noops, as OpenVLA-OFT's
    LIBERO evaluation resolves a suite name), or the only one there is."""
    if wanted is not None and wanted not in stats and f"{wanted}_no_noops" in stats:
        wanted = f"{wanted}_no_noops"
    if wanted is not None and wanted not in stats:
        raise CheckpointError(f"{name}: no dataset statistics {wanted!r}; it has {sorted(stats)}")
    if wanted is None and len(stats) != 1:
        raise CheckpointError(f"{name}: dataset statistics for {sorted(stats)}: set policy.oft.unnorm_key to the "
                              "one this checkpoint should act with")
    return wanted or next(iter(stats))
