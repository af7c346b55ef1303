"""place_recognition_node over real Fast DDS, images in, outputs out: diagnostics at start, corridor revisits
against the offline describer, bad messages."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import ros_node_support
from diagnostic_msgs.msg import DiagnosticStatus
from ros_node_support import (
    NS,
    PERIOD_NS,
    QUERY_STEP,
    QUERY_T0_NS,
    REF_STEP,
    REF_T0_NS,
    NodeUnderTest,
    image_message,
    wait_diagnostics,
)
from sensor_msgs.msg import Image, PointField

from tscm_ros.placemap import PlaceMap, PlaceMeta
from tscm_ros.ros.messages import (
    CANDIDATE_DTYPE,
    byte_array,
    cloud_to_array,
    diagnostic_values,
    stamp_to_ns,
)

pytestmark = pytest.mark.ros

# module-scoped fixtures: each test file starts its own node
corridor = ros_node_support.corridor
mapping_node = ros_node_support.mapping_node
probe = ros_node_support.probe  # mapping_node uses it


def test_node_starts_discovers_and_reports_diagnostics(mapping_node: NodeUnderTest):
    # with the loopback Fast DDS profile, matching takes well under a second once the node is up
    assert mapping_node.discovery_s < 5.0
    status = wait_diagnostics(mapping_node.diagnostics, lambda values: True, timeout=5.0)
    values = diagnostic_values(status)
    assert status.level == DiagnosticStatus.WARN  # the untrained student is always a warning
    assert "untrained model" in status.message
    expected_keys = {"input_rate_hz", "processed_rate_hz", "frames_dropped", "inference_ms_p50",
                     "inference_ms_p95", "map_size", "bad_messages", "last_error"}  # fmt: skip
    assert expected_keys <= set(values)
    assert values["map_size"] == "0"


def describe_offline(images: list[np.ndarray], out: dict) -> None:
    """The node's Describer configuration, one image at a time as the node does (runs in a thread)."""
    from tscm_ros.describer import create_describer

    describer = create_describer(None, batch_size=1)
    out["describer"] = describer
    out["descriptors"] = np.concatenate([describer.describe(rgb) for rgb in images])


def test_corridor_revisits_match_the_offline_describer(mapping_node: NodeUnderTest, corridor):
    ref_indices = list(range(0, 111, REF_STEP))
    query_indices = list(range(0, 111, QUERY_STEP))
    ref_stamps = [REF_T0_NS + i * PERIOD_NS for i in ref_indices]  # the 5 Hz stamps of the original frames
    query_stamps = {i: QUERY_T0_NS + i * PERIOD_NS for i in query_indices}

    # the same Describer offline in this process, in parallel with the node
    offline: dict = {}
    images = [corridor["ref"][i] for i in ref_indices] + [corridor["query"][i] for i in query_indices]
    worker = threading.Thread(target=describe_offline, args=(images, offline))
    worker.start()

    # the node: reference traversal, then the revisit; one ~/loop_candidates message per keyframe
    for i, stamp in zip(ref_indices, ref_stamps, strict=True):
        mapping_node.publish_and_wait(image_message(corridor["ref"][i], stamp))
    revisit = {i: mapping_node.publish_and_wait(image_message(corridor["query"][i], query_stamps[i]))
               for i in query_indices}  # fmt: skip

    # PointCloud2 layout exactly as documented
    cloud = next(msg for msg in revisit.values() if msg.width > 0)
    assert (cloud.height, cloud.is_bigendian, cloud.is_dense, cloud.point_step) == (1, False, False, 91)
    assert cloud.row_step == 91 * cloud.width and len(cloud.data) == cloud.row_step
    expected_fields = [
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
    assert [(f.name, f.offset, f.datatype, f.count) for f in cloud.fields] == [
        (*f, 1) for f in expected_fields
    ]
    raw = np.frombuffer(bytes(cloud.data), dtype=CANDIDATE_DTYPE)
    assert cloud_to_array(cloud).tobytes() == raw.tobytes()  # (NaN positions: compare bytes)

    # the reference traversal matches nothing (its own past is inside the exclusion window)
    ref_outputs = mapping_node.candidates.messages[: len(ref_stamps)]
    assert [stamp_to_ns(m.header.stamp) for m in ref_outputs] == ref_stamps
    assert all(m.width == 0 for m in ref_outputs)

    node_top1 = {}
    for position, (i, msg) in enumerate(revisit.items()):
        points = cloud_to_array(msg)
        assert msg.width == 3 and list(points["rank"]) == [0, 1, 2]
        assert np.all(np.diff(points["similarity"]) <= 0)
        assert np.all(np.isnan(points["x"]))  # no odometry: positions unknown
        assert np.all(points["query_id"] == len(ref_indices) + position)  # place id of the query keyframe
        for name in ("match_robot", "match_session", "inter_robot", "query_id_hi", "match_id_hi"):
            assert not np.any(points[name]), name  # a local map: no robot/session identity, ids < 2^32
        assert np.all(points["match_stamp"] < QUERY_T0_NS / NS)  # only reference places
        match_ref = np.rint((points["match_stamp"] * NS - REF_T0_NS) / PERIOD_NS).astype(int)
        np.testing.assert_array_equal(
            np.asarray(ref_indices)[points["match_id"]], match_ref
        )  # ids: add order
        node_top1[i] = int(match_ref[0])

    # offline retrieval with the same PlaceMap search the node uses
    worker.join()
    describer, descriptors = offline["describer"], offline["descriptors"]
    offline_map = PlaceMap.create(describer.dim, "flat", describer.fingerprint)
    offline_map.add(descriptors[: len(ref_indices)], [PlaceMeta(stamp_ns=stamp) for stamp in ref_stamps])
    near_ties = 0
    offline_top1 = {}
    for i, descriptor in zip(query_indices, descriptors[len(ref_indices) :], strict=True):
        best, second = offline_map.search(descriptor, 2)
        offline_top1[i] = ref_indices[best.place_id]
        near_ties += best.similarity - second.similarity < 1e-6
    # identical images, weights and search code give identical top-1; only float rounding could swap a
    # near tie (similarity gap < 1e-6)
    mismatches = [i for i in query_indices if node_top1[i] != offline_top1[i]]
    assert len(mismatches) <= near_ties, (mismatches, near_ties)

    def recall_at_1(top1: dict[int, int]) -> float:
        return float(np.mean([abs(top1[i] - i) <= 2 for i in query_indices]))

    offline_recall, node_recall = recall_at_1(offline_top1), recall_at_1(node_top1)
    # every frame is a keyframe (min_interval_s = 0, min_descriptor_change = 0): the keyframe policy adds
    # no slack, only near ties can move the node's recall away from the describer's
    slack = near_ties / len(query_indices) + 1e-9
    assert abs(node_recall - offline_recall) <= slack, (node_recall, offline_recall)
    count = len(query_indices)
    print(f"\ncorridor R@1 over {count} revisits: describer {offline_recall:.3f}, node {node_recall:.3f}")

    # the LIO-SAM interface carries [t_query, t_match] of every revisit's best candidate
    lio_pairs = {(round(m.data[0], 6), round(m.data[1], 6)) for m in mapping_node.lio_sam.messages}
    expected_pairs = {
        (round(query_stamps[i] / NS, 6), round((REF_T0_NS + node_top1[i] * PERIOD_NS) / NS, 6))
        for i in query_indices
    }
    assert lio_pairs == expected_pairs

    # ~/descriptor: one float32 field "d" per dimension, the keyframe's header, the describer's vector
    descriptor_msg = mapping_node.descriptors.messages[-1]
    assert stamp_to_ns(descriptor_msg.header.stamp) == query_stamps[query_indices[-1]]
    vector = cloud_to_array(descriptor_msg)["d"]
    assert vector.shape == (describer.dim,)
    np.testing.assert_allclose(vector, descriptors[-1], atol=1e-6)


def bad_images() -> dict[str, Image]:
    """One malformed message per decode failure the node must survive (reason -> message)."""
    rgb = np.zeros((8, 10, 3), np.uint8)
    stamp = 5_000 * NS
    unsupported = image_message(rgb, stamp)
    unsupported.encoding = "yuv422_hypothetical"
    step = image_message(rgb, stamp)
    step.step = 10  # < width * 3
    truncated = image_message(rgb, stamp)
    truncated.data = byte_array(bytes(truncated.data)[:100])
    zero = image_message(rgb, stamp)
    zero.height, zero.data = 0, byte_array(b"")
    huge = image_message(rgb, stamp)  # a 10000 x 10000 header with a small payload
    huge.height, huge.width, huge.step = 10_000, 10_000, 30_000
    return {
        "unsupported_encoding": unsupported,
        "step_mismatch": step,
        "truncated": truncated,
        "zero_size": zero,
        "too_large": huge,
    }


def test_bad_messages_are_counted_and_the_node_keeps_working(mapping_node: NodeUnderTest, corridor):
    before = diagnostic_values(wait_diagnostics(mapping_node.diagnostics, lambda values: True))
    for reason, msg in bad_images().items():
        count = int(before[f"bad_{reason}"])
        mapping_node.images.publish(msg)
        wait_diagnostics(mapping_node.diagnostics, lambda v, r=reason, c=count: int(v[f"bad_{r}"]) == c + 1)
        assert mapping_node.process.process.poll() is None, mapping_node.process.output()
    status = wait_diagnostics(mapping_node.diagnostics, lambda values: True)
    values = diagnostic_values(status)
    assert int(values["bad_messages"]) == int(before["bad_messages"]) + 5
    assert status.level == DiagnosticStatus.WARN and "bad image messages" in status.message
    # still working: a good frame is processed
    mapping_node.publish_and_wait(image_message(corridor["ref"][0], 6_000 * NS))
    assert "bad image message ignored" in mapping_node.process.output()
