"""tscm_ros.ros.parameters: unknown parameter names and clear type errors, on real rclpy nodes in-process."""

from __future__ import annotations

from pathlib import Path

import pytest
import rclpy
from rcl_interfaces.msg import ParameterDescriptor, SetParametersResult
from rclpy.context import Context
from rclpy.node import Node
from rclpy.parameter import Parameter

from tscm_ros.ros.parameters import (
    PARAMETERS,
    PARAMETERS_BY_NAME,
    STRICT_PARAMETERS,
    parameter_names,
    parameter_type_error,
    type_error_message,
    unknown_overrides,
    unknown_parameters_message,
)

pytestmark = pytest.mark.ros
NODE_NAME = "param_test_node"


@pytest.fixture
def context():
    context = Context()
    rclpy.init(args=["test", "--ros-args", "-p", "global_typo:=1"], context=context)
    yield context
    rclpy.try_shutdown(context=context)


def make_node(context: Context, cli: list[str] | None = None, overrides: list[Parameter] | None = None):
    node = Node(
        NODE_NAME, context=context, cli_args=["--ros-args", *(cli or [])], parameter_overrides=overrides or []
    )
    node.declare_parameter("top_k", 5, ParameterDescriptor(description="top_k"))
    node.declare_parameter("similarity_threshold", 0.8)
    node.declare_parameter("device", "auto")
    return node


def test_strict_parameters_is_the_last_read_only_bool():
    assert PARAMETERS[-1] is STRICT_PARAMETERS is PARAMETERS_BY_NAME["strict_parameters"]
    assert STRICT_PARAMETERS.default is False and STRICT_PARAMETERS.read_only
    assert STRICT_PARAMETERS.descriptor().read_only
    assert "strict_parameters" in parameter_names() and len(set(parameter_names())) == len(parameter_names())


def test_unknown_overrides_from_command_line_params_file_and_constructor(context, tmp_path: Path):
    params = tmp_path / "params.yaml"
    params.write_text(
        f"/**/{NODE_NAME}:\n  ros__parameters:\n    top_k: 3\n    simlarity_threshold: 0.5\n"
        "/**:\n  ros__parameters:\n    use_sim_time: false\n    wildcard_typo: 2\n"
        "other_node:\n  ros__parameters:\n    not_for_us: 1\n"
    )
    node = make_node(
        context,
        ["--params-file", str(params), "-p", "top_k:=7", "-p", "devcie:=cpu"],
        [Parameter("ctor_typo", value=1.0)],
    )
    try:
        assert node.get_parameter("top_k").value == 7  # declared overrides still apply (the later one)
        unknown = unknown_overrides(node)
        assert unknown == ["ctor_typo", "devcie", "global_typo", "simlarity_threshold", "wildcard_typo"]
        message = unknown_parameters_message(["devcie", "simlarity_threshold", "zzz"])
        assert "devcie (did you mean device?)" in message
        assert "simlarity_threshold (did you mean similarity_threshold?)" in message
        assert message.endswith(", zzz") and message.startswith("unknown parameters")
    finally:
        node.destroy_node()


def test_no_unknown_overrides(context):
    node = make_node(context, ["-p", "top_k:=7", "-p", "use_sim_time:=false"])
    try:
        assert unknown_overrides(node) == ["global_typo"]  # the context's own -p is global
    finally:
        node.destroy_node()


def test_type_error_message_names_parameter_and_types():
    message = type_error_message("top_k", Parameter.Type.INTEGER, Parameter("top_k", value="five"))
    assert message == "parameter 'top_k' must be an integer (INTEGER); got 'five', a string (STRING)"
    message = type_error_message("similarity_threshold", 0.8, 1)  # expected type from the default
    assert "must be a floating-point number (DOUBLE); got 1, an integer (INTEGER) (write 1.0)" in message
    assert "(BOOL)" in type_error_message("verify", 3, True)  # ParameterType constant 3 = DOUBLE, got BOOL
    assert "(DOUBLE_ARRAY)" in type_error_message("camera_intrinsics", [0.0], [1, 2])


def test_runtime_type_error_is_clear(context):
    """rclpy rejects a wrong type before on-set callbacks run ("expected '2' got '4'"); parameter_type_error
    gives the message to return instead (see the node's set_parameters_atomically)."""
    node = make_node(context)
    seen: list[str] = []
    node.add_on_set_parameters_callback(
        lambda parameters: seen.extend(p.name for p in parameters) or SetParametersResult(successful=True)
    )
    try:
        wrong = Parameter("top_k", value="five")
        (result,) = node.set_parameters([wrong])
        assert not result.successful and "top_k" not in result.reason and not seen  # rclpy's own message
        assert parameter_type_error(node, wrong) == type_error_message("top_k", "INTEGER", "five")
        assert parameter_type_error(node, Parameter("top_k", value=3)) is None
        assert parameter_type_error(node, Parameter("undeclared", value=3)) is None
        message = parameter_type_error(node, Parameter("similarity_threshold", value=1))
        assert message is not None and "similarity_threshold" in message and "write 1.0" in message
    finally:
        node.destroy_node()


class TypedNode(Node):
    """The pattern for place_recognition_node: the parameter services call set_parameters_atomically."""

    def set_parameters_atomically(self, parameter_list):
        for parameter in parameter_list:
            error = parameter_type_error(self, parameter)
            if error is not None:
                return SetParametersResult(successful=False, reason=error)
        return super().set_parameters_atomically(parameter_list)


def test_ros2_param_set_path_names_the_parameter(context):
    from rcl_interfaces.srv import SetParameters

    node = TypedNode(NODE_NAME, context=context)
    try:
        node.declare_parameter("top_k", 5)
        # what `ros2 param set /node top_k five` runs inside the node (rclpy.parameter_service)
        request = SetParameters.Request(parameters=[Parameter("top_k", value="five").to_parameter_msg()])
        response = node._parameter_service._set_parameters_callback(request, SetParameters.Response())
        (result,) = response.results
        assert not result.successful and result.reason.startswith("parameter 'top_k' must be an integer")
        request = SetParameters.Request(parameters=[Parameter("top_k", value=9).to_parameter_msg()])
        response = node._parameter_service._set_parameters_callback(request, SetParameters.Response())
        assert response.results[0].successful and node.get_parameter("top_k").value == 9
    finally:
        node.destroy_node()
