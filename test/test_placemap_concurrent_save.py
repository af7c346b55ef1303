"""Saves snapshot under the map's lock and write outside it; one writer per map directory (issue #10)."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from test_placemap import DIM, metas, unit_vectors

from tscm_ros.placemap import MapLockedError, PlaceMap
from tscm_ros.recognition import RecognitionSession

WRITE_DELAY_S = 0.6


class _Windows(list):
    def __init__(self) -> None:
        super().__init__()
        self.writing = threading.Event()


@pytest.fixture
def slow_writes(monkeypatch):
    """Every save's write phase (outside the lock) starts with a sleep; records when writes run
    (``windows``; ``writing`` is set once a write phase, i.e. after its snapshot, began)."""
    original = PlaceMap._write_job
    windows = _Windows()

    def slow(self, job):
        started = time.monotonic()
        windows.writing.set()
        time.sleep(WRITE_DELAY_S)
        try:
            return original(self, job)
        finally:
            windows.append((started, time.monotonic()))

    monkeypatch.setattr(PlaceMap, "_write_job", slow)
    return windows


@pytest.mark.parametrize("first_full", [True, False], ids=["full", "delta"])
def test_inserts_during_a_save_are_not_blocked_and_the_map_reloads_consistently(
    tmp_path: Path, slow_writes, first_full: bool
) -> None:
    root = tmp_path / "m"
    data = unit_vectors(400, seed=31)
    place_map = PlaceMap.create(DIM, "flat", model_fingerprint="fp")
    place_map.add(data[:100], metas(100), features=[bytes([i]) * 20 for i in range(100)])
    if not first_full:  # a saved version exists: the slow save below is a delta
        place_map.save(root)
        place_map.add(data[100:150], metas(50, start=100))
    saved_before = len(place_map)
    slow_writes.writing.clear()
    saver = threading.Thread(target=place_map.save, args=(root,))
    saver.start()
    assert slow_writes.writing.wait(10.0)  # the snapshot is taken; the write sleeps
    add_s, added = [], []
    for i in range(150, 250):  # concurrent inserts, removals and feature changes while it writes
        started = time.monotonic()
        added += list(place_map.add(data[i : i + 1], metas(1, start=i), features=[b"f" * 10]))
        add_s.append(time.monotonic() - started)
    place_map.remove([5, added[10]])
    place_map.set_features(7, b"changed")
    assert place_map.saving, "the write finished before the inserts: the test proves nothing"
    saver.join()
    assert max(add_s) < WRITE_DELAY_S / 2, max(add_s)  # adds never waited for the write

    written = PlaceMap.load(root)  # exactly the snapshot: nothing added during the write, nothing torn
    assert len(written) == saved_before
    assert list(written.place_ids) == list(range(saved_before))
    written.close()

    place_map.save()  # the changes made during the write are in the next save (incremental)
    assert place_map.delta_count >= 1
    reloaded = PlaceMap.load(root)
    assert list(reloaded.place_ids) == list(place_map.place_ids)
    np.testing.assert_array_equal(
        reloaded.search_arrays(data[:250:5], 3)[1], place_map.search_arrays(data[:250:5], 3)[1]
    )
    assert reloaded.get_features([7, 5, added[50]]) == {7: b"changed", added[50]: b"f" * 10}
    assert reloaded.next_place_id == saved_before + 100 and len(reloaded) == saved_before + 98
    reloaded.close()
    place_map.close()


def test_two_saves_never_overlap(tmp_path: Path, slow_writes) -> None:
    place_map = PlaceMap.create(DIM)
    place_map.add(unit_vectors(20, seed=32), metas(20))
    threads = [threading.Thread(target=place_map.save, args=(tmp_path / "m",)) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    windows = sorted(slow_writes)
    assert len(windows) == 3
    assert all(a[1] <= b[0] for a, b in zip(windows, windows[1:], strict=False))  # one after another
    assert len(PlaceMap.load(tmp_path / "m")) == 20
    place_map.close()


def test_a_failed_write_makes_the_next_save_full_and_loses_nothing(tmp_path: Path, monkeypatch) -> None:
    root = tmp_path / "m"
    data = unit_vectors(60, seed=33)
    place_map = PlaceMap.create(DIM)
    place_map.add(data[:20], metas(20))
    place_map.save(root)
    place_map.add(data[20:40], metas(20, start=20))
    original = PlaceMap._write_job
    monkeypatch.setattr(PlaceMap, "_write_job", lambda self, job: (_ for _ in ()).throw(OSError("disk full")))
    with pytest.raises(OSError, match="disk full"):
        place_map.save()
    monkeypatch.setattr(PlaceMap, "_write_job", original)
    place_map.add(data[40:60], metas(20, start=40))
    place_map.save()
    assert place_map.delta_count == 0  # the delta the failed save took is gone: saved in full
    assert len(PlaceMap.load(root)) == 60
    place_map.close()


# ------------------------------------------------------------------------------------- writer lock
def test_a_second_writer_gets_one_clear_error_readers_are_allowed(tmp_path: Path) -> None:
    root = tmp_path / "m"
    data = unit_vectors(30, seed=34)
    ours = PlaceMap.create(DIM)
    ours.add(data[:10], metas(10))
    ours.save(root)  # ours is the directory's writer until closed
    theirs = PlaceMap.load(root)  # reading is allowed
    assert len(theirs) == 10
    theirs.add(data[10:20], metas(10, start=10))
    with pytest.raises(MapLockedError, match=f"pid {os.getpid()}.*one writer per map directory"):
        theirs.save()
    other = PlaceMap.create(DIM)
    other.add(data[:1], metas(1))
    with pytest.raises(MapLockedError):
        other.save(root)
    other.save(tmp_path / "elsewhere")  # another directory is fine
    ours.add(data[20:25], metas(5, start=20))
    ours.save()  # the writer's own incremental saves go on
    assert ours.delta_count == 1 and len(PlaceMap.load(root)) == 15
    ours.close()  # releases the directory
    theirs.save()  # now theirs is the writer (its chain is stale: a full save, last writer wins whole)
    assert theirs.delta_count == 0 and len(PlaceMap.load(root)) == 20
    with pytest.raises(MapLockedError):
        ours_again = PlaceMap.load(root)
        ours_again.save()
    for place_map in (theirs, other, ours_again):
        place_map.close()


def test_the_lock_is_per_process_and_dies_with_its_holder(tmp_path: Path) -> None:
    root = tmp_path / "m"
    data = unit_vectors(10, seed=35)
    seed = PlaceMap.create(DIM)
    seed.add(data[:5], metas(5))
    seed.save(root)
    seed.close()
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: become the writer, report, then wait to be killed
        try:
            os.close(read_fd)
            child = PlaceMap.load(root)
            child.save()
            os.write(write_fd, b"saved\n")
            time.sleep(60)
        finally:
            os._exit(1)
    os.close(write_fd)
    try:
        with os.fdopen(read_fd) as lines:
            assert lines.readline().strip() == "saved"
        ours = PlaceMap.load(root)
        ours.add(data[5:10], metas(5, start=5))
        with pytest.raises(MapLockedError, match=f"pid {pid}"):
            ours.save()
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    ours.save()  # the kernel released the dead writer's lock
    assert len(PlaceMap.load(root)) == 10
    ours.close()


# ----------------------------------------------------------------------------- session (frames go on)
def test_session_save_does_not_hold_the_session_and_a_reset_meanwhile_is_safe(
    tmp_path: Path, slow_writes
) -> None:
    root = tmp_path / "m"
    data = unit_vectors(80, seed=36)
    options = {"verify": False, "min_interval_s": 0.0, "min_descriptor_change": 0.0, "min_travel_m": 0.0}
    session = RecognitionSession.open(
        dim=DIM, model_fingerprint="fp", map_path=None, load=False, index_spec="flat", options=options
    )
    for i in range(30):
        session.process(data[i], 1_000_000_000 * (i + 1))
    saved: list[int] = []
    saver = threading.Thread(target=lambda: saved.append(session.save(str(root))))
    saver.start()
    assert slow_writes.writing.wait(10.0)
    started = time.monotonic()
    for i in range(30, 40):  # frames go on during the write
        assert session.process(data[i], 1_000_000_000 * (i + 1)).place_id == i
    assert session.request_reset()  # between frames: applied at once, without waiting for the save
    assert session.counters.places == 0
    assert session.process(data[40], 41_000_000_000).place_id == 0  # the new map
    assert time.monotonic() - started < WRITE_DELAY_S / 2
    saver.join()
    assert saved == [30]
    assert len(PlaceMap.load(root)) == 30
    assert session.dirty
    assert session.save(str(root)) == 1  # the reset map; the old map was closed, its writer lock freed
    assert len(PlaceMap.load(root)) == 1
    session.close()


def test_requests_wait_for_the_next_frame_boundary_when_the_session_is_busy(tmp_path: Path) -> None:
    data = unit_vectors(10, seed=37)
    options = {"verify": False, "min_interval_s": 0.0, "min_descriptor_change": 0.0, "min_travel_m": 0.0}
    session = RecognitionSession.open(
        dim=DIM, model_fingerprint="fp", map_path=None, load=False, index_spec="flat", options=options
    )
    session.process(data[0], 1_000_000_000)
    holder = threading.Event()
    release = threading.Event()

    def busy() -> None:  # a frame in flight holding the session
        with session._lock:
            holder.set()
            release.wait(5.0)

    thread = threading.Thread(target=busy)
    thread.start()
    holder.wait(5.0)
    started = time.monotonic()
    assert session.request_configure({**options, "mode": "localization"}) is False
    assert session.request_reset() is False
    assert time.monotonic() - started < 0.2  # answered without waiting for the frame
    assert session.counters.pending_requests == 2 and session.dirty
    release.set()
    thread.join()
    result = session.process(data[1], 2_000_000_000)  # the boundary: reset, then localization
    assert result.place_id is None and len(session) == 0 and session.config.detector.mode == "localization"
    assert session.counters.pending_requests == 0
    session.close()
