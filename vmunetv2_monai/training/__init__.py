"""CPU-budget training for the learning study and the Kvasir recipe: cached resized arrays, batched augmentation
on tensors, and a trainer whose budget and learning-rate schedule are counted in CPU seconds of the process."""

from .augment import BatchAugment, normalize_batch
from .cache import ArraySet, load_arrays
from .trainer import TrainConfig, build_model, train_for_budget

__all__ = [
    "ArraySet",
    "BatchAugment",
    "TrainConfig",
    "build_model",
    "load_arrays",
    "normalize_batch",
    "train_for_budget",
]
