"""Ignite handlers for the VM-UNetV2 bundle: atomic checkpoints, evaluation reports, prediction writer,
wall-clock budget."""

from .atomic import atomic_write
from .budget import FitEpochsToBudget
from .checkpoint import AtomicCheckpointSaver
from .predictions import PredictionWriter, overlay_contour
from .reports import CaseReportWriter

__all__ = ["AtomicCheckpointSaver", "CaseReportWriter", "FitEpochsToBudget", "PredictionWriter", "atomic_write", "overlay_contour"]
