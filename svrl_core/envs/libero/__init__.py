"""LIBERO (robosuite + MuJoCo) as a VLAEnv: every suite and task, official init states."""

from svrl_core.envs.libero.env import LiberoEnv

__all__ = ["LiberoEnv"]
