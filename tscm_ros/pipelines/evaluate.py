"""What ``tscm_evaluate`` (:mod:`tscm_ros.cli.evaluate`) computes: Recall@N, mAP, the top-1 PR curve, sequence
recall and geometric re-ranking of saved or computed descriptors, and the two figures.

Errors a user can fix (wrong descriptor files, an empty ground truth, an unknown protocol) raise
:class:`EvaluationError`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from tscm_ros.data.dataset import RetrievalDataset
from tscm_ros.descriptors import normalize_rows
from tscm_ros.evaluation import metrics

LOGGER = logging.getLogger("tscm_evaluate")


class EvaluationError(ValueError):
    """Inputs that cannot give a metric (the message says which and why)."""


def describe_dataset(
    describer, dataset: RetrievalDataset, backend: str
) -> tuple[np.ndarray, np.ndarray, dict]:
    """Descriptors of the dataset's database and queries with ``describer``, and what ran (``model`` of
    ``results.json``)."""
    from tscm_ros.describer import describe_files  # heavy (torch): import only when needed

    started = time.perf_counter()
    database = describe_files(describer, dataset.database)
    queries = describe_files(describer, dataset.queries)
    seconds = time.perf_counter() - started
    info = {
        "label": describer.label, "fingerprint": describer.fingerprint, "backend": backend,
        "device": str(describer.device), "describe_seconds": seconds,
        "ms_per_image": 1000 * seconds / max(1, len(database) + len(queries)),
    }  # fmt: skip
    return database, queries, info


def load_descriptors(spec: str, dataset: RetrievalDataset) -> tuple[np.ndarray, np.ndarray]:
    parts = [p for p in spec.split(",") if p]
    if len(parts) != 2:
        raise EvaluationError(f"--descriptors needs DB.npy,QUERIES.npy, got {spec!r}")
    arrays = []
    for path, expected, what in zip(
        parts, (len(dataset.database), len(dataset.queries)), ("database", "queries"), strict=True
    ):
        try:
            array = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise EvaluationError(f"cannot read {what} descriptors {path}: {exc}") from exc
        if array.ndim != 2 or len(array) != expected:
            raise EvaluationError(
                f"{path}: expected ({expected}, D) {what} descriptors, got shape {array.shape}"
            )
        arrays.append(array.astype(np.float32))
    if arrays[0].shape[1] != arrays[1].shape[1]:
        raise EvaluationError(f"descriptor dimensions differ: {arrays[0].shape[1]} vs {arrays[1].shape[1]}")
    return arrays[0], arrays[1]


def normalise(x: np.ndarray) -> np.ndarray:
    try:
        return normalize_rows(x)
    except ValueError as error:
        raise EvaluationError(f"descriptors: {error}") from error


def evaluate(
    database: np.ndarray,
    queries: np.ndarray,
    dataset: RetrievalDataset,
    ns: Sequence[int],
    protocol: str | None,
) -> dict:
    """Metrics per protocol: recall@N, mAP@K and the top-1 PR curve."""
    protocols = [protocol] if protocol else list(dataset.positives)
    missing = [p for p in protocols if p not in dataset.positives]
    if missing:
        raise EvaluationError(f"dataset has no protocol {missing[0]!r}; it has {list(dataset.positives)}")
    k = min(max(ns), len(database))
    sims, ranked = metrics.exact_search(
        normalise(database), normalise(queries), k, exclude=dataset.query_database_index
    )
    results = {}
    for name in protocols:
        positives = dataset.positives[name]
        pr = metrics.retrieval_pr_curve(sims[:, 0], ranked[:, 0], positives)
        results[name] = {
            "recall": {str(n): v for n, v in metrics.recall_at_n(ranked, positives, ns).items()},
            "map_at_k": metrics.mean_average_precision(ranked, positives),
            "k": k,
            "queries_with_positives": int(sum(len(p) > 0 for p in positives)),
            "pr": pr.to_dict(),
        }
    return results


def evaluate_sequences(
    database: np.ndarray,
    queries: np.ndarray,
    dataset: RetrievalDataset,
    ns: Sequence[int],
    lengths: Sequence[int],
    results: dict,
) -> None:
    """Add ``results[protocol]["sequence"][str(L)]``: sequence and single-frame recall@N (same top-K)."""
    from tscm_ros.evaluation.sequence_eval import sequence_recall_at_n

    database, queries = normalise(database), normalise(queries)
    for name, r in results.items():
        r["sequence"] = {}
        for length in lengths:
            found = sequence_recall_at_n(database, queries, dataset.positives[name], length, ns)
            r["sequence"][str(length)] = {
                "recall": {str(n): v for n, v in found.recall.items()},
                "single_frame_recall": {str(n): v for n, v in found.single_frame_recall.items()},
                "partial_queries": found.partial_queries,
            }


def verify_rerank(
    database: np.ndarray,
    queries: np.ndarray,
    dataset: RetrievalDataset,
    ns: Sequence[int],
    protocol: str | None,
    top_k: int,
    method: str,
) -> dict:
    """Re-rank the top-``top_k`` by geometric verification: recall@N after it and, per protocol, the
    precision/recall of the re-ranked top-1 over min_inliers and with the default acceptance rule."""
    from tscm_ros.features import FeatureConfig
    from tscm_ros.pipelines.rerank import accepted_precision_recall, inlier_sweep, rerank_with_verification
    from tscm_ros.verification import VerifierConfig

    if top_k < 1:
        raise EvaluationError(f"--verify-top-k must be >= 1, got {top_k}")
    _, ranked = metrics.exact_search(normalise(database), normalise(queries), min(top_k, len(database)))
    result = rerank_with_verification(
        dataset.database, dataset.queries, ranked, feature_config=FeatureConfig(method=method)
    )
    rule = VerifierConfig()
    ns = [n for n in ns if n <= ranked.shape[1]] or [1]  # recall beyond the verified top-K is not re-ranked
    report = {
        "top_k": int(ranked.shape[1]), "method": method,
        "rule": {"min_inliers": rule.min_inliers, "min_inlier_ratio": rule.min_inlier_ratio},
        "ms_per_extraction": result.ms_per_extraction, "ms_per_verification": result.ms_per_verification,
        "protocols": {},
    }  # fmt: skip
    for name in [protocol] if protocol else list(dataset.positives):
        positives = dataset.positives[name]
        correct = metrics.hits_matrix(result.ranked, positives)[:, 0]
        n_positive = int(sum(len(p) > 0 for p in positives))
        report["protocols"][name] = {
            "recall_before": {str(n): v for n, v in metrics.recall_at_n(ranked, positives, ns).items()},
            "recall": {str(n): v for n, v in metrics.recall_at_n(result.ranked, positives, ns).items()},
            "sweep": inlier_sweep(result.best_inliers, correct, n_positive),
            "default_rule": accepted_precision_recall(result.best_verified, correct, n_positive),
        }
    return report


def plot_results(results: dict, out: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 4))
    for name, r in results.items():
        pr = r["pr"]
        ax.plot(pr["recall"], pr["precision"], marker=".", label=f"{name} (AP {pr['average_precision']:.3f})")
    ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1.02), ylim=(0, 1.02), title=f"{title}: top-1 PR")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "pr_curve.png", dpi=120)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(5, 4))
    for name, r in results.items():
        ns = [int(n) for n in r["recall"]]
        ax.plot(ns, list(r["recall"].values()), marker="o", label=name)
    ax.set(xlabel="N", ylabel="Recall@N", ylim=(0, 1.02), title=f"{title}: Recall@N")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "recall_at_n.png", dpi=120)
    plt.close(fig)


def check_ground_truth(dataset: RetrievalDataset, protocol: str | None) -> None:
    """Refuse a dataset that cannot give a single metric: no query, or no query with a positive."""
    if not dataset.queries or not dataset.database:
        raise EvaluationError(
            f"{dataset.name}: the dataset has {len(dataset.database)} database images and "
            f"{len(dataset.queries)} queries; it needs at least one of each"
        )
    protocols = [protocol] if protocol else list(dataset.positives)
    counts = {p: sum(len(x) > 0 for x in dataset.positives.get(p, [])) for p in protocols}
    if not any(counts.values()):
        raise EvaluationError(
            f"{dataset.name}: empty ground truth: no query has a positive "
            f"(protocols {', '.join(protocols) or 'none'}); check the ground-truth file / positions"
        )
    for name, count in counts.items():
        if not count:
            LOGGER.warning("protocol %s: no query has a positive; its metrics are NaN", name)
