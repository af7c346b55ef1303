"""``tscm_convert_published INPUT OUTPUT_DIR [--arch auto|student|teacher] [--no-variance-head]``.

Reads a checkpoint of the published TSCM code (:mod:`tscm_ros.published` maps its names to ours) and writes
it in our model format (:func:`tscm_ros.model_io.save_model`).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tscm_ros.cli.common import run_reporting


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tscm_convert_published",
        description="Convert a published TSCM checkpoint (.pth/.pth.tar) to this package's model format.",
    )
    parser.add_argument("input", type=Path, help="published checkpoint (ckpt_*.pth.tar)")
    parser.add_argument("output_dir", type=Path, help="directory to write model.safetensors + model.json")
    parser.add_argument("--arch", choices=("auto", "student", "teacher"), default="auto")
    parser.add_argument(
        "--no-variance-head", action="store_true", help="drop the student's var_head (not used for retrieval)"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Exit codes: 0 converted, 2 not a readable published checkpoint (one line on stderr) or bad usage."""
    args = build_parser().parse_args(argv)
    from tscm_ros.model_io import ModelFormatError, load_published, save_model  # torch: only when run

    def convert() -> int:
        loaded = load_published(
            args.input, arch=args.arch, variance_head=False if args.no_variance_head else None
        )
        written = save_model(loaded.module, args.output_dir, provenance=loaded.provenance)
        params = sum(p.numel() for p in loaded.module.parameters())
        print(
            f"converted published {loaded.arch} ({params / 1e6:.2f} M parameters, "
            f"options {loaded.options}) -> {written}"
        )
        return 0

    return run_reporting("tscm_convert_published", convert, ModelFormatError, code=2)


if __name__ == "__main__":
    sys.exit(main())
