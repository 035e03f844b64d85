"""Policies in action-bin space: the VLAPolicy contract, TinyVLA and OpenVLA-OFT families."""

from svrl_core.policies.policy import CheckpointError, PolicyInputs, VLAPolicy, token_log_probs
from svrl_core.policies.registry import FAMILIES, load_policy, new_policy
from svrl_core.policies.tiny_policy import TinyVLAPolicy
from svrl_core.policies.tiny_vla import TinyVLA, TinyVLAConfig
from svrl_core.policies.tokenizer import ActionTokenizer

__all__ = ["FAMILIES", "ActionTokenizer", "CheckpointError", "PolicyInputs", "TinyVLA", "TinyVLAConfig",
           "TinyVLAPolicy", "VLAPolicy", "load_policy", "new_policy", "token_log_probs"]
