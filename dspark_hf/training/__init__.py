"""Training DSpark drafters: the parallel teacher-forced forward, the loss, and the Trainer around them."""

from .forward import sample_anchors, training_forward
from .losses import dspark_loss, position_weights
from .trainer import DSparkTrainer, DSparkTrainingModel, collate_batch

__all__ = [
    "DSparkTrainer",
    "DSparkTrainingModel",
    "collate_batch",
    "dspark_loss",
    "position_weights",
    "sample_anchors",
    "training_forward",
]
