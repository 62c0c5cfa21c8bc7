"""Training: the plan of a run (``plan``), corruptions (``corruption``), the loop and its state (``loop``),
evaluation (``evaluate``), a rank's shares (``shards``) and the run into a run directory (``run``).

Determinism: the train/validation split comes from ``seed``; the order of epoch ``e`` and its
input noise, masks and augmentations come from generators seeded with ``(seed, e)``. A checkpoint holds the weights,
the optimizer, the epoch and step within it, and every RNG state, so a resumed run repeats the
uninterrupted one step for step (bitwise on CPU with a fixed thread count).
"""

from .corruption import augment, corrupt
from .evaluate import evaluate, evaluate_sharded
from .loop import TrainingState, TrainResult, as_dataset, held_interrupt, lr_at, make_optimizer, reconstruction_loss, train_model
from .plan import epoch_generator, epoch_order, split_indices, steps_per_epoch, total_steps
from .run import load_training_data, train

__all__ = [
    "TrainResult", "TrainingState", "as_dataset", "augment", "corrupt", "epoch_generator", "epoch_order", "evaluate",
    "evaluate_sharded", "held_interrupt", "load_training_data", "lr_at", "make_optimizer", "reconstruction_loss",
    "split_indices", "steps_per_epoch", "total_steps", "train", "train_model",
]
