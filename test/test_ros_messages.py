"""In-process checks of the ROS helpers: message building/decoding, pose buffer, frame slot (no DDS)."""

from __future__ import annotations

import math
import threading
import zlib

import numpy as np
import pytest
from rclpy.serialization import deserialize_message, serialize_message
from sensor_msgs.msg import PointCloud2, PointField
from std_msgs.msg import Header
from visualization_msgs.msg import Marker

from tscm_ros.poses import PoseBuffer
from tscm_ros.ros import messages
from tscm_ros.ros.latest_slot import LatestSlot
from tscm_ros.ros.testing import format_parameter

NS = 1_000_000_000
FLEET_QUERY_ID = 0x7A3F_1234_5678_9ABC  # 63-bit fleet place ids (BLAKE2b, see docs/FLEET.md)
FLEET_MATCH_ID = 0x0000_0001_0000_0000


def test_stamp_conversions_round_trip():
    for stamp_ns in (0, 1, NS - 1, 1_700_000_000 * NS + 123_456_789):
        stamp = messages.ns_to_stamp(stamp_ns)
        assert 0 <= stamp.nanosec < NS
        assert messages.stamp_to_ns(stamp) == stamp_ns


def test_candidate_cloud_layout_and_round_trip_through_cdr():
    header = Header(stamp=messages.ns_to_stamp(5 * NS + 7), frame_id="camera")
    rows = [
        {"x": 1.5, "y": -2.0, "z": 0.25, "query_id": 40, "match_id": 3, "match_stamp": 12.125,
         "similarity": 0.9, "rank": 0},
        {"x": math.nan, "y": math.nan, "z": math.nan, "query_id": 40, "match_id": 2**32 - 1,
         "match_stamp": 1.7e9 + 0.5, "similarity": -0.25, "rank": 1, "inliers": 57, "verified": 1,
         "scale_known": 1, "tx": 0.5, "ty": -0.1, "tz": 2.0, "qx": 0.0, "qy": 0.1, "qz": 0.0, "qw": 0.995,
         "sequence_score": 3.5, "sequence_length": 10},
        {"query_id": FLEET_QUERY_ID, "match_id": FLEET_MATCH_ID, "similarity": 0.5, "rank": 2,
         "match_robot": messages.identity_hash("robot_a"), "match_session": messages.identity_hash("s1"),
         "inter_robot": 1},
    ]  # fmt: skip
    cloud = messages.candidates_cloud(header, rows)
    assert (cloud.height, cloud.width, cloud.point_step, cloud.row_step) == (1, 3, 91, 273)
    assert (cloud.is_dense, cloud.is_bigendian) == (False, False)
    assert [(f.name, f.offset, f.datatype) for f in cloud.fields] == [
        ("x", 0, PointField.FLOAT32), ("y", 4, PointField.FLOAT32), ("z", 8, PointField.FLOAT32),
        ("query_id", 12, PointField.UINT32), ("match_id", 16, PointField.UINT32),
        ("match_stamp", 20, PointField.FLOAT64), ("similarity", 28, PointField.FLOAT32),
        ("rank", 32, PointField.UINT16), ("inliers", 34, PointField.UINT32),
        ("verified", 38, PointField.UINT8),
        ("scale_known", 39, PointField.UINT8), ("tx", 40, PointField.FLOAT32), ("ty", 44, PointField.FLOAT32),
        ("tz", 48, PointField.FLOAT32), ("qx", 52, PointField.FLOAT32), ("qy", 56, PointField.FLOAT32),
        ("qz", 60, PointField.FLOAT32), ("qw", 64, PointField.FLOAT32),
        ("sequence_score", 68, PointField.FLOAT32), ("sequence_length", 72, PointField.UINT16),
        ("match_robot", 74, PointField.UINT32), ("match_session", 78, PointField.UINT32),
        ("inter_robot", 82, PointField.UINT8), ("query_id_hi", 83, PointField.UINT32),
        ("match_id_hi", 87, PointField.UINT32),
    ]  # fmt: skip
    decoded = messages.cloud_to_array(deserialize_message(serialize_message(cloud), PointCloud2))
    assert decoded["match_id"].tolist() == [3, 2**32 - 1, FLEET_MATCH_ID & 0xFFFFFFFF]
    # 63-bit fleet ids travel as low 32 bits + <name>_hi; local ids (< 2^32) have hi 0
    assert decoded["match_id_hi"].tolist() == [0, 0, FLEET_MATCH_ID >> 32]
    assert messages.full_ids(decoded, "match_id").tolist() == [3, 2**32 - 1, FLEET_MATCH_ID]
    assert messages.full_ids(decoded, "query_id").tolist() == [40, 40, FLEET_QUERY_ID]
    assert decoded["match_stamp"].tolist() == [12.125, 1.7e9 + 0.5, 0.0]  # float64 keeps sub-ms stamps
    assert decoded["rank"].tolist() == [0, 1, 2]
    np.testing.assert_allclose(decoded["similarity"], [0.9, -0.25, 0.5], rtol=1e-6)
    # robot / session: CRC-32 of the UTF-8 ids (0 = unlabelled, a local map); inter_robot flag
    assert decoded["match_robot"].tolist() == [0, 0, zlib.crc32(b"robot_a")]
    assert decoded["match_session"].tolist() == [0, 0, zlib.crc32(b"s1")]
    assert decoded["inter_robot"].tolist() == [0, 0, 1]
    assert decoded["x"][0] == 1.5 and np.isnan(decoded["x"][1])
    # fields a row leaves out: unverified, unknown pose (NaN), no sequence (NaN score, length 0)
    assert decoded["verified"].tolist() == [0, 1, 0] and decoded["inliers"].tolist() == [0, 57, 0]
    assert (
        np.isnan(decoded["tx"][0]) and np.isnan(decoded["qw"][0]) and np.isnan(decoded["sequence_score"][0])
    )
    np.testing.assert_allclose(decoded[["tx", "ty", "tz"]][1].tolist(), [0.5, -0.1, 2.0], rtol=1e-6)
    assert decoded["sequence_length"].tolist() == [0, 10, 0] and decoded["scale_known"].tolist() == [0, 1, 0]
    # the documented manual decoding gives the same bytes
    manual = np.frombuffer(bytes(cloud.data), dtype=messages.CANDIDATE_DTYPE, count=cloud.width)
    assert manual.tobytes() == decoded.tobytes()


def test_identity_hash_is_crc32_of_utf8():
    assert messages.identity_hash("") == 0
    assert messages.identity_hash("robot_a") == zlib.crc32(b"robot_a") == 3420500050
    assert messages.identity_hash("roböt") == zlib.crc32("roböt".encode())
    with pytest.raises(ValueError, match="query_id"):
        messages.candidates_cloud(Header(), [{"query_id": -1}])


def test_empty_candidate_cloud_is_valid():
    cloud = messages.candidates_cloud(Header(), [])
    assert (cloud.width, len(cloud.data), len(cloud.fields)) == (0, 0, len(messages.CANDIDATE_DTYPE.names))
    assert messages.cloud_to_array(cloud).shape == (0,)


def test_cloud_decoding_honours_padding_and_row_step():
    dtype = np.dtype({"names": ["a", "b"], "formats": ["<f4", "<u2"], "offsets": [0, 8], "itemsize": 12})
    points = np.zeros(3, dtype=dtype)
    points["a"], points["b"] = [1.0, 2.0, 3.0], [7, 8, 9]
    cloud = messages.array_to_cloud(Header(), points)
    assert cloud.point_step == 12 and [f.offset for f in cloud.fields] == [0, 8]
    # append row padding as some drivers do
    cloud.row_step += 4
    cloud.data = messages.byte_array(bytes(cloud.data) + b"\xff" * 4)
    decoded = messages.cloud_to_array(cloud)
    assert decoded["a"].tolist() == [1.0, 2.0, 3.0] and decoded["b"].tolist() == [7, 8, 9]
    cloud.data = messages.byte_array(bytes(cloud.data)[:10])
    with pytest.raises(ValueError, match="shorter"):
        messages.cloud_to_array(cloud)


def test_descriptor_cloud():
    vector = np.random.default_rng(1).standard_normal(2048).astype(np.float32)
    cloud = messages.descriptor_cloud(Header(frame_id="camera"), vector)
    assert (cloud.width, cloud.point_step, [f.name for f in cloud.fields]) == (2048, 4, ["d"])
    np.testing.assert_array_equal(np.frombuffer(bytes(cloud.data), "<f4"), vector)


def test_lio_sam_pose_markers_and_covariance():
    loop = messages.lio_sam_loop(10 * NS + 500_000_000, 3 * NS)
    assert list(loop.data) == [10.5, 3.0]
    covariance = messages.diagonal_covariance([1, 2, 3, 4, 5, 6])
    assert np.array_equal(np.array(covariance).reshape(6, 6), np.diag([1.0, 2, 3, 4, 5, 6]))
    with pytest.raises(ValueError):
        messages.diagonal_covariance([1, 2])
    pose = messages.matched_pose_msg(Header(frame_id="map"), (1, 2, 3), None, [0.1] * 6)
    assert (pose.pose.pose.position.x, pose.pose.pose.orientation.w) == (1.0, 1.0)
    markers = messages.loop_edge_markers(
        Header(frame_id="map"), [((0, 0, 0), (1, 1, 1)), ((2, 0, 0), (3, 0, 0))]
    )
    (marker,) = markers.markers
    assert marker.type == Marker.LINE_LIST and len(marker.points) == 4
    assert (marker.points[3].x, marker.scale.x > 0, marker.color.a) == (3.0, True, 1.0)


def test_pose_buffer_interpolates_and_respects_max_age():
    buffer = PoseBuffer()
    half_turn = (0.0, 0.0, 1.0, 0.0)  # 180 degrees about z
    buffer.add(10 * NS, (0, 0, 0), (0, 0, 0, 1), "odom")
    buffer.add(12 * NS, (2, 4, 0), half_turn, "odom")
    middle = buffer.lookup(11 * NS, max_age_ns=NS)
    np.testing.assert_allclose(middle.position, [1, 2, 0])
    np.testing.assert_allclose(middle.orientation_xyzw, [0, 0, math.sin(math.pi / 4), math.cos(math.pi / 4)])
    assert middle.frame_id == "odom"
    assert buffer.lookup(12 * NS + NS // 2, max_age_ns=NS).stamp_ns == 12 * NS  # newest within age
    assert buffer.lookup(14 * NS, max_age_ns=NS) is None  # too old
    assert buffer.lookup(9 * NS, max_age_ns=NS // 2) is None
    # out-of-order arrivals are kept sorted
    buffer.add(11 * NS, (5, 5, 5), (0, 0, 0, 1))
    np.testing.assert_allclose(buffer.lookup(11 * NS, max_age_ns=0).position, [5, 5, 5])


def test_latest_slot_keeps_the_newest_and_counts_drops():
    slot: LatestSlot[int] = LatestSlot()
    for value in range(5):
        slot.put(value)
    assert slot.take(timeout=0.1) == 4
    assert (slot.received, slot.dropped) == (5, 4)
    assert slot.take(timeout=0.05) is None
    got = []
    consumer = threading.Thread(target=lambda: got.append(slot.take(timeout=5)))
    consumer.start()
    slot.put(9)
    consumer.join(5)
    assert got == [9]
    slot.close()
    assert slot.take(timeout=5) is None and slot.closed


def test_ros_argument_formatting():
    assert format_parameter(True) == "true"
    assert format_parameter(3) == "3"
    assert format_parameter(0.5) == "0.5"
    assert format_parameter(-1.0) == "-1.0"
    assert format_parameter("it's") == "'it''s'"
    assert format_parameter([0.25, 1.0]) == "[0.25,1.0]"


def test_lost_frame_estimator_counts_frames_that_never_arrived():
    from tscm_ros.ros.stats import LostFrameEstimator

    estimator = LostFrameEstimator()
    period = NS // 10  # a 10 Hz camera
    stamps = [i * period for i in range(100) if i % 4 != 3]  # every 4th frame lost on the way
    for stamp in stamps:
        estimator.add(stamp)
    assert estimator.period_s == pytest.approx(0.1)
    # 25 lost; the first comes before the period is known, the last has no later frame to reveal it
    assert estimator.received == len(stamps) and estimator.lost == 25 - 2
    assert estimator.recent_loss() == pytest.approx(0.25, abs=0.02)
    estimator.add(0)  # a restarted bag starts over instead of counting a huge gap
    estimator.add(period)
    assert estimator.lost == 23
