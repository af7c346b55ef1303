"""Static checks of the ROS layer: launch file, parameter files and the node's parameter table agree."""

from __future__ import annotations

import ast
import contextlib
import re
from pathlib import Path

import pytest
import yaml

from tscm_ros.ros.parameters import AUTOMATIC_PARAMETERS, PARAMETERS, validate

REPO = Path(__file__).resolve().parents[1]
LAUNCH_FILES = sorted((REPO / "launch").glob("*.launch.py"))
CONFIG_FILES = sorted((REPO / "config").glob("*.yaml"))
NODE_NAME = "place_recognition_node"


def console_scripts() -> dict[str, str]:
    """name -> 'module:function' from setup.py's entry_points, read with ast (setup.py is not run)."""
    tree = ast.parse((REPO / "setup.py").read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Dict):
            for key, value in zip(node.keys, node.values, strict=True):
                if isinstance(key, ast.Constant) and key.value == "console_scripts":
                    entries = [ast.literal_eval(item) for item in value.elts]
                    return dict(entry.replace(" ", "").split("=", 1) for entry in entries)
    raise AssertionError("setup.py declares no console_scripts")


def module_constants(tree: ast.Module) -> dict[str, object]:
    constants = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            with contextlib.suppress(ValueError):
                constants[node.targets[0].id] = ast.literal_eval(node.value)
    return constants


def resolve(node: ast.AST, constants: dict[str, object]) -> object:
    if isinstance(node, ast.Name):
        return constants[node.id]
    return ast.literal_eval(node)


def calls(tree: ast.AST, name: str) -> list[ast.Call]:
    return [
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and (getattr(node.func, "id", None) == name or getattr(node.func, "attr", None) == name)
    ]


def keyword(call: ast.Call, name: str) -> ast.AST | None:
    return next((kw.value for kw in call.keywords if kw.arg == name), None)


def node_sections(document: dict) -> list[dict]:
    """ros__parameters blocks of a parameter file that target place_recognition_node."""
    sections = []
    for key, value in document.items():
        last = key.rstrip("/").split("/")[-1]
        if last in (NODE_NAME, "**") and isinstance(value, dict) and "ros__parameters" in value:
            sections.append(value["ros__parameters"])
    return sections


def test_there_are_launch_and_config_files():
    assert LAUNCH_FILES, "launch/*.launch.py missing"
    assert REPO / "config" / "place_recognition.yaml" in CONFIG_FILES


@pytest.mark.parametrize("launch_file", LAUNCH_FILES, ids=lambda p: p.name)
def test_launch_starts_only_console_scripts_of_this_package(launch_file: Path):
    tree = ast.parse(launch_file.read_text())
    constants = module_constants(tree)
    scripts = console_scripts()
    nodes = calls(tree, "Node")
    assert nodes, "the launch file starts no Node"
    for call in nodes:
        executable = resolve(keyword(call, "executable"), constants)
        package = resolve(keyword(call, "package"), constants)
        assert package == "tscm_ros"
        assert executable in scripts, f"{executable} is not a console script in setup.py"
        module, function = scripts[executable].split(":")
        assert hasattr(__import__(module, fromlist=[function]), function)


@pytest.mark.parametrize("launch_file", LAUNCH_FILES, ids=lambda p: p.name)
def test_launch_arguments_used_are_declared(launch_file: Path):
    tree = ast.parse(launch_file.read_text())
    declared = {ast.literal_eval(call.args[0]) for call in calls(tree, "DeclareLaunchArgument")}
    used = {
        call.args[0].value
        for call in calls(tree, "LaunchConfiguration")
        if call.args and isinstance(call.args[0], ast.Constant)
    }
    used_via_names = {name for name in module_constants(tree).get("OVERRIDABLE", ()) if isinstance(name, str)}
    assert used | used_via_names <= declared, (
        f"undeclared launch arguments: {(used | used_via_names) - declared}"
    )
    assert {
        "image_topic",
        "params_file",
        "model_path",
        "map_path",
        "device",
        "namespace",
        "use_sim_time",
        "map_uri",
        "robot_id",
        "session_id",
    } <= declared
    node_parameters = {spec.name for spec in PARAMETERS}
    assert used_via_names <= node_parameters, "launch overrides must be node parameters"


@pytest.mark.parametrize("config_file", CONFIG_FILES, ids=lambda p: p.name)
def test_config_keys_are_declared_parameters_with_the_declared_type(config_file: Path):
    document = yaml.safe_load(config_file.read_text())
    sections = node_sections(document)
    if config_file.name == "place_recognition.yaml":
        assert sections, "place_recognition.yaml does not target the node"
    declared = {spec.name: spec for spec in PARAMETERS}
    for section in sections:
        for key, value in section.items():
            assert key in declared or key in AUTOMATIC_PARAMETERS, (
                f"{config_file.name}: unknown parameter {key}"
            )
            if key in declared:
                default = declared[key].default
                # rclpy rejects 1 for a double parameter, so the file must spell the declared type
                assert type(value) is type(default), (
                    f"{key}: {type(value).__name__} vs {type(default).__name__}"
                )
                assert validate(key, value) is None, validate(key, value)


def test_main_config_lists_every_parameter():
    document = yaml.safe_load((REPO / "config" / "place_recognition.yaml").read_text())
    (section,) = node_sections(document)
    missing = {spec.name for spec in PARAMETERS} - set(section)
    assert not missing, f"config/place_recognition.yaml lacks {sorted(missing)}"


def test_parameter_table_is_consistent():
    names = [spec.name for spec in PARAMETERS]
    assert len(names) == len(set(names))
    for spec in PARAMETERS:
        assert spec.description, spec.name
        assert validate(spec.name, spec.default) is None, spec.name
        descriptor = spec.descriptor()
        assert descriptor.description == spec.description
    # a few values the node must refuse, with a message naming the parameter
    for name, bad in [
        ("backend", "tensorflow"),
        ("device", "gpu0"),
        ("mode", "slam"),
        ("image_transport", "theora"),
        ("top_k", 0),
        ("similarity_threshold", 1.5),
        ("matched_pose_covariance", [1.0, 2.0]),
        ("map_frame", " "),
    ]:
        message = validate(name, bad)
        assert message is not None and name in message, (name, message)


def test_node_reads_only_declared_parameters():
    """Every ``config["name"]`` the node code reads is in the table (an undeclared one is a KeyError at run
    time, on the code path that reads it)."""
    declared = {spec.name for spec in PARAMETERS}
    read: set[str] = set()
    for path in (REPO / "tscm_ros" / "ros").glob("*.py"):
        read |= set(re.findall(r"config\[\"([a-z_0-9]+)\"\]", path.read_text()))
    assert len(read) >= 10, read  # the pattern still finds the node's reads
    assert read <= declared, f"read but not declared: {sorted(read - declared)}"


def test_interfaces_doc_lists_every_parameter():
    text = (REPO / "docs" / "ROS_INTERFACES.md").read_text()
    missing = [spec.name for spec in PARAMETERS if f"| `{spec.name}` |" not in text]
    assert not missing, f"docs/ROS_INTERFACES.md lacks {missing}"
