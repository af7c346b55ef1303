"""``tscm_train teacher|student --config X.yaml [--override key=value ...] [--resume DIR] [--out DIR]``.

Examples::

    tscm_train teacher --config config/train_teacher_pitts30k.yaml
    tscm_train student --config config/distill_student_pitts30k.yaml --override teacher=runs/teacher/best
    tscm_train teacher --resume runs/teacher            # continue an interrupted run (its config.yaml)
    torchrun --nproc_per_node=4 $(which tscm_train) teacher --config ...   # DDP, one process per GPU
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from tscm_ros.training.config import ConfigError, load_config


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tscm_train",
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
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(asctime)s %(message)s"
    )
    config_path = args.config
    if config_path is None and args.resume is not None:
        config_path = args.resume / "config.yaml"  # the resumed run's own settings
    fixed = {"arch": args.arch}
    if args.out is not None or args.resume is not None:
        fixed["out_dir"] = str(args.out if args.out is not None else args.resume)
    try:
        config = load_config(config_path, args.override, **fixed)
    except ConfigError as error:
        print(f"tscm_train: {error}", file=sys.stderr)
        return 2

    from tscm_ros.models import PretrainedWeightsUnavailable
    from tscm_ros.training.train import ResumeError, train

    try:
        summary = train(config, resume_from=args.resume)
    except (PretrainedWeightsUnavailable, ResumeError, FileNotFoundError, ValueError) as error:
        if args.verbose:
            raise
        print(f"tscm_train: error: {error}", file=sys.stderr)
        return 2
    print(
        f"tscm_train: {config.arch} finished after {summary['epochs']} epochs; best val "
        f"{config.early_stop_metric} = {summary['best_score']:.4f} (epoch {summary['best_epoch']}); "
        f"models in {summary['out_dir']}/best and /last"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
