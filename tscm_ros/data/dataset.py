"""The retrieval dataset every evaluator and trainer shares (database, queries, ground truth), its error type
and the one neighbour search that turns positions into ground truth."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy.spatial import cKDTree


class DatasetError(ValueError):
    """A dataset spec, file or folder is invalid (the message says what and where)."""


def positives_within(database_xy: np.ndarray, query_xy: np.ndarray, radius_m: float) -> list[np.ndarray]:
    """Per query, the sorted int64 indices of database points within ``radius_m`` (inclusive)."""
    tree = cKDTree(np.asarray(database_xy, dtype=np.float64).reshape(-1, 2))
    hits = tree.query_ball_point(np.asarray(query_xy, dtype=np.float64).reshape(-1, 2), r=radius_m)
    return [np.array(sorted(h), dtype=np.int64) for h in hits]


@dataclass
class RetrievalDataset:
    """Database and query images with ground-truth positives.

    ``positives`` maps a protocol label (``"gt"`` for datasets with explicit index ground truth,
    ``"10m"`` / ``"25m"`` for metric ones) to, per query, the array of database indices that count as a
    correct retrieval. Queries with no positive under a protocol are dropped by the recall computation.

    ``query_database_index`` (leave-one-out datasets, where one image is both a query and a database entry):
    per query, the database index of that same image, or -1. Every search over the dataset
    (:func:`tscm_ros.evaluation.metrics.exact_search` with ``exclude=``) skips it, so a query never retrieves
    itself; it is also never one of the query's positives.
    """

    name: str
    database: list[Path]
    queries: list[Path]
    positives: dict[str, list[np.ndarray]]
    database_utm: np.ndarray | None = None  # (N_db, 2) easting/northing or x/y in metres
    query_utm: np.ndarray | None = None  # (N_q, 2)
    extra: dict = field(default_factory=dict)
    query_database_index: np.ndarray | None = None  # (N_q,) int64, -1 = the query is not in the database

    def __post_init__(self) -> None:
        if self.query_database_index is None:
            return
        own = np.asarray(self.query_database_index, dtype=np.int64).reshape(-1)
        if len(own) != len(self.queries):
            raise ValueError(f"query_database_index has {len(own)} entries for {len(self.queries)} queries")
        if own.size and (own.min() < -1 or own.max() >= len(self.database)):
            raise ValueError(f"query_database_index values must be -1 or 0..{len(self.database) - 1}")
        self.query_database_index = own
