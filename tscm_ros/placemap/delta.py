"""Delta files of an incremental save: what changed since the previous saved version.

A delta ``delta-NNNNNN`` is two files:

* ``delta-NNNNNN.vec`` -- three ``.npy`` arrays back to back (``allow_pickle=False``): the ids (int64, k)
  and unit vectors (float32, k x dim) added to the index, then the ids removed from it (int64). Loading
  adds, then removes.
* ``delta-NNNNNN.sqlite`` -- the final rows of every *touched* place (added, removed or whose features
  changed): table ``touched`` lists the ids; ``places``, ``features``, ``thumbnails`` and ``tombstones``
  hold their rows (none for a removed place). Applying deletes the touched ids' rows from every table,
  then inserts the delta's rows.
"""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path
from urllib.parse import quote

import numpy as np

from .errors import MapCorruptError, one_line
from .store import BLOB_TABLES, COLUMNS, SCHEMA_V1, SCHEMA_V2, SCHEMA_VERSION

_TABLE_COLUMNS = {
    "places": COLUMNS,
    **{table: "place_id, data, crc32" for table in BLOB_TABLES},
    "tombstones": "place_id",
}
_TOUCHED = "CREATE TABLE touched (place_id INTEGER PRIMARY KEY);"
_CHUNK = 500  # stay below SQLite's bound-variable limit


def write_vectors(path: Path, add_ids: np.ndarray, add_vectors: np.ndarray, removed: np.ndarray) -> None:
    with open(path, "wb") as stream:
        for array in (
            np.ascontiguousarray(add_ids, np.int64),
            np.ascontiguousarray(add_vectors, np.float32),
            np.ascontiguousarray(removed, np.int64),
        ):
            np.lib.format.write_array(stream, array, allow_pickle=False)


def read_vectors(path: Path, dim: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(added ids, added vectors, removed ids)``; :class:`MapCorruptError` when malformed."""
    try:
        with open(path, "rb") as stream:
            ids, vectors, removed = (np.lib.format.read_array(stream, allow_pickle=False) for _ in range(3))
            trailing = stream.read(1)
    except (OSError, ValueError, EOFError, TypeError) as exc:
        raise MapCorruptError(f"{path}: not a valid delta vector file ({one_line(exc)})") from None
    ok = (
        ids.dtype == np.int64
        and removed.dtype == np.int64
        and vectors.dtype == np.float32
        and ids.ndim == 1
        and removed.ndim == 1
        and vectors.shape == (len(ids), dim)
        and not trailing
        and bool(np.all(ids >= 0))
        and bool(np.all(np.isfinite(vectors)))
    )
    if not ok:
        raise MapCorruptError(
            f"{path}: malformed delta (ids {ids.dtype}{ids.shape}, vectors {vectors.dtype}{vectors.shape}, "
            f"removed {removed.dtype}{removed.shape}; expected int64 ids >= 0 and finite float32 (k, {dim}))"
        )
    return ids, vectors, removed


def read_rows(conn: sqlite3.Connection, touched: np.ndarray) -> dict[str, list[tuple]]:
    """The current rows of the ``touched`` place ids in every table of ``conn`` (the working copy): what
    a delta writes. Taken under the map's lock (cost proportional to the delta); see :func:`write_rows`."""
    ids = [int(i) for i in touched]
    rows: dict[str, list[tuple]] = {}
    for table, columns in _TABLE_COLUMNS.items():
        found: list[tuple] = []
        for start in range(0, len(ids), _CHUNK):
            chunk = ids[start : start + _CHUNK]
            marks = ",".join("?" * len(chunk))
            query = f"SELECT {columns} FROM {table} WHERE place_id IN ({marks})"
            found += conn.execute(query, chunk).fetchall()
        rows[table] = found
    return rows


def write_rows(path: Path, touched: np.ndarray, rows: dict[str, list[tuple]]) -> None:
    """Write a delta database: the ``touched`` ids and their ``rows`` (from :func:`read_rows`)."""
    # No journal and no syncs while writing: the file is new, in a staging folder that a crash discards,
    # and the caller fsyncs it once complete.
    target = sqlite3.connect(str(path), isolation_level=None)
    try:
        target.execute("PRAGMA journal_mode=OFF")
        target.execute("PRAGMA synchronous=OFF")
        target.executescript(
            "BEGIN;" + SCHEMA_V1 + SCHEMA_V2 + _TOUCHED
            + f"INSERT INTO info VALUES ('schema_version', '{SCHEMA_VERSION}'); COMMIT;"
        )  # fmt: skip
        target.execute("BEGIN")
        target.executemany("INSERT INTO touched VALUES (?)", [(int(i),) for i in touched])
        for table, columns in _TABLE_COLUMNS.items():
            marks = ",".join("?" * len(columns.split(",")))
            target.executemany(f"INSERT INTO {table} ({columns}) VALUES ({marks})", rows.get(table, []))
        target.execute("COMMIT")
    finally:
        target.close()


def read_only_uri(path: Path) -> str:
    """SQLite URI that opens ``path`` read-only and immutable (saved files are shared by hard links and
    must never be written, not even by a journal recovery). Needs a connection opened with ``uri=True``."""
    return f"file:{quote(str(Path(path).absolute()))}?mode=ro&immutable=1"


def connect(path: Path) -> sqlite3.Connection:
    """A connection to ``path`` that honours the URIs of :func:`read_only_uri` in ATTACH."""
    return sqlite3.connect(f"file:{quote(str(Path(path).absolute()))}", uri=True, isolation_level=None,
                           check_same_thread=False)  # fmt: skip


def apply_rows(conn: sqlite3.Connection, path: Path, label: str | Path) -> None:
    """Apply the delta database ``path`` to ``conn``; errors name ``label`` (the saved delta file)."""
    try:
        conn.execute("ATTACH DATABASE ? AS delta", (read_only_uri(path),))
    except sqlite3.Error as exc:
        raise MapCorruptError(f"{label}: cannot open the delta database ({one_line(exc)})") from None
    try:
        stored = conn.execute("SELECT value FROM delta.info WHERE key='schema_version'").fetchone()
        if stored is None or stored[0] != str(SCHEMA_VERSION):
            raise MapCorruptError(f"{label}: delta info.schema_version is {stored and stored[0]!r}, expected "
                                  f"{SCHEMA_VERSION}")  # fmt: skip
        with conn:
            conn.execute("BEGIN")
            for table, columns in _TABLE_COLUMNS.items():
                conn.execute(
                    f"DELETE FROM main.{table} WHERE place_id IN (SELECT place_id FROM delta.touched)"
                )
                conn.execute(f"INSERT INTO main.{table} ({columns}) SELECT {columns} FROM delta.{table}")
    except sqlite3.Error as exc:
        raise MapCorruptError(f"{label}: not a valid delta database ({one_line(exc)})") from None
    finally:
        with contextlib.suppress(sqlite3.Error):
            conn.execute("DETACH DATABASE delta")
