"""The toy reach task: fast, image- and language-dependent."""

from svrl_core.envs.toy.reach import COLOURS, ToyReachEnv, instruction_for

__all__ = ["COLOURS", "ToyReachEnv", "instruction_for"]
