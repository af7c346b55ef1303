"""bag_player: publish a bag's topics over ROS 2 with the original timing (no ros2 CLI / rosbag2_py needed).

Reads rosbag2 (sqlite3, mcap) and ROS 1 bags with ``rosbags``. ROS 2 messages are published as the recorded
CDR bytes (``Publisher.publish(bytes)``: nothing is re-encoded, header stamps stay exactly as recorded). ROS 1
messages are decoded with rosbags and copied field by field into the ROS 2 message type of the same name
(fields ROS 2 dropped, such as ``Header.seq``, are skipped). Command line (:mod:`tscm_ros.cli.bag_player`):

    bag_player BAG [--topics /camera/image_raw /odom] [--rate 2.0] [--clock] [--loop] [--start-delay 1.0]
               [--no-progress] [--ros-args -r /camera/image_raw:=/image]

Publishers are reliable (they match best-effort and reliable subscribers) with depth ``--qos-depth``.
A progress bar goes to stderr when it is a terminal (``--progress`` forces it, ``--no-progress`` hides it);
the last line says how many messages were published. Ctrl+C / SIGTERM stop it cleanly with exit code 0.

A damaged bag (the storage cannot be read to the end, or a pass returns fewer messages than the bag lists)
stops playback with one error line naming what was lost and exit code 1, unless ``--allow-partial``: then
what can be read is played and the last line says PARTIAL.
"""

from __future__ import annotations

import array
import importlib
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import rclpy
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from rclpy.utilities import remove_ros_args

from tscm_ros.bags import BagDamagedError, BagError, BagReadStats, open_bag, read_messages
from tscm_ros.ros.shutdown import run_until_shutdown

NODE_NAME = "bag_player"


class BagPlayerError(RuntimeError):
    """A bag that cannot be played (missing, unreadable, no playable topic)."""


def import_message_type(msgtype: str) -> type:
    """'sensor_msgs/msg/Image' -> the rclpy message class ``sensor_msgs.msg.Image``."""
    parts = msgtype.split("/")
    if len(parts) == 2:  # ROS 1 style 'sensor_msgs/Image'
        parts = [parts[0], "msg", parts[1]]
    if len(parts) != 3:
        raise ImportError(f"not a message type name: {msgtype!r}")
    package, kind, name = parts
    module = importlib.import_module(f"{package}.{kind}")
    return getattr(module, name)


def to_ros2_message(value: Any, message_type: type) -> Any:
    """Copy a rosbags message object (e.g. from a ROS 1 bag) into an rclpy message of ``message_type``."""
    message = message_type()
    for field, type_name in message_type.get_fields_and_field_types().items():
        if not hasattr(value, field):
            continue  # e.g. a field added in ROS 2: keep the default
        setattr(message, field, _convert_field(getattr(value, field), type_name, getattr(message, field)))
    return message


def _convert_field(source: Any, type_name: str, current: Any) -> Any:
    base = type_name.split("<")[-1].split("[")[0].rstrip(">")
    is_sequence = type_name.startswith("sequence<") or type_name.endswith("]")
    if isinstance(current, array.array):
        return array.array(current.typecode, np.asarray(source).astype(current.typecode).tobytes())
    if isinstance(current, np.ndarray):
        return np.asarray(source, dtype=current.dtype)
    if "/" in base:  # nested message type, e.g. 'std_msgs/Header' or 'geometry_msgs/Point'
        nested = import_message_type(base)
        if is_sequence:
            return [to_ros2_message(item, nested) for item in source]
        return to_ros2_message(source, nested)
    if is_sequence:
        return [item.item() if isinstance(item, np.generic) else item for item in source]
    if isinstance(source, np.generic):
        return source.item()
    if base == "octet" and isinstance(source, int):
        return bytes([source])
    return source


class BagPlayer(Node):
    """Publishes the selected connections of an open ``rosbags`` AnyReader."""

    def __init__(
        self,
        reader: Any,
        topics: Sequence[str] | None,
        qos_depth: int,
        clock: bool,
        *,
        allow_partial: bool = False,
        path: str | Path = "",
    ) -> None:
        super().__init__(NODE_NAME)
        self._reader = reader
        self.allow_partial = allow_partial
        self.path = path
        self.stats = BagReadStats()  # of the last pass: messages read per topic against the bag's counts
        qos = QoSProfile(
            history=HistoryPolicy.KEEP_LAST,
            depth=qos_depth,
            reliability=ReliabilityPolicy.RELIABLE,
            durability=DurabilityPolicy.VOLATILE,
        )
        self.connections = []
        self._topic_publishers: dict[str, Any] = {}
        self._topic_types: dict[str, type] = {}
        wanted = set(topics) if topics else None
        for connection in reader.connections:
            if wanted is not None and connection.topic not in wanted:
                continue
            try:
                message_type = import_message_type(connection.msgtype)
            except (ImportError, AttributeError):
                self.get_logger().warning(f"skipping {connection.topic}: no ROS 2 type {connection.msgtype}")
                continue
            if connection.topic not in self._topic_publishers:
                self._topic_publishers[connection.topic] = self.create_publisher(
                    message_type, connection.topic, qos
                )
                self._topic_types[connection.topic] = message_type
            self.connections.append(connection)
        if wanted is not None and (missing := wanted - {c.topic for c in self.connections}):
            raise BagPlayerError(
                f"topics not in the bag (or without a ROS 2 type): {', '.join(sorted(missing))}"
            )
        if not self.connections:
            raise BagPlayerError("nothing to play: the bag has no playable topics")
        self._clock_publisher = None
        if clock:
            from rosgraph_msgs.msg import Clock

            self._clock_type = Clock
            self._clock_publisher = self.create_publisher(Clock, "/clock", 10)

    @property
    def message_count(self) -> int:
        """Messages one pass publishes (the bag index's counts of the selected connections)."""
        return sum(int(getattr(c, "msgcount", 0)) for c in self.connections)

    def wait_for_subscribers(self, count: int, timeout_s: float) -> bool:
        """Wait until every publisher has ``count`` subscribers (False on timeout)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if all(p.get_subscription_count() >= count for p in self._topic_publishers.values()):
                return True
            time.sleep(0.05)
        return False

    def publish_clock(self, stamp_ns: int) -> None:
        if self._clock_publisher is not None:
            sec, nanosec = divmod(int(stamp_ns), 1_000_000_000)
            clock = self._clock_type()
            clock.clock.sec, clock.clock.nanosec = sec, nanosec
            self._clock_publisher.publish(clock)

    def publish_raw(self, connection: Any, rawdata: bytes | memoryview) -> None:
        publisher = self._topic_publishers[connection.topic]
        if self._reader.is2:
            publisher.publish(bytes(rawdata))
        else:
            value = self._reader.deserialize(rawdata, connection.msgtype)
            publisher.publish(to_ros2_message(value, self._topic_types[connection.topic]))

    def play_once(self, rate: float, clock_hz: float, on_published: Callable[[], None] | None = None) -> int:
        """Publish every selected message once, paced by log time / ``rate`` (0 = as fast as possible).

        ``on_published`` is called after each message (progress). Stops early when rclpy shuts down.

        Raises:
            BagDamagedError: damaged bag (see :func:`tscm_ros.bags.read_messages`), unless ``allow_partial``:
                then the pass ends where the bag cannot be read and ``self.stats.partial`` is set.
        """
        start_wall = time.monotonic()
        first_stamp: int | None = None
        clock_period = 1.0 / clock_hz if clock_hz > 0 else None
        count = 0
        self.stats = BagReadStats()
        messages = read_messages(
            self._reader, self.connections, self.stats, allow_partial=self.allow_partial, path=self.path
        )
        for connection, stamp_ns, rawdata in messages:
            if not rclpy.ok():
                messages.close()
                break
            if first_stamp is None:
                first_stamp = stamp_ns
            if rate > 0:
                due = start_wall + (stamp_ns - first_stamp) / 1e9 / rate
                while (remaining := due - time.monotonic()) > 0:
                    step = min(remaining, clock_period) if clock_period else remaining
                    time.sleep(step)
                    if clock_period:
                        elapsed = (time.monotonic() - start_wall) * rate
                        self.publish_clock(first_stamp + min(int(elapsed * 1e9), stamp_ns - first_stamp))
            self.publish_clock(stamp_ns)
            self.publish_raw(connection, rawdata)
            count += 1
            if on_published is not None:
                on_published()
        return count


def open_reader(path: Path) -> Any:
    """Open a rosbag2 directory / .db3 / .mcap file or a ROS 1 .bag with :func:`tscm_ros.bags.open_bag`
    (the package's one opener and typestore); a .db3/.mcap file inside a rosbag2 directory plays the
    whole directory."""
    if not path.exists():
        raise BagPlayerError(f"bag {path} does not exist")
    if path.is_file() and path.suffix in (".db3", ".mcap") and (path.parent / "metadata.yaml").is_file():
        path = path.parent  # rosbag2 readers open the directory holding metadata.yaml
    try:
        return open_bag(path)
    except (BagError, OSError) as error:
        raise BagPlayerError(str(error)) from error


def own_arguments(argv: Sequence[str]) -> list[str]:
    """``argv`` (program name first) without the program name and the ``--ros-args ... [--]`` parts."""
    return remove_ros_args(list(argv))[1:]


@dataclass(frozen=True)
class PlayOptions:
    """What to play and how (the ``bag_player`` options, :mod:`tscm_ros.cli.bag_player`)."""

    bag: Path
    topics: Sequence[str] | None = None  # None: every topic
    rate: float = 1.0  # speed factor, 0 = as fast as possible
    clock: bool = False  # publish /clock with the bag time
    clock_hz: float = 100.0
    loop: bool = False
    start_delay: float = 0.5  # seconds
    wait_for_subscribers: int = 0  # wait (up to 10 s) for this many subscribers per topic
    qos_depth: int = 10
    progress: bool | None = None  # None: only when stderr is a terminal
    allow_partial: bool = False


def play_bag(options: PlayOptions, ros_argv: Sequence[str]) -> int:
    """Initialise rclpy with ``ros_argv`` and play; the exit code of ``bag_player``: 0 played (or stopped by
    Ctrl+C / SIGTERM; also a damaged bag with ``allow_partial``), 1 unusable or damaged bag."""
    from tqdm import tqdm

    rclpy.init(args=list(ros_argv))
    try:
        reader = open_reader(options.bag)
        player = BagPlayer(
            reader,
            options.topics,
            options.qos_depth,
            options.clock,
            allow_partial=options.allow_partial,
            path=options.bag,
        )
    except BagPlayerError as error:
        rclpy.logging.get_logger(NODE_NAME).error(str(error))
        rclpy.try_shutdown()
        return 1
    show_progress = sys.stderr.isatty() if options.progress is None else options.progress
    totals = {"messages": 0, "passes": 0}
    started = time.monotonic()

    def play() -> None:
        if options.wait_for_subscribers > 0 and not player.wait_for_subscribers(
            options.wait_for_subscribers, 10.0
        ):
            player.get_logger().warning("not every topic has the requested subscribers; playing anyway")
        time.sleep(options.start_delay)
        with tqdm(
            total=player.message_count or None, unit="msg", desc=NODE_NAME, file=sys.stderr,
            disable=not show_progress, leave=False, dynamic_ncols=True,
        ) as bar:  # fmt: skip

            def published() -> None:
                totals["messages"] += 1
                bar.update(1)

            while True:
                bar.reset(total=player.message_count or None)
                bar.set_postfix_str(f"pass {totals['passes'] + 1}" if options.loop else "", refresh=False)
                player.play_once(options.rate, options.clock_hz if options.clock else 0.0, published)
                if not rclpy.ok():
                    return
                totals["passes"] += 1
                if not options.loop:
                    break
        time.sleep(0.2)  # let reliable writers hand over the last samples

    try:
        outcome = run_until_shutdown(play, nodes=[player])
    except BagDamagedError as error:
        print(
            f"{NODE_NAME}: error: {error}; stopped after {totals['messages']} messages "
            "(--allow-partial plays what can be read)",
            file=sys.stderr,
            flush=True,
        )
        return 1
    finally:
        reader.close()
    seconds = time.monotonic() - started
    topics = len({c.topic for c in player.connections})
    passes = f" ({totals['passes']} full passes)" if options.loop else ""
    partial = f" (PARTIAL: damaged bag: {player.stats.damage()})" if player.stats.partial else ""
    print(
        f"{NODE_NAME}: {'stopped' if outcome.interrupted else 'finished'}: published {totals['messages']} "
        f"messages on {topics} topics{passes} in {seconds:.1f} s{partial}",
        flush=True,
    )
    return 0
