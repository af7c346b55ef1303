"""The retrieval dataset every evaluator and trainer shares: a database, queries and ground truth."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


@dataclass
class RetrievalDataset:
    """Database and query images with ground-truth positives.

    ``positives`` maps a protocol label (``"gt"`` for datasets with explicit index ground truth,
    ``"10m"`` / ``"25m"`` for metric ones) to, per query, the array of database indices that count as a
    correct retrieval. Queries with no positive under a protocol are dropped by the recall computation.
    """

    name: str
    database: list[Path]
    queries: list[Path]
    positives: dict[str, list[np.ndarray]]
    database_utm: np.ndarray | None = None  # (N_db, 2) easting/northing or x/y in metres
    query_utm: np.ndarray | None = None  # (N_q, 2)
    extra: dict = field(default_factory=dict)
