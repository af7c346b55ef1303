"""tscm_ros.ros.shutdown: what counts as a signal shutdown, and that nodes/contexts are always cleaned up."""

from __future__ import annotations

import pytest
import rclpy
from rclpy.context import Context
from rclpy.executors import ExternalShutdownException
from std_msgs.msg import String

from tscm_ros.ros.shutdown import context_ok, is_shutdown_error, log, run_until_shutdown

pytestmark = pytest.mark.ros


@pytest.fixture
def context():
    context = Context()
    rclpy.init(context=context)
    yield context
    rclpy.try_shutdown(context=context)


def make_node(context: Context, name: str = "shutdown_test"):
    return rclpy.create_node(name, context=context)


def test_finished_work_returns_its_result_and_cleans_up(context):
    node = make_node(context)
    outcome = run_until_shutdown(lambda: 42, nodes=[node], context=context)
    assert (outcome.result, outcome.interrupted, outcome.reason) == (42, False, "finished")
    assert not context_ok(context)  # try_shutdown ran
    with pytest.raises(Exception):  # noqa: B017,PT011 - the node was destroyed (InvalidHandle)
        node.create_publisher(String, "/after", 10)


@pytest.mark.parametrize("error", [KeyboardInterrupt(), ExternalShutdownException()])
def test_signal_exceptions_end_the_work_quietly(context, error):
    def work():
        raise error

    outcome = run_until_shutdown(work, nodes=[make_node(context)], context=context)
    assert outcome.interrupted and outcome.result is None
    assert outcome.reason == ("interrupted" if isinstance(error, KeyboardInterrupt) else "shutdown")


def test_publish_on_a_shut_down_context_counts_as_shutdown(context):
    node = make_node(context)
    publisher = node.create_publisher(String, "/shutdown_test", 10)

    def work():
        context.try_shutdown()  # what rclpy's SIGINT/SIGTERM handler does
        publisher.publish(String(data="x"))  # raises RCLError: publisher's context is invalid

    outcome = run_until_shutdown(work, nodes=[node], context=context)
    assert outcome.interrupted and outcome.reason == "shutdown"


def test_other_errors_propagate_after_clean_up(context):
    node = make_node(context)

    def work():
        raise ValueError("bug")

    with pytest.raises(ValueError, match="bug"):
        run_until_shutdown(work, nodes=[node], context=context)
    assert not context_ok(context)
    assert not is_shutdown_error(ValueError("bug"), context)


def test_log_falls_back_to_stderr_after_shutdown(context, capsys):
    node = make_node(context)
    context.try_shutdown()
    log(node, "final words", context=context)
    assert capsys.readouterr().err.strip() == "final words"
    node.destroy_node()
