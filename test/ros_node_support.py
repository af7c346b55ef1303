"""Shared by the test_ros_node_*.py files: place_recognition_node as a separate process over Fast DDS.

The node runs the UNTRAINED student (no weights ship with the repository). ``NodeUnderTest`` starts one
node with the probe subscriptions that observe it; the fixtures are module-scoped, so each test file gets
its own node.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from geometry_msgs.msg import PoseWithCovarianceStamped
from nav_msgs.msg import Odometry
from sensor_msgs.msg import CompressedImage, Image, PointCloud2
from std_msgs.msg import Float64MultiArray, Header
from visualization_msgs.msg import MarkerArray

from tscm_ros.images import rgb_to_compressed_bytes, rgb_to_image_fields
from tscm_ros.ros.messages import (
    byte_array,
    diagnostic_values,
    ns_to_stamp,
    stamp_to_ns,
)
from tscm_ros.ros.testing import NODE_MODULE, Collector, NodeProcess, RosProbe, reliable_qos

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

    def __init__(
        self,
        probe: RosProbe,
        parameters: dict,
        *,
        compressed: bool = False,
        module: str = NODE_MODULE,
        env: dict[str, str] | None = None,
    ) -> None:
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
        self.process = NodeProcess(module, parameters=self.parameters, env=env)
        started = time.monotonic()
        assert self.process.wait_for_output("ready:", STARTUP_TIMEOUT_S), self.process.output()
        self.ready_s = time.monotonic() - started
        assert probe.wait_for_subscribers(self.images, 1, 20.0), "node did not subscribe to the image topic"
        assert probe.wait_for_matched(self.candidates, 1, 20.0), "~/loop_candidates did not match"
        self.discovery_s = time.monotonic() - started - self.ready_s

    def publish_and_wait(self, msg: Image | CompressedImage) -> PointCloud2:
        """Publish one keyframe and wait for its ~/loop_candidates message (lock-step: nothing is dropped)."""
        stamp_ns = stamp_to_ns(msg.header.stamp)
        start = len(self.candidates.items)

        def answered(items: list) -> bool:
            return any(stamp_to_ns(m.header.stamp) == stamp_ns for m in items[start:])

        self.images.publish(msg)
        assert self.candidates.wait_for(answered, FRAME_TIMEOUT_S), (
            f"no output for stamp {stamp_ns}; node output:\n{self.process.output()[-4000:]}"
        )
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


def odometry(stamp_ns: int, x: float) -> Odometry:
    msg = Odometry(header=Header(stamp=ns_to_stamp(stamp_ns), frame_id="map"), child_frame_id="base_link")
    msg.pose.pose.position.x = x
    msg.pose.pose.orientation.w = 1.0
    return msg
