"""Ignite handlers for the VM-UNetV2 bundle: atomic checkpoints and checked loading, a stop on a non-finite loss,
evaluation reports, prediction writer."""

from .atomic import atomic_write
from .checkpoint import AtomicCheckpointSaver, CheckpointLoader, StopOnNonFiniteLoss
from .predictions import PredictionWriter, overlay_contour
from .reports import CaseReportWriter

__all__ = [
    "AtomicCheckpointSaver",
    "CaseReportWriter",
    "CheckpointLoader",
    "PredictionWriter",
    "StopOnNonFiniteLoss",
    "atomic_write",
    "overlay_contour",
]
