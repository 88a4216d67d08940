"""Ignite handlers for the VM-UNetV2 bundle: atomic checkpoints and checked loading, a stop on a non-finite loss,
evaluation reports, prediction writer, complete MLflow runs."""

from .atomic import atomic_write
from .checkpoint import AtomicCheckpointSaver, CheckpointLoader, StopOnNonFiniteLoss
from .predictions import PredictionWriter, overlay_contour
from .reports import CaseReportWriter
from .tracking import MLflowTracker, package_versions

__all__ = [
    "AtomicCheckpointSaver",
    "CaseReportWriter",
    "CheckpointLoader",
    "MLflowTracker",
    "PredictionWriter",
    "StopOnNonFiniteLoss",
    "atomic_write",
    "overlay_contour",
    "package_versions",
]
