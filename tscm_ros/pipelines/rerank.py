"""Re-ranking retrieval results with geometric verification, for evaluation (ROS-free).

Given each query's top-K database ids (best first, ``-1`` = none), every candidate is verified with
:class:`tscm_ros.verification.Verifier` and the candidates are re-ordered: verified ones first, then by
inlier count (descending), ties keeping the retrieval order. Features are extracted once per image.

The loop-closure decision of a query is its top candidate after re-ranking; :func:`inlier_sweep` gives
precision/recall of "accept when it has >= N inliers" over N (recall over the queries that have a
correct answer at all, as in :mod:`tscm_ros.evaluation.metrics`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tscm_ros.features import CameraIntrinsics, FeatureConfig, FeatureExtractor, LocalFeatures
from tscm_ros.image_files import read_rgb
from tscm_ros.verification import Verification, Verifier, VerifierConfig

__all__ = ["RerankResult", "inlier_sweep", "rerank_features", "rerank_with_verification", "DEFAULT_SWEEP"]

DEFAULT_SWEEP = (8, 10, 12, 15, 20, 25, 30, 40, 50)


@dataclass
class RerankResult:
    """Re-ranked candidates: ``ranked`` (Q, K) database ids (-1 padded) and, aligned with it, ``inliers``
    and ``verified``; ``best_inliers`` / ``best_verified`` (Q,) describe each query's top candidate."""

    ranked: np.ndarray
    inliers: np.ndarray
    verified: np.ndarray
    extract_seconds: float = 0.0
    verify_seconds: float = 0.0
    verifications: int = 0
    images_extracted: int = 0

    @property
    def best_inliers(self) -> np.ndarray:
        return self.inliers[:, 0] if self.inliers.shape[1] else np.zeros(len(self.inliers), np.int64)

    @property
    def best_verified(self) -> np.ndarray:
        return self.verified[:, 0] if self.verified.shape[1] else np.zeros(len(self.verified), bool)

    @property
    def ms_per_verification(self) -> float:
        return 1000.0 * self.verify_seconds / max(1, self.verifications)

    @property
    def ms_per_extraction(self) -> float:
        return 1000.0 * self.extract_seconds / max(1, self.images_extracted)


def rerank_features(
    query_features: Sequence[LocalFeatures],
    database_features: Sequence[LocalFeatures] | Callable[[int], LocalFeatures],
    ranked: np.ndarray,
    *,
    verifier: Verifier | None = None,
    intrinsics: CameraIntrinsics | None = None,
) -> RerankResult:
    """Verify ``ranked[q, j]`` against query ``q`` and re-order each row (see the module docstring).

    ``database_features`` is a sequence or a callable ``id -> LocalFeatures`` (e.g. a lazy cache).
    """
    ranked = np.asarray(ranked, np.int64)
    if ranked.ndim != 2 or len(ranked) != len(query_features):
        raise ValueError(f"ranked must be ({len(query_features)}, K), got shape {ranked.shape}")
    verifier = verifier or Verifier()
    lookup = database_features if callable(database_features) else database_features.__getitem__
    q_count, k = ranked.shape
    inliers = np.zeros((q_count, k), np.int64)
    verified = np.zeros((q_count, k), bool)
    seconds, count = 0.0, 0
    for q in range(q_count):
        for j in range(k):
            if ranked[q, j] < 0:
                continue
            candidate = lookup(int(ranked[q, j]))
            started = time.perf_counter()
            result: Verification = verifier.verify(query_features[q], candidate, intrinsics=intrinsics)
            seconds += time.perf_counter() - started
            count += 1
            inliers[q, j], verified[q, j] = result.inliers, result.verified
    # verified first, then more inliers, then the retrieval order; -1 (no candidate) last
    order = np.lexsort((np.broadcast_to(np.arange(k), ranked.shape), -inliers, ~verified, ranked < 0), axis=1)
    return RerankResult(
        ranked=np.take_along_axis(ranked, order, 1), inliers=np.take_along_axis(inliers, order, 1),
        verified=np.take_along_axis(verified, order, 1), verify_seconds=seconds, verifications=count,
    )  # fmt: skip


def rerank_with_verification(
    database_paths: Sequence[Path],
    query_paths: Sequence[Path],
    ranked: np.ndarray,
    *,
    feature_config: FeatureConfig | None = None,
    verifier_config: VerifierConfig | None = None,
    intrinsics: CameraIntrinsics | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> RerankResult:
    """Re-rank image retrieval results: extract features of every query and of every database image that
    appears in ``ranked`` (once each), then :func:`rerank_features`. Nothing is cached on disk."""
    ranked = np.asarray(ranked, np.int64)
    extractor = FeatureExtractor(feature_config or FeatureConfig())
    extract_seconds = 0.0

    def extract(path: Path) -> LocalFeatures:
        nonlocal extract_seconds
        rgb = read_rgb(path)
        started = time.perf_counter()
        features = extractor.extract(rgb)
        extract_seconds += time.perf_counter() - started
        return features

    queries = []
    for q, path in enumerate(query_paths):
        queries.append(extract(Path(path)))
        if progress:
            progress(q + 1, len(query_paths))
    needed = sorted({int(i) for i in ranked.reshape(-1) if i >= 0})
    if needed and needed[-1] >= len(database_paths):
        raise ValueError(f"ranked holds database id {needed[-1]} but there are {len(database_paths)} images")
    database = {i: extract(Path(database_paths[i])) for i in needed}
    result = rerank_features(
        queries, database.__getitem__, ranked, verifier=Verifier(verifier_config), intrinsics=intrinsics
    )
    result.extract_seconds = extract_seconds
    result.images_extracted = len(queries) + len(database)
    return result


def inlier_sweep(
    best_inliers: np.ndarray,
    correct: np.ndarray,
    n_positive: int,
    thresholds: Sequence[int] = DEFAULT_SWEEP,
) -> list[dict]:
    """Precision / recall of accepting each query's top candidate when it has >= N inliers, per N."""
    best_inliers = np.asarray(best_inliers).reshape(-1)
    correct = np.asarray(correct, bool).reshape(-1)
    rows = []
    for threshold in thresholds:
        accepted = best_inliers >= threshold
        true_positives = int((accepted & correct).sum())
        rows.append(
            {
                "min_inliers": int(threshold),
                "accepted": int(accepted.sum()),
                "precision": true_positives / accepted.sum() if accepted.any() else float("nan"),
                "recall": true_positives / n_positive if n_positive else float("nan"),
            }
        )
    return rows


def accepted_precision_recall(accepted: np.ndarray, correct: np.ndarray, n_positive: int) -> dict:
    """Precision / recall of a given accept decision per query (e.g. ``RerankResult.best_verified``)."""
    accepted = np.asarray(accepted, bool).reshape(-1)
    correct = np.asarray(correct, bool).reshape(-1)
    true_positives = int((accepted & correct).sum())
    return {
        "accepted": int(accepted.sum()),
        "precision": true_positives / accepted.sum() if accepted.any() else float("nan"),
        "recall": true_positives / n_positive if n_positive else float("nan"),
    }
