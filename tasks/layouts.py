"""The seed map evaluation and RL use: every layout, or (env.solvable_layouts_only) the expert's."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

from svrl_core.config import EnvConfig
from svrl_core.experts import recorder_for
from svrl_core.experts.layouts import EveryLayout, SolvableLayouts


@contextmanager
def solvable_layouts(env_cfg: EnvConfig) -> Iterator[SolvableLayouts | EveryLayout]:
    """A SolvableLayouts on a physics-only env of its own (no renderer), or EveryLayout when not filtering."""
    if not env_cfg.solvable_layouts_only:
        yield EveryLayout()
        return
    from svrl_core.envs.robotwin import RoboTwinEnv

    env = RoboTwinEnv(env_cfg, physics_only=True)
    try:
        yield SolvableLayouts(env, recorder_for(env_cfg.family))
    finally:
        env.close()
