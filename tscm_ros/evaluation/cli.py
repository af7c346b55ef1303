"""``tscm_evaluate``: Recall@N, mAP and the top-1 PR curve (+AP) of a model or of saved descriptors.

Examples::

    tscm_evaluate --dataset corridor:../shared/data/corridor --model models/student --out eval/corridor
    tscm_evaluate --dataset folders:../shared/data/vpr_triplets --untrained --out eval/triplets
    tscm_evaluate --dataset vprbench:DIR --descriptors db.npy,q.npy --out eval/x
    tscm_evaluate --dataset corridor:../shared/data/corridor --untrained --sequence 5,10,20 --out eval/seq
    tscm_evaluate --dataset corridor:../shared/data/corridor --untrained --verify --out eval/corridor

Writes ``results.json``, ``pr_curve.png`` and ``recall_at_n.png`` into ``--out`` (plus the computed
descriptors as ``database.npy`` / ``queries.npy`` when a model ran) and prints a markdown table.
``--sequence L`` adds sequence-matched Recall@N (:mod:`tscm_ros.evaluation.sequence_eval`; database and
queries must each be one traversal in order) next to the single-frame values.
``--verify`` also re-ranks each query's top-K (``--verify-top-k``) by geometric verification
(:mod:`tscm_ros.evaluation.rerank`) and reports recall@N after re-ranking and the loop-closure
precision/recall of the re-ranked top-1 over ``min_inliers`` (``results.json`` key ``verification``).
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from tscm_ros.data.dataset import DatasetError, RetrievalDataset
from tscm_ros.data.registry import load_dataset
from tscm_ros.descriptors import normalize_rows

from . import metrics

LOGGER = logging.getLogger("tscm_evaluate")


def _parse_ns(text: str) -> tuple[int, ...]:
    try:
        ns = tuple(sorted({int(v) for v in text.split(",") if v.strip()}))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--ns must be comma-separated integers, got {text!r}") from None
    if not ns or ns[0] < 1:
        raise argparse.ArgumentTypeError(f"--ns values must be >= 1, got {text!r}")
    return ns


def _parse_lengths(text: str) -> tuple[int, ...]:
    try:
        lengths = tuple(sorted({int(v) for v in text.split(",") if v.strip()}))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--sequence takes comma-separated integers, got {text!r}") from None
    if not lengths or lengths[0] < 1:
        raise argparse.ArgumentTypeError(f"--sequence lengths must be >= 1, got {text!r}")
    return lengths


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tscm_evaluate", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--dataset", required=True,
        help="corridor:DIR | vprbench:DIR | folders:DIR | utm-csv:FILE[:METRES] (or a registered kind)",
    )  # fmt: skip
    source = parser.add_mutually_exclusive_group()
    source.add_argument(
        "--model", type=Path, help="model directory / model.json / .onnx / published checkpoint"
    )
    source.add_argument("--untrained", action="store_true", help="seeded random network (a baseline only)")
    source.add_argument("--descriptors", help="precomputed DB.npy,QUERIES.npy (float32, one row per image)")
    parser.add_argument("--arch", default="student", choices=("student", "teacher"))
    parser.add_argument("--backend", default="torch", choices=("torch", "onnxruntime"))
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--protocol", help="ground-truth protocol (default: every one the dataset has)")
    parser.add_argument(
        "--ns", type=_parse_ns, default=metrics.DEFAULT_NS, help="recall@N values, e.g. 1,5,10,20"
    )
    parser.add_argument(
        "--sequence", type=_parse_lengths, default=(),
        help="also sequence-matched recall@N at these sequence lengths L, e.g. 10 or 5,10,20 "
        "(database and queries in traversal order)",
    )  # fmt: skip
    parser.add_argument("--verify", action="store_true", help="re-rank the top-K by geometric verification")
    parser.add_argument("--verify-top-k", type=int, default=10, help="candidates verified per query")
    parser.add_argument("--verify-method", default="sift", choices=("sift", "orb"), help="local features")
    parser.add_argument("--out", type=Path, required=True, help="output folder (created)")
    parser.add_argument("-v", "--verbose", action="store_true")
    return parser


def _load_descriptors(spec: str, dataset: RetrievalDataset) -> tuple[np.ndarray, np.ndarray]:
    parts = [p for p in spec.split(",") if p]
    if len(parts) != 2:
        raise SystemExit(f"--descriptors needs DB.npy,QUERIES.npy, got {spec!r}")
    arrays = []
    for path, expected, what in zip(
        parts, (len(dataset.database), len(dataset.queries)), ("database", "queries"), strict=True
    ):
        try:
            array = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise SystemExit(f"cannot read {what} descriptors {path}: {exc}") from exc
        if array.ndim != 2 or len(array) != expected:
            raise SystemExit(f"{path}: expected ({expected}, D) {what} descriptors, got shape {array.shape}")
        arrays.append(array.astype(np.float32))
    if arrays[0].shape[1] != arrays[1].shape[1]:
        raise SystemExit(f"descriptor dimensions differ: {arrays[0].shape[1]} vs {arrays[1].shape[1]}")
    return arrays[0], arrays[1]


def _describe(args: argparse.Namespace, dataset: RetrievalDataset) -> tuple[np.ndarray, np.ndarray, dict]:
    from tscm_ros.describer import create_describer, describe_files  # heavy (torch): import only when needed

    describer = create_describer(
        None if args.untrained else args.model, arch=args.arch, backend=args.backend, device=args.device,
        batch_size=args.batch_size,
    )  # fmt: skip
    if args.untrained:
        print(
            "=" * 78
            + f"\nWARNING: {describer.label}: these numbers are a random-weights baseline\n"
            + "=" * 78
        )
    started = time.perf_counter()
    database = describe_files(describer, dataset.database)
    queries = describe_files(describer, dataset.queries)
    seconds = time.perf_counter() - started
    info = {
        "label": describer.label, "fingerprint": describer.fingerprint, "backend": args.backend,
        "device": str(describer.device), "describe_seconds": seconds,
        "ms_per_image": 1000 * seconds / max(1, len(database) + len(queries)),
    }  # fmt: skip
    return database, queries, info


def _normalise(x: np.ndarray) -> np.ndarray:
    try:
        return normalize_rows(x)
    except ValueError as error:
        raise SystemExit(f"descriptors: {error}") from error


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
        raise SystemExit(f"dataset has no protocol {missing[0]!r}; it has {list(dataset.positives)}")
    k = min(max(ns), len(database))
    sims, ranked = metrics.exact_search(
        _normalise(database), _normalise(queries), k, exclude=dataset.query_database_index
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


def _evaluate_sequences(
    database: np.ndarray,
    queries: np.ndarray,
    dataset: RetrievalDataset,
    ns: Sequence[int],
    lengths: Sequence[int],
    results: dict,
) -> None:
    """Add ``results[protocol]["sequence"][str(L)]``: sequence and single-frame recall@N (same top-K)."""
    from .sequence_eval import sequence_recall_at_n

    database, queries = _normalise(database), _normalise(queries)
    for name, r in results.items():
        r["sequence"] = {}
        for length in lengths:
            found = sequence_recall_at_n(database, queries, dataset.positives[name], length, ns)
            r["sequence"][str(length)] = {
                "recall": {str(n): v for n, v in found.recall.items()},
                "single_frame_recall": {str(n): v for n, v in found.single_frame_recall.items()},
                "partial_queries": found.partial_queries,
            }


def _print_sequences(results: dict, ns: Sequence[int]) -> None:
    header = ["protocol", "L"] + [f"R@{n} (seq)" for n in ns] + [f"R@{n} (single)" for n in ns]
    print("\nsequence matching (first L-1 queries use partial sequences)\n")
    print("| " + " | ".join(header) + " |\n|" + "---|" * len(header))
    for name, r in results.items():
        for length, s in r["sequence"].items():
            cells = [name, length] + [f"{v:.4f}" for v in s["recall"].values()]
            cells += [f"{v:.4f}" for v in s["single_frame_recall"].values()]
            print("| " + " | ".join(cells) + " |")


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
    from tscm_ros.evaluation.rerank import accepted_precision_recall, inlier_sweep, rerank_with_verification
    from tscm_ros.features import FeatureConfig
    from tscm_ros.verification import VerifierConfig

    if top_k < 1:
        raise SystemExit(f"--verify-top-k must be >= 1, got {top_k}")
    _, ranked = metrics.exact_search(_normalise(database), _normalise(queries), min(top_k, len(database)))
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


def _print_verification(report: dict) -> None:
    rule = report["rule"]
    ns = list(next(iter(report["protocols"].values()))["recall"]) if report["protocols"] else []
    print(
        f"\nverification ({report['method']}, top-{report['top_k']} re-ranked; default rule: >= "
        f"{rule['min_inliers']} inliers, ratio >= {rule['min_inlier_ratio']}; "
        f"{report['ms_per_extraction']:.1f} ms/extraction, "
        f"{report['ms_per_verification']:.2f} ms/verification)\n"
    )
    header = ["protocol"] + [f"R@{n} before" for n in ns] + [f"R@{n} after" for n in ns]
    header += ["P (default rule)", "R (default rule)"]
    print("| " + " | ".join(header) + " |\n|" + "---|" * len(header))
    for name, r in report["protocols"].items():
        cells = [name] + [f"{v:.4f}" for v in r["recall_before"].values()]
        cells += [f"{v:.4f}" for v in r["recall"].values()]
        cells += [f"{r['default_rule']['precision']:.4f}", f"{r['default_rule']['recall']:.4f}"]
        print("| " + " | ".join(cells) + " |")
    for name, r in report["protocols"].items():
        print(f"\n{name}: re-ranked top-1 accepted at >= min_inliers\n")
        print("| min_inliers | accepted | precision | recall |\n|---|---|---|---|")
        for row in r["sweep"]:
            print(
                f"| {row['min_inliers']} | {row['accepted']} | {row['precision']:.4f} | {row['recall']:.4f} |"
            )


def _plot(results: dict, out: Path, title: str) -> None:
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


def _check_ground_truth(dataset: RetrievalDataset, protocol: str | None) -> None:
    """Refuse a dataset that cannot give a single metric: no query, or no query with a positive."""
    if not dataset.queries or not dataset.database:
        raise SystemExit(
            f"tscm_evaluate: {dataset.name}: the dataset has {len(dataset.database)} database images and "
            f"{len(dataset.queries)} queries; it needs at least one of each"
        )
    protocols = [protocol] if protocol else list(dataset.positives)
    counts = {p: sum(len(x) > 0 for x in dataset.positives.get(p, [])) for p in protocols}
    if not any(counts.values()):
        raise SystemExit(
            f"tscm_evaluate: {dataset.name}: empty ground truth: no query has a positive "
            f"(protocols {', '.join(protocols) or 'none'}); check the ground-truth file / positions"
        )
    for name, count in counts.items():
        if not count:
            LOGGER.warning("protocol %s: no query has a positive; its metrics are NaN", name)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; errors print one line to stderr and return 1 (argparse usage errors exit 2)."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(message)s"
    )
    try:
        return _run(args)
    except SystemExit as exc:
        if not isinstance(exc.code, str):
            raise
        message = " ".join(exc.code.split())  # one line
        if not message.startswith("tscm_evaluate:"):
            message = f"tscm_evaluate: {message}"
        print(message, file=sys.stderr)
        return 1


def _run(args: argparse.Namespace) -> int:
    if not (args.model or args.untrained or args.descriptors):
        raise SystemExit("tscm_evaluate: give --model DIR, --untrained or --descriptors DB.npy,Q.npy")
    try:
        dataset = load_dataset(args.dataset)
    except (DatasetError, FileNotFoundError) as exc:
        raise SystemExit(f"tscm_evaluate: {exc}") from exc
    except UnicodeDecodeError as exc:  # a binary file where a text CSV / ground-truth file belongs
        raise SystemExit(
            f"tscm_evaluate: {args.dataset}: not a UTF-8 text file (byte {exc.start}: {exc.reason})"
        ) from exc
    except csv.Error as exc:
        raise SystemExit(f"tscm_evaluate: {args.dataset}: not a readable CSV file ({exc})") from exc
    _check_ground_truth(dataset, args.protocol)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.descriptors:
        database, queries = _load_descriptors(args.descriptors, dataset)
        model = {"label": f"precomputed descriptors {args.descriptors}"}
    else:
        try:
            database, queries, model = _describe(args, dataset)
        except (OSError, ValueError, RuntimeError) as exc:  # missing/corrupt model, unreadable image
            raise SystemExit(f"tscm_evaluate: {type(exc).__name__}: {exc}") from exc
        np.save(args.out / "database.npy", database)
        np.save(args.out / "queries.npy", queries)
    results = evaluate(database, queries, dataset, args.ns, args.protocol)
    if args.sequence:
        _evaluate_sequences(database, queries, dataset, args.ns, args.sequence, results)
    report = {
        "dataset": {"spec": args.dataset, "name": dataset.name, "database": len(dataset.database),
                    "queries": len(dataset.queries)},
        "model": model,
        "descriptor_dim": int(database.shape[1]),
        "protocols": results,
    }  # fmt: skip
    if args.verify:
        report["verification"] = verify_rerank(
            database, queries, dataset, args.ns, args.protocol, args.verify_top_k, args.verify_method
        )
    (args.out / "results.json").write_text(json.dumps(report, indent=2))
    _plot(results, args.out, dataset.name)
    sizes = f"{len(dataset.database)} database / {len(dataset.queries)} queries"
    print(f"\n{dataset.name}: {sizes}, {model['label']}\n")
    header = ["protocol"] + [f"R@{n}" for n in args.ns] + ["mAP@K", "AP (top-1 PR)", "R@100%P"]
    print("| " + " | ".join(header) + " |\n|" + "---|" * len(header))
    for name, r in results.items():
        pr = r["pr"]
        cells = [name] + [f"{v:.4f}" for v in r["recall"].values()]
        cells += [
            f"{r['map_at_k']:.4f}",
            f"{pr['average_precision']:.4f}",
            f"{pr['recall_at_100_precision']:.4f}",
        ]
        print("| " + " | ".join(cells) + " |")
    if args.sequence:
        _print_sequences(results, args.ns)
    if args.verify:
        _print_verification(report["verification"])
    print(f"\nwrote {args.out / 'results.json'}, pr_curve.png, recall_at_n.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
