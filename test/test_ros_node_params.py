"""place_recognition_node over real Fast DDS, parameters: runtime changes are validated, startup errors are
one clear line."""

from __future__ import annotations

from pathlib import Path

import pytest
import ros_node_support
from ros_node_support import (
    BASE_PARAMETERS,
    NODE,
    REF_T0_NS,
    STARTUP_TIMEOUT_S,
    NodeUnderTest,
    image_message,
    wait_diagnostics,
)

from tscm_ros.placemap import PlaceMap
from tscm_ros.ros.messages import diagnostic_values
from tscm_ros.ros.testing import NodeProcess

pytestmark = pytest.mark.ros

# module-scoped fixtures: each test file starts its own node
mapping_node = ros_node_support.mapping_node
probe = ros_node_support.probe
corridor = ros_node_support.corridor


def _thread_nice(pid: int) -> dict[int, int]:
    """tid -> niceness of every thread of a process (field 19 of /proc/PID/task/TID/stat)."""
    nice = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        nice[int(task.name)] = int(fields[16])
    return nice


def test_inference_threads_yield_to_the_executor(mapping_node: NodeUnderTest, corridor):
    """inference_nice (default 5): the inference (main) thread and its worker pools run at niceness 5, the
    executor threads that answer services and diagnostics at the process's 0; /diagnostics reports the
    longest frame."""
    mapping_node.publish_and_wait(image_message(corridor["ref"][0], REF_T0_NS))
    pid = mapping_node.process.process.pid
    nice = _thread_nice(pid)
    assert nice[pid] == 5, nice  # the main thread runs the inference loop
    assert sum(value == 5 for value in nice.values()) >= 2, nice  # + the inference library's workers
    assert sum(value == 0 for value in nice.values()) >= 3, nice  # executor threads (+ DDS) keep 0
    status = wait_diagnostics(mapping_node.diagnostics, lambda values: "frame_time_max_ms" in values)
    values = diagnostic_values(status)
    assert float(values["frame_time_max_ms"]) > 0 and int(values["frames_over_1s"]) == 0, values


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
