"""``tscm_export_dataset BAG --out DIR [options]``: images + poses of a rosbag -> a CSV dataset
(:func:`tscm_ros.data.export_bag.export_bag`; examples and the format in that module's docstring).

Exit status: 0 exported, 1 error (one line on stderr), 2 command-line usage error.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tscm_ros.cli.common import run_reporting
from tscm_ros.data import export_bag as library

PROG = "tscm_export_dataset"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Export images + poses of a rosbag to a tscm_ros CSV dataset.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=library.__doc__.split("Examples::", 1)[1],
    )
    parser.add_argument("bag", type=Path, help="rosbag2 folder, .db3/.mcap file or ROS 1 .bag")
    parser.add_argument("--out", type=Path, required=True, help="dataset folder (dataset.csv + images/)")
    parser.add_argument("--image-topic", help="Image or CompressedImage topic (default: the first one)")
    parser.add_argument("--pose-topic", help="Odometry / PoseStamped / PoseWithCovarianceStamped topic")
    parser.add_argument("--every-n", type=int, default=1, help="keep every N-th frame that has a pose")
    parser.add_argument("--min-distance-m", type=float, default=0.0, help="skip frames closer than D m")
    parser.add_argument("--format", dest="image_format", choices=("jpg", "png"), default="jpg")
    parser.add_argument("--split-by", choices=("none", "sequence", "distance"), default="none")
    parser.add_argument(
        "--split",
        choices=("train", "val", "test"),
        default="train",
        help="split of every row (--split-by none)",
    )
    parser.add_argument("--val-fraction", type=float, default=0.1)
    parser.add_argument("--test-fraction", type=float, default=0.1)
    parser.add_argument(
        "--role",
        choices=("database", "query", "both"),
        help="role column (default empty = both: leave-one-out)",
    )
    parser.add_argument("--prefix", help="image subfolder name (default: the bag name)")
    parser.add_argument("--append", action="store_true", help="add rows to an existing dataset.csv")
    parser.add_argument(
        "--allow-partial",
        action="store_true",
        help="export what can be read of a damaged bag (corrupt storage, fewer messages than it lists)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from tscm_ros.bags import BagDamagedError, BagError

    def run() -> int:
        result = library.export_bag(
            args.bag,
            args.out,
            image_topic=args.image_topic,
            pose_topic=args.pose_topic,
            every_n=args.every_n,
            min_distance_m=args.min_distance_m,
            image_format=args.image_format,
            split_by=args.split_by,
            split=args.split,
            val_fraction=args.val_fraction,
            test_fraction=args.test_fraction,
            role=args.role or "",
            prefix=args.prefix,
            append=args.append,
            allow_partial=args.allow_partial,
        )
        print(
            f"exported {result['exported']} of {result['frames_with_pose']} frames with a pose "
            f"to {result['csv']} "
            f"(splits {result['splits']}); {result['read']}"
        )
        return 0

    hint = " (--allow-partial exports what can be read)"
    return run_reporting(PROG, run, (BagError, OSError, ValueError), hints=[(BagDamagedError, hint)])


if __name__ == "__main__":
    sys.exit(main())
