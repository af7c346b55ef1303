"""Faults of a robot on Wi-Fi: the server stops and restarts mid-stream, the writer is SIGKILLed mid-stream.

Every keyframe must reach the server exactly once, queries must keep answering (local fallback) while
the server is away, and ``connection_state`` / ``outbox_depth`` must say what is going on. These tests
stop and start their own private server.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fleet_support import DIM, FP, metas, new_schema, server_rows, unit_vectors

from tscm_ros.fleet import FleetPlaceStore, LocalPlaceStore, PgPlaceStore, open_place_store, sidecar_dir
from tscm_ros.fleet.outbox import Outbox

HERE = Path(__file__).resolve().parent
REPO = HERE.parent


@pytest.fixture(scope="module")
def private_pg():
    pytest.importorskip("psycopg")
    from tscm_ros.fleet.testing import LocalPostgres

    try:
        server = LocalPostgres(prefix="tscm_pgf_")
    except RuntimeError as exc:
        pytest.skip(f"no PostgreSQL binaries: {exc}")
    try:
        server.start()
        yield server
    finally:
        server.cleanup()


def wait_for(predicate, timeout_s: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def test_server_crash_and_restart_mid_stream(private_pg, tmp_path: Path) -> None:
    uri = private_pg.uri()
    schema = new_schema(uri)
    store = open_place_store(
        uri,
        dim=DIM,
        model_fingerprint=FP,
        robot_id="r1",
        session_id="s1",
        local_map=tmp_path / "robot_map",
        schema=schema,
    )
    assert isinstance(store, FleetPlaceStore) and store.connection_state == "connected"
    db = unit_vectors(90, seed=21)
    ids, states, depths = [], [], []
    try:
        for i in range(90):
            if i == 30:
                private_pg.stop("immediate")  # a crash, as far as the robot can tell
            if i == 60:
                private_pg.start()
            found = store.search(db[i], 3)  # never raises: server, or the local map while it is away
            if i in (40, 50):
                assert found and found[0].robot_id == "r1"
                assert store.search(db[10], 1)[0].place_id == ids[10]  # fleet ids are the same offline
            ids.append(int(store.add(db[i : i + 1], metas(1, start=i))[0]))
            states.append(store.connection_state)
            depths.append(store.outbox_depth)
            time.sleep(0.01)
        assert "disconnected" in states[31:60] and max(depths[31:60]) >= 20
        diagnostics = store.diagnostics()
        assert wait_for(lambda: store.outbox_depth == 0)
        assert store.connection_state == "connected"
        assert server_rows(uri, schema) == [("r1", "s1", i) for i in range(90)]  # each keyframe exactly once
        assert int(diagnostics["fallback_queries"]) > 0 and diagnostics["backend"] == "postgresql+local"
        assert store.search(db[45], 1)[0].place_id == ids[45]
    finally:
        if not private_pg.running:
            private_pg.start()
        store.close()


def test_redelivery_after_lost_acknowledgement_is_idempotent(private_pg, tmp_path: Path) -> None:
    """The server committed a batch but the robot died before deleting it from the outbox."""
    uri = private_pg.uri()
    schema = new_schema(uri)
    store = open_place_store(
        uri,
        dim=DIM,
        model_fingerprint=FP,
        robot_id="r1",
        session_id="s1",
        local_map=tmp_path / "robot_map",
        schema=schema,
    )
    failures = []
    real_ack = store._outbox.ack

    def ack_fails_once(seqs):
        if not failures:
            failures.append(list(seqs))
            raise OSError("disk went away after the server commit")
        real_ack(seqs)

    store._outbox.ack = ack_fails_once
    store._retry = (0.05, 0.2)
    store.add(unit_vectors(20, seed=22), metas(20))
    assert wait_for(lambda: store.outbox_depth == 0)
    assert failures and "disk went away" in store.last_error
    assert server_rows(uri, schema) == [("r1", "s1", i) for i in range(20)]
    writer = PgPlaceStore(uri, schema=schema, robot_id="r1", session_id="s1")
    writer.add(unit_vectors(20, seed=22), metas(20))  # a second full re-send changes nothing either
    assert len(writer) == 20
    store.close()


def run_writer(
    uri: str, schema: str, local_map: Path, total: int, kill_after: int | None
) -> tuple[list[str], int]:
    """Run test/fleet_writer.py; SIGKILL it once it acknowledged ``kill_after`` keyframes."""
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen(
        [sys.executable, str(HERE / "fleet_writer.py"), uri, schema, str(local_map), str(total)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    lines = []
    try:
        for line in proc.stdout:
            lines.append(line.strip())
            if kill_after is not None and line.startswith("ack ") and int(line.split()[1]) >= kill_after:
                proc.send_signal(signal.SIGKILL)
                break
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    if kill_after is None:
        assert proc.returncode == 0, proc.stderr.read()
    else:
        assert proc.returncode == -signal.SIGKILL
    return lines, proc.returncode


def test_sigkill_writer_mid_stream(private_pg, tmp_path: Path) -> None:
    uri = private_pg.uri()
    schema = new_schema(uri)
    local_map = tmp_path / "robot_map"
    acked: list[int] = []

    def acks(lines: list[str]) -> list[int]:
        return [int(line.split()[1]) for line in lines if line.startswith("ack ")]

    lines, _ = run_writer(uri, schema, local_map, 90, kill_after=25)  # server up: killed mid-flush
    acked += acks(lines)
    private_pg.stop("fast")
    try:
        lines, _ = run_writer(uri, schema, local_map, 90, kill_after=55)  # server down: all in the outbox
        start = lines[0].split()
        assert start[0] == "start" and int(start[1]) > max(acked) and start[2] == "disconnected"
        acked += acks(lines)
    finally:
        private_pg.start()
    waiting = Outbox(sidecar_dir(local_map) / "outbox.sqlite")
    assert waiting.depth() >= 20  # what the killed, offline writer queued
    waiting.close()
    lines, _ = run_writer(uri, schema, local_map, 90, kill_after=None)
    start = lines[0].split()
    assert int(start[1]) > max(acked)  # resumed after the last acknowledged keyframe
    acked += acks(lines)
    assert lines[-1] == "done True 0"
    rows = server_rows(uri, schema)
    assert len(rows) == len(set(rows))  # no duplicates
    keyframes = [kf for _, _, kf in rows]
    assert set(acked) <= set(keyframes)  # nothing acknowledged is lost
    assert keyframes == list(range(90))  # and no keyframe index was skipped or reused
    local = LocalPlaceStore.open(local_map, dim=DIM, model_fingerprint=FP, robot_id="r1", session_id="s1")
    assert len(local) >= 90 - 26  # unsaved tails are lost locally only before an outbox replay
    local.close()
