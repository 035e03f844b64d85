"""Training through a DeepSpeed engine; resumable training state."""

from svrl_core.training.checkpoint import (SegmentEnded, TrainingState, best_policy_dir, load_training_state,
                                           remove_training_state, save_training_state)
from svrl_core.training.engine import DeepSpeedTrainer

__all__ = ["DeepSpeedTrainer", "SegmentEnded", "TrainingState", "best_policy_dir", "load_training_state", "remove_training_state",
           "save_training_state"]
