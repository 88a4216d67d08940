"""Evaluation of saved segmentations against ground truth: per-image and pooled metrics, bootstrap intervals,
figures and a Markdown report (the results protocol of the Kvasir-SEG experiments)."""

from .metrics import POOLED_METRICS, case_metrics, pooled_metrics
from .stats import bootstrap_summary

__all__ = ["POOLED_METRICS", "bootstrap_summary", "case_metrics", "pooled_metrics"]
