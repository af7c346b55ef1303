"""Retrieval and loop-closure metrics: the one recall@N implementation, mAP, PR curves and AP.

Conventions:

* ``ranked`` is a (Q, K) array of database indices, best first; ``-1`` marks "no result".
* ``positives[q]`` holds the database indices that are a correct answer for query ``q``. Queries without
  any positive are left out of recall@N and mAP (as in the published evaluation).
* PR curves sweep a similarity threshold over *one decision per query* (its top-1 match, or its best
  loop-closure candidate): accepted & correct = TP, accepted & wrong = FP. Recall divides TP by the
  number of queries that have a correct answer at all, so a query whose top-1 is wrong can never be
  recalled. Average precision is the step-wise sum over thresholds of (R_i - R_{i-1}) * P_i
  (the ``sklearn.metrics.average_precision_score`` definition).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass

import faiss
import numpy as np

DEFAULT_NS = (1, 5, 10, 20)


def _check_ranked(ranked: np.ndarray, positives: Sequence[np.ndarray]) -> np.ndarray:
    ranked = np.asarray(ranked)
    if ranked.ndim != 2:
        raise ValueError(f"ranked must be (queries, K), got shape {ranked.shape}")
    if len(positives) != len(ranked):
        raise ValueError(f"{len(ranked)} ranked rows but {len(positives)} positive lists")
    return ranked


def hits_matrix(ranked: np.ndarray, positives: Sequence[np.ndarray]) -> np.ndarray:
    """(Q, K) bool: is ``ranked[q, j]`` a positive of query ``q``."""
    ranked = _check_ranked(ranked, positives)
    hits = np.zeros(ranked.shape, bool)
    for q, (row, pos) in enumerate(zip(ranked, positives, strict=True)):
        hits[q] = np.isin(row, np.asarray(pos)) & (row >= 0)
    return hits


def recall_at_n(
    ranked: np.ndarray, positives: Sequence[np.ndarray], ns: Iterable[int] = DEFAULT_NS
) -> dict[int, float]:
    """``{n: fraction of queries (with >= 1 positive) that have a positive among their top n}``.

    Only the K columns of ``ranked`` exist: for n > K the value equals recall@K, which is exact when K is
    the database size. Returns NaN for every n when no query has a positive.
    """
    ns = [int(n) for n in ns]
    if any(n < 1 for n in ns):
        raise ValueError(f"ns must be >= 1, got {ns}")
    hits = hits_matrix(ranked, positives)
    valid = np.array([len(p) > 0 for p in positives], bool)
    if not valid.any():
        return {n: float("nan") for n in ns}
    hits = hits[valid]
    return {n: float(hits[:, :n].any(axis=1).mean()) for n in ns}


def mean_average_precision(ranked: np.ndarray, positives: Sequence[np.ndarray]) -> float:
    """mAP@K over queries with positives: AP_q = sum_k P@k * rel_k / min(|positives_q|, K)."""
    hits = hits_matrix(ranked, positives)
    valid = np.array([len(p) > 0 for p in positives], bool)
    if not valid.any():
        return float("nan")
    hits = hits[valid].astype(np.float64)
    k = hits.shape[1]
    precision_at = np.cumsum(hits, axis=1) / np.arange(1, k + 1)
    denominators = np.minimum([len(p) for p, ok in zip(positives, valid, strict=True) if ok], k)
    return float(np.mean((precision_at * hits).sum(axis=1) / denominators))


def exact_search(
    database: np.ndarray, queries: np.ndarray, k: int, *, exclude: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Exact inner-product top-k (faiss ``IndexFlatIP``): (similarities (Q,k), indices (Q,k)), -1 padded.

    ``exclude`` (Q,): a database index each query must never retrieve (-1 = none), e.g. the query's own
    entry in a leave-one-out dataset (``RetrievalDataset.query_database_index``). The results are then the
    top k of the remaining database entries.
    """
    database = np.ascontiguousarray(database, dtype=np.float32)
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    if database.ndim != 2 or queries.ndim != 2 or database.shape[1] != queries.shape[1]:
        raise ValueError(
            f"descriptor shapes do not match: database {database.shape}, queries {queries.shape}"
        )
    k = int(k)
    index = faiss.IndexFlatIP(database.shape[1])
    index.add(database)
    if exclude is None:
        return index.search(queries, k)
    exclude = np.asarray(exclude, dtype=np.int64).reshape(-1)
    if len(exclude) != len(queries):
        raise ValueError(f"exclude has {len(exclude)} entries for {len(queries)} queries")
    sims, ranked = index.search(queries, k + 1)  # at most one result per row is dropped
    keep = (ranked != exclude[:, None]) | (ranked < 0)
    order = np.argsort(~keep, axis=1, kind="stable")[:, :k]  # kept results first, in rank order
    sims, ranked = np.take_along_axis(sims, order, 1), np.take_along_axis(ranked, order, 1)
    dropped = ~np.take_along_axis(keep, order, 1)  # only when fewer than k other entries exist
    sims[dropped], ranked[dropped] = np.finfo(np.float32).min, -1  # faiss's own padding
    return sims, ranked


@dataclass
class PRCurve:
    """Precision/recall per similarity threshold (descending thresholds) and summary numbers."""

    thresholds: np.ndarray
    precision: np.ndarray
    recall: np.ndarray
    average_precision: float
    max_f1: float
    recall_at_100_precision: float
    n_positive: int
    n_decisions: int

    def to_dict(self) -> dict:
        return {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in asdict(self).items()}


def precision_recall_curve(scores: np.ndarray, correct: np.ndarray, n_positive: int) -> PRCurve:
    """PR curve of accept-if-``score >= threshold`` decisions.

    ``scores[i]``: similarity of decision i; ``correct[i]``: whether accepting it is right;
    ``n_positive``: how many decisions *could* be right (recall denominator, >= correct.sum()).
    """
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    correct = np.asarray(correct, dtype=bool).reshape(-1)
    if scores.shape != correct.shape:
        raise ValueError(f"scores {scores.shape} and correct {correct.shape} differ")
    if n_positive < int(correct.sum()):
        raise ValueError(f"n_positive={n_positive} is below the number of correct decisions {correct.sum()}")
    finite = np.isfinite(scores)
    scores, correct = scores[finite], correct[finite]
    order = np.argsort(-scores, kind="stable")
    scores, correct = scores[order], correct[order]
    tp = np.cumsum(correct)
    fp = np.cumsum(~correct)
    last_of_tie = np.r_[scores[1:] != scores[:-1], True] if len(scores) else np.zeros(0, bool)
    thresholds, tp, fp = scores[last_of_tie], tp[last_of_tie], fp[last_of_tie]
    precision = tp / np.maximum(tp + fp, 1)
    recall = tp / n_positive if n_positive else np.zeros_like(precision)
    if n_positive and len(thresholds):
        ap = float(np.sum(np.diff(np.r_[0.0, recall]) * precision))
        f1 = 2 * precision * recall / np.maximum(precision + recall, 1e-12)
        max_f1 = float(f1.max())
        perfect = recall[precision >= 1.0]
        r_at_p1 = float(perfect.max()) if perfect.size else 0.0
    else:
        ap = max_f1 = r_at_p1 = float("nan") if not n_positive else 0.0
    return PRCurve(thresholds, precision, recall, ap, max_f1, r_at_p1, int(n_positive), int(len(scores)))


def retrieval_pr_curve(
    top1_similarity: np.ndarray, top1_index: np.ndarray, positives: Sequence[np.ndarray]
) -> PRCurve:
    """PR curve of "accept the top-1 match if its similarity >= t" over all queries.

    Queries without positives count as negatives (accepting them is a false positive).
    """
    top1_index = np.asarray(top1_index).reshape(-1)
    correct = np.array(
        [i >= 0 and bool(np.isin(i, np.asarray(p))) for i, p in zip(top1_index, positives, strict=True)], bool
    )
    n_positive = sum(len(p) > 0 for p in positives)
    return precision_recall_curve(np.asarray(top1_similarity).reshape(-1), correct, n_positive)


def loop_closure_pr_curve(
    query_indices: np.ndarray,
    match_indices: np.ndarray,
    similarities: np.ndarray,
    *,
    positions: np.ndarray | None = None,
    radius_m: float | None = None,
    gt_pairs: Iterable[tuple[int, int]] | None = None,
    exclusion_frames: int = 0,
) -> PRCurve:
    """PR curve of loop-closure detections on one sequence (frames indexed 0..N-1).

    Each detection ``(query_indices[i], match_indices[i], similarities[i])`` is the best candidate of one
    query (at most one per query). Ground truth, one of:

    * ``positions`` (N, 2 or 3) and ``radius_m``: a detection is correct when the two frames are within
      ``radius_m``; a frame has a true loop when an *earlier* frame more than ``exclusion_frames`` before
      it lies within ``radius_m``;
    * ``gt_pairs``: the set of correct (query, match) frame pairs; frames appearing as a query in it
      have a true loop.
    """
    query_indices = np.asarray(query_indices, np.int64).reshape(-1)
    match_indices = np.asarray(match_indices, np.int64).reshape(-1)
    similarities = np.asarray(similarities, np.float64).reshape(-1)
    if not (len(query_indices) == len(match_indices) == len(similarities)):
        raise ValueError("query_indices, match_indices and similarities must have the same length")
    if len(np.unique(query_indices)) != len(query_indices):
        raise ValueError("give at most one detection (the best candidate) per query")
    if (positions is None) == (gt_pairs is None):
        raise ValueError("give either positions + radius_m or gt_pairs")
    if positions is not None:
        if radius_m is None or radius_m <= 0:
            raise ValueError("positions need a radius_m > 0")
        positions = np.asarray(positions, np.float64)
        from scipy.spatial import cKDTree

        tree = cKDTree(positions)
        has_loop = np.zeros(len(positions), bool)
        for frame, neighbours in enumerate(tree.query_ball_point(positions, r=radius_m)):
            has_loop[frame] = any(j < frame - exclusion_frames for j in neighbours)
        distances = np.linalg.norm(positions[query_indices] - positions[match_indices], axis=1)
        # the same rule as has_loop: only an earlier frame outside the exclusion is a true loop
        correct = (distances <= radius_m) & (match_indices < query_indices - exclusion_frames)
        n_positive = int(has_loop.sum())
    else:
        pairs = {(int(q), int(m)) for q, m in gt_pairs}
        correct = np.array(
            [(int(q), int(m)) in pairs for q, m in zip(query_indices, match_indices, strict=True)], bool
        )
        n_positive = len({q for q, _ in pairs})
    return precision_recall_curve(similarities, correct, n_positive)


def summary_table(recalls: dict[int, float], pr: PRCurve | None = None, title: str = "") -> str:
    """A markdown table of recall@N (+ AP / max F1 / R@100%P)."""
    header = ["dataset"] + [f"R@{n}" for n in recalls]
    row = [title or "-"] + [f"{v:.4f}" for v in recalls.values()]
    if pr is not None:
        header += ["AP", "max F1", "R@100%P"]
        row += [f"{pr.average_precision:.4f}", f"{pr.max_f1:.4f}", f"{pr.recall_at_100_precision:.4f}"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header), "| " + " | ".join(row) + " |"]
    return "\n".join(lines)
