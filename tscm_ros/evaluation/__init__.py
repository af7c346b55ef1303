"""Evaluation metrics only: recall@N, mAP, PR curves and AP, sequence recall. Datasets live in
:mod:`tscm_ros.data`; describing a dataset, geometric re-ranking and the reports of ``tscm_evaluate`` in
:mod:`tscm_ros.pipelines.evaluate` and :mod:`tscm_ros.pipelines.rerank`."""

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
