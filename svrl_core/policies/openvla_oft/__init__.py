"""OpenVLA-OFT written on transformers' Llama and timm-named ViT towers; see docs/openvla_oft.md."""
