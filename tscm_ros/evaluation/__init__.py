"""Evaluation: recall@N / mAP / PR+AP metrics, evaluation datasets and the ``tscm_evaluate`` CLI."""

from .dataset import RetrievalDataset
from .datasets import DatasetError, load_dataset, register_dataset, registered_kinds
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
    "DatasetError",
    "PRCurve",
    "RetrievalDataset",
    "exact_search",
    "load_dataset",
    "loop_closure_pr_curve",
    "mean_average_precision",
    "precision_recall_curve",
    "recall_at_n",
    "register_dataset",
    "registered_kinds",
    "retrieval_pr_curve",
]
