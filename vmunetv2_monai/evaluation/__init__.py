"""Evaluation of saved segmentations against ground truth: folder scoring, bootstrap intervals, figures and a
Markdown report (the results protocol of the Kvasir-SEG experiments). The metrics themselves are
:mod:`vmunetv2_monai.metrics`."""

from .stats import bootstrap_summary

__all__ = ["bootstrap_summary"]
