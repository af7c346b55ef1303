"""launch/place_recognition.launch.py without launch/launch_ros installed: ast checks + stubbed execution."""

from __future__ import annotations

import ast
import importlib.util
import sys
import types
from pathlib import Path

import pytest

from tscm_ros.ros.parameters import AUTOMATIC_PARAMETERS, PARAMETERS

LAUNCH_FILE = Path(__file__).resolve().parents[1] / "launch" / "place_recognition.launch.py"


def _declared_defaults(tree: ast.AST) -> dict[str, object]:
    defaults = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "DeclareLaunchArgument":
            name = ast.literal_eval(node.args[0])
            default = next((kw.value for kw in node.keywords if kw.arg == "default_value"), None)
            defaults[name] = ast.literal_eval(default) if isinstance(default, ast.Constant) else default
    return defaults


def test_use_sim_time_defaults_to_the_params_file():
    tree = ast.parse(LAUNCH_FILE.read_text())
    assert _declared_defaults(tree)["use_sim_time"] == "", "empty default = keep the params file's value"
    # the node's parameter dict must not name use_sim_time literally (that was the unconditional override)
    for node in ast.walk(tree):
        if isinstance(node, ast.Dict):
            keys = {k.value for k in node.keys if isinstance(k, ast.Constant)}
            assert "use_sim_time" not in keys, f"line {node.lineno}: use_sim_time is always overridden"


class _Recorder:
    """Stands in for every launch/launch_ros class: records its arguments."""

    created: list[_Recorder] = []

    def __init__(self, *args, **kwargs) -> None:
        self.args, self.kwargs = args, kwargs
        _Recorder.created.append(self)


class _LaunchConfiguration(_Recorder):
    def perform(self, context: dict) -> str:
        return context.get(self.args[0], "")


@pytest.fixture
def launch_module(monkeypatch):
    """Import the launch file with stub launch / launch_ros modules."""
    names = {
        "launch": ["LaunchDescription"],
        "launch.actions": ["DeclareLaunchArgument", "OpaqueFunction", "SetEnvironmentVariable"],
        "launch.conditions": ["IfCondition"],
        "launch.substitutions": ["LaunchConfiguration", "PathJoinSubstitution"],
        "launch_ros": [],
        "launch_ros.actions": ["Node"],
        "launch_ros.substitutions": ["FindPackageShare"],
    }
    for module_name, classes in names.items():
        module = types.ModuleType(module_name)
        for cls in classes:
            setattr(module, cls, _LaunchConfiguration if cls == "LaunchConfiguration" else _Recorder)
        monkeypatch.setitem(sys.modules, module_name, module)
    spec = importlib.util.spec_from_file_location("place_recognition_launch", LAUNCH_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    _Recorder.created.clear()
    return module


def _node_parameters(launch_module, context: dict) -> list:
    (node,) = launch_module._launch_setup(context)
    return node.kwargs["parameters"]


def test_overrides_only_what_was_given(launch_module):
    assert launch_module.parameter_overrides({}) == {}
    assert launch_module.parameter_overrides({"use_sim_time": "", "device": ""}) == {}
    assert launch_module.parameter_overrides({"use_sim_time": "True"}) == {"use_sim_time": True}
    assert launch_module.parameter_overrides({"use_sim_time": "false", "device": "cuda"}) == {
        "use_sim_time": False,
        "device": "cuda",
    }
    with pytest.raises(ValueError, match="use_sim_time"):
        launch_module.parameter_overrides({"use_sim_time": "maybe"})
    # through the OpaqueFunction body: the params file comes first, then only the given overrides
    params_file, overrides = _node_parameters(launch_module, {"params_file": "p.yaml"})
    assert overrides == {}
    _, overrides = _node_parameters(launch_module, {"use_sim_time": "true", "map_path": "/m"})
    assert overrides == {"use_sim_time": True, "map_path": "/m"}


def test_launch_description_builds_and_overrides_are_parameters(launch_module):
    description = launch_module.generate_launch_description()
    declared = {a.args[0] for a in description.args[0] if a.args and isinstance(a.args[0], str)}
    names = set(launch_module.OVERRIDABLE) | set(launch_module.BOOLEAN_OVERRIDABLE)
    assert names <= declared
    assert names <= {spec.name for spec in PARAMETERS} | set(AUTOMATIC_PARAMETERS)


def test_fleet_map_arguments(launch_module):
    """map_uri, robot_id and session_id are launch arguments: given ones become parameters, empty ones not."""
    description = launch_module.generate_launch_description()
    declared = {a.args[0]: a.kwargs for a in description.args[0] if a.args and isinstance(a.args[0], str)}
    for name in ("map_uri", "robot_id", "session_id"):
        assert declared[name]["default_value"] == "" and declared[name]["description"]
        assert name in launch_module.OVERRIDABLE
    _, overrides = _node_parameters(launch_module, {"map_uri": "", "robot_id": "", "session_id": ""})
    assert overrides == {}
    context = {"map_uri": "service=fleet", "robot_id": "robot7", "session_id": "run-2", "map_path": "/m/r7"}
    _, overrides = _node_parameters(launch_module, context)
    assert overrides == context
