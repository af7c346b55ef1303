"""bag_player publishes bags written by tscm_ros.bags over real Fast DDS (separate process)."""

from __future__ import annotations

import signal

import numpy as np
import pytest
from rosgraph_msgs.msg import Clock
from sensor_msgs.msg import CompressedImage, Image

from tscm_ros.bags import write_image_bag
from tscm_ros.images import compressed_msg_to_rgb, image_msg_to_rgb
from tscm_ros.ros.messages import stamp_to_ns
from tscm_ros.ros.testing import NodeProcess, RosProbe, reliable_qos

pytestmark = pytest.mark.ros

FRAME_COUNT = 12
FIRST_STAMP_NS = 1_700_000_000_123_456_789
PERIOD_NS = 100_000_000  # 10 Hz in the bag


def frames() -> list[tuple[int, np.ndarray]]:
    rng = np.random.default_rng(7)
    return [
        (FIRST_STAMP_NS + index * PERIOD_NS, rng.integers(0, 256, (24, 32, 3), dtype=np.uint8))
        for index in range(FRAME_COUNT)
    ]


@pytest.fixture(scope="module")
def probe():
    with RosProbe("bag_player_test_probe") as probe:
        yield probe


def play(probe: RosProbe, bag, topic: str, message_type: type, *arguments: str, timeout: float = 30.0):
    received = probe.subscribe(message_type, topic, reliable_qos(100))
    clock = probe.subscribe(Clock, "/clock", reliable_qos(100)) if "--clock" in arguments else None
    with NodeProcess(
        "tscm_ros.cli.bag_player", arguments=[str(bag), "--wait-for-subscribers", "1", *arguments]
    ) as player:
        assert player.wait(timeout) == 0, player.output()
        received.wait_count(FRAME_COUNT, 5.0)
        return received, clock, player.output()


@pytest.mark.parametrize("storage", ["sqlite3", "mcap", "ros1"])
def test_all_frames_arrive_with_their_header_stamps(probe: RosProbe, tmp_path, storage: str):
    written = frames()
    topic = f"/bag_test/{storage}/image"
    bag = write_image_bag(tmp_path / f"bag_{storage}", written, topic=topic, storage=storage, encoding="bgr8")
    received, _, output = play(probe, bag, topic, Image, "--rate", "4.0")
    messages = received.messages
    assert len(messages) == FRAME_COUNT, output
    assert [stamp_to_ns(m.header.stamp) for m in messages] == [stamp for stamp, _ in written]
    for message, (_, rgb) in zip(messages, written, strict=True):
        assert message.encoding == "bgr8"
        np.testing.assert_array_equal(image_msg_to_rgb(message), rgb)


def test_compressed_topic_filter_pacing_and_clock(probe: RosProbe, tmp_path):
    written = frames()
    poses = [
        (stamp, ((index * 1.0, 0.0, 0.0), (0.0, 0.0, 0.0, 1.0))) for index, (stamp, _) in enumerate(written)
    ]
    bag = write_image_bag(
        tmp_path / "compressed", written, topic="/bag_test/cam", storage="mcap", compressed="png", poses=poses
    )
    rate = 2.0
    received, clock, output = play(
        probe,
        bag,
        "/bag_test/cam",
        CompressedImage,
        "--rate",
        str(rate),
        "--clock",
        "--topics",
        "/bag_test/cam",
    )
    items = received.items
    assert len(items) == FRAME_COUNT, output
    for (_, message), (stamp, rgb) in zip(items, written, strict=True):
        assert stamp_to_ns(message.header.stamp) == stamp
        np.testing.assert_array_equal(compressed_msg_to_rgb(message), rgb)  # PNG is lossless
    # original timing scaled by --rate: the player may be late on a loaded machine, never early
    wall_span = items[-1][0] - items[0][0]
    assert wall_span >= 0.9 * (FRAME_COUNT - 1) * PERIOD_NS / 1e9 / rate
    # /clock carries bag time: non-decreasing, covering the message stamps
    assert clock is not None
    clock_ns = [stamp_to_ns(message.clock) for message in clock.messages]
    assert len(clock_ns) >= FRAME_COUNT
    assert clock_ns == sorted(clock_ns)
    assert clock_ns[0] >= written[0][0] and clock_ns[-1] == written[-1][0]
    # --topics left /odom out
    assert probe.node.count_publishers("/odom") == 0


def test_missing_bag_is_one_clear_error(tmp_path):
    with NodeProcess("tscm_ros.cli.bag_player", arguments=[str(tmp_path / "nope")]) as player:
        assert player.wait(30) == 1
        output = player.output()
    assert "does not exist" in output
    assert "Traceback" not in output


@pytest.mark.parametrize("signal_name", ["SIGINT", "SIGTERM"])
def test_signal_stops_playback_quietly(probe: RosProbe, tmp_path, signal_name: str):
    """Ctrl+C / SIGTERM while publishing: exit code 0, a one-line summary, no traceback, no rosout error."""
    topic = f"/bag_test/signal_{signal_name.lower()}"
    bag = write_image_bag(tmp_path / "loop", frames(), topic=topic)
    received = probe.subscribe(Image, topic, reliable_qos(100))
    arguments = [str(bag), "--loop", "--rate", "1.0", "--start-delay", "0", "--progress"]
    with NodeProcess("tscm_ros.cli.bag_player", arguments=arguments) as player:
        assert received.wait_count(2, 30.0), player.output()
        assert player.process.poll() is None, player.output()
        player.process.send_signal(getattr(signal, signal_name))
        assert player.wait(15) == 0, player.output()
        output = player.output()
    assert "Traceback" not in output and "Failed to publish" not in output, output
    assert "Error" not in output and "error" not in output, output
    summary = [line for line in output.splitlines() if line.startswith("bag_player: stopped: published")]
    assert len(summary) == 1, output
    assert "msg" in output  # --progress forced the bar onto the (non-terminal) log
