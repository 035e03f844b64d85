"""TinyVLA: a small vision-language-action network trained from scratch on CPU.

image + coordinate channels -> convs modulated by the instruction (FiLM) -> spatial-softmax
keypoints; a fusion trunk (trunks.py) turns keypoints, instruction and proprio into the
logits of all K x D action-bin tokens of a chunk in one forward pass (OFT-style parallel
decoding).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.nn import functional as F

from svrl_core.policies.policy import PolicyInputs
from svrl_core.policies.text import PAD, VOCAB_SIZE
from svrl_core.policies.trunks import MlpTrunk, OftTransformerTrunk

ARCHITECTURE = "tiny-vla-film-keypoints-v2"
TRUNKS = ("mlp", "oft-transformer")


@dataclass(frozen=True)
class TinyVLAConfig:
    image_size: int  # height
    state_dim: int
    action_dim: int
    chunk_size: int
    n_bins: int
    conv_channels: int
    n_keypoints: int
    instruction_dim: int
    hidden_dim: int
    max_instruction_bytes: int
    camera: str = "main"
    trunk: str = "mlp"
    transformer_width: int = 64
    transformer_layers: int = 2
    transformer_heads: int = 4
    keypoint_gain: float = 1.0
    architecture: str = ARCHITECTURE
    image_width: int | None = None  # None: square images

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def image_shape(self) -> tuple[int, int]:
        """(H, W) of the camera images the policy was trained on."""
        return self.image_size, self.image_width or self.image_size

    @property
    def n_action_tokens(self) -> int:
        return self.chunk_size * self.action_dim


class InstructionEncoder(nn.Module):
    """Byte embeddings -> 1-D conv -> masked max-pool."""

    def __init__(self, dim: int):
        super().__init__()
        self.embed = nn.Embedding(VOCAB_SIZE, dim, padding_idx=PAD)
        self.conv = nn.Conv1d(dim, dim, kernel_size=3, padding=1)
        self.out = nn.Linear(dim, dim)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.conv(self.embed(ids).transpose(1, 2)))  # (B, E, L)
        h = h.masked_fill((ids == PAD).unsqueeze(1), float("-inf")).amax(dim=2)  # (B, E)
        return self.out(torch.nan_to_num(h, neginf=0.0))


def coordinate_channels(batch: int, height: int, width: int, like: torch.Tensor) -> torch.Tensor:
    ys = torch.linspace(-1, 1, height, dtype=like.dtype, device=like.device)
    xs = torch.linspace(-1, 1, width, dtype=like.dtype, device=like.device)
    grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")  # (H, W)
    return torch.stack([grid_x, grid_y]).expand(batch, 2, height, width)


def spatial_softmax(features: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) maps -> (B, C, 2) expected (x, y) of each map's softmax."""
    b, c, h, w = features.shape
    weights = features.flatten(2).softmax(dim=-1).view(b, c, h, w)
    coords = coordinate_channels(1, h, w, features)[0]  # (2, H, W)
    return torch.einsum("bchw,khw->bck", weights, coords)


class VisionEncoder(nn.Module):
    """Instruction-conditioned convs keeping space: coordinate channels in, keypoints out."""

    def __init__(self, channels: int, n_keypoints: int, instruction_dim: int):
        super().__init__()
        self.conv1 = nn.Conv2d(3 + 2, channels, 3, stride=2, padding=1)  # half resolution: 4x cheaper
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)
        self.keypoints = nn.Conv2d(channels, n_keypoints, 1)
        self.film = nn.Linear(instruction_dim, 4 * channels)

    def forward(self, images: torch.Tensor, instruction: torch.Tensor) -> torch.Tensor:
        x = images.to(instruction.dtype) / 255.0 - 0.5  # (B, 3, H, W), in the weights' dtype (fp32 or bf16)
        x = torch.cat([x, coordinate_channels(x.shape[0], x.shape[2], x.shape[3], x)], dim=1)
        g1, b1, g2, b2 = self.film(instruction)[:, :, None, None].chunk(4, dim=1)  # (B, C, 1, 1) each
        h = F.relu(self.conv1(x) * (1 + g1) + b1)
        h = F.relu(self.conv2(h) * (1 + g2) + b2)
        return spatial_softmax(self.keypoints(h)).flatten(1)  # (B, 2 * n_keypoints)


class TinyVLA(nn.Module):
    def __init__(self, cfg: TinyVLAConfig):
        super().__init__()
        self.cfg = cfg
        self.instruction = InstructionEncoder(cfg.instruction_dim)
        self.vision = VisionEncoder(cfg.conv_channels, cfg.n_keypoints, cfg.instruction_dim)
        if cfg.trunk == "mlp":
            self.trunk = MlpTrunk(cfg.n_keypoints, cfg.instruction_dim, cfg.state_dim, cfg.hidden_dim,
                                  cfg.n_action_tokens, cfg.n_bins)
        elif cfg.trunk == "oft-transformer":
            self.trunk = OftTransformerTrunk(cfg.n_keypoints, cfg.state_dim, cfg.transformer_width,
                                             cfg.transformer_layers, cfg.transformer_heads, cfg.n_action_tokens,
                                             cfg.n_bins, cfg.max_instruction_bytes)
        else:
            raise ValueError(f"unknown trunk {cfg.trunk!r}; valid: {TRUNKS}")

    def forward(self, inputs: PolicyInputs) -> torch.Tensor:
        """-> (B, K * D, n_bins) float32 action-bin logits."""
        text = self.instruction(inputs.instruction_ids)  # (B, E)
        keypoints = self.vision(inputs.images, text).unflatten(1, (-1, 2))  # (B, n_keypoints, 2)
        keypoints = keypoints * self.cfg.keypoint_gain
        return self.trunk(keypoints, text, inputs.instruction_ids, inputs.states.to(text.dtype)).float()
