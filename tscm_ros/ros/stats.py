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


class PeakMeter:
    """The largest duration (ms) of the last ``window_s`` seconds, and how many ever exceeded ``stall_ms``."""

    def __init__(self, window_s: float = 5.0, stall_ms: float = 1000.0) -> None:
        self._window_s = window_s
        self._stall_ms = stall_ms
        self._values: deque[tuple[float, float]] = deque()
        self._lock = threading.Lock()
        self.stalls = 0

    def add(self, milliseconds: float, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        with self._lock:
            self._values.append((now, milliseconds))
            self.stalls += milliseconds > self._stall_ms
            self._trim(now)

    def peak(self, now: float | None = None) -> float:
        """The largest duration added in the window (NaN: none)."""
        now = time.monotonic() if now is None else now
        with self._lock:
            self._trim(now)
            return max((value for _, value in self._values), default=float("nan"))

    def _trim(self, now: float) -> None:
        while self._values and self._values[0][0] < now - self._window_s:
            self._values.popleft()


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


class LostFrameEstimator:
    """Frames lost *before* the node (DDS best effort, a slow network) estimated from header stamps.

    The camera period is a low quantile (10th percentile) of the recent stamp steps, robust while at least
    one step in ten is a single period; a step of n periods means n - 1 frames never arrived. A stamp that
    goes back (restarted bag) starts over. Thread-safe.
    """

    def __init__(self, window: int = 200) -> None:
        self._steps: deque[int] = deque(maxlen=window)
        self._recent: deque[tuple[int, int]] = deque(maxlen=window)  # (received 1, lost n) per message
        self._last_ns: int | None = None
        self._lock = threading.Lock()
        self.lost = 0
        self.received = 0

    def add(self, stamp_ns: int) -> None:
        with self._lock:
            self.received += 1
            last, self._last_ns = self._last_ns, int(stamp_ns)
            if last is None or stamp_ns <= last:
                if last is not None and stamp_ns < last:
                    self._steps.clear()
                return
            self._steps.append(int(stamp_ns) - last)
            period = self._period_ns()
            missing = max(0, round((int(stamp_ns) - last) / period) - 1) if period else 0
            self.lost += missing
            self._recent.append((1, missing))

    def _period_ns(self) -> float | None:
        return float(np.percentile(self._steps, 10)) if len(self._steps) >= 5 else None

    @property
    def period_s(self) -> float | None:
        with self._lock:
            period = self._period_ns()
            return period / 1e9 if period else None

    def recent_loss(self) -> float:
        """Fraction of the frames of the last ``window`` steps that never arrived."""
        with self._lock:
            received = sum(r for r, _ in self._recent)
            missing = sum(m for _, m in self._recent)
            return missing / (received + missing) if received + missing else 0.0
