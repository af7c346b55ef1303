"""Read image (+ pose) streams from rosbag2 (sqlite3 / mcap) and ROS 1 bags, and write test/demo bags.

Pure Python on top of ``rosbags`` (no ROS installation needed). Reading goes through
``rosbags.highlevel.AnyReader``, which takes a rosbag2 directory (metadata.yaml + .db3/.mcap files), a
bare ``.db3`` or ``.mcap`` file, or a ROS 1 ``.bag`` file; message types come from the definitions stored in
the bag (ROS 2 Kilted definitions are the fallback for bags without them).

Bad messages never stop a read: undecodable messages and unsupported images are counted per reason in
:class:`BagReadStats` and skipped.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable, Iterator
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

if TYPE_CHECKING:
    from rosbags.highlevel import AnyReader

    from tscm_ros.placemap import Pose

LOGGER = logging.getLogger(__name__)

IMAGE_TYPE = "sensor_msgs/msg/Image"
COMPRESSED_TYPE = "sensor_msgs/msg/CompressedImage"
IMAGE_TYPES = (IMAGE_TYPE, COMPRESSED_TYPE)
POSE_TYPES = {
    "odometry": "nav_msgs/msg/Odometry",
    "pose_stamped": "geometry_msgs/msg/PoseStamped",
    "pose_with_cov": "geometry_msgs/msg/PoseWithCovarianceStamped",
}
STORAGES = ("sqlite3", "mcap", "ros1")


class BagError(ValueError):
    """A bag that cannot be opened, or a topic that is not in it."""


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


@dataclass
class BagReadStats:
    """What a read did: frames decoded, messages skipped per reason, topics used."""

    image_topic: str | None = None
    pose_topic: str | None = None
    image_messages: int = 0
    decoded: int = 0
    errors: Counter = field(
        default_factory=Counter
    )  # reason -> count (ImageDecodeError reasons, "corrupt_message")
    pose_messages: int = 0
    frames_with_pose: int = 0
    frames_without_pose: int = 0

    @property
    def skipped(self) -> int:
        return sum(self.errors.values())

    def summary(self) -> str:
        errors = ", ".join(f"{reason}={count}" for reason, count in sorted(self.errors.items())) or "none"
        text = (
            f"image topic {self.image_topic}: {self.image_messages} messages, {self.decoded} decoded, "
            f"{self.skipped} skipped ({errors})"
        )
        if self.pose_topic:
            text += (
                f"; pose topic {self.pose_topic}: {self.pose_messages} poses, "
                f"{self.frames_with_pose} frames with pose, {self.frames_without_pose} without"
            )
        return text


# ------------------------------------------------------------------------------------------ reading


def _default_typestore():
    from rosbags.typesys import Stores, get_typestore

    return get_typestore(Stores.ROS2_KILTED)


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
        reader = _opened_reader_class()([path], default_typestore=_default_typestore())
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
        if names:
            if len(names) > 1:
                LOGGER.info("several %s topics (%s); using %s", role, ", ".join(names), names[0])
            return names[0]
    return None


def _stamp_ns(header: Any) -> int:
    return int(header.stamp.sec) * 1_000_000_000 + int(header.stamp.nanosec)


@dataclass
class PoseTrack:
    """Time-sorted poses of one topic; :meth:`at` interpolates (linear position, slerp orientation)."""

    stamps_ns: np.ndarray  # (N,) int64, strictly increasing
    positions: np.ndarray  # (N, 3)
    orientations_xyzw: np.ndarray  # (N, 4) unit quaternions
    frame_id: str = ""

    @classmethod
    def from_samples(cls, samples: list[tuple[int, np.ndarray, np.ndarray]], frame_id: str = "") -> PoseTrack:
        samples = sorted(samples, key=lambda sample: sample[0])
        unique: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        for stamp, position, orientation in samples:
            unique[stamp] = (position, orientation)  # the last message wins for duplicate stamps
        stamps = np.fromiter(unique, dtype=np.int64, count=len(unique))
        positions = np.array([value[0] for value in unique.values()], dtype=np.float64).reshape(-1, 3)
        quaternions = np.array([value[1] for value in unique.values()], dtype=np.float64).reshape(-1, 4)
        norms = np.linalg.norm(quaternions, axis=1, keepdims=True)
        quaternions = np.where(norms > 0, quaternions / np.where(norms > 0, norms, 1), [0.0, 0.0, 0.0, 1.0])
        return cls(stamps, positions, quaternions, frame_id)

    def __len__(self) -> int:
        return len(self.stamps_ns)

    def at(self, stamp_ns: int) -> tuple[np.ndarray, np.ndarray] | None:
        """(position, orientation_xyzw) at ``stamp_ns``, or None outside [first, last] stamp."""
        if not len(self) or stamp_ns < self.stamps_ns[0] or stamp_ns > self.stamps_ns[-1]:
            return None
        index = int(np.searchsorted(self.stamps_ns, stamp_ns, side="left"))
        if self.stamps_ns[index] == stamp_ns:
            return self.positions[index].copy(), self.orientations_xyzw[index].copy()
        before, after = index - 1, index
        fraction = (stamp_ns - self.stamps_ns[before]) / (self.stamps_ns[after] - self.stamps_ns[before])
        position = self.positions[before] + fraction * (self.positions[after] - self.positions[before])
        return position, quaternion_slerp(
            self.orientations_xyzw[before], self.orientations_xyzw[after], fraction
        )


def quaternion_slerp(q0: np.ndarray, q1: np.ndarray, fraction: float) -> np.ndarray:
    """Shortest-path spherical interpolation of unit quaternions (x, y, z, w)."""
    dot = float(np.dot(q0, q1))
    if dot < 0.0:
        q1, dot = -q1, -dot
    if dot > 0.9995:  # nearly parallel: normalised lerp is accurate and stable
        result = q0 + fraction * (q1 - q0)
        return result / np.linalg.norm(result)
    theta = np.arccos(min(dot, 1.0))
    return (np.sin((1.0 - fraction) * theta) * q0 + np.sin(fraction * theta) * q1) / np.sin(theta)


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


def read_pose_track(reader: AnyReader, topic: str, stats: BagReadStats | None = None) -> PoseTrack:
    """All poses of ``topic`` (Odometry, PoseStamped, PoseWithCovarianceStamped) as a :class:`PoseTrack`."""
    connections = [connection for connection in reader.connections if connection.topic == topic]
    samples: list[tuple[int, np.ndarray, np.ndarray]] = []
    frame_id = ""
    for connection, log_time, raw in reader.messages(connections=connections):
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


def iter_frames(
    path: str | Path,
    image_topic: str | None = None,
    pose_topic: str | None = None,
    *,
    max_pixels: int | None = None,
    stats: BagReadStats | None = None,
) -> Iterator[BagFrame]:
    """Decoded RGB frames of one image topic, in bag (log time) order, with interpolated poses.

    Args:
        path: bag (see :func:`open_bag`).
        image_topic: Image or CompressedImage topic; None picks the first raw Image topic by name, else the
            first CompressedImage topic.
        pose_topic: Odometry / PoseStamped / PoseWithCovarianceStamped topic; None picks one automatically
            when the bag has one, "" (or "none") reads no poses.
        max_pixels: larger images are skipped (counted as "too_large"); None: the common limit
            (``$TSCM_MAX_PIXELS``, else :data:`tscm_ros.images.DEFAULT_MAX_PIXELS`).
        stats: filled in while iterating (decoded frames, skipped messages per reason).

    Raises:
        FileNotFoundError, BagError: missing bag, no image topic, unknown topic (before the first frame).
    """
    stats = stats if stats is not None else BagReadStats()
    reader = open_bag(path)
    with reader:
        topic = _choose_topic(reader, image_topic, IMAGE_TYPES, "image")
        if topic is None:
            available = ", ".join(f"{t.name} [{t.msgtype}]" for t in _summaries(reader)) or "none"
            raise BagError(f"{path}: no sensor_msgs Image/CompressedImage topic (topics: {available})")
        stats.image_topic = topic
        track = None
        if pose_topic is None or pose_topic.lower() not in ("", "none"):
            chosen_pose_topic = _choose_topic(reader, pose_topic, POSE_TYPES.values(), "pose")
            if chosen_pose_topic:
                stats.pose_topic = chosen_pose_topic
                track = read_pose_track(reader, chosen_pose_topic, stats)
        connections = [connection for connection in reader.connections if connection.topic == topic]
        for connection, log_time, raw in reader.messages(connections=connections):
            stats.image_messages += 1
            try:
                message = reader.deserialize(raw, connection.msgtype)
            except Exception as error:
                stats.errors["corrupt_message"] += 1
                LOGGER.debug("undecodable %s message at %d: %s", connection.msgtype, log_time, error)
                continue
            try:
                if connection.msgtype == COMPRESSED_TYPE:
                    rgb = compressed_msg_to_rgb(message, max_pixels=max_pixels)
                else:
                    rgb = image_msg_to_rgb(message, max_pixels=max_pixels)
            except ImageDecodeError as error:
                stats.errors[error.reason] += 1
                LOGGER.debug("skipping image at %d: %s", log_time, error)
                continue
            stamp = _stamp_ns(message.header) or int(log_time)
            pose = None
            if track is not None:
                sample = track.at(stamp)
                if sample is None:
                    stats.frames_without_pose += 1
                else:
                    stats.frames_with_pose += 1
                    pose = make_pose(sample[0], sample[1], track.frame_id)
            stats.decoded += 1
            yield BagFrame(stamp, str(message.header.frame_id), topic, rgb, pose, int(log_time))


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
        from rosbags.typesys import Stores, get_typestore

        self.ros1 = ros1
        self.store = get_typestore(Stores.ROS1_NOETIC if ros1 else Stores.ROS2_KILTED)
        self.types = self.store.types
        self.seq = 0

    def header(self, stamp_ns: int, frame_id: str) -> Any:
        stamp = self.types["builtin_interfaces/msg/Time"](
            sec=int(stamp_ns // 1_000_000_000), nanosec=int(stamp_ns % 1_000_000_000)
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


def write_image_bag(
    path: str | Path,
    frames: Iterable[tuple[int, np.ndarray]],
    *,
    topic: str = "/camera/image_raw",
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
        frames: (stamp_ns, (H, W, 3) uint8 RGB); the stamp is both header stamp and log time.
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
    factory = _MessageFactory(ros1=storage == "ros1")
    pending_poses = sorted(poses or [], key=lambda item: int(item[0]))
    next_pose = 0
    sink = _BagSink(path, storage, factory)
    try:

        def flush_poses(until_ns: int | None) -> None:
            nonlocal next_pose
            while next_pose < len(pending_poses) and (
                until_ns is None or int(pending_poses[next_pose][0]) <= until_ns
            ):
                stamp, pose = pending_poses[next_pose]
                message = factory.pose(int(stamp), pose, pose_type, pose_frame_id, child_frame_id)
                sink.write(pose_topic, POSE_TYPES[pose_type], int(stamp), message)
                next_pose += 1

        for stamp_ns, rgb in frames:
            flush_poses(int(stamp_ns))
            if compressed:
                message = factory.compressed(int(stamp_ns), frame_id, rgb, compressed)
                sink.write(topic, COMPRESSED_TYPE, int(stamp_ns), message)
            else:
                message = factory.image(int(stamp_ns), frame_id, rgb, encoding)
                sink.write(topic, IMAGE_TYPE, int(stamp_ns), message)
        flush_poses(None)
    except BaseException:
        sink.close()
        raise
    sink.close()
    return path
