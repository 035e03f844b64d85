"""OpenVLA-OFT in discrete-token mode: the logits of a whole action chunk from one bidirectional pass.

Sequence: [BOS] + projected patches of every camera (+ one proprio token) + the prompt +
K x D zeroed action placeholders + stop. Attention is bidirectional over every real token.
The hidden state just before each placeholder (the ordinary next-token shift) gives that
action token's logits over the last n_bins ids of the tokenizer's vocabulary; bin b is id
text_vocab_size - 1 - b (OpenVLA's order), so only those n_bins rows of the LM head are used.
Parameter names follow OpenVLA's checkpoints (`vision_backbone.*`, `projector.*`,
`language_model.*`, OFT's `proprio_projector.*`).
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM

from svrl_core.policies.openvla_oft.config import OftConfig
from svrl_core.policies.openvla_oft.vision import FusedProjector, FusedVisionBackbone, ProprioProjector
from svrl_core.policies.policy import PolicyInputs


class OpenVLAOFT(nn.Module):
    def __init__(self, cfg: OftConfig):
        super().__init__()
        self.cfg = cfg
        self.vision_backbone = FusedVisionBackbone(cfg.towers, cfg.center_crop)
        llm_config = LlamaConfig(**cfg.text_config)
        llm_config._attn_implementation = "sdpa"
        self.projector = FusedProjector(self.vision_backbone.embed_dim, llm_config.hidden_size)
        self.language_model = LlamaForCausalLM(llm_config)
        self.proprio_projector = ProprioProjector(cfg.proprio_dim, llm_config.hidden_size) if cfg.proprio_dim else None

    def gradient_checkpointing_enable(self) -> None:
        self.language_model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        for tower in (self.vision_backbone.featurizer, self.vision_backbone.fused_featurizer):
            tower.gradient_checkpointing = True

    def image_tokens(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3 * cameras, H, W) uint8 -> (B, cameras * P, E) projected patches, camera after camera."""
        b, c, h, w = images.shape
        patches = self.vision_backbone(images.reshape(b * c // 3, 3, h, w))  # (B * cameras, P, Cv)
        return self.projector(patches).reshape(b, -1, self.projector.fc3.out_features)

    def forward(self, inputs: PolicyInputs) -> torch.Tensor:
        """-> (B, K * D, n_bins) float32 action-bin logits, on the inputs' device (the network may sit on a GPU)."""
        home, device = inputs.states.device, self.projector.fc1.weight.device
        on_device = PolicyInputs(inputs.images.to(device), inputs.states.to(device), inputs.instruction_ids.to(device))
        return self._action_logits(on_device).to(home)

    def _action_logits(self, inputs: PolicyInputs) -> torch.Tensor:
        cfg, ids = self.cfg, inputs.instruction_ids  # (B, L), layout of prompt.py
        n_act = cfg.n_action_tokens
        text = self.language_model.get_input_embeddings()(ids)  # (B, L, E)
        is_action = torch.zeros(ids.shape[1], dtype=torch.bool, device=ids.device)
        is_action[-n_act - 1:-1] = True
        text = text.masked_fill(is_action[None, :, None], 0.0)  # placeholders carry no information
        prefix = [self.image_tokens(inputs.images)]  # [(B, P', E)]
        if self.proprio_projector is not None:
            prefix.append(self.proprio_projector(inputs.states.to(text.dtype)).unsqueeze(1))  # (B, 1, E)
        embeds = torch.cat([text[:, :1], *prefix, text[:, 1:]], dim=1)  # (B, S, E)
        real = torch.cat([torch.ones(ids.shape[0], embeds.shape[1] - ids.shape[1] + 1, dtype=torch.bool,
                                     device=ids.device), ids[:, 1:] != cfg.pad_token_id], dim=1)  # (B, S)
        positions = (real.long().cumsum(1) - 1).clamp(min=0)  # padding takes no position
        attend = real[:, None, None, :].expand(-1, 1, embeds.shape[1], -1)  # (B, 1, S, S): every real token
        hidden = self.language_model.model(inputs_embeds=embeds, attention_mask=attend,
                                           position_ids=positions).last_hidden_state  # (B, S, E)
        before_action = hidden[:, -n_act - 2:-2]  # (B, K * D, E)
        vocab = cfg.text_vocab_size
        head = self.language_model.lm_head.weight[vocab - cfg.n_bins:vocab].flip(0)  # (n_bins, E): row b = id vocab-1-b
        return (before_action @ head.T).float()
