"""``tscm_demo [--corridor DIR] [--out DIR] ...``: the end-to-end demo of :mod:`tscm_ros.demo.main`.

Exit codes: 0 done, 2 bad settings or a missing dataset (one line on stderr) or bad usage.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from tscm_ros.cli.common import add_device_option, run_reporting, setup_logging
from tscm_ros.demo.main import DEFAULT_OUT, run_corridor, run_demo
from tscm_ros.demo.scene import SceneConfig

PROG = "tscm_demo"


def build_parser() -> argparse.ArgumentParser:
    defaults = SceneConfig()
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="TSCM place-recognition demo: procedural two-lap drive -> rosbag2 -> place map -> "
        "verified loop closures -> precision/recall against the known poses (--corridor: real images scored "
        "against the dataset's +-2-frame ground truth). No downloads.",
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output directory")
    parser.add_argument("--model", type=Path, help="model directory (default: models/ if it has model.json)")
    parser.add_argument("--untrained", action="store_true", help="use the seeded untrained student")
    add_device_option(parser)
    parser.add_argument(
        "--threshold",
        type=float,
        help="loop-closure cosine threshold (default: calibrated from the first lap)",
    )
    parser.add_argument("--radius", type=float, default=3.0, help="ground-truth radius (m), scene mode")
    parser.add_argument("--frames-per-lap", type=int, default=defaults.frames_per_lap)
    parser.add_argument("--width", type=int, default=defaults.width)
    parser.add_argument("--height", type=int, default=defaults.height)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--corridor", type=Path, help="VPR-Bench folder with ref/, query/")
    parser.add_argument(
        "--verify",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="geometric verification of the candidates (default: on; P/R is printed with and without)",
    )
    parser.add_argument(
        "--sequence", type=int, metavar="L", help="sequence matching over L keyframes (default: params file)"
    )
    parser.add_argument(
        "--params-file",
        type=Path,
        help="the node's parameter YAML (default: the shipped config/place_recognition.yaml)",
    )
    parser.add_argument("--overwrite", action="store_true", help="re-create the bag in --out")
    parser.add_argument("--no-progress", action="store_true")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(logging.WARNING)
    common = dict(
        model=args.model, untrained=args.untrained, device=args.device, threshold=args.threshold,
        overwrite=args.overwrite, progress=not args.no_progress, verify=args.verify,
        sequence_length=args.sequence, params_file=args.params_file,
    )  # fmt: skip

    def run() -> int:
        if args.corridor:
            out = args.out / "corridor" if args.out == DEFAULT_OUT else args.out
            run_corridor(args.corridor, out, **common)
            return 0
        if args.frames_per_lap < 4 or args.width < 32 or args.height < 24:
            raise ValueError("--frames-per-lap must be >= 4 and the image at least 32x24")
        scene = SceneConfig(
            seed=args.seed, frames_per_lap=args.frames_per_lap, width=args.width, height=args.height
        )
        run_demo(args.out, scene=scene, radius_m=args.radius, **common)
        return 0

    return run_reporting(PROG, run, (FileNotFoundError, FileExistsError, ValueError), code=2)


if __name__ == "__main__":
    sys.exit(main())
