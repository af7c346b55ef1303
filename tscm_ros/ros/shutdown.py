"""Quiet, clean exits of rclpy programs on SIGINT / SIGTERM (Ctrl+C, ``kill``, ``ros2 launch`` stopping).

``rclpy.init`` installs signal handlers that *shut the context down* on SIGINT and SIGTERM. Whatever the
program is doing at that moment then fails in one of several ways: ``KeyboardInterrupt`` (SIGINT, often
only after the current C call returns), ``ExternalShutdownException`` (an executor's spin), or an
``RCLError`` / ``InvalidHandle`` from a publish or take on the dead context ("publisher's context is
invalid"). Logging through a node whose context is gone prints "Failed to publish log message to rosout".

The pattern that exits quietly (exit code 0, no traceback, no rosout errors):

1. run the work and treat any of those exceptions, once the context is no longer ``ok()``, as "stop";
2. destroy the nodes (their rosout publishers go with them), then ``rclpy.try_shutdown()``;
3. report afterwards with ``print`` (or :func:`log`), never through a node logger of a dead context.

Usage (a node's ``main``)::

    def main(args=None) -> int:
        rclpy.init(args=args)
        node = MyNode()
        executor = SingleThreadedExecutor()
        executor.add_node(node)
        outcome = run_until_shutdown(executor.spin, nodes=[node])
        print(f"my_node: stopped ({outcome.reason})", file=sys.stderr)
        return 0

A loop of your own (like ``bag_player``) works the same: ``run_until_shutdown(lambda: play(...))``; check
:func:`rclpy.ok` in the loop to stop early.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import rclpy
from rclpy.exceptions import InvalidHandle
from rclpy.executors import ExternalShutdownException

try:  # the pybind11 error type of rcl calls (publish on a shut-down context, ...)
    from rclpy._rclpy_pybind11 import RCLError
except ImportError:  # pragma: no cover - other rclpy builds
    RCLError = RuntimeError  # type: ignore[assignment,misc]

T = TypeVar("T")
SIGNAL_EXCEPTIONS: tuple[type[BaseException], ...] = (KeyboardInterrupt, ExternalShutdownException)


@dataclass
class RunOutcome(Generic[T]):
    """What :func:`run_until_shutdown` saw: the work's return value (None when it was stopped)."""

    result: T | None = None
    interrupted: bool = False  # stopped by a signal / external shutdown rather than by returning
    reason: str = "finished"  # "finished" | "interrupted" | "shutdown"


def context_ok(context: Any = None) -> bool:
    """``rclpy.ok`` that never raises (also before ``init`` / after ``shutdown``)."""
    try:
        return bool(rclpy.ok(context=context))
    except Exception:  # noqa: BLE001 - any failure means "not usable"
        return False


def is_shutdown_error(error: BaseException, context: Any = None) -> bool:
    """True for the exceptions a SIGINT/SIGTERM shutdown raises inside ROS calls (see module docstring)."""
    if isinstance(error, SIGNAL_EXCEPTIONS):
        return True
    return isinstance(error, (RCLError, InvalidHandle)) and not context_ok(context)


def shutdown_quietly(nodes: Iterable[Any] = (), context: Any = None) -> None:
    """Destroy ``nodes`` (rosout publishers included), then ``rclpy.try_shutdown``; never raises.

    A late ``KeyboardInterrupt`` (a SIGINT delivered while a C call was running, or a second Ctrl+C) is
    absorbed so that the clean-up still completes.
    """
    for node in nodes:
        _absorbing_interrupts(node.destroy_node)
    _absorbing_interrupts(lambda: rclpy.try_shutdown(context=context))


def _absorbing_interrupts(step: Callable[[], Any], attempts: int = 3) -> None:
    for _ in range(attempts):
        try:
            step()
            return
        except KeyboardInterrupt:
            continue
        except Exception:  # noqa: BLE001 - clean-up of a dying process: nothing useful to report
            return


def run_until_shutdown(
    work: Callable[[], T], *, nodes: Iterable[Any] = (), context: Any = None
) -> RunOutcome[T]:
    """Run ``work()``; a signal or external shutdown ends it quietly; then :func:`shutdown_quietly`.

    Other exceptions propagate after the clean-up. The nodes are destroyed in every case.
    """
    nodes = list(nodes)
    outcome: RunOutcome[T] = RunOutcome()
    try:
        outcome.result = work()
        if not context_ok(context):
            outcome.reason = "shutdown"  # the work noticed rclpy.ok() turning False and returned
            outcome.interrupted = True
    except BaseException as error:
        if not is_shutdown_error(error, context):
            shutdown_quietly(nodes, context)
            raise
        outcome.interrupted = True
        outcome.reason = "interrupted" if isinstance(error, KeyboardInterrupt) else "shutdown"
    shutdown_quietly(nodes, context)
    return outcome


def log(node: Any, message: str, level: str = "info", context: Any = None) -> None:
    """Log through ``node`` while its context is alive, else print to stderr (no rosout error)."""
    if node is not None and context_ok(context):
        getattr(node.get_logger(), level)(message)
    else:
        print(message, file=sys.stderr, flush=True)
