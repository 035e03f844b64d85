"""Training through a DeepSpeed engine; resumable training state."""

from svrl_core.training.checkpoint import (TrainingState, load_training_state, remove_training_state,
                                           save_training_state)
from svrl_core.training.engine import DeepSpeedTrainer

__all__ = ["DeepSpeedTrainer", "TrainingState", "load_training_state", "remove_training_state",
           "save_training_state"]
