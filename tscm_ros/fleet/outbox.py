"""Outbox: keyframes written by a robot and not yet confirmed by the map server, in a durable SQLite file.

Every entry is committed (WAL, ``synchronous=FULL``) before ``add()`` returns, so it survives a SIGKILL
of the writer and a power cut. Entries are keyed by ``(robot_id, session_id, keyframe_index)`` (a newer
write of the same key replaces the older one). The flusher upserts a batch on the server in one
transaction, *then* deletes it here; a crash between the two re-sends the batch, and the server's
idempotent upsert on the same key makes the delivery effectively exactly-once.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..placemap.records import PlaceMeta, Pose, Utm
from .records import FleetPlaceMeta

_SCHEMA = """
CREATE TABLE IF NOT EXISTS pending (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    robot_id TEXT NOT NULL,
    session_id TEXT NOT NULL,
    keyframe_index INTEGER NOT NULL,
    meta TEXT NOT NULL,
    descriptor BLOB NOT NULL,
    features BLOB,
    thumbnail BLOB,
    enqueued_ns INTEGER NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    UNIQUE (robot_id, session_id, keyframe_index) ON CONFLICT REPLACE
);
"""


@dataclass(frozen=True)
class OutboxEntry:
    seq: int
    meta: FleetPlaceMeta  # keyframe_index set, place_id = fleet id
    descriptor: np.ndarray  # float32, unit length
    features: bytes | None
    thumbnail: bytes | None
    enqueued_ns: int
    attempts: int


def _meta_json(meta: PlaceMeta) -> str:
    pose = meta.pose
    utm = meta.utm
    return json.dumps({
        "stamp_ns": meta.stamp_ns, "frame_id": meta.frame_id, "source": meta.source,
        "place_id": meta.place_id,
        "pose": [list(pose.position), list(pose.orientation), pose.frame_id] if pose else None,
        "utm": [utm.easting, utm.northing, utm.zone] if utm else None,
    })  # fmt: skip


def _meta_from(text: str, robot: str, session: str, keyframe: int) -> FleetPlaceMeta:
    data = json.loads(text)
    pose = Pose(tuple(data["pose"][0]), tuple(data["pose"][1]), data["pose"][2]) if data["pose"] else None
    utm = Utm(*data["utm"]) if data["utm"] else None
    return FleetPlaceMeta(
        stamp_ns=data["stamp_ns"], frame_id=data["frame_id"], source=data["source"], keyframe_index=keyframe,
        pose=pose, utm=utm, place_id=data["place_id"], robot_id=robot, session_id=session,
    )  # fmt: skip


class Outbox:
    """The durable write queue of one robot (one writer process per file)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._conn = sqlite3.connect(
            str(self.path), check_same_thread=False, isolation_level=None, timeout=30
        )
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=FULL")
        self._conn.executescript(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def put(
        self,
        metas: Sequence[FleetPlaceMeta],
        descriptors: np.ndarray,
        features: Sequence[bytes | None],
        thumbnails: Sequence[bytes | None],
    ) -> None:
        """Append entries in one durable transaction (metas carry robot, session, keyframe and fleet id)."""
        now = time.time_ns()
        rows = [
            (m.robot_id, m.session_id, int(m.keyframe_index), _meta_json(m),
             np.asarray(d, "<f4").tobytes(), f, t, now)
            for m, d, f, t in zip(metas, descriptors, features, thumbnails, strict=True)
        ]  # fmt: skip
        with self._lock, self._conn:
            self._conn.execute("BEGIN IMMEDIATE")
            self._conn.executemany(
                "INSERT INTO pending (robot_id, session_id, keyframe_index, meta, descriptor, features, "
                "thumbnail, enqueued_ns) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                rows,
            )

    def peek(self, limit: int) -> list[OutboxEntry]:
        """The oldest ``limit`` entries (they stay until :meth:`ack`)."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT seq, robot_id, session_id, keyframe_index, meta, descriptor, features, thumbnail, "
                "enqueued_ns, attempts FROM pending ORDER BY seq LIMIT ?",
                (int(limit),),
            ).fetchall()
        return [
            OutboxEntry(
                seq,
                _meta_from(meta, robot, session, kf),
                np.frombuffer(desc, "<f4").astype(np.float32),
                feats,
                thumb,
                enq,
                attempts,
            )  # fmt: skip
            for seq, robot, session, kf, meta, desc, feats, thumb, enq, attempts in rows
        ]

    def all(self) -> list[OutboxEntry]:
        return self.peek(1 << 62)

    def ack(self, seqs: Sequence[int]) -> None:
        """Delete delivered entries (entries replaced since they were peeked keep their newer seq)."""
        with self._lock, self._conn:
            self._conn.execute("BEGIN IMMEDIATE")
            self._conn.executemany("DELETE FROM pending WHERE seq = ?", [(int(s),) for s in seqs])

    def attempted(self, seqs: Sequence[int]) -> None:
        with self._lock, self._conn:
            self._conn.execute("BEGIN IMMEDIATE")
            self._conn.executemany(
                "UPDATE pending SET attempts = attempts + 1 WHERE seq = ?", [(int(s),) for s in seqs]
            )

    def depth(self) -> int:
        with self._lock:
            return int(self._conn.execute("SELECT count(*) FROM pending").fetchone()[0])

    def oldest_age_s(self) -> float:
        with self._lock:
            row = self._conn.execute("SELECT min(enqueued_ns) FROM pending").fetchone()
        return 0.0 if row[0] is None else max(0.0, (time.time_ns() - int(row[0])) / 1e9)

    def max_keyframe(self, robot_id: str, session_id: str) -> int | None:
        with self._lock:
            row = self._conn.execute(
                "SELECT max(keyframe_index) FROM pending WHERE robot_id = ? AND session_id = ?",
                (robot_id, session_id),
            ).fetchone()
        return None if row[0] is None else int(row[0])
