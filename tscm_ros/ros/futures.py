"""Thread work that a coroutine callback awaits without holding its executor thread."""

from __future__ import annotations

import threading
from concurrent.futures import Future

from rclpy.executors import Executor
from rclpy.task import Future as RosFuture

__all__ = ["awaitable"]


def awaitable(future: Future, executor: Executor | None, timeout_s: float) -> RosFuture:
    """An rclpy Future completed with ``future``'s result or exception, or with TimeoutError after
    ``timeout_s``: ``await`` it in an ``async def`` callback and the executor runs other callbacks meanwhile
    (rclpy resumes the callback once it is done)."""
    relay: RosFuture = RosFuture(executor=executor)
    lock = threading.Lock()

    def finish(result: object = None, error: BaseException | None = None) -> None:
        with lock:  # the first of the result and the timeout wins
            if relay.done():
                return
            if error is None:
                relay.set_result(result)
            else:
                relay.set_exception(error if isinstance(error, Exception) else RuntimeError(repr(error)))

    timer = threading.Timer(timeout_s, lambda: finish(error=TimeoutError(f"not done after {timeout_s} s")))
    timer.daemon = True
    timer.start()

    def relay_outcome(done: Future) -> None:
        timer.cancel()
        error = done.exception()
        finish(None if error is not None else done.result(), error)

    future.add_done_callback(relay_outcome)
    return relay
