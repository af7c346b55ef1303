"""Read image (+ pose) streams from rosbag2 (sqlite3 / mcap) and ROS 1 bags, and write test/demo bags.

Pure Python on top of ``rosbags`` (no ROS installation needed). Reading goes through
``rosbags.highlevel.AnyReader``, which takes a rosbag2 directory (metadata.yaml + .db3/.mcap files), a
bare ``.db3`` or ``.mcap`` file, or a ROS 1 ``.bag`` file; message types come from the definitions stored in
the bag (ROS 2 Kilted definitions are the fallback for bags without them).

Bad messages never stop a read: undecodable messages and unsupported images are counted per reason in
:class:`BagReadStats` and skipped. A damaged bag does: when the storage cannot be read to the end (corrupt
sqlite pages, mcap chunks, ROS 1 records) or fewer messages come back than the bag's own counts list
(rosbag2 ``metadata.yaml``, the mcap summary, the ROS 1 index), reading raises :class:`BagDamagedError`
naming what was lost, unless ``allow_partial`` is set: then the read stops cleanly and the stats say PARTIAL.
"""

from __future__ import annotations

import logging
import traceback
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from tscm_ros.images import (
    ImageDecodeError,
    compressed_msg_to_rgb,
    image_msg_to_rgb,
    rgb_to_compressed_bytes,
    rgb_to_image_fields,
)
from tscm_ros.poses import NS_PER_S, PoseTrack

if TYPE_CHECKING:
    from rosbags.highlevel import AnyReader

    from tscm_ros.features import CameraIntrinsics
    from tscm_ros.placemap import Pose

LOGGER = logging.getLogger(__name__)

IMAGE_TYPE = "sensor_msgs/msg/Image"
COMPRESSED_TYPE = "sensor_msgs/msg/CompressedImage"
IMAGE_TYPES = (IMAGE_TYPE, COMPRESSED_TYPE)
CAMERA_INFO_TYPE = "sensor_msgs/msg/CameraInfo"
DEPTH_PAIRING_S = 0.02  # a depth image pairs with the colour image stamped within this time
POSE_TYPES = {
    "odometry": "nav_msgs/msg/Odometry",
    "pose_stamped": "geometry_msgs/msg/PoseStamped",
    "pose_with_cov": "geometry_msgs/msg/PoseWithCovarianceStamped",
}
STORAGES = ("sqlite3", "mcap", "ros1")


class BagError(ValueError):
    """A bag that cannot be opened, or a topic that is not in it."""


@dataclass(frozen=True)
class TopicLoss:
    """A topic of which fewer messages were read than the bag lists."""

    topic: str
    expected: int  # message count of metadata.yaml / the mcap summary / the ROS 1 index
    read: int  # messages the reader returned

    def __str__(self) -> str:
        return f"{self.topic}: {self.read} of {self.expected} messages read"


class BagDamagedError(BagError):
    """A bag whose storage could not be read to the end, or that holds fewer messages than it lists."""

    def __init__(self, path: str | Path, stats: BagReadStats) -> None:
        self.path = Path(path)
        self.losses: list[TopicLoss] = stats.losses()
        self.reasons: dict[str, int] = dict(stats.read_errors)
        self.detail = stats.read_error_detail
        super().__init__(f"{path}: damaged bag: {stats.damage()}")


@dataclass(frozen=True)
class TopicSummary:
    name: str
    msgtype: str | None
    count: int


@dataclass
class BagFrame:
    """One decoded camera image of a bag."""

    stamp_ns: int  # header stamp; the bag's log time when the header stamp is zero
    frame_id: str
    topic: str
    rgb: np.ndarray  # (H, W, 3) uint8
    pose: Pose | None  # interpolated from the pose topic; None outside its time range or without one
    log_time_ns: int = 0
    depth: np.ndarray | None = None  # (H, W) float32 metres (NaN = invalid) from the depth topic, when paired
    intrinsics: CameraIntrinsics | None = None  # from the camera_info topic, when the bag has one


@dataclass
class BagReadStats:
    """What a read did: frames decoded, messages skipped per reason, topics used."""

    image_topic: str | None = None
    pose_topic: str | None = None
    depth_topic: str | None = None
    camera_info_topic: str | None = None
    frames_with_depth: int = 0
    image_messages: int = 0
    decoded: int = 0
    errors: Counter = field(
        default_factory=Counter
    )  # reason -> count (ImageDecodeError reasons, "corrupt_message")
    pose_messages: int = 0
    frames_with_pose: int = 0
    frames_without_pose: int = 0
    # damage accounting (see read_messages): topic -> count the bag lists, for topics read in full
    expected: dict[str, int] = field(default_factory=dict)
    read: Counter = field(default_factory=Counter)  # topic -> messages the reader returned
    # reason -> failed reads (corrupt_database, corrupt_chunk, corrupt_record, read_error); each ends a pass
    read_errors: Counter = field(default_factory=Counter)
    read_error_detail: str = ""  # the first failure, "ExceptionType: message"
    partial: bool = False  # the bag was damaged and allow_partial used what could be read

    @property
    def skipped(self) -> int:
        return sum(self.errors.values())

    def losses(self) -> list[TopicLoss]:
        """Topics read in full that returned fewer messages than the bag lists."""
        return [
            TopicLoss(topic, count, int(self.read[topic]))
            for topic, count in sorted(self.expected.items())
            if self.read[topic] < count
        ]

    @property
    def damaged(self) -> bool:
        return bool(self.read_errors) or bool(self.losses())

    def damage(self) -> str:
        """What was lost: per topic read/expected and the read failures ("" when nothing)."""
        parts = [str(loss) for loss in self.losses()]
        if self.read_errors:
            reasons = ", ".join(f"{reason}={count}" for reason, count in sorted(self.read_errors.items()))
            parts.append(f"read failed ({reasons}: {self.read_error_detail})")
        return "; ".join(parts)

    def summary(self) -> str:
        errors = ", ".join(f"{reason}={count}" for reason, count in sorted(self.errors.items())) or "none"
        text = f"PARTIAL (damaged bag: {self.damage()}); " if self.partial else ""
        text += (
            f"image topic {self.image_topic}: {self.image_messages} messages, {self.decoded} decoded, "
            f"{self.skipped} skipped ({errors})"
        )
        if self.pose_topic:
            text += (
                f"; pose topic {self.pose_topic}: {self.pose_messages} poses, "
                f"{self.frames_with_pose} frames with pose, {self.frames_without_pose} without"
            )
        if self.camera_info_topic:
            text += f"; intrinsics from {self.camera_info_topic}"
        if self.depth_topic:
            text += f"; depth topic {self.depth_topic}: {self.frames_with_depth} frames with depth"
        return text


# ------------------------------------------------------------------------------------------ reading


def _read_error_reason(error: BaseException) -> str:
    """Short reason of an exception a storage reader raised mid-read: corrupt_database (sqlite3),
    corrupt_chunk (mcap), corrupt_record (ROS 1) or read_error, by the exception type or the reader code
    that raised it (a bare OverflowError / struct.error from the mcap reader is a corrupt chunk)."""
    module = type(error).__module__
    places = [module] + [frame.filename for frame in reversed(traceback.extract_tb(error.__traceback__))]
    for place in places:
        if "apsw" in place or "sqlite" in place:
            return "corrupt_database"
        if "mcap" in place:
            return "corrupt_chunk"
        if "rosbag1" in place:
            return "corrupt_record"
    return "read_error"


def read_messages(
    reader: AnyReader,
    connections: Sequence[Any],
    stats: BagReadStats,
    *,
    allow_partial: bool = False,
    path: str | Path = "",
    full: bool = True,
) -> Iterator[tuple[Any, int, Any]]:
    """``reader.messages(connections=...)`` with damage accounting in ``stats``.

    Counts the messages returned per topic (``stats.read``). A reader exception (corrupt storage) is
    recorded in ``stats.read_errors`` and, with ``full``, so are the topics' listed counts
    (``stats.expected``); at the end of a full pass fewer messages than listed is damage too.

    Raises:
        BagDamagedError: the bag is damaged and not ``allow_partial`` (with it the pass ends cleanly and
            ``stats.partial`` is set).
    """
    connections = list(connections)
    topics: Counter = Counter()
    for connection in connections:
        topics[connection.topic] += int(getattr(connection, "msgcount", 0) or 0)
    if full:
        for topic, count in topics.items():
            stats.expected[topic] = stats.expected.get(topic, 0) + count
    iterator = reader.messages(connections=connections)
    try:
        while True:
            try:
                item = next(iterator)
            except StopIteration:
                break
            except Exception as error:  # apsw/sqlite, mcap, struct, OverflowError ...: storage is damaged
                stats.read_errors[_read_error_reason(error)] += 1
                if not stats.read_error_detail:
                    stats.read_error_detail = f"{type(error).__name__}: {error}"
                LOGGER.debug("bag read failed", exc_info=True)
                _damaged(stats, allow_partial, path, from_error=error)
                return
            stats.read[item[0].topic] += 1
            yield item
    finally:
        iterator.close()
    if full:
        for topic, count in topics.items():
            if stats.read[topic] > count:
                LOGGER.warning("%s: %s lists %d messages, %d read", path, topic, count, stats.read[topic])
        if any(stats.read[topic] < count for topic, count in topics.items()):
            _damaged(stats, allow_partial, path)


def _damaged(
    stats: BagReadStats, allow_partial: bool, path: str | Path, from_error: BaseException | None = None
) -> None:
    if not allow_partial:
        raise BagDamagedError(path, stats) from from_error
    if not stats.partial:
        LOGGER.warning("%s: damaged bag, using what could be read: %s", path, stats.damage())
    stats.partial = True


def typestore(ros1: bool = False) -> Any:
    """The ``rosbags`` typestore every bag reader and writer of the package uses.

    ROS 2 Kilted definitions (the fallback for rosbag2 bags that store no definitions, and the types of bags
    we write); ``ros1`` gives ROS 1 Noetic's (for ROS 1 bags we write; ROS 1 bags carry their definitions).
    """
    from rosbags.typesys import Stores, get_typestore

    return get_typestore(Stores.ROS1_NOETIC if ros1 else Stores.ROS2_KILTED)


_OPENED_BAG_CLASS = None


def _opened_reader_class():
    """AnyReader subclass (created once, lazily: rosbags is imported only when bags are used)."""
    global _OPENED_BAG_CLASS
    if _OPENED_BAG_CLASS is None:
        from rosbags.highlevel import AnyReader

        class OpenedBag(AnyReader):
            """An AnyReader opened on creation; ``with`` closes it (and does not open it twice)."""

            def __enter__(self):
                if not self.stack:
                    self.open()
                return self

        _OPENED_BAG_CLASS = OpenedBag
    return _OPENED_BAG_CLASS


def open_bag(path: str | Path) -> AnyReader:
    """Open a rosbag2 directory, a bare .db3/.mcap file or a ROS 1 .bag (a ``rosbags`` AnyReader, opened).

    Use it as a context manager (``with open_bag(path) as reader:``) or call ``reader.close()``.

    Raises:
        FileNotFoundError: nothing at ``path``.
        BagError: not a bag rosbags can read.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"bag not found: {path}")
    if path.is_dir() and not (path / "metadata.yaml").is_file():
        storage_files = sorted([*path.glob("*.db3"), *path.glob("*.mcap")])
        if len(storage_files) != 1:
            raise BagError(f"{path} is a directory without metadata.yaml (not a rosbag2 bag)")
        path = storage_files[0]  # a rosbag2 directory whose metadata.yaml was lost
    if path.is_file() and path.suffix not in (".bag", ".db3", ".mcap"):
        raise BagError(f"{path}: unknown bag file type {path.suffix!r} (expected .bag, .db3, .mcap)")
    try:
        reader = _opened_reader_class()([path], default_typestore=typestore())
        reader.open()
    except FileNotFoundError:
        raise
    except (
        Exception
    ) as error:  # rosbags raises its own error classes, ruamel/sqlite/mcap errors, KeyError ...
        raise BagError(f"cannot open bag {path}: {error}") from error
    return reader


def list_topics(path: str | Path) -> list[TopicSummary]:
    """Topics of a bag with message type and count, sorted by name."""
    reader = open_bag(path)
    with reader:
        return [
            TopicSummary(name, info.msgtype, int(info.msgcount))
            for name, info in sorted(reader.topics.items())
        ]


def _choose_topic(reader: AnyReader, requested: str | None, msgtypes: Iterable[str], role: str) -> str | None:
    topics = reader.topics
    msgtypes = tuple(msgtypes)
    if requested:
        if requested not in topics:
            available = ", ".join(f"{name} [{info.msgtype}]" for name, info in sorted(topics.items()))
            raise BagError(f"{role} topic {requested!r} is not in the bag (topics: {available or 'none'})")
        if topics[requested].msgtype not in msgtypes:
            raise BagError(
                f"{role} topic {requested!r} has type {topics[requested].msgtype}, expected one of {msgtypes}"
            )
        return requested
    for msgtype in msgtypes:  # earlier types preferred (raw images before compressed)
        names = sorted(name for name, info in topics.items() if info.msgtype == msgtype and info.msgcount)
        if role == "image":  # a depth camera's image is never the colour image
            names = [name for name in names if "depth" not in name.lower()]
        if names:
            if len(names) > 1:
                LOGGER.info("several %s topics (%s); using %s", role, ", ".join(names), names[0])
            return names[0]
    return None


def _stamp_ns(header: Any) -> int:
    return int(header.stamp.sec) * NS_PER_S + int(header.stamp.nanosec)


def _pose_of_message(message: Any, msgtype: str) -> tuple[np.ndarray, np.ndarray]:
    pose = (
        message.pose.pose
        if msgtype in (POSE_TYPES["odometry"], POSE_TYPES["pose_with_cov"])
        else message.pose
    )
    position = np.array([pose.position.x, pose.position.y, pose.position.z], dtype=np.float64)
    orientation = np.array(
        [pose.orientation.x, pose.orientation.y, pose.orientation.z, pose.orientation.w], dtype=np.float64
    )
    return position, orientation


def read_pose_track(
    reader: AnyReader,
    topic: str,
    stats: BagReadStats | None = None,
    *,
    allow_partial: bool = False,
    path: str | Path = "",
) -> PoseTrack:
    """All poses of ``topic`` (Odometry, PoseStamped, PoseWithCovarianceStamped) as a :class:`PoseTrack`.

    Raises:
        BagDamagedError: the pose messages cannot all be read, unless ``allow_partial``.
    """
    connections = [connection for connection in reader.connections if connection.topic == topic]
    samples: list[tuple[int, np.ndarray, np.ndarray]] = []
    frame_id = ""
    read_stats = stats if stats is not None else BagReadStats()
    for connection, log_time, raw in read_messages(
        reader, connections, read_stats, allow_partial=allow_partial, path=path
    ):
        try:
            message = reader.deserialize(raw, connection.msgtype)
            position, orientation = _pose_of_message(message, connection.msgtype)
        except Exception as error:  # corrupt pose message: counted, never fatal
            if stats is not None:
                stats.errors["corrupt_pose_message"] += 1
            LOGGER.debug("skipping pose message at %d: %s", log_time, error)
            continue
        stamp = _stamp_ns(message.header) or int(log_time)
        frame_id = frame_id or str(message.header.frame_id)
        if np.all(np.isfinite(position)) and np.all(np.isfinite(orientation)):
            samples.append((stamp, position, orientation))
    if stats is not None:
        stats.pose_messages += len(samples)
    return PoseTrack.from_samples(samples, frame_id)


def make_pose(position: np.ndarray, orientation_xyzw: np.ndarray, frame_id: str) -> Pose:
    """Build a :class:`tscm_ros.placemap.Pose` from arrays."""
    from tscm_ros.placemap import Pose

    return Pose(
        position=tuple(float(v) for v in position),
        orientation=tuple(float(v) for v in orientation_xyzw),
        frame_id=frame_id,
    )


def _optional_topic(
    reader: AnyReader, requested: str | None, msgtypes: Iterable[str], role: str
) -> str | None:
    """A topic chosen like :func:`_choose_topic`; "" or "none" = not wanted."""
    if requested is not None and requested.lower() in ("", "none"):
        return None
    return _choose_topic(reader, requested, msgtypes, role)


def read_camera_intrinsics(
    reader: AnyReader,
    topic: str,
    stats: BagReadStats | None = None,
    *,
    allow_partial: bool = False,
    path: str | Path = "",
) -> CameraIntrinsics | None:
    """Intrinsics of the first valid CameraInfo message of ``topic`` (None when none is valid).

    Raises:
        BagDamagedError: the storage fails before a valid message, unless ``allow_partial``.
    """
    from tscm_ros.features import CameraIntrinsics

    connections = [connection for connection in reader.connections if connection.topic == topic]
    read_stats = stats if stats is not None else BagReadStats()
    messages = read_messages(
        reader, connections, read_stats, allow_partial=allow_partial, path=path, full=False
    )
    with closing(messages):
        for connection, log_time, raw in messages:
            try:
                message = reader.deserialize(raw, connection.msgtype)
                k = message.k if hasattr(message, "k") else message.K  # ROS 2 / ROS 1 field name
                return CameraIntrinsics.from_camera_info_k(list(k), int(message.width), int(message.height))
            except Exception as error:  # a corrupt or all-zero CameraInfo: try the next one
                LOGGER.debug("unusable camera_info at %d: %s", log_time, error)
    return None


def _depth_topic(reader: AnyReader, requested: str | None, image_topic: str) -> str | None:
    """``requested``, or (None) the one Image topic other than ``image_topic`` whose name says depth."""
    if requested is not None:
        return _optional_topic(reader, requested, (IMAGE_TYPE,), "depth")
    names = [c.topic for c in reader.connections if c.msgtype == IMAGE_TYPE and c.topic != image_topic]
    depth = sorted({name for name in names if "depth" in name.lower()})
    return depth[0] if len(depth) == 1 else None


@dataclass
class _Streams:
    """The topics one :func:`iter_frames` read uses, and what was read ahead of the images."""

    image_topic: str
    depth_topic: str | None
    track: PoseTrack | None
    intrinsics: CameraIntrinsics | None


def _open_streams(
    reader: AnyReader,
    path: str | Path,
    requested: dict[str, str | None],
    stats: BagReadStats,
    allow_partial: bool,
) -> _Streams:
    """Choose the image / pose / camera_info / depth topics (``requested`` by role, see :func:`iter_frames`)
    and read the whole pose track and the intrinsics before the images."""
    topic = _choose_topic(reader, requested["image"], IMAGE_TYPES, "image")
    if topic is None:
        available = ", ".join(f"{t.name} [{t.msgtype}]" for t in _summaries(reader)) or "none"
        raise BagError(f"{path}: no sensor_msgs Image/CompressedImage topic (topics: {available})")
    stats.image_topic = topic
    track = None
    pose_topic = _optional_topic(reader, requested["pose"], POSE_TYPES.values(), "pose")
    if pose_topic:
        stats.pose_topic = pose_topic
        track = read_pose_track(reader, pose_topic, stats, allow_partial=allow_partial, path=path)
    intrinsics = None
    info_topic = _optional_topic(reader, requested["camera_info"], (CAMERA_INFO_TYPE,), "camera_info")
    if info_topic:
        intrinsics = read_camera_intrinsics(reader, info_topic, stats, allow_partial=allow_partial, path=path)
        stats.camera_info_topic = info_topic if intrinsics is not None else None
    depth_topic = _depth_topic(reader, requested["depth"], topic)
    stats.depth_topic = depth_topic
    return _Streams(topic, depth_topic, track, intrinsics)


class _DepthPairing:
    """Holds decoded frames back until the depth image stamped within ``DEPTH_PAIRING_S`` arrives.

    A frame leaves when it has its depth, when the log time has moved ten pairing windows past it, when more
    than eight frames wait, or at the end of the bag; the last eight depth images are kept for pairing.
    """

    def __init__(self, stats: BagReadStats, max_pixels: int | None) -> None:
        self.stats = stats
        self.max_pixels = max_pixels
        self.tolerance_ns = round(DEPTH_PAIRING_S * NS_PER_S)
        self.depths: list[tuple[int, Any]] = []  # recent (stamp, depth message)
        self.pending: list[BagFrame] = []  # frames waiting for their depth image, in order

    def _pair(self, frame: BagFrame) -> bool:
        from tscm_ros.depth import DepthDecodeError, depth_msg_to_metres

        for stamp, message in self.depths:
            if abs(stamp - frame.stamp_ns) <= self.tolerance_ns:
                try:
                    frame.depth = depth_msg_to_metres(message, self.max_pixels)
                    self.stats.frames_with_depth += 1
                except DepthDecodeError as error:
                    self.stats.errors["bad_depth"] += 1
                    LOGGER.debug("unusable depth at %d: %s", stamp, error)
                return True
        return False

    def ready(self, now_ns: int, flush: bool) -> Iterator[BagFrame]:
        """The frames that may leave at log time ``now_ns`` (all of them with ``flush``)."""
        pending = self.pending
        while pending and (
            flush or pending[0].depth is not None or now_ns - pending[0].log_time_ns > 10 * self.tolerance_ns
            or len(pending) > 8
        ):  # fmt: skip
            self.stats.decoded += 1
            yield pending.pop(0)

    def add_depth(self, stamp_ns: int, message: Any, log_time_ns: int) -> Iterator[BagFrame]:
        self.depths.append((stamp_ns, message))
        del self.depths[:-8]
        for frame in self.pending:
            if frame.depth is None:
                self._pair(frame)
        yield from self.ready(log_time_ns, flush=False)

    def add_frame(self, frame: BagFrame) -> Iterator[BagFrame]:
        self._pair(frame)
        self.pending.append(frame)
        yield from self.ready(frame.log_time_ns, flush=False)


def _decode_frame(
    message: Any,
    msgtype: str,
    stamp_ns: int,
    log_time_ns: int,
    streams: _Streams,
    stats: BagReadStats,
    max_pixels: int | None,
) -> BagFrame | None:
    """The frame of one image message, with its interpolated pose (None: the image is unusable, counted)."""
    try:
        if msgtype == COMPRESSED_TYPE:
            rgb = compressed_msg_to_rgb(message, max_pixels=max_pixels)
        else:
            rgb = image_msg_to_rgb(message, max_pixels=max_pixels)
    except ImageDecodeError as error:
        stats.errors[error.reason] += 1
        LOGGER.debug("skipping image at %d: %s", log_time_ns, error)
        return None
    pose = None
    if streams.track is not None:
        sample = streams.track.at(stamp_ns)
        if sample is None:
            stats.frames_without_pose += 1
        else:
            stats.frames_with_pose += 1
            pose = make_pose(sample[0], sample[1], streams.track.frame_id)
    return BagFrame(stamp_ns, str(message.header.frame_id), streams.image_topic, rgb, pose, log_time_ns,
                    intrinsics=streams.intrinsics)  # fmt: skip


def iter_frames(
    path: str | Path,
    image_topic: str | None = None,
    pose_topic: str | None = None,
    *,
    depth_topic: str | None = "",
    camera_info_topic: str | None = "",
    max_pixels: int | None = None,
    stats: BagReadStats | None = None,
    allow_partial: bool = False,
) -> Iterator[BagFrame]:
    """Decoded RGB frames of one image topic, in bag (log time) order, with interpolated poses.

    Args:
        path: bag (see :func:`open_bag`).
        image_topic: Image or CompressedImage topic; None picks the first raw Image topic by name, else the
            first CompressedImage topic.
        pose_topic: Odometry / PoseStamped / PoseWithCovarianceStamped topic; None picks one automatically
            when the bag has one, "" (or "none") reads no poses.
        depth_topic: aligned depth Image topic (16UC1 mm / 32FC1 m), paired by header stamp within
            ``DEPTH_PAIRING_S``; None picks the one Image topic named ``*depth*``, "" reads no depth.
        camera_info_topic: CameraInfo topic for ``BagFrame.intrinsics``; None picks one, "" reads none.
        max_pixels: larger images are skipped (counted as "too_large"); None: the common limit
            (``$TSCM_MAX_PIXELS``, else :data:`tscm_ros.images.DEFAULT_MAX_PIXELS`).
        stats: filled in while iterating (decoded frames, skipped messages per reason, messages read per
            topic against the bag's counts).
        allow_partial: a damaged bag ends the iteration cleanly with ``stats.partial`` set (and PARTIAL in
            ``stats.summary()``) instead of raising.

    Raises:
        FileNotFoundError, BagError: missing bag, no image topic, unknown topic (before the first frame).
        BagDamagedError: the image / depth / pose messages cannot all be read (corrupt storage, fewer
            messages than the bag lists): when the read fails, or after the last frame.
    """
    stats = stats if stats is not None else BagReadStats()
    requested = {
        "image": image_topic,
        "pose": pose_topic,
        "depth": depth_topic,
        "camera_info": camera_info_topic,
    }
    reader = open_bag(path)
    with reader:
        streams = _open_streams(reader, path, requested, stats, allow_partial)
        pairing = _DepthPairing(stats, max_pixels)
        wanted = {streams.image_topic, streams.depth_topic} - {None}
        connections = [connection for connection in reader.connections if connection.topic in wanted]
        for connection, log_time, raw in read_messages(
            reader, connections, stats, allow_partial=allow_partial, path=path
        ):
            is_depth = connection.topic == streams.depth_topic
            if not is_depth:
                stats.image_messages += 1
            try:
                message = reader.deserialize(raw, connection.msgtype)
            except Exception as error:
                stats.errors["corrupt_depth_message" if is_depth else "corrupt_message"] += 1
                LOGGER.debug("undecodable %s message at %d: %s", connection.msgtype, log_time, error)
                continue
            stamp = _stamp_ns(message.header) or int(log_time)
            if is_depth:
                yield from pairing.add_depth(stamp, message, int(log_time))
                continue
            frame = _decode_frame(
                message, connection.msgtype, stamp, int(log_time), streams, stats, max_pixels
            )
            if frame is None:
                continue
            if streams.depth_topic is None:
                stats.decoded += 1
                yield frame
            else:
                yield from pairing.add_frame(frame)
        yield from pairing.ready(0, flush=True)


def _summaries(reader: AnyReader) -> list[TopicSummary]:
    return [
        TopicSummary(name, info.msgtype, int(info.msgcount)) for name, info in sorted(reader.topics.items())
    ]


# ------------------------------------------------------------------------------------------ writing


def _pose_arrays(pose: Any) -> tuple[tuple[float, ...], tuple[float, ...], str]:
    """(position xyz, orientation xyzw, frame_id) of a placemap Pose or a (position, orientation) pair."""
    if isinstance(pose, (tuple, list)) and len(pose) == 2:
        return tuple(map(float, pose[0])), tuple(map(float, pose[1])), ""
    return (
        tuple(map(float, pose.position)),
        tuple(map(float, pose.orientation)),
        str(getattr(pose, "frame_id", "") or ""),
    )


class _MessageFactory:
    """Builds rosbags message objects for one typestore (ROS 2 CDR or ROS 1)."""

    def __init__(self, ros1: bool) -> None:
        self.ros1 = ros1
        self.store = typestore(ros1)
        self.types = self.store.types
        self.seq = 0

    def header(self, stamp_ns: int, frame_id: str) -> Any:
        stamp = self.types["builtin_interfaces/msg/Time"](
            sec=int(stamp_ns // NS_PER_S), nanosec=int(stamp_ns % NS_PER_S)
        )
        header_type = self.types["std_msgs/msg/Header"]
        if self.ros1:
            self.seq += 1
            return header_type(seq=self.seq, stamp=stamp, frame_id=frame_id)
        return header_type(stamp=stamp, frame_id=frame_id)

    def serialize(self, message: Any, msgtype: str) -> bytes:
        if self.ros1:
            return bytes(self.store.serialize_ros1(message, msgtype))
        return bytes(self.store.serialize_cdr(message, msgtype))

    def image(self, stamp_ns: int, frame_id: str, rgb: np.ndarray, encoding: str) -> Any:
        fields = rgb_to_image_fields(rgb, encoding)
        fields["data"] = np.frombuffer(fields["data"], dtype=np.uint8)
        return self.types[IMAGE_TYPE](header=self.header(stamp_ns, frame_id), **fields)

    def depth(self, stamp_ns: int, frame_id: str, depth_m: np.ndarray) -> Any:
        """16UC1 millimetres (0 = invalid) of a float metres image."""
        millimetres = np.nan_to_num(np.asarray(depth_m, np.float64) * 1000.0, nan=0.0, posinf=0.0)
        data = np.clip(np.round(millimetres), 0, 65535).astype("<u2")
        height, width = data.shape
        return self.types[IMAGE_TYPE](
            header=self.header(stamp_ns, frame_id), height=height, width=width, encoding="16UC1",
            is_bigendian=0, step=width * 2, data=data.view(np.uint8).reshape(-1),
        )  # fmt: skip

    def camera_info(self, stamp_ns: int, frame_id: str, intrinsics: CameraIntrinsics) -> Any:
        types = self.types
        k = np.array([intrinsics.fx, 0, intrinsics.cx, 0, intrinsics.fy, intrinsics.cy, 0, 0, 1], np.float64)
        p = np.array([intrinsics.fx, 0, intrinsics.cx, 0, 0, intrinsics.fy, intrinsics.cy, 0, 0, 0, 1, 0])
        fields = {"binning_x": 0, "binning_y": 0}
        roi = types["sensor_msgs/msg/RegionOfInterest"](x_offset=0, y_offset=0, height=0, width=0,
                                                         do_rectify=False)  # fmt: skip
        matrices = {
            "d": np.zeros(5, np.float64),
            "k": k,
            "r": np.eye(3).reshape(-1),
            "p": p.astype(np.float64),
        }
        if self.ros1:  # ROS 1 spells them D, K, R, P
            matrices = {name.upper(): value for name, value in matrices.items()}
        return types[CAMERA_INFO_TYPE](
            header=self.header(stamp_ns, frame_id), height=intrinsics.height, width=intrinsics.width,
            distortion_model="plumb_bob", roi=roi, **matrices, **fields,
        )  # fmt: skip

    def compressed(self, stamp_ns: int, frame_id: str, rgb: np.ndarray, fmt: str) -> Any:
        data = np.frombuffer(rgb_to_compressed_bytes(rgb, fmt), dtype=np.uint8)
        return self.types[COMPRESSED_TYPE](header=self.header(stamp_ns, frame_id), format=fmt, data=data)

    def pose(self, stamp_ns: int, pose: Any, pose_type: str, frame_id: str, child_frame_id: str) -> Any:
        types = self.types
        position, orientation, pose_frame = _pose_arrays(pose)
        geometry_pose = types["geometry_msgs/msg/Pose"](
            position=types["geometry_msgs/msg/Point"](*position),
            orientation=types["geometry_msgs/msg/Quaternion"](*orientation),
        )
        header = self.header(stamp_ns, pose_frame or frame_id)
        if pose_type == "pose_stamped":
            return types[POSE_TYPES["pose_stamped"]](header=header, pose=geometry_pose)
        with_cov = types["geometry_msgs/msg/PoseWithCovariance"](
            pose=geometry_pose, covariance=np.zeros(36, dtype=np.float64)
        )
        if pose_type == "pose_with_cov":
            return types[POSE_TYPES["pose_with_cov"]](header=header, pose=with_cov)
        zero = types["geometry_msgs/msg/Vector3"](0.0, 0.0, 0.0)
        twist = types["geometry_msgs/msg/TwistWithCovariance"](
            twist=types["geometry_msgs/msg/Twist"](linear=zero, angular=zero),
            covariance=np.zeros(36, dtype=np.float64),
        )
        return types[POSE_TYPES["odometry"]](
            header=header, child_frame_id=child_frame_id, pose=with_cov, twist=twist
        )


class _BagSink:
    """A uniform writer over rosbags' rosbag2 and rosbag1 writers."""

    def __init__(self, path: Path, storage: str, factory: _MessageFactory) -> None:
        self.factory = factory
        if storage == "ros1":
            from rosbags.rosbag1 import Writer as Writer1

            self.writer = Writer1(path)
        else:
            from rosbags.rosbag2 import StoragePlugin
            from rosbags.rosbag2 import Writer as Writer2

            plugin = StoragePlugin.MCAP if storage == "mcap" else StoragePlugin.SQLITE3
            self.writer = Writer2(path, version=9, storage_plugin=plugin)
        self.writer.open()
        self.connections: dict[tuple[str, str], Any] = {}

    def write(self, topic: str, msgtype: str, stamp_ns: int, message: Any) -> None:
        key = (topic, msgtype)
        if key not in self.connections:
            self.connections[key] = self.writer.add_connection(topic, msgtype, typestore=self.factory.store)
        self.writer.write(self.connections[key], int(stamp_ns), self.factory.serialize(message, msgtype))

    def close(self) -> None:
        self.writer.close()


def _new_bag_path(path: str | Path, storage: str, pose_type: str) -> Path:
    """The path a new bag is written to (``.bag`` added for ros1), after checking the options.

    Raises:
        FileExistsError: the path exists (bags are never overwritten).
        ValueError: unknown storage / pose type.
    """
    if storage not in STORAGES:
        raise ValueError(f"storage must be one of {STORAGES}, got {storage!r}")
    if pose_type not in POSE_TYPES:
        raise ValueError(f"pose_type must be one of {tuple(POSE_TYPES)}, got {pose_type!r}")
    path = Path(path)
    if storage == "ros1" and path.suffix != ".bag":
        path = path.with_name(path.name + ".bag")
    if path.exists():
        raise FileExistsError(f"{path} exists; bags are never overwritten")
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


@dataclass(frozen=True)
class _CameraTopics:
    """Where and how :func:`write_image_bag` writes each frame."""

    topic: str
    frame_id: str
    encoding: str
    compressed: str | None
    camera_info: CameraIntrinsics | None
    camera_info_topic: str
    depth_topic: str

    def write(self, sink: _BagSink, stamp_ns: int, rgb: np.ndarray, depth: np.ndarray | None) -> None:
        """One frame: its CameraInfo, depth image and colour image (in this order), stamped ``stamp_ns``."""
        factory = sink.factory
        if self.camera_info is not None:
            info = factory.camera_info(stamp_ns, self.frame_id, self.camera_info)
            sink.write(self.camera_info_topic, CAMERA_INFO_TYPE, stamp_ns, info)
        if depth is not None:
            sink.write(self.depth_topic, IMAGE_TYPE, stamp_ns, factory.depth(stamp_ns, self.frame_id, depth))
        if self.compressed:
            message = factory.compressed(stamp_ns, self.frame_id, rgb, self.compressed)
            sink.write(self.topic, COMPRESSED_TYPE, stamp_ns, message)
        else:
            message = factory.image(stamp_ns, self.frame_id, rgb, self.encoding)
            sink.write(self.topic, IMAGE_TYPE, stamp_ns, message)


class _PoseStream:
    """Poses written in stamp order, interleaved with the frames (each pose before the frames after it)."""

    def __init__(
        self, poses: Iterable[tuple[int, Any]], topic: str, pose_type: str, frame_id: str, child_frame_id: str
    ) -> None:
        self.pending = sorted(poses, key=lambda item: int(item[0]))
        self.next = 0
        self.topic, self.pose_type = topic, pose_type
        self.frame_id, self.child_frame_id = frame_id, child_frame_id

    def flush(self, sink: _BagSink, until_ns: int | None) -> None:
        """Write the poses stamped up to ``until_ns`` (all that are left with None)."""
        while self.next < len(self.pending) and (
            until_ns is None or int(self.pending[self.next][0]) <= until_ns
        ):
            stamp, pose = self.pending[self.next]
            message = sink.factory.pose(int(stamp), pose, self.pose_type, self.frame_id, self.child_frame_id)
            sink.write(self.topic, POSE_TYPES[self.pose_type], int(stamp), message)
            self.next += 1


def write_image_bag(
    path: str | Path,
    frames: Iterable[tuple[int, np.ndarray] | tuple[int, np.ndarray, np.ndarray]],
    *,
    topic: str = "/camera/image_raw",
    camera_info: CameraIntrinsics | None = None,
    camera_info_topic: str = "/camera/camera_info",
    depth_topic: str = "/camera/depth/image_raw",
    frame_id: str = "camera",
    storage: str = "sqlite3",
    encoding: str = "rgb8",
    compressed: str | None = None,
    poses: Iterable[tuple[int, Any]] | None = None,
    pose_topic: str = "/odom",
    pose_type: str = "odometry",
    pose_frame_id: str = "map",
    child_frame_id: str = "base_link",
) -> Path:
    """Write ``(stamp_ns, rgb)`` frames (and optional ``(stamp_ns, Pose)`` poses) to a new bag.

    Args:
        path: rosbag2 directory to create (sqlite3/mcap) or ``.bag`` file (ros1; suffix added if missing).
        frames: (stamp_ns, (H, W, 3) uint8 RGB[, (H, W) float depth in metres]); the stamp is both header
            stamp and log time. A depth image goes to ``depth_topic`` as 16UC1 millimetres.
        camera_info: intrinsics written as sensor_msgs/CameraInfo on ``camera_info_topic`` with each frame.
        storage: "sqlite3", "mcap" or "ros1".
        encoding: sensor_msgs/Image encoding (any of ``tscm_ros.images.SUPPORTED_ENCODINGS``).
        compressed: "jpeg" or "png" to write sensor_msgs/CompressedImage instead of Image.
        poses: (stamp_ns, Pose or (position xyz, orientation xyzw)), written to ``pose_topic`` as
            ``pose_type`` ("odometry", "pose_stamped" or "pose_with_cov").

    Returns:
        The path of the bag written.

    Raises:
        FileExistsError: ``path`` exists (bags are never overwritten).
        ValueError: unknown storage / pose type / encoding.
    """
    path = _new_bag_path(path, storage, pose_type)
    camera = _CameraTopics(topic, frame_id, encoding, compressed, camera_info, camera_info_topic, depth_topic)
    pose_stream = _PoseStream(poses or [], pose_topic, pose_type, pose_frame_id, child_frame_id)
    sink = _BagSink(path, storage, _MessageFactory(ros1=storage == "ros1"))
    try:
        for stamp_ns, rgb, *depth in frames:
            pose_stream.flush(sink, int(stamp_ns))
            camera.write(sink, int(stamp_ns), rgb, depth[0] if depth else None)
        pose_stream.flush(sink, None)
    finally:
        sink.close()
    return path
