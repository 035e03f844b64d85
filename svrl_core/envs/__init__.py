"""Environment families behind the VLAEnv protocol."""

from svrl_core.config import EnvConfig
from svrl_core.envs.base import Obs, StepResult, VLAEnv


def make_env(cfg: EnvConfig) -> VLAEnv:
    """Build the env family named in the config."""
    if cfg.family == "toy":
        from svrl_core.envs.toy import ToyReachEnv

        return ToyReachEnv(cfg)
    raise ValueError(f"env.family {cfg.family!r} is not known; valid: 'toy'")


__all__ = ["Obs", "StepResult", "VLAEnv", "make_env"]
