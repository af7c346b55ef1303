"""place_recognition_node at its limits, over real Fast DDS: the map's ``max_places`` budget reached, and a
disk that refuses the shutdown save. Each test starts its own node (no other node answers its frames)."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
import ros_node_support
from diagnostic_msgs.msg import DiagnosticStatus
from ros_node_support import NS, NodeUnderTest, image_message, wait_diagnostics

from tscm_ros.ros.messages import cloud_to_array, diagnostic_values
from tscm_ros.ros.testing import RosProbe

pytestmark = pytest.mark.ros

TEST_DIR = Path(__file__).resolve().parent
PLACE_GAP_NS = 200 * NS  # places far apart in time: outside the 100 s exclusion window of BASE_PARAMETERS
BUDGET = 10

corridor = ros_node_support.corridor
probe = ros_node_support.probe


def test_at_max_places_keyframes_are_matched_not_added_and_diagnostics_warn(
    probe: RosProbe, tmp_path, corridor
):
    node = NodeUnderTest(probe, {"map_path": str(tmp_path / "map"), "max_places": BUDGET})
    try:
        base = 9_000 * NS
        for i in range(BUDGET - 1):
            node.publish_and_wait(image_message(corridor["ref"][10 * i], base + i * PLACE_GAP_NS))
        status = wait_diagnostics(node.diagnostics, lambda v: v.get("map_size") == str(BUDGET - 1))
        assert status.level == DiagnosticStatus.WARN, status  # WARN from 90 % of the budget
        assert f"map at 90% of max_places ({BUDGET - 1}/{BUDGET})" in status.message

        node.publish_and_wait(image_message(corridor["ref"][95], base + (BUDGET - 1) * PLACE_GAP_NS))
        revisit = node.publish_and_wait(image_message(corridor["ref"][0], base + BUDGET * PLACE_GAP_NS))
        points = cloud_to_array(revisit)
        assert points[points["rank"] == 0][0]["similarity"] > 0.999  # matched: the first place, same image

        status = wait_diagnostics(node.diagnostics, lambda v: v.get("places_refused_full") == "1")
        values = diagnostic_values(status)
        assert values["map_size"] == str(BUDGET) and values["max_places"] == str(BUDGET)
        assert f"map full ({BUDGET}/{BUDGET} places, max_places)" in status.message
    finally:
        node.stop()


def test_a_failed_shutdown_save_exits_1_and_always_says_why(probe: RosProbe, tmp_path, corridor):
    """A shutdown save that fails (the disk is full) exits 1 and prints its error, even right after the
    failed autosaves' error lines (which are throttled to one per 5 s and used to swallow it)."""
    map_path = tmp_path / "map"
    python_path = os.pathsep.join(filter(None, [str(TEST_DIR), os.environ.get("PYTHONPATH", "")]))
    env = {"PYTHONPATH": python_path, "TSCM_TEST_SAVE_DELAY_S": "0", "TSCM_TEST_SAVE_FAILS": "1"}
    parameters = {"map_path": str(map_path), "autosave_period_s": 0.5}
    node = NodeUnderTest(probe, parameters, module="slow_save_node", env=env)
    try:
        for i in range(2):
            node.publish_and_wait(image_message(corridor["ref"][i], 9_000 * NS + i * PLACE_GAP_NS))
        assert node.process.wait_for_output("No space left on device (test) (autosave)", 10.0), (
            node.process.output()
        )
        code = node.process.stop(timeout=60.0)
    finally:
        node.stop()
    output = node.process.output()
    assert code == 1, output
    assert re.search(r"saving the map to \S+ failed \(shutdown\): .*No space left on device", output), output
    assert not list(map_path.rglob("map.json"))  # nothing claims to be a saved map
