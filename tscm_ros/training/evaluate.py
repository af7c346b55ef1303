"""Validation metrics during training: recall@N at 10 m and 25 m, and mAP, via tscm_ros.evaluation.metrics."""

from __future__ import annotations

import numpy as np

from tscm_ros.data.dataset import RetrievalDataset
from tscm_ros.evaluation import metrics

PROTOCOLS = ("10m", "25m")


def rank_database(
    database: np.ndarray, queries: np.ndarray, k: int, exclude: np.ndarray | None = None
) -> np.ndarray:
    """(Q, min(k, N)) database indices, nearest first: exact search on the L2-normalised descriptors (the
    published L2 ranking; ``tscm_evaluate`` ranks the same way). ``exclude``: per query, a database index
    it must not retrieve (its own entry in a leave-one-out dataset), -1 = none."""
    return metrics.exact_search(database, queries, min(k, len(database)), exclude=exclude)[1]


def retrieval_metrics(
    database: np.ndarray, queries: np.ndarray, dataset: RetrievalDataset, ns: tuple[int, ...] = (1, 5, 10, 20)
) -> dict[str, float]:
    """``{"10m/R@1": ..., "10m/mAP": ..., "25m/R@1": ...}`` for the protocols the dataset has."""
    ranked = rank_database(database, queries, max(ns), dataset.query_database_index)
    results: dict[str, float] = {}
    for protocol in PROTOCOLS:
        if protocol not in dataset.positives:
            continue
        positives = dataset.positives[protocol]
        recalls = metrics.recall_at_n(ranked, positives, ns=ns)
        for n in ns:
            results[f"{protocol}/R@{n}"] = float(recalls[n])
        results[f"{protocol}/mAP"] = float(metrics.mean_average_precision(ranked, positives))
    return results
