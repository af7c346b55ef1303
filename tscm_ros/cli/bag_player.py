"""bag_player: publish a bag's topics over ROS 2 with the original timing (no ros2 CLI / rosbag2_py needed).

The player is :mod:`tscm_ros.ros.bag_player` (imported inside :func:`main`: this module imports without
rclpy)::

    bag_player BAG [--topics /camera/image_raw /odom] [--rate 2.0] [--clock] [--loop] [--start-delay 1.0]
               [--no-progress] [--ros-args -r /camera/image_raw:=/image]
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

PROG = "bag_player"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    parser.add_argument("bag", type=Path, help="rosbag2 directory (sqlite3 or mcap) or ROS 1 .bag file")
    parser.add_argument("--topics", nargs="+", help="only these topics (default: all)")
    parser.add_argument("--rate", type=float, default=1.0, help="speed factor (0 = as fast as possible)")
    parser.add_argument("--clock", action="store_true", help="publish /clock with the bag time")
    parser.add_argument("--clock-hz", type=float, default=100.0, help="/clock rate between messages")
    parser.add_argument("--loop", action="store_true", help="repeat until interrupted")
    parser.add_argument("--start-delay", type=float, default=0.5, help="seconds to wait before playing")
    parser.add_argument(
        "--wait-for-subscribers",
        type=int,
        default=0,
        metavar="N",
        help="before playing, wait (up to 10 s) until every topic has N subscribers",
    )
    parser.add_argument("--qos-depth", type=int, default=10, help="publisher history depth (reliable)")
    parser.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="progress bar on stderr (default: only when stderr is a terminal)",
    )
    parser.add_argument(
        "--allow-partial",
        action="store_true",
        help="play what can be read of a damaged bag instead of stopping with exit code 1",
    )
    return parser


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    """The player's own arguments (``--ros-args ...`` already removed)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.rate < 0:
        parser.error("--rate must be >= 0")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Console script. Exit codes: 0 played (or stopped by Ctrl+C / SIGTERM; also a damaged bag with
    --allow-partial), 1 unusable or damaged bag, 2 bad usage."""
    from tscm_ros.ros.bag_player import PlayOptions, own_arguments, play_bag

    argv = list(sys.argv if argv is None else argv)
    args = parse_args(own_arguments(argv))
    return play_bag(PlayOptions(**vars(args)), argv)


if __name__ == "__main__":
    sys.exit(main())
