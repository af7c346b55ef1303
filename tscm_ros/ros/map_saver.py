"""A dedicated map-saving thread for the node: saves never run on an executor thread or the inference loop.

ROS-free (plain threads), so it is unit-tested without DDS.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future

__all__ = ["MapSaver", "SaveOutcome"]


class SaveOutcome:
    """A finished save: ``message`` (e.g. "saved N places to PATH"); a failed save raises instead."""

    def __init__(self, message: str, duration_s: float) -> None:
        self.message = message
        self.duration_s = duration_s

    def __repr__(self) -> str:
        return f"SaveOutcome({self.message!r}, {self.duration_s:.3f} s)"


class MapSaver:
    """Runs ``save()`` on one background thread, one save at a time.

    :meth:`request` never blocks: it returns a Future of a save that starts after the request, so it
    includes everything done before it. A request made while a save is *queued* joins that save; one made
    while a save is *writing* queues the next one. ``save`` returns a message (or raises); ``on_done`` (if
    given) is called on the saver thread with ``(why, outcome or exception)`` after every save.
    """

    def __init__(
        self,
        save: Callable[[], str],
        on_done: Callable[[str, SaveOutcome | BaseException], None] | None = None,
    ) -> None:
        self._save = save
        self._on_done = on_done
        self._condition = threading.Condition()
        self._queued: Future | None = None
        self._queued_why: list[str] = []
        self._writing = False
        self._closed = False
        self.completed = 0
        self.failed = 0
        self.last_duration_s: float | None = None
        self._thread = threading.Thread(target=self._run, name="map_saver", daemon=True)
        self._thread.start()

    def request(self, why: str = "request") -> Future:
        """A Future resolved with a :class:`SaveOutcome` once a save that started after now has finished."""
        with self._condition:
            if self._closed:
                future: Future = Future()
                future.set_exception(RuntimeError("the map saver is closed (node shutting down)"))
                return future
            if self._queued is None:
                self._queued = Future()
                self._queued_why = []
            self._queued_why.append(why)
            self._condition.notify_all()
            return self._queued

    @property
    def busy(self) -> bool:
        """True while a save is writing or queued."""
        with self._condition:
            return self._writing or self._queued is not None

    def close(self, timeout: float | None = None) -> bool:
        """Let the queued and running saves finish, then stop the thread; False if it is still running after
        ``timeout``."""
        with self._condition:
            self._closed = True
            self._condition.notify_all()
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def _run(self) -> None:
        while True:
            with self._condition:
                self._condition.wait_for(lambda: self._queued is not None or self._closed)
                if self._queued is None:
                    return  # closed and nothing left to save
                future, why = self._queued, ", ".join(dict.fromkeys(self._queued_why))
                self._queued, self._queued_why = None, []
                self._writing = True
            if not future.set_running_or_notify_cancel():
                with self._condition:
                    self._writing = False
                continue
            started = time.monotonic()
            outcome: SaveOutcome | BaseException
            try:
                outcome = SaveOutcome(self._save(), time.monotonic() - started)
            except BaseException as error:  # noqa: BLE001 - reported through the Future and on_done
                outcome = error
            with self._condition:
                self._writing = False
                if isinstance(outcome, SaveOutcome):
                    self.completed += 1
                    self.last_duration_s = outcome.duration_s
                else:
                    self.failed += 1
            if self._on_done is not None:
                with contextlib.suppress(Exception):  # a reporting problem must not stop the saver
                    self._on_done(why, outcome)
            if isinstance(outcome, SaveOutcome):
                future.set_result(outcome)
            else:
                future.set_exception(outcome)
