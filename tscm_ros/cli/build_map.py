"""``tscm_build_map BAG --out DIR [options]``: a place map and loop closures from a bag
(:mod:`tscm_ros.pipelines.build_map`)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tscm_ros.bags import BagDamagedError, BagError
from tscm_ros.cli.common import (
    BACKENDS,
    add_backend_option,
    add_batch_size_option,
    add_device_option,
    add_precision_option,
    fail,
    run_reporting,
    setup_logging,
)
from tscm_ros.pipelines.build_map import add_features_from_bag, build_map_from_bag, check_topics, read_stamps
from tscm_ros.placemap import MapError
from tscm_ros.recognition import RecognitionConfig, read_params_file

PROG = "tscm_build_map"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Build a TSCM place map and loop closures from a rosbag2 (sqlite3/mcap) or ROS 1 bag, "
        "through the same recognition session as place_recognition_node. Settings come from the node's "
        "params file (--params-file) and the options below override them.",
        epilog="Exit status: 0 map built (with --allow-partial also from a damaged bag: the summary says "
        "PARTIAL); 1 error (missing or damaged bag, unknown topic, bad setting, unusable --out), reported "
        "in one line on stderr; 2 command-line usage error.",
    )
    parser.add_argument("bag", type=Path, help="rosbag2 directory, .db3/.mcap file or ROS 1 .bag")
    parser.add_argument("--out", type=Path, help="output directory (map/, csv, plots)")
    parser.add_argument(
        "--params-file", type=Path, help="the node's parameter YAML (e.g. config/place_recognition.yaml)"
    )
    parser.add_argument("--image-topic", help="Image/CompressedImage topic (default: the first one)")
    parser.add_argument(
        "--pose-topic", help="Odometry/PoseStamped topic (default: auto-detect; 'none' disables poses)"
    )
    parser.add_argument("--depth-topic", help="aligned depth Image topic (default: the one named *depth*)")
    parser.add_argument("--camera-info-topic", help="CameraInfo topic (default: auto-detect; 'none' = none)")
    parser.add_argument("--model", type=Path, help="model directory (model.json); default: untrained student")
    add_backend_option(parser, BACKENDS, default=None, help="default: the params file's, else torch")
    add_precision_option(
        parser, ("fp32", "auto", "bf16", "fp16", "int8"), help="default: the params file's, else fp32"
    )
    add_device_option(parser, help="auto, cpu, cuda, cuda:N")
    add_batch_size_option(parser)
    parser.add_argument("--index", help="index spec of the new map (default: index_spec of the params, flat)")
    parser.add_argument("--threshold", type=float, help="similarity_threshold")
    parser.add_argument("--exclusion-window-s", type=float, help="exclusion_window_s")
    parser.add_argument("--top-k", type=int, help="top_k")
    parser.add_argument("--consistency-n", type=int, help="consistency_n")
    parser.add_argument("--min-interval-s", type=float, help="min_interval_s")
    parser.add_argument(
        "--verify", action=argparse.BooleanOptionalAction, default=None, help="geometric verification"
    )
    parser.add_argument("--min-inliers", type=int, help="min_inliers of the verifier")
    parser.add_argument("--sequence", type=int, metavar="L", help="sequence_length (0 = single frames)")
    parser.add_argument(
        "--add-features",
        type=Path,
        metavar="MAP",
        help="instead of building: give the places of an existing map (built without local features) "
        "the features of their frames in BAG",
    )
    parser.add_argument("--max-frames", type=int, help="stop after this many decoded frames")
    parser.add_argument(
        "--skip-stamps",
        type=Path,
        metavar="FILE",
        help="leave out the frames with these header stamps (ns, one per line), e.g. the frames a live node "
        "dropped",
    )
    parser.add_argument(
        "--allow-partial",
        action="store_true",
        help="build from what can be read of a damaged bag (corrupt storage, fewer messages than it lists) "
        "instead of failing",
    )
    parser.add_argument("--no-progress", action="store_true")
    return parser


OPTION_NAMES = {
    "threshold": "similarity_threshold",
    "exclusion_window_s": "exclusion_window_s",
    "top_k": "top_k",
    "consistency_n": "consistency_n",
    "min_interval_s": "min_interval_s",
    "verify": "verify",
    "min_inliers": "min_inliers",
    "sequence": "sequence_length",
}


def options_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The node's params file (when given) with the command-line overrides applied."""
    options = read_params_file(args.params_file) if args.params_file else {}
    options.update(
        {name: getattr(args, key) for key, name in OPTION_NAMES.items() if getattr(args, key) is not None}
    )
    options["mode"] = "mapping"
    return options


def main(argv: Sequence[str] | None = None) -> int:
    """Exit codes: see the parser's epilog (0 built, 1 error in one stderr line, 2 usage)."""
    args = build_parser().parse_args(argv)
    setup_logging()
    if not args.bag.exists():
        return fail(PROG, f"bag not found: {args.bag}")
    hint = " (--allow-partial builds from what can be read)"
    errors = (OSError, BagError, ValueError, MapError)
    return run_reporting(PROG, lambda: _run(args), errors, hints=[(BagDamagedError, hint)])


def _run(args: argparse.Namespace) -> int:
    if args.add_features is not None:
        updated, missing = add_features_from_bag(
            args.add_features, args.bag, image_topic=args.image_topic, depth_topic=args.depth_topic,
            camera_info_topic=args.camera_info_topic,
        )  # fmt: skip
        print(f"{args.add_features}: features added to {updated} places, {missing} places without")
        return 0
    if args.out is None:
        raise ValueError("--out is required (or --add-features MAP)")
    if args.out.exists() and not args.out.is_dir():
        raise ValueError(f"--out {args.out} is a file, not a directory")
    options = options_from_args(args)
    config = RecognitionConfig.from_options(options)
    index_spec = args.index or options.get("index_spec") or "flat"
    check_topics(
        args.bag,
        {
            "--image-topic": args.image_topic,
            "--pose-topic": args.pose_topic,
            "--depth-topic": args.depth_topic,
            "--camera-info-topic": args.camera_info_topic,
        },
    )
    from tscm_ros.describer import create_describer  # torch: after the bag and topics are checked

    describer = create_describer(
        args.model or options.get("model_path") or None,
        backend=args.backend or options.get("backend", "torch"),
        precision=args.precision or options.get("precision", "fp32"),
        device=args.device,
        batch_size=args.batch_size,
    )
    print(f"{PROG}: model: {describer.label}", file=sys.stderr)
    result = build_map_from_bag(
        args.bag,
        args.out,
        image_topic=args.image_topic,
        pose_topic=args.pose_topic,
        depth_topic=args.depth_topic,
        camera_info_topic=args.camera_info_topic,
        describer=describer,
        index_spec=index_spec,
        config=config,
        batch_size=args.batch_size,
        progress=not args.no_progress,
        max_frames=args.max_frames,
        skip_stamps=read_stamps(args.skip_stamps) if args.skip_stamps else (),
        allow_partial=args.allow_partial,
    )
    print(result.summary())
    return 0


if __name__ == "__main__":
    sys.exit(main())
