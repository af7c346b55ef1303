"""Small thread-safe counters for diagnostics: event rates over a sliding window and latency percentiles."""

from __future__ import annotations

import threading
import time
from collections import Counter, deque

import numpy as np


class RateMeter:
    """Events per second over the last ``window_s`` seconds (monotonic clock)."""

    def __init__(self, window_s: float = 5.0) -> None:
        self._window_s = window_s
        self._times: deque[float] = deque()
        self._lock = threading.Lock()
        self.total = 0
        self.last_time: float | None = None

    def tick(self, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        with self._lock:
            self._times.append(now)
            self.total += 1
            self.last_time = now
            self._trim(now)

    def rate(self, now: float | None = None) -> float:
        now = time.monotonic() if now is None else now
        with self._lock:
            self._trim(now)
            return len(self._times) / self._window_s

    def _trim(self, now: float) -> None:
        while self._times and self._times[0] < now - self._window_s:
            self._times.popleft()


class DurationStats:
    """Percentiles of the last ``size`` durations (milliseconds)."""

    def __init__(self, size: int = 200) -> None:
        self._values: deque[float] = deque(maxlen=size)
        self._lock = threading.Lock()

    def add(self, milliseconds: float) -> None:
        with self._lock:
            self._values.append(milliseconds)

    def percentile(self, q: float) -> float:
        with self._lock:
            if not self._values:
                return float("nan")
            return float(np.percentile(np.fromiter(self._values, dtype=float), q))


class ReasonCounter:
    """Counts of bad messages by reason, plus when the last one happened."""

    def __init__(self) -> None:
        self._counts: Counter[str] = Counter()
        self._lock = threading.Lock()
        self.last_time: float | None = None

    def add(self, reason: str) -> None:
        with self._lock:
            self._counts[reason] += 1
            self.last_time = time.monotonic()

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)

    @property
    def total(self) -> int:
        with self._lock:
            return sum(self._counts.values())
