"""Policies in action-bin space: tokenizer, TinyVLA, VLAPolicy."""

from svrl_core.policies.policy import CheckpointError, VLAPolicy, new_policy, token_log_probs
from svrl_core.policies.tiny_vla import PolicyInputs, TinyVLA, TinyVLAConfig
from svrl_core.policies.tokenizer import ActionTokenizer

__all__ = ["ActionTokenizer", "CheckpointError", "PolicyInputs", "TinyVLA", "TinyVLAConfig", "VLAPolicy",
           "new_policy", "token_log_probs"]
