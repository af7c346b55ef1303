"""Training tuples with hard-negative mining, following the published protocol (TSCM / pytorch-NetVlad).

* positives: database images within ``positive_radius_m`` (10 m = sqrt(nonTrivPosDistSqThr)) of the query;
  queries without one are never trained on;
* negatives: database images farther than ``negative_radius_m`` (25 m = posDistThr);
* per query and refresh: ``negative_pool`` (1000) random negative candidates plus the query's previous hard
  negatives; with an embedding cache of the whole training set, the positive used is the nearest positive in
  embedding space and up to ``num_negatives`` (10) nearest candidates with
  ``d_neg < d_pos + sqrt(margin)`` are kept (Euclidean distances); queries with none are skipped.

Distances come from faiss (``faiss.knn``, exact L2). The previous-negative cache is part of the training state
(:meth:`HardNegativeMiner.state_dict`, tensors only) so a resumed run mines exactly what an uninterrupted one
would.
"""

from __future__ import annotations

from dataclasses import dataclass

import faiss
import numpy as np
import torch

from tscm_ros.data.dataset import RetrievalDataset, positives_within


@dataclass(frozen=True)
class TrainingTuple:
    """Indices of one training tuple: a query, its positive and its hard negatives (database indices)."""

    query: int
    positive: int
    negatives: np.ndarray  # (n,) int64, 1 <= n <= num_negatives


class HardNegativeMiner:
    """Positives/negatives from positions, hard negatives from embeddings."""

    def __init__(
        self,
        database_utm: np.ndarray,
        query_utm: np.ndarray,
        *,
        positive_radius_m: float = 10.0,
        negative_radius_m: float = 25.0,
        num_negatives: int = 10,
        negative_pool: int = 1000,
        margin: float = 0.1,
        query_database_index: np.ndarray | None = None,
    ) -> None:
        if not 0 < positive_radius_m <= negative_radius_m:
            raise ValueError("need 0 < positive_radius_m <= negative_radius_m")
        if num_negatives < 1 or negative_pool < 1:
            raise ValueError("num_negatives and negative_pool must be >= 1")
        self.database_utm = np.asarray(database_utm, dtype=np.float64).reshape(-1, 2)
        self.query_utm = np.asarray(query_utm, dtype=np.float64).reshape(-1, 2)
        self.num_database = len(self.database_utm)
        self.num_negatives = int(num_negatives)
        self.negative_pool = int(negative_pool)
        self.margin = float(margin)
        self.positives = positives_within(self.database_utm, self.query_utm, positive_radius_m)
        # everything within the negative radius (and the query's own database row) is never a negative
        self.non_negatives = positives_within(self.database_utm, self.query_utm, negative_radius_m)
        if query_database_index is not None:
            own = np.asarray(query_database_index, dtype=np.int64)
            self.positives = [p[p != o] for p, o in zip(self.positives, own, strict=True)]
            self.non_negatives = [
                np.union1d(n, [o]) if o >= 0 else n for n, o in zip(self.non_negatives, own, strict=True)
            ]
        self.trainable_queries = np.array(
            [
                q
                for q in range(len(self.query_utm))
                if len(self.positives[q]) > 0 and len(self.non_negatives[q]) < self.num_database
            ],
            dtype=np.int64,
        )
        self.negative_cache = np.full((len(self.query_utm), self.num_negatives), -1, dtype=np.int64)

    @classmethod
    def from_dataset(cls, dataset: RetrievalDataset, **options) -> HardNegativeMiner:
        """Radii from ``dataset.extra`` (``non_triv_pos_dist``, ``pos_dist_thr``) unless given."""
        if dataset.database_utm is None or dataset.query_utm is None:
            raise ValueError(f"dataset {dataset.name!r} has no positions; mining needs UTM/x-y coordinates")
        options.setdefault("positive_radius_m", float(dataset.extra.get("non_triv_pos_dist", 10.0)))
        options.setdefault("negative_radius_m", float(dataset.extra.get("pos_dist_thr", 25.0)))
        options.setdefault("query_database_index", dataset.query_database_index)
        return cls(dataset.database_utm, dataset.query_utm, **options)

    def negative_candidates(self, query: int, rng: np.random.Generator) -> np.ndarray:
        """Up to ``negative_pool`` random negatives + the cached previous hard negatives (sorted, unique)."""
        count = min(self.negative_pool, self.num_database)
        sample = rng.choice(self.num_database, size=count, replace=False)
        sample = sample[~np.isin(sample, self.non_negatives[query], assume_unique=True)]
        cached = self.negative_cache[query]
        return np.union1d(sample, cached[cached >= 0]).astype(np.int64)

    def mine(
        self,
        database_embeddings: np.ndarray,
        query_embeddings: np.ndarray,
        rng: np.random.Generator,
        queries: np.ndarray | None = None,
    ) -> list[TrainingTuple]:
        """Mine tuples for ``queries`` (default: all trainable ones) and update the negative cache."""
        db = np.ascontiguousarray(database_embeddings, dtype=np.float32)
        qe = np.ascontiguousarray(query_embeddings, dtype=np.float32)
        if len(db) != self.num_database or len(qe) != len(self.query_utm):
            raise ValueError(
                f"embedding cache has {len(db)} database / {len(qe)} query rows, "
                f"expected {self.num_database} / {len(self.query_utm)}"
            )
        threshold = float(np.sqrt(self.margin))
        tuples = []
        for query in self.trainable_queries if queries is None else queries:
            query = int(query)
            positives = self.positives[query]
            if len(positives) == 0:
                continue
            q = qe[query : query + 1]
            d_pos_sq, pos_order = faiss.knn(q, db[positives], 1)
            d_pos = float(np.sqrt(max(d_pos_sq[0, 0], 0.0)))
            candidates = self.negative_candidates(query, rng)
            if len(candidates) == 0:
                continue
            d_neg_sq, neg_order = faiss.knn(q, db[candidates], len(candidates))  # ascending distance
            d_neg = np.sqrt(np.maximum(d_neg_sq[0], 0.0))
            violating = candidates[neg_order[0][d_neg < d_pos + threshold]][: self.num_negatives]
            if len(violating) == 0:
                continue
            self.negative_cache[query] = -1
            self.negative_cache[query, : len(violating)] = violating
            tuples.append(TrainingTuple(query, int(positives[pos_order[0, 0]]), violating.astype(np.int64)))
        return tuples

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The previous-hard-negative cache as a tensor (``torch.load(weights_only=True)``-safe)."""
        return {"negative_cache": torch.from_numpy(self.negative_cache.copy())}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        cache = state["negative_cache"].numpy().astype(np.int64)
        if cache.shape != self.negative_cache.shape:
            raise ValueError(
                f"negative cache shape {tuple(cache.shape)} does not match this dataset "
                f"{self.negative_cache.shape}: resuming with a different dataset or num_negatives?"
            )
        self.negative_cache = cache.copy()
