"""SQLite metadata store of a place map (stdlib ``sqlite3``, WAL journal for the working copy)."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from .errors import MapCorruptError
from .records import PlaceMeta, Pose, Utm

SCHEMA_VERSION = 1
_COLUMNS = (
    "place_id, stamp_ns, frame_id, source, keyframe_index, px, py, pz, qx, qy, qz, qw, pose_frame, "
    "utm_easting, utm_northing, utm_zone"
)
_SCHEMA = """
CREATE TABLE IF NOT EXISTS places (
    place_id INTEGER PRIMARY KEY,
    stamp_ns INTEGER NOT NULL,
    frame_id TEXT NOT NULL DEFAULT '',
    source TEXT NOT NULL DEFAULT '',
    keyframe_index INTEGER NOT NULL,
    px REAL, py REAL, pz REAL, qx REAL, qy REAL, qz REAL, qw REAL, pose_frame TEXT,
    utm_easting REAL, utm_northing REAL, utm_zone TEXT
);
CREATE INDEX IF NOT EXISTS places_stamp ON places (stamp_ns);
CREATE TABLE IF NOT EXISTS tombstones (place_id INTEGER PRIMARY KEY);
CREATE TABLE IF NOT EXISTS info (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


def _row(meta: PlaceMeta, place_id: int, keyframe_index: int) -> tuple:
    pose, utm = meta.pose, meta.utm
    pose_values = (*pose.position, *pose.orientation, pose.frame_id) if pose else (None,) * 8
    utm_values = (utm.easting, utm.northing, utm.zone) if utm else (None,) * 3
    return (place_id, meta.stamp_ns, meta.frame_id, meta.source, keyframe_index, *pose_values, *utm_values)


def _meta(row: Sequence) -> PlaceMeta:
    pose = Pose(tuple(row[5:8]), tuple(row[8:12]), row[12] or "") if row[5] is not None else None
    utm = Utm(row[13], row[14], row[15] or "") if row[13] is not None else None
    return PlaceMeta(
        stamp_ns=row[1], frame_id=row[2], source=row[3], keyframe_index=row[4], pose=pose, utm=utm,
        place_id=row[0],
    )  # fmt: skip


class MetadataStore:
    """Places, tombstones and a key/value table in one SQLite file. Not thread-safe: the map locks."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        try:
            self.conn = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None)
            self.conn.execute("PRAGMA journal_mode=WAL")
            self.conn.execute("PRAGMA synchronous=NORMAL")
            self.conn.executescript(_SCHEMA)
            stored = self.conn.execute("SELECT value FROM info WHERE key='schema_version'").fetchone()
        except sqlite3.DatabaseError as exc:
            raise MapCorruptError(f"{self.path}: not a valid place metadata database ({exc})") from exc
        if stored is None:
            self.conn.execute("INSERT INTO info VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
        elif int(stored[0]) != SCHEMA_VERSION:
            raise MapCorruptError(f"{self.path}: metadata schema {stored[0]} != supported {SCHEMA_VERSION}")

    def close(self) -> None:
        self.conn.close()

    def insert(self, metas: Sequence[PlaceMeta], place_ids: Sequence[int], keyframes: Sequence[int]) -> None:
        rows = [_row(m, int(i), int(k)) for m, i, k in zip(metas, place_ids, keyframes, strict=True)]
        with self.conn:  # one transaction
            self.conn.execute("BEGIN")
            self.conn.executemany(f"INSERT INTO places ({_COLUMNS}) VALUES ({','.join('?' * 16)})", rows)

    def delete(self, place_ids: Iterable[int], *, tombstone: bool) -> None:
        params = [(int(i),) for i in place_ids]
        with self.conn:
            self.conn.execute("BEGIN")
            self.conn.executemany("DELETE FROM places WHERE place_id=?", params)
            if tombstone:
                self.conn.executemany("INSERT OR IGNORE INTO tombstones VALUES (?)", params)

    def get(self, place_ids: Iterable[int]) -> dict[int, PlaceMeta]:
        ids = [int(i) for i in place_ids]
        out: dict[int, PlaceMeta] = {}
        for start in range(0, len(ids), 500):  # stay below SQLite's variable limit
            chunk = ids[start : start + 500]
            query = f"SELECT {_COLUMNS} FROM places WHERE place_id IN ({','.join('?' * len(chunk))})"
            out.update((row[0], _meta(row)) for row in self.conn.execute(query, chunk))
        return out

    def count(self) -> int:
        return self.conn.execute("SELECT COUNT(*) FROM places").fetchone()[0]

    def tombstones(self) -> np.ndarray:
        rows = self.conn.execute("SELECT place_id FROM tombstones ORDER BY place_id").fetchall()
        return np.array([r[0] for r in rows], dtype=np.int64)

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(place_ids, stamps_ns, keyframe_indices) of every place, ordered by id."""
        rows = self.conn.execute("SELECT place_id, stamp_ns, keyframe_index FROM places ORDER BY place_id")
        table = np.array(rows.fetchall(), dtype=np.int64).reshape(-1, 3)
        return table[:, 0].copy(), table[:, 1].copy(), table[:, 2].copy()

    def snapshot(self, destination: Path) -> None:
        """Write a consistent, self-contained copy (rollback journal, no -wal file) to ``destination``."""
        target = sqlite3.connect(str(destination))
        try:
            self.conn.backup(target)
            target.execute("PRAGMA journal_mode=DELETE")
            target.commit()
        finally:
            target.close()
