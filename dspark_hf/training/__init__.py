"""Training DSpark drafters: the parallel teacher-forced forward and the loss (Trainer, data and calibration follow)."""

from .forward import sample_anchors, training_forward
from .losses import dspark_loss, position_weights

__all__ = ["dspark_loss", "position_weights", "sample_anchors", "training_forward"]
