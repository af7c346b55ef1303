"""Offline map building from a bag: frames -> TSCM descriptors -> place map + loop-closure candidates.

``tscm_build_map BAG --out DIR`` (:mod:`tscm_ros.cli.build_map`) reads the image topic (and poses, when the
bag has them), describes the frames in batches, feeds the :class:`LoopClosureDetector` (mapping mode)
keyframe by keyframe in stamp order, and writes into ``DIR``:

* ``map/`` -- the :class:`PlaceMap` (load it in ``place_recognition_node`` for localisation),
* ``loop_closures.csv`` -- one row per candidate (positions when the bag has poses),
* ``loop_timeline.png`` -- query time vs. match time of every candidate,
* ``trajectory.png`` -- keyframe trajectory with loop edges (only when poses exist).
"""

from __future__ import annotations

import csv
import dataclasses
import logging
import math
import time
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from tscm_ros.bags import BagError, BagReadStats, iter_frames, list_topics
from tscm_ros.features import FeatureConfig, FeatureExtractor, make_thumbnail
from tscm_ros.images import DEFAULT_MAX_PIXELS
from tscm_ros.loop_closure import LoopCandidate, LoopClosureConfig
from tscm_ros.placemap import PlaceMap, Pose
from tscm_ros.recognition import RecognitionConfig, RecognitionSession

if TYPE_CHECKING:
    from tscm_ros.describer import Describer

LOGGER = logging.getLogger(__name__)
MAP_DIR = "map"
CSV_FILE = "loop_closures.csv"
TRAJECTORY_PNG = "trajectory.png"
TIMELINE_PNG = "loop_timeline.png"
CSV_COLUMNS = (
    "query_id", "query_stamp_ns", "match_id", "match_stamp_ns", "similarity", "rank",
    "query_x", "query_y", "query_z", "match_x", "match_y", "match_z", "distance_m",
    "verified", "inliers", "verify_reason", "scale_known", "tx", "ty", "tz", "qx", "qy", "qz", "qw",
    "sequence_score", "sequence_length",
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
    verification: bool = False
    unverified_reasons: dict[str, int] = field(default_factory=dict)

    @property
    def closures(self) -> list[LoopCandidate]:
        """The verified candidates."""
        return [c for c in self.candidates if c.verified]

    def summary(self) -> str:
        per_frame = self.describe_seconds / max(self.frames, 1)
        return (
            f"{self.stats.summary()}\n"
            f"model: {self.describer_label}\n"
            f"{self.frames} frames described ({per_frame * 1000:.0f} ms/frame), "
            f"{len(self.keyframes)} keyframes, "
            f"{len(self.candidates)} loop-closure candidates "
            f"({len({c.query_id for c in self.candidates})} queries)"
            + (f", {len(self.closures)} verified" if self.verification else ", verification off")
            + f" in {self.total_seconds:.1f} s\n"
            f"map: {self.map_dir}\ncandidates: {self.csv_path}\n"
            + "".join(f"plot: {plot}\n" for plot in self.plots)
        ).rstrip()


def _progress(total: int | None, enabled: bool, description: str):
    from tqdm import tqdm

    return tqdm(total=total, disable=not enabled, desc=description, unit="frame", dynamic_ncols=True)


class _MapBuilder:
    """One build's running state: the session (created with the first batch, when the descriptor size is
    known) and what it produced, frame by frame."""

    def __init__(self, describer: Describer, index_spec: str, config: RecognitionConfig) -> None:
        self.describer = describer
        self.index_spec = index_spec
        self.config = config
        self.session: RecognitionSession | None = None
        self.source = ""
        self.records: list[tuple[int, Pose | None]] = []
        self.descriptors: list[np.ndarray] = []
        self.keyframes: list[Keyframe] = []
        self.candidates: list[LoopCandidate] = []
        self.describe_seconds = 0.0

    def add_batch(self, batch: list, bar: Any) -> None:
        """Describe ``batch`` and run its frames through the session, in order; empties ``batch``."""
        tick = time.perf_counter()
        described = np.asarray(self.describer.describe([frame.rgb for frame in batch]), dtype=np.float32)
        self.describe_seconds += time.perf_counter() - tick
        if self.session is None:
            dim, fingerprint = described.shape[1], self.describer.fingerprint
            place_map = PlaceMap.create(dim, self.index_spec, model_fingerprint=fingerprint)
            self.session = RecognitionSession(place_map, self.config)
        for frame, descriptor in zip(batch, described, strict=True):
            result = self.session.process(
                descriptor, frame.stamp_ns, image=frame.rgb if self.config.verify else None,
                depth=frame.depth, intrinsics=frame.intrinsics, frame_id=frame.frame_id, source=self.source,
                pose=frame.pose,
            )  # fmt: skip
            if result.is_keyframe:
                self.keyframes.append(Keyframe(int(result.place_id), frame.stamp_ns, frame.pose))
                self.candidates.extend(result.candidates)
        self.descriptors.append(described)
        self.records.extend((frame.stamp_ns, frame.pose) for frame in batch)
        bar.update(len(batch))
        batch.clear()

    def finish(self, bag: Path, out_dir: Path, stats: BagReadStats, started: float) -> BuildResult:
        """Save the map, the candidates CSV and the plots to ``out_dir``; close the session."""
        session = self.session
        if session is None:
            raise ValueError(f"{bag}: no frame could be decoded ({stats.summary()})")
        out_dir.mkdir(parents=True, exist_ok=True)
        map_dir = out_dir / MAP_DIR
        session.save(str(map_dir))
        reasons = dict(session.reasons)
        session.close()
        csv_path = write_candidates_csv(out_dir / CSV_FILE, self.candidates)
        label = self.describer.label
        plots = write_plots(out_dir, self.keyframes, self.candidates, title=f"{bag.name} - {label}")
        return BuildResult(
            out_dir=out_dir, map_dir=map_dir, csv_path=csv_path, plots=plots, frames=len(self.records),
            keyframes=self.keyframes, candidates=self.candidates, stats=stats, describer_label=label,
            describe_seconds=self.describe_seconds, total_seconds=time.perf_counter() - started,
            descriptors=np.concatenate(self.descriptors),
            frame_stamps_ns=np.array([stamp for stamp, _ in self.records], dtype=np.int64),
            frame_poses=[pose for _, pose in self.records], verification=self.config.verify,
            unverified_reasons=reasons,
        )  # fmt: skip


def build_map_from_bag(
    bag: str | Path,
    out_dir: str | Path,
    *,
    image_topic: str | None = None,
    pose_topic: str | None = None,
    depth_topic: str | None = None,
    camera_info_topic: str | None = None,
    describer: Describer,
    index_spec: str = "flat",
    config: RecognitionConfig | None = None,
    detector_config: LoopClosureConfig | None = None,
    batch_size: int = 8,
    progress: bool = True,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_frames: int | None = None,
    allow_partial: bool = False,
    skip_stamps: Collection[int] = (),
) -> BuildResult:
    """Describe the frames of ``bag`` in batches and run them, in bag order, through one
    :class:`RecognitionSession` (mapping mode): the same steps as ``place_recognition_node`` on a replay.

    ``config``: the session settings (default :class:`RecognitionConfig`); ``detector_config`` replaces its
    detector part (kept for callers that only set the single-frame rule). ``pose_topic`` / ``depth_topic`` /
    ``camera_info_topic``: None picks one automatically when the bag has one, "" reads none. Frames whose
    header stamp is in ``skip_stamps`` are left out (e.g. the frames a live run of the node dropped).
    Unsupported or corrupt images are skipped and counted (``result.stats``). ``allow_partial``: a damaged
    bag gives a map of what could be read (``result.stats.partial``) instead of BagDamagedError.

    Raises:
        FileNotFoundError / BagError: missing bag, no or unknown image topic.
        BagDamagedError: damaged bag (messages lost), unless ``allow_partial``.
        ValueError: no frame of the bag could be decoded.
    """
    started = time.perf_counter()
    bag, out_dir = Path(bag), Path(out_dir)
    config = config or RecognitionConfig()
    if detector_config is not None:
        config = dataclasses.replace(config, detector=detector_config)
    if config.detector.mode != "mapping":
        raise ValueError("build_map_from_bag needs mode='mapping'")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    counts = {topic.name: topic.count for topic in list_topics(bag)}
    stats = BagReadStats()
    frames = iter_frames(
        bag, image_topic, pose_topic, depth_topic=depth_topic, camera_info_topic=camera_info_topic,
        max_pixels=max_pixels, stats=stats, allow_partial=allow_partial,
    )  # fmt: skip
    builder = _MapBuilder(describer, index_spec, config)
    batch: list = []
    bar = None
    try:
        skip = set(skip_stamps)
        for frame in frames:
            if frame.stamp_ns in skip:
                continue
            if bar is None:  # the image topic is known once the first frame is read
                total = counts.get(stats.image_topic)
                total = min(total, max_frames) if max_frames and total else total
                bar = _progress(total, progress, f"describe {stats.image_topic}")
                builder.source = f"{bag.name}:{stats.image_topic}"
            batch.append(frame)
            if len(batch) >= batch_size:
                builder.add_batch(batch, bar)
            if max_frames is not None and len(builder.records) + len(batch) >= max_frames:
                break
        if batch:
            builder.add_batch(batch, bar)
    finally:
        frames.close()
        if bar is not None:
            bar.close()
    return builder.finish(bag, out_dir, stats, started)


def add_features_from_bag(
    map_path: str | Path,
    bag: str | Path,
    *,
    image_topic: str | None = None,
    depth_topic: str | None = None,
    camera_info_topic: str | None = None,
    features: FeatureConfig | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> tuple[int, int]:
    """Give the places of an older map (built without local features) the features of their bag frames.

    Places are found by header stamp. Returns (places updated, places still without features); the map is
    saved atomically in place.
    """
    place_map = PlaceMap.load(map_path)
    try:
        ids = place_map.place_ids
        by_stamp = {meta.stamp_ns: place_id for place_id, meta in place_map.get_metas(ids).items()}
        have = place_map.get_features(ids)
        extractor = FeatureExtractor(features or FeatureConfig())
        updated = 0
        frames = iter_frames(
            bag, image_topic, "", depth_topic=depth_topic, camera_info_topic=camera_info_topic,
            max_pixels=max_pixels,
        )  # fmt: skip
        for frame in frames:
            place_id = by_stamp.get(frame.stamp_ns)
            if place_id is None or have.get(place_id) is not None:
                continue
            local = extractor.extract(frame.rgb, depth=frame.depth, intrinsics=frame.intrinsics)
            place_map.set_features(place_id, local.to_bytes(), make_thumbnail(frame.rgb))
            updated += 1
        place_map.save()
        missing = len(ids) - sum(1 for blob in place_map.get_features(ids).values() if blob is not None)
        return updated, missing
    finally:
        place_map.close()


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
            verification = c.verification
            pose: tuple = ("",) * 7
            if c.verified and verification.translation is not None:  # rejected candidates: no pose
                pose = tuple(f"{v:.6f}" for v in (*verification.translation, *verification.rotation_xyzw))
            writer.writerow(
                [c.query_id, c.query_stamp_ns, c.match_id, c.match_stamp_ns, f"{c.similarity:.6f}", c.rank,
                 *_xyz(c.query_pose), *_xyz(c.match_pose), distance,
                 int(c.verified), c.inliers, verification.reason if verification is not None else "",
                 int(verification.scale_known) if verification is not None else "", *pose,
                 "" if math.isnan(c.sequence_score) else f"{c.sequence_score:.4f}", c.sequence_length]
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


def read_stamps(path: Path) -> set[int]:
    """Header stamps (integer nanoseconds), one per line; blank lines and # comments are ignored."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
        return {int(line.split("#")[0]) for line in lines if line.split("#")[0].strip()}
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise ValueError(f"--skip-stamps {path}: {error}") from error


def check_topics(bag: str | Path, requested: dict[str, str | None]) -> None:
    """Raise :class:`BagError` when a requested topic (option name -> topic; None or 'none' = not asked for)
    is not in ``bag``: checked before a network is loaded."""
    topics = {topic.name: topic.msgtype for topic in list_topics(bag)}
    for option, topic in requested.items():
        if topic and topic.lower() != "none" and topic not in topics:
            listing = ", ".join(f"{name} [{kind}]" for name, kind in sorted(topics.items())) or "none"
            raise BagError(f"{option} {topic} is not in {bag} (topics: {listing})")
