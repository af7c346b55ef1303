"""StageTimer: rolling windows, medians, thread safety, overhead."""

from __future__ import annotations

import threading
import time

import pytest

from tscm_ros.timing import DEFAULT_STAGES, StageTimer


def test_medians_windows_and_unknown_stages():
    timer = StageTimer(window=4)
    assert tuple(timer.p50_ms()) == DEFAULT_STAGES and all(v is None for v in timer.p50_ms().values())
    for seconds in (0.001, 0.003, 0.002):
        timer.record("decode", seconds)
    assert timer.p50_ms()["decode"] == pytest.approx(2.0)
    for seconds in (0.010, 0.010, 0.010, 0.010):
        timer.record("decode", seconds)  # the window keeps the last 4 only
    assert timer.p50_ms()["decode"] == pytest.approx(10.0)
    assert timer.counts()["decode"] == 7
    timer.record("decode_extra", 0.004)
    timer.record("decode_extra", 0.006)
    assert timer.p50_ms()["decode_extra"] == pytest.approx(5.0)  # even count: mean of the middle two
    assert timer.percentiles_ms(100)["decode_extra"] == pytest.approx(6.0)
    timer.reset()
    assert timer.p50_ms()["decode"] is None and timer.counts()["decode"] == 0
    with pytest.raises(ValueError):
        StageTimer(window=0)
    with pytest.raises(ValueError):
        timer.percentiles_ms(101)


def test_context_manager_and_record_since():
    timer = StageTimer(stages=("a", "b"))
    with timer.stage("a"):
        time.sleep(0.002)
    start = timer.now()
    time.sleep(0.001)
    end = timer.record_since("b", start)
    assert end >= start
    medians = timer.p50_ms()
    assert medians["a"] >= 2.0 and medians["b"] >= 1.0
    assert "a=" in repr(timer)


def test_thread_safe_counts():
    timer = StageTimer(window=64)

    def work() -> None:
        for _ in range(2000):
            timer.record("inference", 0.001)
            if _ % 500 == 0:
                timer.p50_ms()

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert timer.counts()["inference"] == 8000
    assert timer.p50_ms()["inference"] == pytest.approx(1.0)


def test_overhead_is_microseconds():
    timer = StageTimer()
    count = 20000
    start = time.perf_counter()
    for _ in range(count):
        timer.record("decode", 0.001)
    per_record = (time.perf_counter() - start) / count
    start = time.perf_counter()
    for _ in range(count):
        with timer.stage("map"):
            pass
    per_block = (time.perf_counter() - start) / count
    assert per_record < 20e-6 and per_block < 30e-6, (per_record, per_block)  # loose: shared CI machines
