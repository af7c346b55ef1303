"""``tscm_describe QUERY_DIR [DATABASE_DIR]``: print each query's nearest database images (cosine)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from tscm_ros.cli.common import (
    BACKENDS,
    add_backend_option,
    add_batch_size_option,
    add_device_option,
    add_precision_option,
    run_reporting,
    setup_logging,
)
from tscm_ros.precision import PRECISIONS

PROG = "tscm_describe"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.strip())
    parser.add_argument("queries", type=Path, help="folder of query images")
    parser.add_argument(
        "database",
        type=Path,
        nargs="?",
        help="folder to search (default: the query folder, excluding each query itself)",
    )
    parser.add_argument("--model", help="model directory / published checkpoint / .onnx (default: untrained)")
    parser.add_argument("--arch", default="student", choices=["student", "teacher"])
    add_backend_option(parser, choices=list(BACKENDS))
    add_precision_option(
        parser,
        list(PRECISIONS),
        "default: fp32 (fp16 autocast on CUDA, fp16 for TensorRT); see tscm_ros.precision",
    )
    add_device_option(parser)
    add_batch_size_option(parser)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("-k", "--top-k", type=int, default=3)
    parser.add_argument("--optimize", action="store_true", help="CPU: frozen TorchScript path")
    parser.add_argument("--save", type=Path, help="also write query descriptors to this .npy file")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Exit codes: 0 done, 2 missing folder / model or unreadable image (one line on stderr) or bad usage."""
    args = build_parser().parse_args(argv)
    setup_logging()
    from tscm_ros.describer import create_describer, describe_files  # torch: only when run
    from tscm_ros.image_files import list_images

    def run() -> int:
        describer = create_describer(
            args.model, arch=args.arch, backend=args.backend, device=args.device, batch_size=args.batch_size,
            num_threads=args.threads, optimize=args.optimize, precision=args.precision,
        )  # fmt: skip
        query_files = list_images(args.queries)
        same_folder = args.database is None or args.database.resolve() == args.queries.resolve()
        db_files = query_files if same_folder else list_images(args.database)
        query_desc = describe_files(describer, query_files)
        db_desc = query_desc if same_folder else describe_files(describer, db_files)
        _print_matches(describer, query_files, db_files, query_desc @ db_desc.T, same_folder, args.top_k)
        if args.save:
            np.save(args.save, query_desc)
        return 0

    return run_reporting(PROG, run, (ValueError, FileNotFoundError, OSError, RuntimeError), code=2)


def _print_matches(
    describer,
    query_files: list[Path],
    db_files: list[Path],
    similarity: np.ndarray,
    same_folder: bool,
    top_k: int,
) -> None:
    print(
        f"# {describer.label}; backend={describer.backend} device={describer.device} "
        f"precision={describer.precision} dim={describer.dim}"
    )
    print(f"# fingerprint {describer.fingerprint}")
    if same_folder:
        np.fill_diagonal(similarity, -np.inf)
    k = max(1, min(top_k, len(db_files) - int(same_folder)))
    for qi, query in enumerate(query_files):
        order = np.argsort(-similarity[qi], kind="stable")[:k]
        matches = "  ".join(f"{db_files[j].name} ({similarity[qi, j]:.4f})" for j in order)
        print(f"{query.name}: {matches}")


if __name__ == "__main__":
    sys.exit(main())
