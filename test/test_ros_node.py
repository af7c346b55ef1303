"""place_recognition_node as a separate process over real Fast DDS: outputs, services, bad input, restarts.

The node runs the UNTRAINED student (no weights ship with the repository): these tests check behaviour, and
compare the node's retrieval with the same Describer + PlaceMap run offline in this process.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from geometry_msgs.msg import PoseWithCovarianceStamped
from nav_msgs.msg import Odometry
from sensor_msgs.msg import CompressedImage, Image, PointCloud2, PointField
from std_msgs.msg import Float64MultiArray, Header
from std_srvs.srv import SetBool, Trigger
from visualization_msgs.msg import Marker, MarkerArray

from tscm_ros.images import rgb_to_compressed_bytes, rgb_to_image_fields
from tscm_ros.placemap import PlaceMap, PlaceMeta
from tscm_ros.ros.messages import (
    CANDIDATE_DTYPE,
    byte_array,
    cloud_to_array,
    diagnostic_values,
    ns_to_stamp,
    stamp_to_ns,
)
from tscm_ros.ros.testing import Collector, NodeProcess, RosProbe, reliable_qos

pytestmark = pytest.mark.ros

NODE = "/place_recognition_node"
STATUS_NAME = "place_recognition_node: place recognition"
NS = 1_000_000_000
PERIOD_NS = 200_000_000  # corridor frames stamped at 5 Hz
REF_T0_NS = 1_000 * NS
QUERY_T0_NS = 2_000 * NS  # the second traversal starts 1000 s later
REF_STEP = 3  # every 3rd reference frame: each query still has 1-2 true matches within +-2 frames
QUERY_STEP = 4  # every 4th query frame: 28 revisits keep the test short
STARTUP_TIMEOUT_S = 180.0
FRAME_TIMEOUT_S = 60.0

# Behaviour, not accuracy: every frame is a keyframe, every match is reported (threshold -1, no verification),
# and the exclusion window hides the current traversal (22 s long) but not the reference one (>= 978 s
# earlier). test_ros_verification.py covers the verified path.
BASE_PARAMETERS = {
    "verify": False,
    "min_travel_m": 0.0,  # the shipped travel gate and exclusion would interact with the synthetic odometry
    "exclusion_travel_m": 0.0,  # (a revisit exactly 10 m of travel later sits on the 10 m boundary)
    "reliable_qos": True,
    "min_interval_s": 0.0,
    "min_descriptor_change": 0.0,
    "exclusion_window_s": 100.0,
    "top_k": 3,
    "similarity_threshold": -1.0,
    "consistency_n": 1,
    "publish_descriptor": True,
    "matched_pose_covariance": [0.5, 0.5, 0.5, 0.1, 0.1, 0.2],
}


# ---------------------------------------------------------------------------------------------- helpers
def image_message(rgb: np.ndarray, stamp_ns: int, encoding: str = "rgb8") -> Image:
    fields = rgb_to_image_fields(rgb, encoding)
    msg = Image(header=Header(stamp=ns_to_stamp(stamp_ns), frame_id="camera"))
    msg.height, msg.width, msg.encoding = fields["height"], fields["width"], fields["encoding"]
    msg.is_bigendian, msg.step = fields["is_bigendian"], fields["step"]
    msg.data = byte_array(fields["data"])
    return msg


def compressed_message(rgb: np.ndarray, stamp_ns: int) -> CompressedImage:
    msg = CompressedImage(header=Header(stamp=ns_to_stamp(stamp_ns), frame_id="camera"), format="jpeg")
    msg.data = byte_array(rgb_to_compressed_bytes(rgb, "jpeg"))
    return msg


def read_rgb(path: Path) -> np.ndarray:
    from PIL import Image as PilImage

    with PilImage.open(path) as image:
        return np.asarray(image.convert("RGB"), dtype=np.uint8)


def node_status(msg: DiagnosticArray) -> DiagnosticStatus | None:
    return next((status for status in msg.status if status.name == STATUS_NAME), None)


def wait_diagnostics(
    diagnostics: Collector, predicate: Callable[[dict[str, str]], bool], timeout: float = 15.0
):
    """The values of the first node status received from now on that satisfies ``predicate``."""
    start = len(diagnostics.items)
    found: list[DiagnosticStatus] = []

    def check(items: list) -> bool:
        for msg in items[start:]:
            status = node_status(msg)
            if status is not None and predicate(diagnostic_values(status)):
                found.append(status)
                return True
        return False

    assert diagnostics.wait_for(check, timeout), "no /diagnostics status matched"
    return found[0]


class NodeUnderTest:
    """One node process plus the probe subscriptions that observe it."""

    def __init__(self, probe: RosProbe, parameters: dict, *, compressed: bool = False) -> None:
        self.probe = probe
        self.candidates = probe.subscribe(PointCloud2, f"{NODE}/loop_candidates", reliable_qos(50))
        self.descriptors = probe.subscribe(PointCloud2, f"{NODE}/descriptor", reliable_qos(50))
        self.lio_sam = probe.subscribe(
            Float64MultiArray, "/lio_loop/loop_closure_detection", reliable_qos(50)
        )
        self.diagnostics = probe.subscribe(DiagnosticArray, "/diagnostics", reliable_qos(50))
        self.matched_poses = probe.subscribe(
            PoseWithCovarianceStamped, f"{NODE}/matched_pose", reliable_qos(50)
        )
        self.markers = probe.subscribe(MarkerArray, f"{NODE}/markers", reliable_qos(5))
        message_type, topic = (CompressedImage, "/image/compressed") if compressed else (Image, "/image")
        self.images = probe.publisher(message_type, topic, reliable_qos(5))
        self.parameters = {**BASE_PARAMETERS, **parameters}
        if compressed:
            self.parameters["image_transport"] = "compressed"
        self.process = NodeProcess(parameters=self.parameters)
        started = time.monotonic()
        assert self.process.wait_for_output("ready:", STARTUP_TIMEOUT_S), self.process.output()
        self.ready_s = time.monotonic() - started
        assert probe.wait_for_subscribers(self.images, 1, 20.0), "node did not subscribe to the image topic"
        assert probe.wait_for_publishers(f"{NODE}/loop_candidates", 1, 20.0)
        self.discovery_s = time.monotonic() - started - self.ready_s

    def publish_and_wait(self, msg: Image | CompressedImage) -> PointCloud2:
        """Publish one keyframe and wait for its ~/loop_candidates message (lock-step: nothing is dropped)."""
        stamp_ns = stamp_to_ns(msg.header.stamp)
        start = len(self.candidates.items)

        def answered(items: list) -> bool:
            return any(stamp_to_ns(m.header.stamp) == stamp_ns for m in items[start:])

        self.images.publish(msg)
        assert self.candidates.wait_for(answered, FRAME_TIMEOUT_S), f"no output for stamp {stamp_ns}"
        assert self.process.process.poll() is None
        return next(m for m in self.candidates.messages[start:] if stamp_to_ns(m.header.stamp) == stamp_ns)

    def call(self, service_type: type, name: str, request) -> object:
        return self.probe.call(service_type, f"{NODE}/{name}", request)

    def stop(self) -> None:
        self.process.stop()


@pytest.fixture(scope="module")
def probe():
    with RosProbe("node_test_probe") as probe:
        yield probe


@pytest.fixture(scope="module")
def mapping_node(probe: RosProbe, tmp_path_factory):
    node = NodeUnderTest(probe, {"map_path": str(tmp_path_factory.mktemp("map_a") / "map")})
    yield node
    node.stop()


@pytest.fixture(scope="module")
def corridor(corridor_dir: Path) -> dict[str, list[np.ndarray]]:
    refs = [read_rgb(path) for path in sorted((corridor_dir / "ref").glob("*.jpg"))]
    queries = [read_rgb(path) for path in sorted((corridor_dir / "query").glob("*.jpg"))]
    assert len(refs) == len(queries) == 111
    return {"ref": refs, "query": queries}


# ------------------------------------------------------------------------------------------------ tests
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


def test_runtime_parameter_changes_are_validated(mapping_node: NodeUnderTest):
    probe = mapping_node.probe
    rejected = {
        "top_k": 0,
        "similarity_threshold": 2.0,
        "mode": "slam",
        "model_path": "/elsewhere",  # read-only
        "matched_pose_covariance": [1.0, 2.0],
    }
    for name, value in rejected.items():
        (result,) = probe.set_parameters(NODE, {name: value})
        assert not result.successful, name
        assert name in result.reason, result.reason
    (wrong_type,) = probe.set_parameters(NODE, {"top_k": 2.5})
    assert not wrong_type.successful
    assert "top_k" in wrong_type.reason and "integer" in wrong_type.reason.lower(), wrong_type.reason
    (verify_top_k,) = probe.set_parameters(NODE, {"verify_top_k": 0})
    assert not verify_top_k.successful and "verify_top_k" in verify_top_k.reason
    (accepted,) = probe.set_parameters(NODE, {"top_k": 2})
    assert accepted.successful, accepted.reason
    assert probe.get_parameters(NODE, ["top_k", "mode"]) == {"top_k": 2, "mode": "mapping"}
    (restored,) = probe.set_parameters(NODE, {"top_k": BASE_PARAMETERS["top_k"]})
    assert restored.successful


def test_services_save_localize_and_reset(mapping_node: NodeUnderTest, corridor):
    map_path = mapping_node.parameters["map_path"]
    for index in (20, 40):  # at least these two places, whatever ran before
        mapping_node.publish_and_wait(image_message(corridor["ref"][index], 6_500 * NS + index * PERIOD_NS))
    saved = mapping_node.call(Trigger, "save_map", Trigger.Request())
    assert saved.success, saved.message
    size = int(re.search(r"saved (\d+) places", saved.message).group(1))
    assert size >= 2
    wait_diagnostics(mapping_node.diagnostics, lambda v: v["map_size"] == str(size))
    with PlaceMap.load(map_path) as loaded:
        assert len(loaded) == size

    # localization: frames are searched, not added
    answer = mapping_node.call(SetBool, "set_mapping", SetBool.Request(data=False))
    assert answer.success, answer.message
    assert mapping_node.probe.get_parameters(NODE, ["mode"]) == {"mode": "localization"}
    cloud = mapping_node.publish_and_wait(image_message(corridor["query"][50], 7_000 * NS))
    assert cloud.width > 0  # localisation searches the whole map, no exclusion window
    wait_diagnostics(
        mapping_node.diagnostics, lambda v: int(v["map_size"]) == size and v["mode"] == "localization"
    )
    answer = mapping_node.call(SetBool, "set_mapping", SetBool.Request(data=True))
    assert answer.success
    mapping_node.publish_and_wait(image_message(corridor["query"][51], 7_001 * NS))
    wait_diagnostics(mapping_node.diagnostics, lambda v: int(v["map_size"]) == size + 1)

    reset = mapping_node.call(Trigger, "reset_map", Trigger.Request())
    assert reset.success
    wait_diagnostics(mapping_node.diagnostics, lambda v: int(v["map_size"]) == 0)
    with PlaceMap.load(map_path) as loaded:  # the saved map is untouched until the next save
        assert len(loaded) == size


def odometry(stamp_ns: int, x: float) -> Odometry:
    msg = Odometry(header=Header(stamp=ns_to_stamp(stamp_ns), frame_id="map"), child_frame_id="base_link")
    msg.pose.pose.position.x = x
    msg.pose.pose.orientation.w = 1.0
    return msg


def test_odometry_poses_reach_candidates_matched_pose_and_markers(mapping_node: NodeUnderTest, corridor):
    probe = mapping_node.probe
    odom = probe.publisher(Odometry, "/odom", reliable_qos(50))
    assert probe.wait_for_subscribers(odom, 1, 20.0)
    first, revisit = 8_000 * NS, 8_200 * NS  # 200 s apart: outside the 100 s exclusion window
    for base, x in ((first, 0.0), (revisit, 10.0)):
        for _ in range(3):  # the node's odometry subscription is best effort: repeat (same stamps), then wait
            odom.publish(odometry(base, x))
            odom.publish(odometry(base + 200_000_000, x + 2.0))
            time.sleep(0.3)
        cloud = mapping_node.publish_and_wait(image_message(corridor["ref"][30], base + 100_000_000))
    points = cloud_to_array(cloud)
    best = points[points["rank"] == 0][0]
    assert best["similarity"] > 0.999999  # the same image
    assert (best["x"], best["y"], best["z"]) == (1.0, 0.0, 0.0)  # interpolated to the first image's stamp
    assert abs(best["match_stamp"] - (first + 100_000_000) / NS) < 1e-6

    assert mapping_node.matched_poses.wait_count(1, 10.0)
    matched = mapping_node.matched_poses.messages[-1]
    assert stamp_to_ns(matched.header.stamp) == revisit + 100_000_000 and matched.header.frame_id == "map"
    assert (matched.pose.pose.position.x, matched.pose.pose.orientation.w) == (1.0, 1.0)
    covariance = np.array(matched.pose.covariance).reshape(6, 6)
    np.testing.assert_array_equal(covariance, np.diag(BASE_PARAMETERS["matched_pose_covariance"]))

    assert mapping_node.markers.wait_count(1, 10.0)
    (marker,) = mapping_node.markers.messages[-1].markers
    assert marker.type == Marker.LINE_LIST and marker.header.frame_id == "map"
    (start, end) = marker.points[-2:]
    assert (start.x, end.x) == (11.0, 1.0)  # query (interpolated) -> match


def test_autosave_survives_sigkill(probe: RosProbe, tmp_path, corridor):
    map_path = str(tmp_path / "map_b")
    parameters = {"map_path": map_path, "autosave_period_s": 0.5}
    node = NodeUnderTest(probe, parameters, compressed=True)
    try:
        frames = [compressed_message(corridor["ref"][i], REF_T0_NS + i * PERIOD_NS) for i in range(6)]
        for msg in frames:
            node.publish_and_wait(msg)
        # a corrupt JPEG is counted, not fatal
        corrupt = compressed_message(corridor["ref"][0], 9_000 * NS)
        corrupt.data = byte_array(bytes(corrupt.data)[:40] + b"\x00" * 64)
        node.images.publish(corrupt)
        wait_diagnostics(node.diagnostics, lambda v: v["bad_corrupt_compressed"] == "1")
        deadline = time.monotonic() + 20
        on_disk = 0
        while time.monotonic() < deadline and on_disk < len(frames):
            if (Path(map_path) / "current").exists():
                with PlaceMap.load(map_path) as saved:
                    on_disk = len(saved)
            time.sleep(0.2)
        assert on_disk == len(frames), "autosave did not write every place"
        node.process.kill()  # SIGKILL: no shutdown hook runs
        assert node.process.process.returncode == -9
    finally:
        node.stop()

    restarted = NodeUnderTest(probe, {**parameters, "load_map": True}, compressed=True)
    try:
        wait_diagnostics(restarted.diagnostics, lambda v: v["map_size"] == str(len(frames)))
        cloud = restarted.publish_and_wait(compressed_message(corridor["ref"][10], REF_T0_NS + 100 * NS))
        assert cloud.width > 0 and set(cloud_to_array(cloud)["query_id"]) == {len(frames)}  # ids continue
    finally:
        restarted.stop()
    with PlaceMap.load(map_path) as saved:  # SIGINT saves on shutdown
        assert len(saved) == len(frames) + 1


def test_startup_errors_are_one_clear_line(tmp_path):
    small_map = tmp_path / "small_map"
    with PlaceMap.create(64, "flat") as place_map:
        place_map.save(small_map)
    cases = {
        "missing model": ({"model_path": str(tmp_path / "no_such_model")}, "does not exist"),
        "bad top_k": ({"top_k": 0}, "top_k"),
        "bad mode": ({"mode": "slam"}, "mode must be one of"),
        "bad device": ({"device": "gpu"}, "device must be"),
        "load without path": ({"load_map": True}, "map_path is empty"),
        "incompatible map": ({"map_path": str(small_map), "load_map": True}, "64-d"),
        "unknown name, strict": ({"top_kk": 3, "strict_parameters": True}, "top_kk"),
        "bad intrinsics": ({"camera_intrinsics": [-1.0, 1.0, 1.0, 1.0]}, "camera_intrinsics"),
        "bad feature method": ({"feature_method": "surf"}, "feature_method must be one of"),
    }
    processes = {name: NodeProcess(parameters=parameters) for name, (parameters, _) in cases.items()}
    try:
        for name, (_, expected) in cases.items():
            process = processes[name]
            assert process.wait(STARTUP_TIMEOUT_S) != 0, name
            output = process.output()
            errors = [line for line in output.splitlines() if "[ERROR]" in line or "[FATAL]" in line]
            assert len(errors) == 1 and expected in errors[0], (name, output)
            assert "Traceback" not in output, (name, output)
    finally:
        for process in processes.values():
            process.stop()
