"""Policy families by `policy.family`: no stage names a model class."""

from __future__ import annotations

from pathlib import Path

from svrl_core.config import PolicyConfig
from svrl_core.data import DemoDataset
from svrl_core.policies.openvla_oft.policy import OpenVLAOFTPolicy, new_oft_policy
from svrl_core.policies.policy import VLAPolicy
from svrl_core.policies.tiny_policy import TinyVLAPolicy, new_tiny_policy

FAMILIES: dict[str, type[VLAPolicy]] = {TinyVLAPolicy.family: TinyVLAPolicy, OpenVLAOFTPolicy.family: OpenVLAOFTPolicy}
_BUILDERS = {TinyVLAPolicy.family: new_tiny_policy, OpenVLAOFTPolicy.family: new_oft_policy}


def load_policy(directory: str | Path, cfg: PolicyConfig) -> VLAPolicy:
    """A stage's checkpoint, set up for this run (OpenVLA-OFT: dtype, device, gradient checkpointing)."""
    policy = VLAPolicy.load(directory)
    return policy.configure(cfg.oft) if isinstance(policy, OpenVLAOFTPolicy) else policy


def new_policy(cfg: PolicyConfig, data: DemoDataset, seed: int, adopt: bool = False) -> VLAPolicy:
    """The policy SFT starts from: `cfg.family`, sized for `data` (or loaded from cfg's checkpoint);
    `adopt` (sft.steps: 0): the brought checkpoint as the SFT output."""
    if adopt:
        if cfg.family != OpenVLAOFTPolicy.family:
            raise ValueError(f"sft.steps: 0 adopts policy.oft.checkpoint (policy.family openvla-oft); {cfg.family} "
                             "policies start from scratch: set sft.steps > 0")
        return new_oft_policy(cfg, data, seed, adopt=True)
    return _BUILDERS[cfg.family](cfg, data, seed)
