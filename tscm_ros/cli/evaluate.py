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
(:mod:`tscm_ros.pipelines.rerank`) and reports recall@N after re-ranking and the loop-closure
precision/recall of the re-ranked top-1 over ``min_inliers`` (``results.json`` key ``verification``).
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from tscm_ros.cli.common import (
    DEVICE_HELP,
    add_backend_option,
    add_batch_size_option,
    add_device_option,
    run_reporting,
    setup_logging,
)
from tscm_ros.data.dataset import DatasetError, RetrievalDataset
from tscm_ros.data.registry import load_dataset
from tscm_ros.evaluation import metrics
from tscm_ros.pipelines.evaluate import (
    EvaluationError,
    check_ground_truth,
    describe_dataset,
    evaluate,
    evaluate_sequences,
    load_descriptors,
    plot_results,
    verify_rerank,
)

PROG = "tscm_evaluate"


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
        prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
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
    add_backend_option(parser, choices=("torch", "onnxruntime"))
    add_device_option(parser, help=DEVICE_HELP)
    add_batch_size_option(parser)
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


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; errors print one line to stderr and return 1 (argparse usage errors exit 2)."""
    args = build_parser().parse_args(argv)
    setup_logging(fmt="%(levelname)s %(message)s", verbose=args.verbose)
    return run_reporting(PROG, lambda: _run(args), EvaluationError, prefix="")


def _load(spec: str) -> RetrievalDataset:
    try:
        return load_dataset(spec)
    except (DatasetError, FileNotFoundError) as exc:
        raise EvaluationError(str(exc)) from exc
    except UnicodeDecodeError as exc:  # a binary file where a text CSV / ground-truth file belongs
        raise EvaluationError(f"{spec}: not a UTF-8 text file (byte {exc.start}: {exc.reason})") from exc
    except csv.Error as exc:
        raise EvaluationError(f"{spec}: not a readable CSV file ({exc})") from exc


def _describe(args: argparse.Namespace, dataset: RetrievalDataset) -> tuple[np.ndarray, np.ndarray, dict]:
    from tscm_ros.describer import create_describer  # heavy (torch): import only when needed

    try:
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
        return describe_dataset(describer, dataset, args.backend)
    except (OSError, ValueError, RuntimeError) as exc:  # missing/corrupt model, unreadable image
        raise EvaluationError(f"{type(exc).__name__}: {exc}") from exc


def _run(args: argparse.Namespace) -> int:
    if not (args.model or args.untrained or args.descriptors):
        raise EvaluationError("give --model DIR, --untrained or --descriptors DB.npy,Q.npy")
    dataset = _load(args.dataset)
    check_ground_truth(dataset, args.protocol)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.descriptors:
        database, queries = load_descriptors(args.descriptors, dataset)
        model = {"label": f"precomputed descriptors {args.descriptors}"}
    else:
        database, queries, model = _describe(args, dataset)
        np.save(args.out / "database.npy", database)
        np.save(args.out / "queries.npy", queries)
    results = evaluate(database, queries, dataset, args.ns, args.protocol)
    if args.sequence:
        evaluate_sequences(database, queries, dataset, args.ns, args.sequence, results)
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
    plot_results(results, args.out, dataset.name)
    _print_results(dataset, model, results, args.ns)
    if args.sequence:
        _print_sequences(results, args.ns)
    if args.verify:
        _print_verification(report["verification"])
    print(f"\nwrote {args.out / 'results.json'}, pr_curve.png, recall_at_n.png")
    return 0


def _print_results(dataset: RetrievalDataset, model: dict, results: dict, ns: Sequence[int]) -> None:
    sizes = f"{len(dataset.database)} database / {len(dataset.queries)} queries"
    print(f"\n{dataset.name}: {sizes}, {model['label']}\n")
    header = ["protocol"] + [f"R@{n}" for n in ns] + ["mAP@K", "AP (top-1 PR)", "R@100%P"]
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


def _print_sequences(results: dict, ns: Sequence[int]) -> None:
    header = ["protocol", "L"] + [f"R@{n} (seq)" for n in ns] + [f"R@{n} (single)" for n in ns]
    print("\nsequence matching (first L-1 queries use partial sequences)\n")
    print("| " + " | ".join(header) + " |\n|" + "---|" * len(header))
    for name, r in results.items():
        for length, s in r["sequence"].items():
            cells = [name, length] + [f"{v:.4f}" for v in s["recall"].values()]
            cells += [f"{v:.4f}" for v in s["single_frame_recall"].values()]
            print("| " + " | ".join(cells) + " |")


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


if __name__ == "__main__":
    sys.exit(main())
