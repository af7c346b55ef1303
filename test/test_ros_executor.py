"""TSCM_EXECUTOR: the node runs with rclpy's EventsExecutor as with the MultiThreadedExecutor (real DDS).

With ``events`` the node must take images, publish outputs and /diagnostics, answer services and save its
map on SIGINT; rclpy 9.1.2's ``EventsExecutor.spin()`` dispatched none of that (the node spins it with a
``spin_once`` loop instead).
"""

from __future__ import annotations

import time

import numpy as np
import pytest
from diagnostic_msgs.msg import DiagnosticArray
from sensor_msgs.msg import Image, PointCloud2
from std_msgs.msg import Header
from std_srvs.srv import Trigger

from tscm_ros.images import rgb_to_image_fields
from tscm_ros.placemap import PlaceMap
from tscm_ros.ros.messages import byte_array, ns_to_stamp
from tscm_ros.ros.place_recognition_node import EXECUTOR_ENV, create_executor
from tscm_ros.ros.testing import NodeProcess, RosProbe, best_effort_qos, reliable_qos

NODE = "/place_recognition_node"


def test_an_unknown_executor_is_refused_naming_the_variable() -> None:
    with pytest.raises(ValueError, match=f"{EXECUTOR_ENV}='threads'"):
        create_executor("threads")


def _image(rng: np.random.Generator, stamp_ns: int) -> Image:
    rgb = rng.integers(0, 255, (120, 160, 3), dtype=np.uint8)
    fields = rgb_to_image_fields(rgb, "rgb8")
    msg = Image(header=Header(frame_id="camera", stamp=ns_to_stamp(stamp_ns)), height=120, width=160,
                encoding="rgb8", step=fields["step"])  # fmt: skip
    msg.data = byte_array(fields["data"])
    return msg


@pytest.mark.parametrize("executor", ["events", "multi_threaded"])
def test_node_serves_frames_services_and_shutdown(executor: str, tmp_path) -> None:
    map_path = tmp_path / "map"
    parameters = {
        "publish_descriptor": True,
        "verify": False,
        "min_interval_s": 0.0,
        "map_path": str(map_path),
    }
    rng = np.random.default_rng(0)
    with RosProbe(f"executor_probe_{executor}") as probe:
        node = NodeProcess(parameters=parameters, env={EXECUTOR_ENV: executor})
        try:
            assert node.wait_for_output("ready:", 180), node.output()
            descriptors = probe.subscribe(PointCloud2, f"{NODE}/descriptor", reliable_qos(50))
            diagnostics = probe.subscribe(DiagnosticArray, "/diagnostics", reliable_qos(10))
            images = probe.publisher(Image, "/image", best_effort_qos(1))
            assert probe.wait_for_subscribers(images, 1, 30.0)
            time.sleep(1.0)
            stamp = 1_700_000_000 * 10**9
            deadline = time.monotonic() + 60.0
            while len(descriptors.items) < 3 and time.monotonic() < deadline:
                stamp += 200_000_000
                images.publish(_image(rng, stamp))
                time.sleep(0.2)
            assert len(descriptors.items) >= 3, node.output()
            assert diagnostics.wait_count(1, 10.0), node.output()
            answer = probe.call(Trigger, f"{NODE}/save_map", Trigger.Request(), timeout=30.0)
            assert answer.success, answer.message
        finally:
            code = node.stop(timeout=60.0)
    assert code == 0, node.output()
    assert "saved" in node.output()
    with PlaceMap.load(map_path) as saved:
        assert len(saved) >= 3
