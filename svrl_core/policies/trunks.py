"""Fusion trunks: from (keypoints, instruction, proprio) to the logits of every action token.

- `MlpTrunk`: concatenate and map through an MLP (fast on CPU).
- `OftTransformerTrunk`: OpenVLA-OFT's layout, [visual tokens][instruction tokens][proprio
  token][K x D action placeholders] through a small Llama built from config, with
  bidirectional attention, each placeholder read out as one action token's bin logits.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import LlamaConfig, LlamaModel

from svrl_core.policies.text import PAD, VOCAB_SIZE


class MlpTrunk(nn.Module):
    def __init__(self, n_keypoints: int, instruction_dim: int, state_dim: int, hidden_dim: int,
                 n_action_tokens: int, n_bins: int):
        super().__init__()
        self.n_action_tokens, self.n_bins = n_action_tokens, n_bins
        self.net = nn.Sequential(
            nn.Linear(2 * n_keypoints + instruction_dim + state_dim, hidden_dim), nn.ReLU(),
            nn.Linear(hidden_dim, hidden_dim), nn.ReLU(),
            nn.Linear(hidden_dim, n_action_tokens * n_bins),
        )

    def forward(self, keypoints: torch.Tensor, text: torch.Tensor, instruction_ids: torch.Tensor,
                states: torch.Tensor) -> torch.Tensor:
        fused = torch.cat([keypoints.flatten(1), text, states], dim=1)  # (B, F)
        return self.net(fused).view(-1, self.n_action_tokens, self.n_bins)


class OftTransformerTrunk(nn.Module):
    def __init__(self, n_keypoints: int, state_dim: int, width: int, layers: int, heads: int,
                 n_action_tokens: int, n_bins: int, max_instruction_bytes: int):
        super().__init__()
        self.n_action_tokens = n_action_tokens
        self.keypoint_in = nn.Linear(2, width)
        self.keypoint_id = nn.Parameter(torch.randn(n_keypoints, width) * 0.02)
        self.byte_embed = nn.Embedding(VOCAB_SIZE, width, padding_idx=PAD)
        self.proprio_in = nn.Linear(state_dim, width)
        self.placeholders = nn.Parameter(torch.randn(n_action_tokens, width) * 0.02)
        self.llama = LlamaModel(LlamaConfig(
            vocab_size=1, hidden_size=width, intermediate_size=2 * width, num_hidden_layers=layers,
            num_attention_heads=heads, num_key_value_heads=heads, bos_token_id=None, eos_token_id=None,
            max_position_embeddings=n_keypoints + max_instruction_bytes + 1 + n_action_tokens,
            attn_implementation="sdpa"))
        self.bins_out = nn.Linear(width, n_bins)

    def forward(self, keypoints: torch.Tensor, text: torch.Tensor, instruction_ids: torch.Tensor,
                states: torch.Tensor) -> torch.Tensor:
        b = states.shape[0]
        tokens = torch.cat([
            self.keypoint_in(keypoints) + self.keypoint_id,  # (B, n_keypoints, W)
            self.byte_embed(instruction_ids),  # (B, L, W)
            self.proprio_in(states)[:, None],  # (B, 1, W)
            self.placeholders.expand(b, -1, -1),  # (B, K * D, W)
        ], dim=1)
        valid = torch.ones(b, tokens.shape[1], dtype=torch.bool, device=tokens.device)
        valid[:, keypoints.shape[1]:keypoints.shape[1] + instruction_ids.shape[1]] = instruction_ids != PAD
        # bidirectional: every token sees every non-padding token (a 4-D mask is used as given)
        mask = valid[:, None, None, :].expand(b, 1, tokens.shape[1], tokens.shape[1])
        hidden = self.llama(inputs_embeds=tokens, attention_mask=mask).last_hidden_state
        return self.bins_out(hidden[:, -self.n_action_tokens:])  # (B, K * D, n_bins)
