"""``tscm_train teacher|student --config X.yaml [--override key=value ...] [--resume DIR] [--out DIR]``.

Examples::

    tscm_train teacher --config config/train_teacher_pitts30k.yaml
    tscm_train student --config config/distill_student_pitts30k.yaml --override teacher=runs/teacher/best
    tscm_train teacher --resume runs/teacher            # continue an interrupted run (its config.yaml)
    torchrun --nproc_per_node=4 $(which tscm_train) teacher --config ...   # DDP, one process per GPU
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tscm_ros.cli.common import fail, run_reporting, setup_logging
from tscm_ros.training.config import ConfigError, load_config

PROG = "tscm_train"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Train the TSCM teacher (triplet loss) or distil the student from a trained teacher.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("Examples::", 1)[1],
    )
    parser.add_argument("arch", choices=("teacher", "student"))
    parser.add_argument("--config", type=Path, help="YAML configuration (see config/*.yaml)")
    parser.add_argument(
        "--override",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="set one configuration key (repeatable)",
    )
    parser.add_argument("--resume", type=Path, metavar="DIR", help="continue the run in DIR from DIR/last")
    parser.add_argument(
        "--out", type=Path, metavar="DIR", help="output folder (default: config out_dir, or DIR)"
    )
    parser.add_argument("-v", "--verbose", action="store_true")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Exit codes: 0 trained, 2 bad configuration, missing weights or data, or bad usage (one stderr line;
    ``--verbose`` shows the traceback instead)."""
    args = build_parser().parse_args(argv)
    setup_logging(fmt="%(asctime)s %(message)s", verbose=args.verbose)
    config_path = args.config
    if config_path is None and args.resume is not None:
        config_path = args.resume / "config.yaml"  # the resumed run's own settings
    fixed = {"arch": args.arch}
    if args.out is not None or args.resume is not None:
        fixed["out_dir"] = str(args.out if args.out is not None else args.resume)
    try:
        config = load_config(config_path, args.override, **fixed)
    except ConfigError as error:
        return fail(PROG, error, code=2, prefix="")

    from tscm_ros.models import PretrainedWeightsUnavailable
    from tscm_ros.training.train import ResumeError, train

    def run() -> int:
        summary = train(config, resume_from=args.resume)
        print(
            f"tscm_train: {config.arch} finished after {summary['epochs']} epochs; best val "
            f"{config.early_stop_metric} = {summary['best_score']:.4f} (epoch {summary['best_epoch']}); "
            f"models in {summary['out_dir']}/best and /last"
        )
        return 0

    errors = (PretrainedWeightsUnavailable, ResumeError, FileNotFoundError, ValueError)
    return run_reporting(PROG, run, errors, code=2, reraise=args.verbose)


if __name__ == "__main__":
    sys.exit(main())
