"""MapSaver: one save at a time on its own thread; requests never block and are merged while queued."""

from __future__ import annotations

import threading
import time

import pytest

from tscm_ros.ros.map_saver import MapSaver, SaveOutcome


def test_saves_run_one_at_a_time_and_queued_requests_share_one_save() -> None:
    running, overlaps, calls = [0], [], []
    gate = threading.Event()

    def save() -> str:
        running[0] += 1
        overlaps.append(running[0])
        gate.wait(5.0)
        time.sleep(0.05)
        calls.append(time.monotonic())
        running[0] -= 1
        return f"saved {len(calls)}"

    done: list[tuple[str, object]] = []
    saver = MapSaver(save, lambda why, outcome: done.append((why, outcome)))
    started = time.monotonic()
    first = saver.request("service")
    while not saver.busy or first.running() is False:
        time.sleep(0.001)
    second = saver.request("autosave")  # the first is writing: a new save is queued
    third = saver.request("service")  # joins the queued one
    assert time.monotonic() - started < 0.1  # requests never block
    assert second is third and second is not first
    gate.set()
    assert first.result(5.0).message == "saved 1"
    outcome = second.result(5.0)
    assert isinstance(outcome, SaveOutcome) and outcome.message == "saved 2"
    assert max(overlaps) == 1 and saver.completed == 2
    assert [why for why, _ in done] == ["service", "autosave, service"]
    assert saver.close(5.0)
    with pytest.raises(RuntimeError, match="closed"):
        saver.request().result(1.0)


def test_a_failed_save_reaches_the_caller_and_the_saver_goes_on() -> None:
    outcomes = iter([OSError("disk full"), "saved"])

    def save() -> str:
        item = next(outcomes)
        if isinstance(item, Exception):
            raise item
        return item

    saver = MapSaver(save)
    with pytest.raises(OSError, match="disk full"):
        saver.request().result(5.0)
    assert saver.request().result(5.0).message == "saved"
    assert (saver.completed, saver.failed) == (1, 1)
    assert saver.close(5.0)
