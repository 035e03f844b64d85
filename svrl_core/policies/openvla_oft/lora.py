"""LoRA for OpenVLA-OFT through peft: adapters injected in place, merged into the weights on save.

Every linear layer of the towers, projector and Llama gets an adapter (OFT fine-tunes with
LoRA on all linear layers); the LM head does not, since only its action rows are read.
Checkpoints hold plain merged weights under OpenVLA's names, so they load anywhere; a run
that continues with LoRA starts fresh adapters (B = 0) on them, which computes the same.
"""

from __future__ import annotations

import torch
from peft import LoraConfig, inject_adapter_in_model
from peft.tuners.lora import LoraLayer
from torch import nn

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj",  # Llama
           "qkv", "proj", "fc1", "fc2", "fc3"]  # ViT blocks, projectors
ADAPTER = "default"


def add_lora(model: nn.Module, rank: int, alpha: float) -> None:
    """Inject rank-`rank` adapters into every target linear and train only them."""
    inject_adapter_in_model(LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=0.0, target_modules=TARGETS), model)
    for name, parameter in model.named_parameters():
        parameter.requires_grad_("lora_" in name)


def has_lora(model: nn.Module) -> bool:
    return any(isinstance(m, LoraLayer) for m in model.modules())


def merged_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The weights with every adapter merged (W + scale * B A), under the names without LoRA."""
    state = {k.replace(".base_layer.", "."): v for k, v in model.state_dict().items() if ".lora_" not in k}
    with torch.no_grad():
        for name, module in model.named_modules():
            if isinstance(module, LoraLayer):
                state[f"{name}.weight"] = state[f"{name}.weight"] + module.get_delta_weight(ADAPTER).to(
                    state[f"{name}.weight"].dtype)
    return state


def load_merged(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load plain (merged) weights into a model with adapters, which restart at B = 0."""
    with torch.no_grad():
        for name, module in model.named_modules():
            if isinstance(module, LoraLayer):
                module.reset_lora_parameters(ADAPTER, True)
    current = model.state_dict()
    names = {k.replace(".base_layer.", "."): k for k in current if ".lora_" not in k}
    adapters = {k: v for k, v in current.items() if ".lora_" in k}
    model.load_state_dict({**adapters, **{names[k]: v for k, v in state.items()}}, strict=True)
