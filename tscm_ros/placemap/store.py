"""SQLite metadata store of a place map (stdlib ``sqlite3``, WAL journal for the working copy).

Schema history: version 1 held ``places``, ``tombstones`` and ``info``; version 2 adds ``features`` and
``thumbnails`` (one opaque blob per place with a CRC-32 of it). A version-1 database is migrated in place
when opened (the map opens a working copy, so the saved file changes only at the next save).
"""

from __future__ import annotations

import sqlite3
import zlib
from collections.abc import Iterable, Sequence
from pathlib import Path
from urllib.parse import quote

import numpy as np

from .errors import MapCorruptError, MapFormatError, one_line
from .records import FeatureStats, PlaceMeta, Pose, Utm

SCHEMA_VERSION = 2
COLUMNS = (
    "place_id, stamp_ns, frame_id, source, keyframe_index, px, py, pz, qx, qy, qz, qw, pose_frame, "
    "utm_easting, utm_northing, utm_zone"
)
SCHEMA_V1 = """
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
SCHEMA_V2 = """
CREATE TABLE IF NOT EXISTS features (
    place_id INTEGER PRIMARY KEY, data BLOB NOT NULL, crc32 INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS thumbnails (
    place_id INTEGER PRIMARY KEY, data BLOB NOT NULL, crc32 INTEGER NOT NULL
);
"""
BLOB_TABLES = ("features", "thumbnails")
_CHUNK = 500  # stay below SQLite's bound-variable limit


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


def as_blob(value: object, what: str) -> bytes:
    """``value`` as bytes (bytes, bytearray or memoryview); TypeError otherwise."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    raise TypeError(f"{what} must be bytes (or None), got {type(value).__name__}")


def _blob_row(place_id: int, data: bytes) -> tuple[int, bytes, int]:
    return place_id, data, zlib.crc32(data)


class MetadataStore:
    """Places, tombstones, per-place blobs and a key/value table in one SQLite file.

    Not thread-safe: the map locks. ``create=False`` (loading) refuses files without a ``places`` table
    instead of silently creating one; ``migrated_from`` is the schema version found when it was older.
    """

    def __init__(self, path: Path, *, create: bool = True, label: str | Path | None = None) -> None:
        self.path = Path(path)
        self.label = str(label) if label is not None else str(self.path)  # the file named in errors
        self.migrated_from: int | None = None
        try:
            self.conn = sqlite3.connect(  # uri=True: delta files are attached read-only by URI
                f"file:{quote(str(self.path.absolute()))}",
                uri=True,
                check_same_thread=False,
                isolation_level=None,
            )
        except sqlite3.Error as exc:
            raise MapCorruptError(f"{self.label}: cannot open the database ({one_line(exc)})") from exc
        try:
            self._open(create)
        except sqlite3.Error as exc:
            self.conn.close()
            raise MapCorruptError(f"{self.label}: not a valid place database ({one_line(exc)})") from exc
        except BaseException:
            self.conn.close()
            raise

    def _open(self, create: bool) -> None:
        tables = {r[0] for r in self.conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if not create and not {"places", "tombstones", "info"} <= tables:
            missing = sorted({"places", "tombstones", "info"} - tables)
            raise MapCorruptError(f"{self.label}: not a place database (no table {', '.join(missing)})")
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA synchronous=NORMAL")
        if create and not tables:
            self.conn.executescript(SCHEMA_V1 + SCHEMA_V2)
            self.conn.execute("INSERT INTO info VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
        stored = self.conn.execute("SELECT value FROM info WHERE key='schema_version'").fetchone()
        try:
            version = int(stored[0]) if stored is not None else None
        except (TypeError, ValueError):
            version = None
        if version is None:
            raise MapCorruptError(f"{self.label}: info.schema_version is missing or not an integer")
        if version > SCHEMA_VERSION:
            raise MapFormatError(
                f"{self.label}: metadata schema {version} is newer than this tscm_ros reads "
                f"({SCHEMA_VERSION})"
            )
        if version < 1:
            raise MapCorruptError(f"{self.label}: info.schema_version {version} is invalid")
        if version < SCHEMA_VERSION:
            with self.conn:
                self.conn.execute("BEGIN")
                for statement in filter(None, (s.strip() for s in SCHEMA_V2.split(";"))):
                    self.conn.execute(statement)
                version_row = (str(SCHEMA_VERSION),)
                self.conn.execute("UPDATE info SET value=? WHERE key='schema_version'", version_row)
            self.migrated_from = version
        # every table and column we read must exist (a foreign SQLite file fails here, not on first use)
        self.conn.execute(f"SELECT {COLUMNS} FROM places LIMIT 0")
        self.conn.execute("SELECT place_id FROM tombstones LIMIT 0")
        for table in BLOB_TABLES:
            self.conn.execute(f"SELECT place_id, data, crc32 FROM {table} LIMIT 0")

    def close(self) -> None:
        self.conn.close()

    # ------------------------------------------------------------------ places
    def insert(
        self,
        metas: Sequence[PlaceMeta],
        place_ids: Sequence[int],
        keyframes: Sequence[int],
        blobs: dict[str, Sequence[bytes | None]] | None = None,
    ) -> None:
        """Insert places and their blobs (``{"features": [...], "thumbnails": [...]}``) in one transaction."""
        rows = [_row(m, int(i), int(k)) for m, i, k in zip(metas, place_ids, keyframes, strict=True)]
        blob_rows = {
            table: [_blob_row(int(i), b) for i, b in zip(place_ids, values, strict=True) if b is not None]
            for table, values in (blobs or {}).items()
        }
        with self.conn:  # one transaction
            self.conn.execute("BEGIN")
            self.conn.executemany(f"INSERT INTO places ({COLUMNS}) VALUES ({','.join('?' * 16)})", rows)
            for table, table_rows in blob_rows.items():
                self.conn.executemany(f"INSERT INTO {_table(table)} VALUES (?, ?, ?)", table_rows)

    def delete(self, place_ids: Iterable[int], *, tombstone: bool) -> None:
        params = [(int(i),) for i in place_ids]
        with self.conn:
            self.conn.execute("BEGIN")
            self.conn.executemany("DELETE FROM places WHERE place_id=?", params)
            for table in BLOB_TABLES:
                self.conn.executemany(f"DELETE FROM {table} WHERE place_id=?", params)
            if tombstone:
                self.conn.executemany("INSERT OR IGNORE INTO tombstones VALUES (?)", params)

    def get(self, place_ids: Iterable[int]) -> dict[int, PlaceMeta]:
        ids = [int(i) for i in place_ids]
        out: dict[int, PlaceMeta] = {}
        for start in range(0, len(ids), _CHUNK):
            chunk = ids[start : start + _CHUNK]
            query = f"SELECT {COLUMNS} FROM places WHERE place_id IN ({','.join('?' * len(chunk))})"
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

    # ------------------------------------------------------------------ blobs
    def get_blobs(self, table: str, place_ids: Iterable[int]) -> tuple[dict[int, bytes | None], list[int]]:
        """``({place_id: data or None if its CRC fails}, damaged ids)``; places without a row are absent."""
        ids = [int(i) for i in place_ids]
        out: dict[int, bytes | None] = {}
        damaged: list[int] = []
        for start in range(0, len(ids), _CHUNK):
            chunk = ids[start : start + _CHUNK]
            marks = ",".join("?" * len(chunk))
            query = f"SELECT place_id, data, crc32 FROM {_table(table)} WHERE place_id IN ({marks})"
            for place_id, data, crc in self.conn.execute(query, chunk):
                if isinstance(data, bytes) and isinstance(crc, int) and zlib.crc32(data) == crc:
                    out[place_id] = data
                else:
                    out[place_id] = None
                    damaged.append(place_id)
        return out, damaged

    def set_blobs(self, place_id: int, values: dict[str, bytes | None]) -> None:
        """Replace (bytes) or delete (None) the blobs of one place, in one transaction."""
        with self.conn:
            self.conn.execute("BEGIN")
            for table, data in values.items():
                if data is None:
                    self.conn.execute(f"DELETE FROM {_table(table)} WHERE place_id=?", (int(place_id),))
                else:
                    row = _blob_row(int(place_id), data)
                    self.conn.execute(f"INSERT OR REPLACE INTO {_table(table)} VALUES (?, ?, ?)", row)

    def blob_stats(self) -> FeatureStats:
        query = "SELECT COUNT(*), COALESCE(SUM(length(data)), 0) FROM {}"
        counts = {table: self.conn.execute(query.format(table)).fetchone() for table in BLOB_TABLES}
        return FeatureStats(
            places_with_features=int(counts["features"][0]),
            feature_bytes=int(counts["features"][1]),
            thumbnail_bytes=int(counts["thumbnails"][1]),
            places_with_thumbnails=int(counts["thumbnails"][0]),
        )

    # ------------------------------------------------------------------ persistence
    def read_snapshot(self) -> sqlite3.Connection:
        """A second connection holding a read transaction: it sees the database as of now, whatever is
        written afterwards (WAL), until closed. Copy it with ``backup`` (e.g. from another thread)."""
        uri = f"file:{quote(str(self.path.absolute()))}"
        reader = sqlite3.connect(uri, uri=True, check_same_thread=False, isolation_level=None)
        try:
            reader.execute("BEGIN")
            reader.execute("SELECT COUNT(*) FROM places").fetchone()  # starts the read transaction
        except BaseException:
            reader.close()
            raise
        return reader

    def snapshot(self, destination: Path, source: sqlite3.Connection | None = None) -> None:
        """Write a consistent, self-contained copy (rollback journal, no -wal file) to ``destination``;
        ``source``: a :meth:`read_snapshot` connection to copy instead of the live database."""
        target = sqlite3.connect(str(destination))
        try:
            (source or self.conn).backup(target)
            target.execute("PRAGMA journal_mode=DELETE")
            target.commit()
        finally:
            target.close()


def _table(name: str) -> str:
    if name not in BLOB_TABLES:
        raise ValueError(f"unknown blob table {name!r}")
    return name
