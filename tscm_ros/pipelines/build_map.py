"""Offline map building from a bag: frames -> TSCM descriptors -> place map + loop-closure candidates.

``tscm_build_map BAG --out DIR`` reads the image topic (and poses, when the bag has them), describes the
frames in batches, feeds the :class:`LoopClosureDetector` (mapping mode) keyframe by keyframe in stamp
order, and writes into ``DIR``:

* ``map/`` -- the :class:`PlaceMap` (load it in ``place_recognition_node`` for localisation),
* ``loop_closures.csv`` -- one row per candidate (positions when the bag has poses),
* ``loop_timeline.png`` -- query time vs. match time of every candidate,
* ``trajectory.png`` -- keyframe trajectory with loop edges (only when poses exist).
"""

from __future__ import annotations

import argparse
import csv
import logging
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from tscm_ros.bags import BagError, BagReadStats, iter_frames, list_topics
from tscm_ros.images import DEFAULT_MAX_PIXELS
from tscm_ros.loop_closure import LoopCandidate, LoopClosureConfig, LoopClosureDetector
from tscm_ros.placemap import PlaceMap, Pose

if TYPE_CHECKING:
    from tscm_ros.describer import Describer

LOGGER = logging.getLogger(__name__)
NS_PER_S = 1_000_000_000
MAP_DIR = "map"
CSV_FILE = "loop_closures.csv"
TRAJECTORY_PNG = "trajectory.png"
TIMELINE_PNG = "loop_timeline.png"
CSV_COLUMNS = (
    "query_id", "query_stamp_ns", "match_id", "match_stamp_ns", "similarity", "rank",
    "query_x", "query_y", "query_z", "match_x", "match_y", "match_z", "distance_m",
)  # fmt: skip


@dataclass(frozen=True)
class Keyframe:
    place_id: int
    stamp_ns: int
    pose: Pose | None


@dataclass
class BuildResult:
    """What :func:`build_map_from_bag` produced (``descriptors`` etc.: every described frame, stamp order)."""

    out_dir: Path
    map_dir: Path
    csv_path: Path
    plots: list[Path]
    frames: int  # frames decoded and described
    keyframes: list[Keyframe]
    candidates: list[LoopCandidate]
    stats: BagReadStats
    describer_label: str
    describe_seconds: float
    total_seconds: float
    descriptors: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.float32), repr=False)
    frame_stamps_ns: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64), repr=False)
    frame_poses: list[Pose | None] = field(default_factory=list, repr=False)

    def summary(self) -> str:
        per_frame = self.describe_seconds / max(self.frames, 1)
        return (
            f"{self.stats.summary()}\n"
            f"model: {self.describer_label}\n"
            f"{self.frames} frames described ({per_frame * 1000:.0f} ms/frame), "
            f"{len(self.keyframes)} keyframes, "
            f"{len(self.candidates)} loop-closure candidates "
            f"({len({c.query_id for c in self.candidates})} queries) in {self.total_seconds:.1f} s\n"
            f"map: {self.map_dir}\ncandidates: {self.csv_path}\n"
            + "".join(f"plot: {plot}\n" for plot in self.plots)
        ).rstrip()


def _progress(total: int | None, enabled: bool, description: str):
    from tqdm import tqdm

    return tqdm(total=total, disable=not enabled, desc=description, unit="frame", dynamic_ncols=True)


def build_map_from_bag(
    bag: str | Path,
    out_dir: str | Path,
    *,
    image_topic: str | None = None,
    pose_topic: str | None = None,
    describer: Describer,
    index_spec: str = "flat",
    detector_config: LoopClosureConfig | None = None,
    batch_size: int = 8,
    progress: bool = True,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_frames: int | None = None,
) -> BuildResult:
    """Describe every frame of ``bag``, build a place map and detect loop closures (mapping mode).

    ``pose_topic``: None picks an Odometry/PoseStamped topic automatically, "" reads no poses.
    Unsupported or corrupt images are skipped and counted (``result.stats``).

    Raises:
        FileNotFoundError / BagError: missing bag, no or unknown image topic.
        ValueError: no frame of the bag could be decoded.
    """
    started = time.perf_counter()
    bag, out_dir = Path(bag), Path(out_dir)
    config = detector_config or LoopClosureConfig()
    if config.mode != "mapping":
        raise ValueError("build_map_from_bag needs LoopClosureConfig(mode='mapping')")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    counts = {topic.name: topic.count for topic in list_topics(bag)}
    stats = BagReadStats()
    frames = iter_frames(bag, image_topic, pose_topic, max_pixels=max_pixels, stats=stats)

    records: list[tuple[int, str, Pose | None]] = []
    descriptors: list[np.ndarray] = []
    describe_seconds = 0.0
    batch: list = []

    def flush() -> None:
        nonlocal describe_seconds
        tick = time.perf_counter()
        descriptors.append(np.asarray(describer.describe([frame.rgb for frame in batch]), dtype=np.float32))
        describe_seconds += time.perf_counter() - tick
        records.extend((frame.stamp_ns, frame.frame_id, frame.pose) for frame in batch)
        bar.update(len(batch))
        batch.clear()

    bar = None
    try:
        for frame in frames:
            if bar is None:
                total = counts.get(stats.image_topic)
                total = min(total, max_frames) if max_frames and total else total
                bar = _progress(total, progress, f"describe {stats.image_topic}")
            batch.append(frame)
            if len(batch) >= batch_size:
                flush()
            if max_frames is not None and len(records) + len(batch) >= max_frames:
                break
        if batch:
            flush()
    finally:
        frames.close()
        if bar is not None:
            bar.close()
    if not records:
        raise ValueError(f"{bag}: no frame could be decoded ({stats.summary()})")

    all_descriptors = np.concatenate(descriptors)
    place_map = PlaceMap.create(all_descriptors.shape[1], index_spec, model_fingerprint=describer.fingerprint)
    detector = LoopClosureDetector(place_map, config)
    source = f"{bag.name}:{stats.image_topic}"
    keyframes: list[Keyframe] = []
    candidates: list[LoopCandidate] = []
    order = sorted(range(len(records)), key=lambda i: records[i][0])  # stable: stamp order
    for i in order:
        stamp_ns, frame_id, pose = records[i]
        result = detector.process(all_descriptors[i], stamp_ns, frame_id=frame_id, source=source, pose=pose)
        if result.is_keyframe:
            keyframes.append(Keyframe(int(result.place_id), stamp_ns, pose))
            candidates.extend(result.candidates)

    out_dir.mkdir(parents=True, exist_ok=True)
    map_dir = out_dir / MAP_DIR
    place_map.save(map_dir)
    place_map.close()
    csv_path = write_candidates_csv(out_dir / CSV_FILE, candidates)
    plots = write_plots(out_dir, keyframes, candidates, title=f"{bag.name} - {describer.label}")
    result = BuildResult(
        out_dir=out_dir,
        map_dir=map_dir,
        csv_path=csv_path,
        plots=plots,
        frames=len(records),
        keyframes=keyframes,
        candidates=candidates,
        stats=stats,
        describer_label=describer.label,
        describe_seconds=describe_seconds,
        total_seconds=time.perf_counter() - started,
        descriptors=all_descriptors[order],
        frame_stamps_ns=np.array([records[i][0] for i in order], dtype=np.int64),
        frame_poses=[records[i][2] for i in order],
    )
    LOGGER.info("%s", result.summary())
    return result


# ------------------------------------------------------------------------------------------ outputs


def _xyz(pose: Pose | None) -> tuple:
    return tuple(pose.position) if pose is not None else ("", "", "")


def write_candidates_csv(path: Path, candidates: Sequence[LoopCandidate]) -> Path:
    """One row per candidate; positions and their distance are empty when poses are unknown."""
    with open(path, "w", newline="", encoding="utf-8") as stream:
        writer = csv.writer(stream)
        writer.writerow(CSV_COLUMNS)
        for c in candidates:
            distance = ""
            if c.query_pose is not None and c.match_pose is not None:
                distance = f"{math.dist(c.query_pose.position, c.match_pose.position):.3f}"
            writer.writerow(
                [c.query_id, c.query_stamp_ns, c.match_id, c.match_stamp_ns, f"{c.similarity:.6f}", c.rank,
                 *_xyz(c.query_pose), *_xyz(c.match_pose), distance]
            )  # fmt: skip
    return path


def read_candidates_csv(path: str | Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as stream:
        return list(csv.DictReader(stream))


def write_plots(
    out_dir: Path,
    keyframes: Sequence[Keyframe],
    candidates: Sequence[LoopCandidate],
    *,
    title: str = "",
    correct: Sequence[bool] | None = None,
    truth_band: Any = None,
) -> list[Path]:
    """``loop_timeline.png`` always; ``trajectory.png`` when keyframes have poses. Returns the files written.

    Pass exactly the candidates the caller reports: the titles count the candidates drawn. ``correct`` (one
    flag per candidate, e.g. from ground truth) colours them green/red with a legend instead of by similarity
    (colour bar). ``truth_band``: the true matches as a light band on the timeline, either a predicate
    ``is_match(query_stamp_ns, place_stamp_ns)`` evaluated on the keyframe stamps or a sequence of
    ``(query_stamp_ns, match_start_ns, match_end_ns)`` spans (see :mod:`tscm_ros.pipelines.plots`).
    """
    from tscm_ros.pipelines.plots import timeline_figure, trajectory_figure

    out_dir = Path(out_dir)
    plots = []
    figure = timeline_figure(
        [k.stamp_ns for k in keyframes], candidates, title=title, correct=correct, truth_band=truth_band
    )
    figure.savefig(out_dir / TIMELINE_PNG)
    plots.append(out_dir / TIMELINE_PNG)
    figure = trajectory_figure(keyframes, candidates, title=title, correct=correct)
    if figure is not None:
        figure.savefig(out_dir / TRAJECTORY_PNG)
        plots.append(out_dir / TRAJECTORY_PNG)
    return plots


# ---------------------------------------------------------------------------------------------- CLI


def _parser() -> argparse.ArgumentParser:
    defaults = LoopClosureConfig()
    parser = argparse.ArgumentParser(
        prog="tscm_build_map",
        description="Build a TSCM place map and loop-closure candidates from a rosbag2 (sqlite3/mcap) "
        "or ROS 1 bag.",
    )
    parser.add_argument("bag", type=Path, help="rosbag2 directory, .db3/.mcap file or ROS 1 .bag")
    parser.add_argument("--out", type=Path, required=True, help="output directory (map/, csv, plots)")
    parser.add_argument("--image-topic", help="Image/CompressedImage topic (default: the first one)")
    parser.add_argument(
        "--pose-topic", help="Odometry/PoseStamped topic (default: auto-detect; 'none' disables poses)"
    )
    parser.add_argument("--model", type=Path, help="model directory (model.json); default: untrained student")
    parser.add_argument("--backend", choices=("torch", "onnxruntime"), default="torch")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--index", default="flat", help="index spec: flat, hnsw, ivf:nlist=...")
    parser.add_argument("--threshold", type=float, default=defaults.similarity_threshold)
    parser.add_argument("--exclusion-window-s", type=float, default=defaults.exclusion_window_s)
    parser.add_argument("--top-k", type=int, default=defaults.top_k)
    parser.add_argument("--consistency-n", type=int, default=defaults.consistency_n)
    parser.add_argument("--min-interval-s", type=float, default=defaults.min_interval_s)
    parser.add_argument("--max-frames", type=int, help="stop after this many decoded frames")
    parser.add_argument("--no-progress", action="store_true")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    prog = "tscm_build_map"
    if not args.bag.exists():
        print(f"{prog}: error: bag not found: {args.bag}", file=sys.stderr)
        return 2
    try:
        config = LoopClosureConfig(
            similarity_threshold=args.threshold,
            exclusion_window_s=args.exclusion_window_s,
            top_k=args.top_k,
            consistency_n=args.consistency_n,
            min_interval_s=args.min_interval_s,
        )
        # check the bag and topics before loading a network
        topics = {topic.name: topic.msgtype for topic in list_topics(args.bag)}
        for option, topic in (("--image-topic", args.image_topic), ("--pose-topic", args.pose_topic)):
            if topic and topic.lower() != "none" and topic not in topics:
                listing = ", ".join(f"{name} [{kind}]" for name, kind in sorted(topics.items())) or "none"
                raise BagError(f"{option} {topic} is not in {args.bag} (topics: {listing})")
        from tscm_ros.describer import Describer

        describer = Describer(
            args.model, backend=args.backend, device=args.device, batch_size=args.batch_size
        )
        print(f"{prog}: model: {describer.label}", file=sys.stderr)
        result = build_map_from_bag(
            args.bag,
            args.out,
            image_topic=args.image_topic,
            pose_topic=args.pose_topic,
            describer=describer,
            index_spec=args.index,
            detector_config=config,
            batch_size=args.batch_size,
            progress=not args.no_progress,
            max_frames=args.max_frames,
        )
    except (FileNotFoundError, BagError, ValueError) as error:
        print(f"{prog}: error: {error}", file=sys.stderr)
        return 2
    print(result.summary())
    return 0


if __name__ == "__main__":
    sys.exit(main())
