"""Training DSpark drafters: the parallel teacher-forced forward, the loss, and the Trainer around them."""

from .data import collate_batch, load_rows, prepare_data, read_prompts
from .forward import sample_anchors, training_forward
from .losses import dspark_loss, position_weights
from .trainer import DSparkTrainer, DSparkTrainingModel, initial_drafter, train_drafter

__all__ = [
    "DSparkTrainer",
    "DSparkTrainingModel",
    "collate_batch",
    "dspark_loss",
    "initial_drafter",
    "load_rows",
    "position_weights",
    "prepare_data",
    "read_prompts",
    "sample_anchors",
    "train_drafter",
    "training_forward",
]
