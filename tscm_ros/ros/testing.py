"""Harness for exercising ROS nodes from tests, benchmarks and ros.online_offline over real DDS (no rclpy
mocks); a supported helper, documented in docs/ROS_INTERFACES.md.

``NodeProcess`` starts a node as its own process (``python -m module --ros-args ...``); ``RosProbe`` is an
in-process rclpy node, spun on a background thread, that publishes, collects messages, calls services and
sets parameters of other nodes.
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import rclpy
from rcl_interfaces.msg import Parameter as ParameterMsg
from rclpy.context import Context
from rclpy.executors import SingleThreadedExecutor
from rclpy.parameter import Parameter
from rclpy.parameter_client import AsyncParameterClient
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

NODE_MODULE = "tscm_ros.ros.place_recognition_node"
MATCH_SETTLE_S = 0.3  # after a subscription matched a publisher: time for the writer side to match it


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process from /proc (seconds); the benchmarks' node CPU figures."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def reliable_qos(depth: int = 10) -> QoSProfile:
    return QoSProfile(
        history=HistoryPolicy.KEEP_LAST,
        depth=depth,
        reliability=ReliabilityPolicy.RELIABLE,
        durability=DurabilityPolicy.VOLATILE,
    )


def best_effort_qos(depth: int = 1) -> QoSProfile:
    return QoSProfile(
        history=HistoryPolicy.KEEP_LAST,
        depth=depth,
        reliability=ReliabilityPolicy.BEST_EFFORT,
        durability=DurabilityPolicy.VOLATILE,
    )


def format_parameter(value: Any) -> str:
    """A value for ``--ros-args -p name:=value`` (YAML syntax, so '3' stays a string only when quoted)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else str(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(format_parameter(item) for item in value) + "]"
    text = str(value)
    return "'" + text.replace("'", "''") + "'"


def ros_arguments(
    parameters: Mapping[str, Any] | None = None,
    remappings: Mapping[str, str] | None = None,
    params_file: str | os.PathLike | None = None,
) -> list[str]:
    args = ["--ros-args"]
    if params_file is not None:
        args += ["--params-file", str(params_file)]
    for name, value in (parameters or {}).items():
        args += ["-p", f"{name}:={format_parameter(value)}"]
    for source, target in (remappings or {}).items():
        args += ["-r", f"{source}:={target}"]
    return args


class NodeProcess:
    """A ROS node run as ``python -m <module> <args> --ros-args ...``; output goes to a log file."""

    def __init__(
        self,
        module: str = NODE_MODULE,
        parameters: Mapping[str, Any] | None = None,
        remappings: Mapping[str, str] | None = None,
        *,
        params_file: str | os.PathLike | None = None,
        arguments: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.command = [
            sys.executable,
            "-m",
            module,
            *arguments,
            *ros_arguments(parameters, remappings, params_file),
        ]
        self._log = tempfile.NamedTemporaryFile(prefix="ros_node_", suffix=".log", delete=False)  # noqa: SIM115
        self.log_path = Path(self._log.name)
        environment = dict(os.environ)
        environment.update(env or {})
        self.process = subprocess.Popen(
            self.command, stdout=self._log, stderr=subprocess.STDOUT, env=environment, start_new_session=True
        )

    @property
    def pid(self) -> int:
        return self.process.pid

    def output(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")

    def wait_for_output(self, text: str, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.output():
                return True
            if self.process.poll() is not None:
                return text in self.output()
            time.sleep(0.1)
        return False

    def wait(self, timeout: float) -> int:
        return self.process.wait(timeout=timeout)

    def kill(self) -> None:
        """SIGKILL: no clean-up code in the node runs."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=10)

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGINT (clean shutdown), then SIGKILL if it does not exit in time."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        self._log.close()
        return self.process.returncode

    def __enter__(self) -> NodeProcess:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


class Collector:
    """Thread-safe list of (receive wall time, message) from one subscription."""

    def __init__(self) -> None:
        self.items: list[tuple[float, Any]] = []
        self.subscription: Any = None  # set by RosProbe.subscribe
        self._condition = threading.Condition()

    def __call__(self, message: Any) -> None:
        with self._condition:
            self.items.append((time.time(), message))
            self._condition.notify_all()

    @property
    def messages(self) -> list[Any]:
        with self._condition:
            return [message for _, message in self.items]

    def wait_for(self, predicate: Callable[[list[Any]], bool], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        with self._condition:
            while not predicate([message for _, message in self.items]):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._condition.wait(remaining)
            return True

    def wait_count(self, count: int, timeout: float) -> bool:
        return self.wait_for(lambda items: len(items) >= count, timeout)

    def clear(self) -> None:
        with self._condition:
            self.items.clear()


class RosProbe:
    """An in-process helper node with its own context, spun on a background thread."""

    def __init__(self, name: str = "test_probe") -> None:
        self.context = Context()
        rclpy.init(context=self.context)
        self.node = rclpy.create_node(name, context=self.context)
        self._executor = SingleThreadedExecutor(context=self.context)
        self._executor.add_node(self.node)
        self._thread = threading.Thread(target=self._spin, daemon=True)
        self._thread.start()

    def _spin(self) -> None:
        with contextlib.suppress(Exception):  # the context is shut down while spinning
            self._executor.spin()

    def subscribe(self, message_type: type, topic: str, qos: QoSProfile | int = 10) -> Collector:
        collector = Collector()
        collector.subscription = self.node.create_subscription(
            message_type, topic, collector, qos if not isinstance(qos, int) else qos
        )
        return collector

    def publisher(self, message_type: type, topic: str, qos: QoSProfile | int = 10):
        return self.node.create_publisher(message_type, topic, qos)

    @staticmethod
    def wait_for_subscribers(publisher, count: int = 1, timeout: float = 10.0) -> bool:
        """Wait until ``publisher`` has matched ``count`` subscriptions, then give their side a moment to
        match it back: a reader discards samples of a writer it has not matched yet (discovery is not
        atomic across the two participants; best-effort samples are then lost)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if publisher.get_subscription_count() >= count:
                time.sleep(MATCH_SETTLE_S)
                return True
            time.sleep(0.05)
        return False

    @staticmethod
    def wait_for_matched(collector: Collector, count: int = 1, timeout: float = 10.0) -> bool:
        """Wait until ``collector``'s subscription has matched ``count`` publishers (not just seen them
        in the graph: a reliable, volatile writer drops what it publishes before it matches a reader), then
        give the writer side a moment to match back (discovery is not atomic across the two participants)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if collector.subscription.get_publisher_count() >= count:
                time.sleep(MATCH_SETTLE_S)
                return True
            time.sleep(0.05)
        return False

    def call(self, service_type: type, name: str, request: Any, timeout: float = 30.0) -> Any:
        client = self.node.create_client(service_type, name)
        try:
            if not client.wait_for_service(timeout_sec=timeout):
                raise TimeoutError(f"service {name} not available")
            future = client.call_async(request)
            done = threading.Event()
            future.add_done_callback(lambda _: done.set())
            if not done.wait(timeout):
                raise TimeoutError(f"service {name} did not answer in {timeout} s")
            return future.result()
        finally:
            self.node.destroy_client(client)

    def set_parameters(self, node_name: str, values: Mapping[str, Any], timeout: float = 20.0) -> list[Any]:
        """Set parameters of a remote node; returns its SetParametersResult list."""
        client = AsyncParameterClient(self.node, node_name)
        if not client.wait_for_services(timeout_sec=timeout):
            raise TimeoutError(f"parameter services of {node_name} not available")
        future = client.set_parameters([Parameter(name, value=value) for name, value in values.items()])
        done = threading.Event()
        future.add_done_callback(lambda _: done.set())
        if not done.wait(timeout):
            raise TimeoutError(f"set_parameters on {node_name} did not answer")
        return list(future.result().results)

    def get_parameters(self, node_name: str, names: Sequence[str], timeout: float = 20.0) -> dict[str, Any]:
        client = AsyncParameterClient(self.node, node_name)
        if not client.wait_for_services(timeout_sec=timeout):
            raise TimeoutError(f"parameter services of {node_name} not available")
        future = client.get_parameters(list(names))
        done = threading.Event()
        future.add_done_callback(lambda _: done.set())
        if not done.wait(timeout):
            raise TimeoutError(f"get_parameters on {node_name} did not answer")
        return {
            name: Parameter.from_parameter_msg(ParameterMsg(name=name, value=value)).value
            for name, value in zip(names, future.result().values, strict=True)
        }

    def close(self) -> None:
        self._executor.shutdown(timeout_sec=2.0)
        self.node.destroy_node()
        rclpy.try_shutdown(context=self.context)
        self._thread.join(timeout=5.0)

    def __enter__(self) -> RosProbe:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
