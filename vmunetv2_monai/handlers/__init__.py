"""Ignite handlers for the VM-UNetV2 bundle: training budget and learning-rate schedule, atomic checkpoints, checked
loading and a never-worse model gate, early stopping and a stop on a non-finite loss, the run settings a resume checks,
an average of the weights, evaluation reports, prediction writer, complete MLflow runs and checkpoint lineage."""

from .budget import TrainingBudget, WarmupCosineLR
from .checkpoint import AtomicCheckpointSaver, CheckpointLoader, loads_network
from .ema import WeightAverage, weight_average
from .incumbent import KeepBetterModel
from .lineage import read_lineage, write_lineage
from .predictions import PredictionWriter, overlay_contour
from .reports import CaseReportWriter
from .settings import ResumeSettingsError, RunSettings, resume_from
from .stopping import OptionalEarlyStopHandler, StopOnNonFiniteLoss
from .tracking import MLflowTracker, package_versions

__all__ = [
    "AtomicCheckpointSaver",
    "CaseReportWriter",
    "CheckpointLoader",
    "KeepBetterModel",
    "MLflowTracker",
    "OptionalEarlyStopHandler",
    "PredictionWriter",
    "ResumeSettingsError",
    "RunSettings",
    "StopOnNonFiniteLoss",
    "TrainingBudget",
    "WarmupCosineLR",
    "WeightAverage",
    "loads_network",
    "overlay_contour",
    "package_versions",
    "read_lineage",
    "resume_from",
    "weight_average",
    "write_lineage",
]
