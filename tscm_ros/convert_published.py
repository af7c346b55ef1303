"""``tscm_convert_published INPUT OUTPUT_DIR [--arch auto|student|teacher] [--no-variance-head]``.

Reads a checkpoint of the published TSCM code (:mod:`tscm_ros.published` maps its names to ours) and writes
it in our model format (:func:`tscm_ros.model_io.save_model`).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tscm_ros.model_io import ModelFormatError, load_published, save_model


def main(argv: list[str] | None = None) -> int:
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
    args = parser.parse_args(argv)
    try:
        loaded = load_published(
            args.input, arch=args.arch, variance_head=False if args.no_variance_head else None
        )
    except ModelFormatError as error:
        print(f"tscm_convert_published: error: {error}", file=sys.stderr)
        return 2
    written = save_model(loaded.module, args.output_dir, provenance=loaded.provenance)
    params = sum(p.numel() for p in loaded.module.parameters())
    print(
        f"converted published {loaded.arch} ({params / 1e6:.2f} M parameters, "
        f"options {loaded.options}) -> {written}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
