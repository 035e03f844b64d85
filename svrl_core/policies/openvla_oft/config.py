"""OftConfig: the OpenVLA-OFT layout at any size, read from and written as OpenVLA's config.json.

An official checkpoint's config.json names its towers by timm id and holds the Llama
`text_config`; svrl adds an `svrl` section (chunk, action dim, cameras, proprio, prompt
length) when it saves. Presets: `tiny` (CPU tests and runs) and `7b` (the paper's model).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from svrl_core.policies.openvla_oft.vision import IMAGENET_MEAN, IMAGENET_STD, SIGLIP_MEAN, SIGLIP_STD, TowerSpec, known_tower

ARCHITECTURE = "openvla-oft-discrete-v1"
PROMPT = "In: What action should the robot take to {instruction}?\nOut:"
LLAMA2_7B = {"hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32, "num_attention_heads": 32,
             "num_key_value_heads": 32, "max_position_embeddings": 2048, "rms_norm_eps": 1e-5,
             "rope_theta": 10000.0, "vocab_size": 32064, "bos_token_id": 1, "eos_token_id": 2,
             "pad_token_id": 32000}

NOT_LLAMA_KWARGS = {"model_type", "torch_dtype", "dtype", "architectures", "_name_or_path", "transformers_version"}


@dataclass(frozen=True)
class OftConfig:
    towers: tuple[TowerSpec, TowerSpec]
    text_config: dict  # LlamaConfig keyword arguments; vocab_size is the padded size
    text_vocab_size: int  # the tokenizer's vocabulary; action bins are its last n_bins ids
    chunk_size: int
    action_dim: int
    cameras: tuple[str, ...] = ("agentview",)
    proprio_dim: int = 0  # 0: no proprio token
    n_bins: int = 256
    max_prompt_tokens: int = 48  # prompts are padded to this many tokens (BOS and the trailing space included)
    center_crop: float = 1.0  # fraction of the image area kept before resizing (OFT's LIBERO eval: 0.9)
    input_image_shape: tuple[int, int] = (224, 224)  # (H, W) of the env images it was trained on
    conventions: str | None = None  # image / gripper preset (conventions.py); None: none recorded (an official
    # release or a model not yet configured): `configure` takes the run's policy.oft.conventions
    bos_token_id: int = 1
    stop_token_id: int = 2
    space_token_id: int | None = 29871  # appended to a prompt that does not end with it (OpenVLA)
    pad_token_id: int = 32000
    vision_backbone_id: str = "dinosiglip-vit-so-224px"
    architecture: str = field(default=ARCHITECTURE)

    @property
    def n_action_tokens(self) -> int:
        return self.chunk_size * self.action_dim

    @property
    def sequence_length(self) -> int:
        """Token ids per prompt: padded prompt, K x D action placeholders, stop."""
        return self.max_prompt_tokens + self.n_action_tokens + 1

    @property
    def image_size(self) -> int:
        return self.towers[0].img_size

    def to_openvla_config(self) -> dict:
        """config.json in OpenVLA's layout, plus the `svrl` section."""
        svrl = {k: v for k, v in asdict(self).items() if k not in ("text_config", "towers")}
        svrl["towers"] = [t.to_dict() for t in self.towers]
        return {"model_type": "openvla", "architectures": ["OpenVLAForActionPrediction"],
                "vision_backbone_id": self.vision_backbone_id, "llm_backbone_id": "llama2-7b-pure",
                "use_fused_vision_backbone": True, "timm_model_ids": [t.timm_id for t in self.towers],
                "image_sizes": [t.img_size for t in self.towers], "image_resize_strategy": "resize-naive",
                "text_config": {"model_type": "llama", **self.text_config}, "n_action_bins": self.n_bins,
                "pad_token_id": self.pad_token_id, "pad_to_multiple_of": 64, "svrl": svrl}

    @classmethod
    def from_openvla_config(cls, raw: dict, **overrides) -> "OftConfig":
        """From an official or svrl config.json; `overrides` fill what an official one lacks (chunk, ...)."""
        svrl = dict(raw.get("svrl", {}))
        towers = svrl.pop("towers", None)
        if towers is not None:
            specs = tuple(TowerSpec(**{**t, "mean": tuple(t["mean"]), "std": tuple(t["std"])}) for t in towers)
        else:
            if not raw.get("use_fused_vision_backbone", False) or len(raw.get("timm_model_ids", [])) != 2:
                raise ValueError("svrl loads fused DINOv2 + SigLIP OpenVLA checkpoints (use_fused_vision_backbone, "
                                 f"two timm_model_ids); this one has {raw.get('timm_model_ids')}")
            specs = tuple(known_tower(i, s) for i, s in zip(raw["timm_model_ids"], raw["image_sizes"]))
        # as OpenVLA's own code does: LlamaConfig(**text_config), transformers' defaults filling the rest
        text = {k: v for k, v in raw["text_config"].items() if k not in NOT_LLAMA_KWARGS}
        text_vocab = svrl.pop("text_vocab_size", raw.get("pad_token_id", 32000))
        values = {"text_vocab_size": text_vocab, "pad_token_id": raw.get("pad_token_id", text_vocab),
                  "n_bins": raw.get("n_action_bins", 256),
                  "vision_backbone_id": raw.get("vision_backbone_id", "dinosiglip-vit-so-224px"),
                  **{k: v for k, v in svrl.items() if k != "architecture"}, **overrides}
        values["cameras"] = tuple(values.get("cameras", ("agentview",)))
        values["input_image_shape"] = tuple(values.get("input_image_shape", (224, 224)))
        return cls(towers=specs, text_config=text, **values)


def oft_7b(chunk_size: int, action_dim: int, **kw) -> OftConfig:
    """The paper's layout: DINOv2-L/14 (reg4) + SigLIP-so400m/14 at 224 px, Llama-2 7B."""
    towers = (known_tower("vit_large_patch14_reg4_dinov2.lvd142m", 224), known_tower("vit_so400m_patch14_siglip_224", 224))
    return OftConfig(towers, dict(LLAMA2_7B), 32000, chunk_size, action_dim, **kw)


def oft_tiny(chunk_size: int, action_dim: int, text_vocab_size: int, image_size: int = 32, **kw) -> OftConfig:
    """The same layout scaled down for CPU: 2 x 2-block towers (8 px patches), a 2-layer Llama."""
    towers = (TowerSpec("tiny_dinov2_reg4", 32, 3, 2, 64, 8, image_size, reg_tokens=4, layer_scale=True,
                        mean=IMAGENET_MEAN, std=IMAGENET_STD),
              TowerSpec("tiny_siglip", 48, 3, 2, 96, 8, image_size, class_token=False, mean=SIGLIP_MEAN, std=SIGLIP_STD))
    padded = -(-(text_vocab_size + 1) // 64) * 64  # the pad id, then up to a multiple of 64 (as OpenVLA)
    text = {**LLAMA2_7B, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
            "num_key_value_heads": 4, "max_position_embeddings": 512, "vocab_size": padded,
            "pad_token_id": text_vocab_size}
    kw = {"pad_token_id": text_vocab_size, "vision_backbone_id": "svrl-tiny", **kw}
    return OftConfig(towers, text, text_vocab_size, chunk_size, action_dim, **kw)


__all__ = ["ARCHITECTURE", "PROMPT", "OftConfig", "oft_7b", "oft_tiny"]
