"""Evaluation: recall@N / mAP / PR+AP metrics and what ``tscm_evaluate`` (:mod:`tscm_ros.cli.evaluate`)
reports (:mod:`~tscm_ros.evaluation.report`); datasets live in :mod:`tscm_ros.data`."""

from .metrics import (
    PRCurve,
    exact_search,
    loop_closure_pr_curve,
    mean_average_precision,
    precision_recall_curve,
    recall_at_n,
    retrieval_pr_curve,
)

__all__ = [
    "PRCurve",
    "exact_search",
    "loop_closure_pr_curve",
    "mean_average_precision",
    "precision_recall_curve",
    "recall_at_n",
    "retrieval_pr_curve",
]
