"""Training through a DeepSpeed engine."""

from svrl_core.training.engine import DeepSpeedTrainer

__all__ = ["DeepSpeedTrainer"]
