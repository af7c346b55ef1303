"""Two place_recognition_node processes sharing one fleet map (real PostgreSQL + pgvector, real Fast DDS).

Robot A (namespace /robot_a, robot_id from the namespace) maps lap 1 of the demo scene; robot B (namespace
/robot_b, robot_id robot_b) drives lap 2 *at the same time*: its candidates are robot A's places, flagged
``inter_robot`` with A's robot/session hashes (resolved through B's latched ``~/fleet_ids``), although they
are inside B's exclusion window (which covers only B's own session). ``/diagnostics`` shows both connected
and the outboxes draining to 0. A node whose server is unreachable keeps working from its local copy and
says "disconnected"; a malformed ``map_uri`` stops a node with one clear line.

The nodes run the UNTRAINED student (behaviour, not accuracy: similarity threshold -1, no verification;
test_recognition_fleet.py checks verified closures on fleet matches).
"""

from __future__ import annotations

import socket
import time

import numpy as np
import pytest

pytest.importorskip("psycopg")
pytest.importorskip("pgvector")

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus  # noqa: E402
from fleet_support import drop_schema, new_schema, server_rows  # noqa: E402
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy  # noqa: E402
from sensor_msgs.msg import Image, PointCloud2  # noqa: E402
from std_msgs.msg import Float64MultiArray, Header  # noqa: E402

from tscm_ros.demo.scene import SceneConfig, build_world, plan_trajectory, render_with_depth  # noqa: E402
from tscm_ros.fleet import fleet_place_id  # noqa: E402
from tscm_ros.images import rgb_to_image_fields  # noqa: E402
from tscm_ros.ros.messages import (  # noqa: E402
    byte_array,
    cloud_to_array,
    diagnostic_values,
    full_ids,
    identity_hash,
    ns_to_stamp,
    stamp_to_ns,
)
from tscm_ros.ros.testing import Collector, NodeProcess, RosProbe, reliable_qos  # noqa: E402

pytestmark = pytest.mark.ros

FRAMES = 12  # per robot
SCENE = SceneConfig(frames_per_lap=FRAMES)
STATUS_NAME = "place_recognition_node: place recognition"
STARTUP_TIMEOUT_S = 180.0
FRAME_TIMEOUT_S = 60.0
PARAMETERS = {
    "reliable_qos": True,
    "verify": False,
    "min_interval_s": 0.0,  # every frame a keyframe
    "min_travel_m": 0.0,
    "top_k": 3,
    "similarity_threshold": -1.0,
    "exclusion_window_s": 1000.0,  # longer than the run: a robot's own places are never candidates
}
LATCHED = QoSProfile(
    history=HistoryPolicy.KEEP_LAST,
    depth=1,
    reliability=ReliabilityPolicy.RELIABLE,
    durability=DurabilityPolicy.TRANSIENT_LOCAL,
)


def image_msg(rgb: np.ndarray, stamp_ns: int) -> Image:
    fields = rgb_to_image_fields(rgb, "rgb8")
    msg = Image(header=Header(stamp=ns_to_stamp(stamp_ns), frame_id="camera"))
    msg.height, msg.width, msg.encoding = fields["height"], fields["width"], fields["encoding"]
    msg.is_bigendian, msg.step = fields["is_bigendian"], fields["step"]
    msg.data = byte_array(fields["data"])
    return msg


@pytest.fixture(scope="module")
def laps() -> tuple[list[np.ndarray], list[np.ndarray], list[int]]:
    """(lap 1 images, lap 2 images, lap 1 stamps): robot B drives lap 2 with lap 1's stamps."""
    world = build_world(SCENE)
    samples = plan_trajectory(SCENE, world)
    images = [render_with_depth(world, np.array(s.position[:2]), s.yaw)[0] for s in samples]
    return images[:FRAMES], images[FRAMES:], [s.stamp_ns for s in samples[:FRAMES]]


@pytest.fixture(scope="module")
def probe():
    with RosProbe("fleet_test_probe") as probe:
        yield probe


@pytest.fixture
def fleet(fleet_pg, request):
    uri = fleet_pg.uri()
    schema = new_schema(uri, dim=2048, fingerprint=None)  # the untrained student's 2048-d descriptors
    request.addfinalizer(lambda: drop_schema(uri, schema))
    return uri, schema


class Robot:
    """One node process in its own namespace plus the probe's subscriptions on its topics."""

    def __init__(self, probe: RosProbe, namespace: str, parameters: dict) -> None:
        node = f"/{namespace}/place_recognition_node"
        self.candidates = probe.subscribe(PointCloud2, f"{node}/loop_candidates", reliable_qos(50))
        self.lio_sam = probe.subscribe(Float64MultiArray, f"/{namespace}/lio_loop/loop_closure_detection")
        self.fleet_ids = probe.subscribe(DiagnosticStatus, f"{node}/fleet_ids", LATCHED)
        self.images = probe.publisher(Image, f"/{namespace}/image", reliable_qos(5))
        self.process = NodeProcess(
            parameters={**PARAMETERS, **parameters}, remappings={"__ns": f"/{namespace}"}
        )
        self.probe, self.node = probe, node

    def ready(self) -> None:
        assert self.process.wait_for_output("ready:", STARTUP_TIMEOUT_S), self.process.output()
        assert self.probe.wait_for_subscribers(self.images, 1, 20.0), "no image subscription"
        assert self.probe.wait_for_matched(self.candidates, 1, 20.0), "~/loop_candidates did not match"

    def publish_and_wait(self, rgb: np.ndarray, stamp_ns: int) -> PointCloud2:
        start = len(self.candidates.items)

        def answered(items: list) -> bool:
            return any(stamp_to_ns(m.header.stamp) == stamp_ns for m in items[start:])

        self.images.publish(image_msg(rgb, stamp_ns))
        assert self.candidates.wait_for(answered, FRAME_TIMEOUT_S), self.process.output()[-3000:]
        return next(m for m in self.candidates.messages[start:] if stamp_to_ns(m.header.stamp) == stamp_ns)


def wait_status(diagnostics: Collector, robot_id: str, predicate, timeout: float = 20.0):
    """The first node status of ``robot_id`` received from now on for which ``predicate(values)`` holds."""
    start, found = len(diagnostics.items), []

    def check(items: list) -> bool:
        for msg in items[start:]:
            for status in msg.status:
                values = diagnostic_values(status)
                if status.name == STATUS_NAME and values.get("robot_id") == robot_id and predicate(values):
                    found.append(status)
                    return True
        return False

    assert diagnostics.wait_for(check, timeout), f"no /diagnostics status of {robot_id} matched"
    return found[0]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# ------------------------------------------------------------------------------------------------ tests
def test_two_robots_share_one_map(probe: RosProbe, fleet, laps, tmp_path):
    uri, schema = fleet
    lap1, lap2, stamps = laps
    diagnostics = probe.subscribe(DiagnosticArray, "/diagnostics", reliable_qos(100))
    shared = {"map_uri": uri, "map_schema": schema}
    robot_a = Robot(probe, "robot_a", {**shared, "map_path": str(tmp_path / "a")})  # robot_id: namespace
    robot_b = Robot(probe, "robot_b", {**shared, "map_path": str(tmp_path / "b"), "robot_id": "robot_b",
                                       "session_id": "b-run-1"})  # fmt: skip
    try:
        started = time.monotonic()
        robot_a.ready()
        robot_b.ready()
        ready_s = time.monotonic() - started
        status_a = wait_status(diagnostics, "robot_a", lambda v: v["connection_state"] == "connected")
        session_a = diagnostic_values(status_a)["session_id"]
        assert session_a.endswith("Z") and len(session_a) == 20  # default: the UTC start time

        # robot A maps lap 1; nothing to match yet (its own places are inside its exclusion window)
        started = time.monotonic()
        for rgb, stamp in zip(lap1, stamps, strict=True):
            assert robot_a.publish_and_wait(rgb, stamp).width == 0
        values_a = diagnostic_values(
            wait_status(
                diagnostics, "robot_a", lambda v: v["outbox_depth"] == "0" and v["flushed_total"] == "12"
            )
        )
        assert values_a["map_size"] == "12" and values_a["read_only"] == "false"

        # robot B drives lap 2 at the same time: every candidate is one of robot A's places
        clouds = [robot_b.publish_and_wait(rgb, stamp) for rgb, stamp in zip(lap2, stamps, strict=True)]
        frames_s = time.monotonic() - started
        hash_a, hash_session_a = identity_hash("robot_a"), identity_hash(session_a)
        a_ids = {fleet_place_id("robot_a", session_a, kf): kf for kf in range(FRAMES)}
        inter_robot = 0
        for index, cloud in enumerate(clouds):
            points = cloud_to_array(cloud)
            assert cloud.point_step == 91 and cloud.width == 3, index
            assert set(points["match_robot"]) == {hash_a} and set(points["match_session"]) == {hash_session_a}
            assert set(points["inter_robot"]) == {1}
            assert set(full_ids(points, "query_id")) == {fleet_place_id("robot_b", "b-run-1", index)}
            matched = [a_ids[int(i)] for i in full_ids(points, "match_id")]  # 63-bit fleet ids of A's places
            match_ns = [stamps[kf] for kf in matched]
            np.testing.assert_allclose(points["match_stamp"], np.array(match_ns) / 1e9)
            inter_robot += cloud.width
        assert not robot_b.lio_sam.messages  # A's places are not of B's run: nothing for LIO-SAM

        # query filters at runtime (STRING_ARRAY parameters; [] from a client arrives untyped)
        node_b = "/robot_b/place_recognition_node"
        assert all(r.successful for r in probe.set_parameters(node_b, {"query_exclude_robots": ["robot_a"]}))
        assert robot_b.publish_and_wait(lap2[0], stamps[-1] + 10**8).width == 0  # own places: in the window
        assert all(r.successful for r in probe.set_parameters(node_b, {"query_exclude_robots": []}))
        assert probe.get_parameters(node_b, ["query_exclude_robots"]) == {"query_exclude_robots": []}
        assert robot_b.publish_and_wait(lap2[1], stamps[-1] + 2 * 10**8).width == 3
        rejected = probe.set_parameters(node_b, {"query_robots": [1, 2]})[0]
        assert not rejected.successful and "query_robots" in rejected.reason

        # B's latched id table resolves the hashes; B's diagnostics: connected, outbox drained
        table = ids_table(robot_b.fleet_ids)
        assert table[f"robot/{hash_a}"] == "robot_a" and table[f"session/{hash_session_a}"] == session_a
        assert table[f"robot/{identity_hash('robot_b')}"] == "robot_b"
        values_b = diagnostic_values(
            wait_status(
                diagnostics, "robot_b", lambda v: v["outbox_depth"] == "0" and v["flushed_total"] == "14"
            )
        )
        assert values_b["connection_state"] == "connected" and values_b["session_id"] == "b-run-1"
        assert values_b["map_backend"] == "postgresql+local" and values_b["map_schema"] == schema
        assert int(values_b["server_queries"]) >= FRAMES and values_b["fallback_queries"] == "0"
        assert values_b["map_size"] == "26"
        print(f"\ntwo robots: ready in {ready_s:.1f} s, {2 * FRAMES} frames in {frames_s:.1f} s, "
              f"{inter_robot} inter-robot candidates")  # fmt: skip
    finally:
        robot_a.process.stop()
        robot_b.process.stop()
    assert robot_a.process.process.returncode == 0 and robot_b.process.process.returncode == 0
    rows = server_rows(uri, schema)
    assert [r[:2] for r in rows] == [("robot_a", session_a)] * FRAMES + [("robot_b", "b-run-1")] * (
        FRAMES + 2
    )


def ids_table(collector: Collector) -> dict[str, str]:
    assert collector.wait_for(lambda items: bool(items), 10.0), "no ~/fleet_ids message"
    return diagnostic_values(collector.messages[-1])


def test_unreachable_server_and_malformed_uri(probe: RosProbe, laps, tmp_path):
    lap1, lap2, stamps = laps
    diagnostics = probe.subscribe(DiagnosticArray, "/diagnostics", reliable_qos(100))
    unreachable = f"postgresql://robot:s3cret@127.0.0.1:{free_port()}/fleet"
    robot_c = Robot(probe, "robot_c", {"map_uri": unreachable, "map_path": str(tmp_path / "c"),
                                       "exclusion_window_s": 1.0})  # fmt: skip
    malformed = NodeProcess(
        parameters={"map_uri": "postgresql://robot:s3cret@[::1/fleet", "map_path": str(tmp_path / "d")},
        remappings={"__ns": "/robot_d"},
    )
    try:
        robot_c.ready()
        assert "disconnected" in robot_c.process.output()  # the ready line names the state
        values = diagnostic_values(wait_status(diagnostics, "robot_c", lambda v: True))
        assert values["connection_state"] == "disconnected" and "s3cret" not in str(values)
        for rgb, stamp in zip(lap1[:6], stamps[:6], strict=True):
            robot_c.publish_and_wait(rgb, stamp)
        revisit = robot_c.publish_and_wait(lap2[0], stamps[5] + 10**10)  # from the local copy
        points = cloud_to_array(revisit)
        assert revisit.width == 3 and set(points["match_robot"]) == {identity_hash("robot_c")}
        assert set(points["inter_robot"]) == {0}
        status = wait_status(diagnostics, "robot_c", lambda v: v["outbox_depth"] == "7")
        values = diagnostic_values(status)
        assert status.level == DiagnosticStatus.WARN
        assert "fleet map disconnected: answering from the local map" in status.message
        assert int(values["fallback_queries"]) >= 7 and values["map_last_error"]
        assert "s3cret" not in str(values) and "password=***" in values["map_target"]
        assert robot_c.process.process.poll() is None

        assert malformed.wait(STARTUP_TIMEOUT_S) == 1
        output = malformed.output()
        errors = [line for line in output.splitlines() if "[ERROR]" in line or "[FATAL]" in line]
        assert len(errors) == 1 and "map_uri is malformed" in errors[0], output
        assert "Traceback" not in output and "s3cret" not in output
    finally:
        robot_c.process.stop()
        malformed.stop()
    assert robot_c.process.process.returncode == 0
