"""Online = offline: a bag replayed into place_recognition_node versus tscm_build_map on the same bag.

    python -m tscm_ros.cli.online_offline BAG --params-file config/place_recognition.yaml --out DIR

Exit codes: 0 same places and candidate pairs, 1 they differ. The comparison is
:func:`tscm_ros.ros.online_offline.compare_online_offline` (needs rclpy; imported inside :func:`main`).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("bag", type=Path)
    parser.add_argument("--params-file", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--rate", type=float, default=1.0, help="bag_player speed factor")
    parser.add_argument(
        "--no-depth", action="store_true", help="the bag has no depth/camera_info/odom topics"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from tscm_ros.ros.online_offline import compare_online_offline

    topics = {"image": "/camera/image_raw"} if args.no_depth else None
    comparison = compare_online_offline(args.bag, args.params_file, args.out, rate=args.rate, topics=topics)
    print(comparison.summary())
    if comparison.dropped:
        print("left out (no node output): " + " ".join(str(stamp) for stamp in comparison.dropped))
    return 0 if comparison.same else 1


if __name__ == "__main__":
    sys.exit(main())
