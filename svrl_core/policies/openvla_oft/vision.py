"""OpenVLA-OFT's vision side: two ViT towers fused on the feature dim, and the projector.

The ViTs are written here with timm's parameter names (`patch_embed.proj`, `blocks.N.attn.qkv`,
`ls1.scale_factor`, ...), so an official checkpoint's `vision_backbone.*` weights load by name.
timm itself is not used: it needs torchvision, which has no CPU wheel for torch 2.13 here.
Features are the patch tokens after the second-to-last block (as OpenVLA), so the last
block, the final norm and SigLIP's pooling head are not built.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.checkpoint import checkpoint

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
SIGLIP_MEAN, SIGLIP_STD = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)


@dataclass(frozen=True)
class TowerSpec:
    """One ViT tower: its timm layout and its image normalization."""

    timm_id: str
    embed_dim: int
    depth: int  # blocks in the checkpoint; depth - 1 are built
    num_heads: int
    mlp_hidden: int
    patch_size: int
    img_size: int
    reg_tokens: int = 0
    class_token: bool = True
    layer_scale: bool = False
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    @property
    def n_patches(self) -> int:
        return (self.img_size // self.patch_size) ** 2

    def to_dict(self) -> dict:
        return asdict(self)


# The towers OpenVLA checkpoints use, by timm model id (timm 0.9's layouts; img_size comes from the config).
KNOWN_TOWERS = {
    "vit_large_patch14_reg4_dinov2.lvd142m": TowerSpec("vit_large_patch14_reg4_dinov2.lvd142m", 1024, 24, 16, 4096,
                                                       14, 224, reg_tokens=4, layer_scale=True),
    "vit_so400m_patch14_siglip_224": TowerSpec("vit_so400m_patch14_siglip_224", 1152, 27, 16, 4304, 14, 224,
                                               class_token=False, mean=SIGLIP_MEAN, std=SIGLIP_STD),
}


def known_tower(timm_id: str, img_size: int) -> TowerSpec:
    if timm_id not in KNOWN_TOWERS:
        raise ValueError(f"unknown vision tower {timm_id!r}: svrl builds {sorted(KNOWN_TOWERS)}")
    return replace(KNOWN_TOWERS[timm_id], img_size=img_size)


class PatchEmbed(nn.Module):
    def __init__(self, spec: TowerSpec):
        super().__init__()
        self.proj = nn.Conv2d(3, spec.embed_dim, spec.patch_size, stride=spec.patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)  # (B, P, C)


class LayerScale(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.scale_factor = nn.Parameter(torch.full((dim,), 1e-5))  # OpenVLA's name for timm's `gamma`

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale_factor


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)  # (B, H, N, c/H)
        return self.proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, c))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(dim, hidden), nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, spec: TowerSpec):
        super().__init__()
        dim = spec.embed_dim
        self.norm1, self.norm2 = nn.LayerNorm(dim, eps=1e-6), nn.LayerNorm(dim, eps=1e-6)
        self.attn, self.mlp = Attention(dim, spec.num_heads), Mlp(dim, spec.mlp_hidden)
        self.ls1 = LayerScale(dim) if spec.layer_scale else nn.Identity()
        self.ls2 = LayerScale(dim) if spec.layer_scale else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.ls1(self.attn(self.norm1(x)))
        return x + self.ls2(self.mlp(self.norm2(x)))


class ViTFeaturizer(nn.Module):
    """Patch tokens after block depth - 2: (B, 3, S, S) normalized pixels -> (B, P, C)."""

    def __init__(self, spec: TowerSpec):
        super().__init__()
        self.spec = spec
        self.patch_embed = PatchEmbed(spec)
        # position embeddings cover the patches only (DINOv2 `no_embed_class`, SigLIP has no prefix)
        self.pos_embed = nn.Parameter(torch.randn(1, spec.n_patches, spec.embed_dim) * 0.02)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, spec.embed_dim)) if spec.class_token else None
        self.reg_token = nn.Parameter(torch.zeros(1, spec.reg_tokens, spec.embed_dim)) if spec.reg_tokens else None
        self.blocks = nn.ModuleList(Block(spec) for _ in range(spec.depth - 1))
        self.gradient_checkpointing = False

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(pixels) + self.pos_embed  # (B, P, C)
        prefix = [t.expand(x.shape[0], -1, -1) for t in (self.cls_token, self.reg_token) if t is not None]
        x = torch.cat([*prefix, x], dim=1)  # (B, prefix + P, C)
        for block in self.blocks:
            x = checkpoint(block, x, use_reentrant=False) if self.gradient_checkpointing and self.training else block(x)
        return x[:, x.shape[1] - self.spec.n_patches:]


class FusedVisionBackbone(nn.Module):
    """Both towers on the same image, features concatenated: (B, 3, H, W) uint8 -> (B, P, C1 + C2)."""

    def __init__(self, towers: tuple[TowerSpec, TowerSpec], center_crop: float):
        super().__init__()
        if towers[0].n_patches != towers[1].n_patches:
            raise ValueError(f"fused towers need equal patch grids, got {towers[0].n_patches} and {towers[1].n_patches}")
        self.featurizer, self.fused_featurizer = ViTFeaturizer(towers[0]), ViTFeaturizer(towers[1])
        self.center_crop = center_crop
        for name, spec in (("0", towers[0]), ("1", towers[1])):
            self.register_buffer(f"mean{name}", torch.tensor(spec.mean).view(1, 3, 1, 1), persistent=False)
            self.register_buffer(f"std{name}", torch.tensor(spec.std).view(1, 3, 1, 1), persistent=False)

    @property
    def embed_dim(self) -> int:
        return self.featurizer.spec.embed_dim + self.fused_featurizer.spec.embed_dim

    def pixels(self, images: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """(B, 3, H, W) uint8 -> (B, 3, S, S) in [0, 1] at the towers' size, centre-cropped as OFT evaluates."""
        x = images.to(dtype) / 255.0
        size = self.featurizer.spec.img_size
        if self.center_crop < 1.0:  # keep `center_crop` of the area, then back to full size
            h, w = x.shape[-2:]
            ch, cw = round(h * self.center_crop ** 0.5), round(w * self.center_crop ** 0.5)
            top, left = (h - ch) // 2, (w - cw) // 2
            x = x[..., top:top + ch, left:left + cw]
        if x.shape[-2:] != (size, size):
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        return x

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.pixels(images, self.featurizer.pos_embed.dtype)  # the weights' dtype (DeepSpeed casts only those)
        first = self.featurizer((x - self.mean0.to(x.dtype)) / self.std0.to(x.dtype))
        second = self.fused_featurizer((x - self.mean1.to(x.dtype)) / self.std1.to(x.dtype))
        return torch.cat([first, second], dim=2)


class FusedProjector(nn.Module):
    """Prismatic's fused-backbone MLP: vision dim -> 4 x vision dim -> LLM dim -> LLM dim."""

    def __init__(self, vision_dim: int, llm_dim: int):
        super().__init__()
        self.fc1 = nn.Linear(vision_dim, 4 * vision_dim)
        self.fc2 = nn.Linear(4 * vision_dim, llm_dim)
        self.fc3 = nn.Linear(llm_dim, llm_dim)

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        return self.fc3(F.gelu(self.fc2(F.gelu(self.fc1(patches)))))


class ProprioProjector(nn.Module):
    """OFT's proprio token: normalized proprio -> one LLM embedding."""

    def __init__(self, proprio_dim: int, llm_dim: int):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(proprio_dim, llm_dim), nn.Linear(llm_dim, llm_dim)

    def forward(self, proprio: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(proprio)))
