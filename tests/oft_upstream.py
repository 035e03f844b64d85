"""OpenVLA-OFT checkpoints as upstream releases them, named from upstream's own parameter list.

The names and shapes below are facts about the released checkpoints (e.g.
moojink/openvla-7b-oft-finetuned-libero-10's model.safetensors.index.json: 982 tensors,
total_size 15,082,474,368 bytes in bf16), derived from upstream's model code: prismatic's
OpenVLAForActionPrediction (`vision_backbone.featurizer` = timm's DINOv2 ViT-L/14 with 4
registers, `vision_backbone.fused_featurizer` = SigLIP so400m/14 with its attention-pool head,
`projector.fc1..3`, `language_model.*` = Llama-2's HF names, LayerScale as `ls*.scale_factor`),
and OFT's companion files (`<component>--<step>_checkpoint.pt`, DDP `module.` prefixes).
They are written here independently of svrl's modules, so a naming drift in svrl shows.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file


@dataclass(frozen=True)
class Tower:
    dim: int
    depth: int
    mlp: int
    patch: int
    image: int
    registers: int = 0
    class_token: bool = True
    layer_scale: bool = False
    attention_pool: bool = False


@dataclass(frozen=True)
class Layout:
    dino: Tower
    siglip: Tower
    hidden: int
    intermediate: int
    layers: int
    vocab: int  # padded


RELEASED_7B = Layout(Tower(1024, 24, 4096, 14, 224, registers=4, layer_scale=True),
                     Tower(1152, 27, 4304, 14, 224, class_token=False, attention_pool=True),
                     hidden=4096, intermediate=11008, layers=32, vocab=32064)
RELEASED_7B_TENSORS, RELEASED_7B_PARAMETERS = 982, 15_082_474_368 // 2

# The released timm ids at a tiny size (svrl's TowerSpec arguments: dim, depth, heads, mlp, patch, image),
# and the matching release layout: a byte tokenizer with 256 action bins, a 2-layer Llama.
TINY_TOWER_SPECS = {"vit_large_patch14_reg4_dinov2.lvd142m": ((32, 3, 2, 64, 8, 32), {"reg_tokens": 4, "layer_scale": True}),
                    "vit_so400m_patch14_siglip_224": ((48, 3, 2, 96, 8, 32), {"class_token": False, "mean": (0.5,) * 3,
                                                                                "std": (0.5,) * 3})}
TINY_TEXT_VOCAB = 260 + 256
TINY_RELEASE = Layout(Tower(32, 3, 64, 8, 32, registers=4, layer_scale=True),
                      Tower(48, 3, 96, 8, 32, class_token=False, attention_pool=True),
                      hidden=64, intermediate=128, layers=2, vocab=-(-(TINY_TEXT_VOCAB + 1) // 64) * 64)


def _linear(prefix: str, out: int, inp: int) -> dict[str, tuple[int, ...]]:
    return {f"{prefix}.weight": (out, inp), f"{prefix}.bias": (out,)}


def _norm(prefix: str, dim: int) -> dict[str, tuple[int, ...]]:
    return {f"{prefix}.weight": (dim,), f"{prefix}.bias": (dim,)}


def _vit(prefix: str, tower: Tower) -> dict[str, tuple[int, ...]]:
    d = tower.dim
    names = {f"{prefix}.patch_embed.proj.weight": (d, 3, tower.patch, tower.patch), f"{prefix}.patch_embed.proj.bias": (d,),
             f"{prefix}.pos_embed": (1, (tower.image // tower.patch) ** 2, d), **_norm(f"{prefix}.norm", d)}
    if tower.class_token:
        names[f"{prefix}.cls_token"] = (1, 1, d)
    if tower.registers:
        names[f"{prefix}.reg_token"] = (1, tower.registers, d)
    for n in range(tower.depth):
        block = f"{prefix}.blocks.{n}"
        names |= {**_norm(f"{block}.norm1", d), **_linear(f"{block}.attn.qkv", 3 * d, d),
                  **_linear(f"{block}.attn.proj", d, d), **_norm(f"{block}.norm2", d),
                  **_linear(f"{block}.mlp.fc1", tower.mlp, d), **_linear(f"{block}.mlp.fc2", d, tower.mlp)}
        if tower.layer_scale:
            names |= {f"{block}.ls1.scale_factor": (d,), f"{block}.ls2.scale_factor": (d,)}
    if tower.attention_pool:
        pool = f"{prefix}.attn_pool"
        names |= {f"{pool}.latent": (1, 1, d), **_linear(f"{pool}.q", d, d), **_linear(f"{pool}.kv", 2 * d, d),
                  **_linear(f"{pool}.proj", d, d), **_norm(f"{pool}.norm", d),
                  **_linear(f"{pool}.mlp.fc1", tower.mlp, d), **_linear(f"{pool}.mlp.fc2", d, tower.mlp)}
    return names


def released_names(layout: Layout) -> dict[str, tuple[int, ...]]:
    """model.safetensors.index.json's tensors (name -> shape) of an OpenVLA(-OFT) release at `layout`."""
    vision = layout.dino.dim + layout.siglip.dim
    names = {**_vit("vision_backbone.featurizer", layout.dino), **_vit("vision_backbone.fused_featurizer", layout.siglip),
             **_linear("projector.fc1", 4 * vision, vision), **_linear("projector.fc2", layout.hidden, 4 * vision),
             **_linear("projector.fc3", layout.hidden, layout.hidden),
             "language_model.model.embed_tokens.weight": (layout.vocab, layout.hidden),
             "language_model.lm_head.weight": (layout.vocab, layout.hidden),
             "language_model.model.norm.weight": (layout.hidden,)}
    h, m = layout.hidden, layout.intermediate
    for n in range(layout.layers):
        layer = f"language_model.model.layers.{n}"
        names |= {f"{layer}.self_attn.{p}_proj.weight": (h, h) for p in "qkvo"}
        names |= {f"{layer}.mlp.gate_proj.weight": (m, h), f"{layer}.mlp.up_proj.weight": (m, h),
                  f"{layer}.mlp.down_proj.weight": (h, m), f"{layer}.input_layernorm.weight": (h,),
                  f"{layer}.post_attention_layernorm.weight": (h,)}
    return names


def proprio_projector_names(layout: Layout, proprio_dim: int) -> dict[str, tuple[int, ...]]:
    """proprio_projector--<step>_checkpoint.pt: OFT's ProprioProjector, saved from its DDP wrapper."""
    return {f"module.{k}": v for k, v in {**_linear("fc1", layout.hidden, proprio_dim),
                                          **_linear("fc2", layout.hidden, layout.hidden)}.items()}


def action_head_names(layout: Layout, action_dim: int) -> dict[str, tuple[int, ...]]:
    """action_head--<step>_checkpoint.pt: OFT's L1RegressionActionHead (an MLPResNet of two blocks)."""
    h, wide = layout.hidden, layout.hidden * action_dim
    names = {**_norm("model.layer_norm1", wide), **_linear("model.fc1", h, wide), **_norm("model.layer_norm2", h),
             **_linear("model.fc2", action_dim, h)}
    for n in range(2):
        names |= {**_norm(f"model.mlp_resnet_blocks.{n}.ffn.0", h), **_linear(f"model.mlp_resnet_blocks.{n}.ffn.1", h, h)}
    return {f"module.{k}": v for k, v in names.items()}


def parameter_count(names: dict[str, tuple[int, ...]]) -> int:
    return sum(math.prod(shape) for shape in names.values())


def random_tensors(names: dict[str, tuple[int, ...]], seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {k: 0.02 * torch.randn(shape, generator=generator) for k, shape in sorted(names.items())}


def write_release(directory: Path, statistics: dict, tokenizer_json: str,
                  companions: dict[str, dict[str, tuple[int, ...]]] = {}, layout: Layout = TINY_RELEASE,
                  text_vocab: int = TINY_TEXT_VOCAB) -> None:
    """A checkpoint directory as the releases lay it out: official config.json (timm ids, Llama text_config,
    no svrl section), two shards with their index, dataset_statistics.json, tokenizer.json, companion
    `<component>--150000_checkpoint.pt` files, and the files svrl must not read (remote code, LoRA adapter)."""
    directory.mkdir(parents=True)
    tensors = random_tensors(released_names(layout))
    names = sorted(tensors)
    shards = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
    for shard, keys in shards.items():
        save_file({k: tensors[k] for k in keys}, directory / shard)
    (directory / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {"total_size": 2 * parameter_count(released_names(layout))},
         "weight_map": {k: shard for shard, keys in shards.items() for k in keys}}))
    text = {"model_type": "llama", "pad_token_id": text_vocab, "torch_dtype": "bfloat16", "vocab_size": layout.vocab,
            "hidden_size": layout.hidden, "intermediate_size": layout.intermediate,
            "num_hidden_layers": layout.layers, "num_attention_heads": 4, "num_key_value_heads": 4}
    (directory / "config.json").write_text(json.dumps({
        "model_type": "openvla", "architectures": ["OpenVLAForActionPrediction"], "use_fused_vision_backbone": True,
        "timm_model_ids": ["vit_large_patch14_reg4_dinov2.lvd142m", "vit_so400m_patch14_siglip_224"],
        "image_sizes": [layout.dino.image, layout.siglip.image], "llm_backbone_id": "llama2-7b-pure",
        "vision_backbone_id": "dinosiglip-vit-so-224px", "n_action_bins": 256, "pad_token_id": text_vocab,
        "pad_to_multiple_of": 64, "text_config": text, "norm_stats": statistics}))
    (directory / "dataset_statistics.json").write_text(json.dumps(statistics))
    (directory / "tokenizer.json").write_text(tokenizer_json)
    (directory / "modeling_prismatic.py").write_text("raise SystemExit('remote code must never run')\n")
    (directory / "lora_adapter").mkdir()
    for component, component_names in companions.items():
        torch.save(random_tensors(component_names, seed=1), directory / f"{component}--150000_checkpoint.pt")
