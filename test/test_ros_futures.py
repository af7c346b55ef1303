"""awaitable(): a coroutine callback awaits thread work through an rclpy Future (no DDS)."""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future

import pytest

from tscm_ros.ros.futures import awaitable


def _run(coroutine, timeout_s: float = 5.0):
    """Drive a coroutine the way rclpy's Task does: resume it until it returns."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            coroutine.send(None)
        except StopIteration as finished:
            return finished.value
        time.sleep(0.01)
    raise AssertionError("the coroutine never finished")


async def _await(relay):
    return await relay


def test_the_result_of_another_thread_reaches_the_coroutine() -> None:
    future: Future = Future()
    relay = awaitable(future, None, timeout_s=10.0)
    assert not relay.done()
    threading.Timer(0.1, future.set_result, args=("saved 3 places",)).start()
    assert _run(_await(relay)) == "saved 3 places"


def test_an_exception_of_the_thread_is_raised_in_the_coroutine() -> None:
    future: Future = Future()
    relay = awaitable(future, None, timeout_s=10.0)
    future.set_exception(OSError("disk full"))
    with pytest.raises(OSError, match="disk full"):
        _run(_await(relay))


def test_work_that_takes_too_long_raises_timeout_and_a_late_result_is_ignored() -> None:
    future: Future = Future()
    relay = awaitable(future, None, timeout_s=0.1)
    with pytest.raises(TimeoutError):
        _run(_await(relay))
    future.set_result("late")  # must not raise on the already finished relay
    assert isinstance(relay.exception(), TimeoutError)
