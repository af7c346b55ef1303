"""Reading and writing image/pose bags with rosbags (tscm_ros.bags): rosbag2 sqlite3 + mcap and ROS 1."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from tscm_ros.bags import (
    BagError,
    BagReadStats,
    iter_frames,
    list_topics,
    open_bag,
    write_image_bag,
)
from tscm_ros.images import SUPPORTED_ENCODINGS, image_msg_to_rgb, rgb_to_image_fields
from tscm_ros.placemap import Pose

STORAGES = ["sqlite3", "mcap", "ros1"]
SECOND = 1_000_000_000
EXACT_ENCODINGS = {
    "rgb8",
    "bgr8",
    "rgba8",
    "bgra8",
    "8UC3",
    "8UC4",
    "rgb16",
    "bgr16",
    "rgba16",
    "bgra16",
    "16UC3",
}


def source_image(seed: int, height: int = 12, width: int = 16) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def expected_rgb(rgb: np.ndarray, encoding: str) -> np.ndarray:
    if encoding in EXACT_ENCODINGS:
        return rgb
    luma = np.rint(0.299 * rgb[..., 0] + 0.587 * rgb[..., 1] + 0.114 * rgb[..., 2]).astype(np.uint8)
    if encoding in ("mono8", "mono16", "8UC1", "16UC1"):
        return np.repeat(luma[..., None], 3, axis=2)
    # Bayer: the demosaicing itself is tested in test_images; here the bag must carry it unchanged.
    return image_msg_to_rgb(SimpleNamespace(**rgb_to_image_fields(rgb, encoding)))


@pytest.mark.parametrize("storage", STORAGES)
def test_every_encoding_round_trips(tmp_path: Path, storage: str):
    images = [source_image(seed) for seed in range(2)]
    for encoding in SUPPORTED_ENCODINGS:
        frames = [(SECOND * (10 + i), image) for i, image in enumerate(images)]
        bag = write_image_bag(tmp_path / f"{encoding}", frames, storage=storage, encoding=encoding)
        stats = BagReadStats()
        read = list(iter_frames(bag, stats=stats))
        assert stats.decoded == 2 and not stats.errors, (encoding, stats)
        for frame, (stamp, image) in zip(read, frames, strict=True):
            assert frame.stamp_ns == stamp and frame.frame_id == "camera"
            assert frame.topic == "/camera/image_raw" and frame.pose is None
            np.testing.assert_array_equal(frame.rgb, expected_rgb(image, encoding), err_msg=encoding)


@pytest.mark.parametrize("storage", STORAGES)
def test_compressed_images(tmp_path: Path, storage: str):
    y, x = np.mgrid[0:32, 0:48]
    smooth = np.stack([x * 5, y * 7, (x + y) * 3], axis=2).astype(np.uint8)
    frames = [(SECOND * 3, smooth), (SECOND * 4, smooth[::-1].copy())]
    png = write_image_bag(
        tmp_path / "png", frames, storage=storage, compressed="png", topic="/cam/compressed"
    )
    assert [(t.name, t.msgtype, t.count) for t in list_topics(png)] == [
        ("/cam/compressed", "sensor_msgs/msg/CompressedImage", 2)
    ]
    read = list(iter_frames(png))
    for frame, (_, image) in zip(read, frames, strict=True):
        np.testing.assert_array_equal(frame.rgb, image)
    jpeg = write_image_bag(tmp_path / "jpeg", frames, storage=storage, compressed="jpeg")
    for frame, (_, image) in zip(iter_frames(jpeg), frames, strict=True):
        assert np.abs(frame.rgb.astype(int) - image).mean() < 4.0


def yaw_quaternion(yaw: float) -> tuple[float, float, float, float]:
    return (0.0, 0.0, math.sin(yaw / 2), math.cos(yaw / 2))


@pytest.mark.parametrize("pose_type", ["odometry", "pose_stamped", "pose_with_cov"])
@pytest.mark.parametrize("storage", ["sqlite3", "ros1"])
def test_pose_interpolation(tmp_path: Path, pose_type: str, storage: str):
    image = source_image(0, 4, 4)
    # poses at t = 10 s and 12 s: x 0 -> 4 m, yaw 0 -> 90 deg
    poses = [
        (10 * SECOND, Pose((0.0, 0.0, 1.0), yaw_quaternion(0.0), "map")),
        (12 * SECOND, Pose((4.0, 2.0, 1.0), yaw_quaternion(math.pi / 2), "map")),
    ]
    stamps = [9 * SECOND, 10 * SECOND, 11 * SECOND, int(11.5 * SECOND), 12 * SECOND, 13 * SECOND]
    bag = write_image_bag(
        tmp_path / "poses",
        [(stamp, image) for stamp in stamps],
        storage=storage,
        poses=poses,
        pose_type=pose_type,
        pose_topic="/robot/pose",
    )
    stats = BagReadStats()
    frames = {frame.stamp_ns: frame for frame in iter_frames(bag, stats=stats)}
    assert stats.pose_topic == "/robot/pose" and stats.pose_messages == 2
    assert stats.frames_with_pose == 4 and stats.frames_without_pose == 2
    assert frames[9 * SECOND].pose is None and frames[13 * SECOND].pose is None
    expected = {10: (0.0, 0.0, 0.0), 11: (2.0, 1.0, math.pi / 4), 11.5: (3.0, 1.5, 3 * math.pi / 8)}
    expected[12] = (4.0, 2.0, math.pi / 2)
    for seconds, (x, y, yaw) in expected.items():
        pose = frames[int(seconds * SECOND)].pose
        assert pose.frame_id == "map"
        np.testing.assert_allclose(pose.position, (x, y, 1.0), atol=1e-9)
        np.testing.assert_allclose(pose.orientation, yaw_quaternion(yaw), atol=1e-9)
    # explicitly no poses
    assert all(frame.pose is None for frame in iter_frames(bag, pose_topic=""))


def test_corrupt_and_unsupported_messages_are_counted(tmp_path: Path):
    from rosbags.rosbag2 import Writer
    from rosbags.typesys import Stores, get_typestore

    store = get_typestore(Stores.ROS2_KILTED)
    types = store.types
    good = source_image(1, 6, 8)

    def image_message(stamp_s: int, fields: dict):
        header = types["std_msgs/msg/Header"](
            stamp=types["builtin_interfaces/msg/Time"](sec=stamp_s, nanosec=0), frame_id="cam"
        )
        data = np.frombuffer(fields.pop("data"), np.uint8)
        return store.serialize_cdr(
            types["sensor_msgs/msg/Image"](header=header, data=data, **fields), "sensor_msgs/msg/Image"
        )

    path = tmp_path / "mixed"
    with Writer(path, version=9) as writer:
        connection = writer.add_connection("/camera/image_raw", "sensor_msgs/msg/Image", typestore=store)
        writer.write(connection, 1 * SECOND, image_message(1, rgb_to_image_fields(good, "rgb8")))
        writer.write(connection, 2 * SECOND, b"\x00\x01\x00\x00\xff\xff")  # not a valid CDR Image
        float_image = {"height": 6, "width": 8, "encoding": "32FC1", "is_bigendian": 0, "step": 32}
        writer.write(connection, 3 * SECOND, image_message(3, {**float_image, "data": bytes(192)}))
        truncated = rgb_to_image_fields(good, "rgb8")
        truncated["data"] = truncated["data"][:-10]
        writer.write(connection, 4 * SECOND, image_message(4, truncated))
        writer.write(connection, 5 * SECOND, image_message(5, rgb_to_image_fields(good, "bgr8")))
    stats = BagReadStats()
    frames = list(iter_frames(path, stats=stats))
    assert [frame.stamp_ns for frame in frames] == [1 * SECOND, 5 * SECOND]
    assert stats.image_messages == 5 and stats.decoded == 2
    assert stats.errors == {"corrupt_message": 1, "unsupported_encoding": 1, "truncated": 1}
    assert "corrupt_message=1" in stats.summary()


def test_bare_storage_files_and_header_stamp(tmp_path: Path):
    frames = [(SECOND * 5 + 7, source_image(2))]
    for storage, suffix in (("sqlite3", ".db3"), ("mcap", ".mcap")):
        bag = write_image_bag(tmp_path / storage, frames, storage=storage)
        (storage_file,) = bag.glob(f"*{suffix}")
        (frame,) = iter_frames(storage_file)
        assert frame.stamp_ns == SECOND * 5 + 7
        np.testing.assert_array_equal(frame.rgb, frames[0][1])


def test_rclpy_deserializes_raw_messages(tmp_path: Path):
    from nav_msgs.msg import Odometry
    from rclpy.serialization import deserialize_message
    from sensor_msgs.msg import Image

    image = source_image(3, 6, 10)
    pose = Pose((1.0, 2.0, 3.0), yaw_quaternion(0.3), "map")
    bag = write_image_bag(tmp_path / "rclpy", [(SECOND, image)], encoding="bgr8", poses=[(SECOND, pose)])
    with open_bag(bag) as reader:
        raws = {connection.topic: raw for connection, _, raw in reader.messages()}
    message = deserialize_message(bytes(raws["/camera/image_raw"]), Image)
    assert (message.height, message.width, message.encoding, message.step) == (6, 10, "bgr8", 30)
    assert message.header.stamp.sec == 1 and message.header.frame_id == "camera"
    np.testing.assert_array_equal(image_msg_to_rgb(message), image)
    odometry = deserialize_message(bytes(raws["/odom"]), Odometry)
    assert odometry.header.frame_id == "map" and odometry.child_frame_id == "base_link"
    assert (odometry.pose.pose.position.x, odometry.pose.pose.position.z) == (1.0, 3.0)
    assert odometry.pose.pose.orientation.w == pytest.approx(math.cos(0.15))


def test_clear_errors(tmp_path: Path):
    with pytest.raises(FileNotFoundError):
        list(iter_frames(tmp_path / "missing_bag"))
    bag = write_image_bag(tmp_path / "one", [(SECOND, source_image(4))])
    with pytest.raises(BagError, match="/nonexistent"):
        list(iter_frames(bag, image_topic="/nonexistent"))
    with pytest.raises(BagError, match="expected one of"):
        list(iter_frames(bag, pose_topic="/camera/image_raw"))
    with pytest.raises(FileExistsError):
        write_image_bag(bag, [(SECOND, source_image(4))])
    with pytest.raises(ValueError):
        write_image_bag(tmp_path / "x", [], storage="zip")
    (tmp_path / "not_a_bag").mkdir()
    with pytest.raises(BagError):
        list_topics(tmp_path / "not_a_bag")
    only_poses = write_image_bag(tmp_path / "poses_only", [], poses=[(SECOND, Pose((0.0, 0.0, 0.0)))])
    with pytest.raises(BagError, match="no sensor_msgs Image"):
        list(iter_frames(only_poses))


@pytest.mark.parametrize("storage", ["sqlite3", "mcap", "ros1"])
def test_depth_and_camera_info_are_paired_with_the_colour_frames(tmp_path: Path, storage: str):
    from tscm_ros.features import CameraIntrinsics

    rng = np.random.default_rng(0)
    intrinsics = CameraIntrinsics(fx=50.0, fy=51.0, cx=15.5, cy=11.5, width=32, height=24)
    depths = [rng.uniform(0.5, 8.0, (24, 32)).astype(np.float32) for _ in range(4)]
    depths[1][0, 0] = np.nan  # invalid pixels survive as NaN (written as 0 mm)
    frames = [(1_000 + i * 100_000_000, rng.integers(0, 255, (24, 32, 3), dtype=np.uint8), d)
              for i, d in enumerate(depths)]  # fmt: skip
    bag = write_image_bag(tmp_path / "rgbd", frames, storage=storage, camera_info=intrinsics)
    stats = BagReadStats()
    read = list(iter_frames(bag, depth_topic=None, camera_info_topic=None, stats=stats))
    assert stats.image_topic == "/camera/image_raw"  # never the depth topic, although it sorts first
    assert stats.depth_topic == "/camera/depth/image_raw" and stats.frames_with_depth == 4
    assert [f.stamp_ns for f in read] == [stamp for stamp, _, _ in frames]
    for frame, (_, rgb, depth) in zip(read, frames, strict=True):
        np.testing.assert_array_equal(frame.rgb, rgb)
        millimetres = np.round(depth.astype(np.float64) * 1000)  # 16UC1 holds whole millimetres
        np.testing.assert_allclose(frame.depth, millimetres / 1000, atol=1e-6)
        assert frame.intrinsics == intrinsics
    assert np.isnan(read[1].depth[0, 0])
    # without asking for them, frames carry neither (the default of iter_frames)
    plain = list(iter_frames(bag))
    assert all(f.depth is None and f.intrinsics is None for f in plain)
