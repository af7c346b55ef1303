"""Sequence-matched Recall@N on a sequential dataset (ROS-free): :class:`SequenceMatcher` over faiss top-K.

The database is one traversal (row ``j`` = map keyframe ``j``), the queries another one in traversal
order (row ``i`` = query keyframe ``i``, stamped ``i`` seconds). Every query's top-K from an exact
inner-product index of the database is fed to the matcher; the query's ranking is its candidates by
sequence score. The first ``length - 1`` queries only have a partial sequence; they are counted (with
their partial score) and reported separately as ``partial_queries``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace

import numpy as np

from ..descriptors import normalize_rows
from ..poses import NS_PER_S as _NS_PER_S
from ..sequence import SequenceConfig, SequenceMatcher
from .metrics import DEFAULT_NS, exact_search, recall_at_n


@dataclass(frozen=True)
class SequenceEvaluation:
    """``recall``: sequence-matched R@N; ``single_frame_recall``: R@N of the plain top-K ranking.

    ``ranked``: (Q, K) database indices by sequence score (-1 padded); ``scores``: their sequence scores
    (NaN padded); ``full``: per query, whether the sequence had full length.
    """

    length: int
    recall: dict[int, float]
    single_frame_recall: dict[int, float]
    ranked: np.ndarray
    scores: np.ndarray
    full: np.ndarray

    @property
    def partial_queries(self) -> int:
        return int((~self.full).sum())


def sequence_ranking(
    database: np.ndarray,
    queries: np.ndarray,
    config: SequenceConfig,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per query: (ranked db indices, sequence scores, full flag) and the single-frame top-K ranking."""
    k = min(config.candidates_per_keyframe, len(database))
    sims, top = exact_search(_normalise(database), _normalise(queries), k)
    matcher = SequenceMatcher(config)
    ranked = np.full((len(queries), k), -1, np.int64)
    scores = np.full((len(queries), k), np.nan)
    full = np.zeros(len(queries), bool)
    for i, (row_sims, row_ids) in enumerate(zip(sims, top, strict=True)):
        results = matcher.update(
            keyframe_index=i, stamp_ns=i * _NS_PER_S, place_ids=row_ids, place_keyframes=row_ids,
            similarities=row_sims,
        )  # fmt: skip
        ranked[i, : len(results)] = [r.place_id for r in results]
        scores[i, : len(results)] = [r.score for r in results]
        full[i] = bool(results) and results[0].full
    return ranked, scores, full, top


def sequence_recall_at_n(
    database: np.ndarray,
    queries: np.ndarray,
    positives: Sequence[np.ndarray],
    length: int,
    ns: Iterable[int] = DEFAULT_NS,
    config: SequenceConfig | None = None,
) -> SequenceEvaluation:
    """Sequence-matched R@N at sequence length ``length`` next to single-frame R@N (same top-K).

    ``config`` supplies every other matcher setting (default :class:`SequenceConfig`); its ``length`` is
    replaced by ``length``. N above ``candidates_per_keyframe`` equals R@K.
    """
    if len(positives) != len(queries):
        raise ValueError(f"{len(queries)} queries but {len(positives)} positive lists")
    config = replace(config or SequenceConfig(), length=int(length))
    ns = tuple(ns)
    ranked, scores, full, top = sequence_ranking(database, queries, config)
    return SequenceEvaluation(
        length=config.length, recall=recall_at_n(ranked, positives, ns),
        single_frame_recall=recall_at_n(top, positives, ns), ranked=ranked, scores=scores, full=full,
    )  # fmt: skip


def _normalise(x: np.ndarray) -> np.ndarray:
    return normalize_rows(x)
