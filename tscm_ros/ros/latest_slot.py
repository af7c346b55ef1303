"""A one-item mailbox between a ROS callback and a worker thread: put never blocks, newer replaces older."""

from __future__ import annotations

import threading
from typing import Generic, TypeVar

T = TypeVar("T")


class LatestSlot(Generic[T]):
    """At most one item: ``put`` overwrites (the overwritten item counts as dropped), ``take`` waits."""

    def __init__(self) -> None:
        self._condition = threading.Condition()
        self._item: T | None = None
        self._closed = False
        self.received = 0
        self.dropped = 0

    def put(self, item: T) -> None:
        with self._condition:
            if self._item is not None:
                self.dropped += 1
            self._item = item
            self.received += 1
            self._condition.notify()

    def take(self, timeout: float | None = None) -> T | None:
        """The newest item (removing it), or None on timeout or after close."""
        with self._condition:
            self._condition.wait_for(lambda: self._item is not None or self._closed, timeout)
            item, self._item = self._item, None
            return item

    def close(self) -> None:
        with self._condition:
            self._closed = True
            self._condition.notify_all()

    @property
    def closed(self) -> bool:
        return self._closed
