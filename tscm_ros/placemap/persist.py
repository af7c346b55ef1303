"""Reading and writing saved versions: file checksums, applying deltas, compacting a chain into a base."""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import faiss

from . import delta, layout, validate
from .errors import MapConsistencyError, MapCorruptError, one_line
from .store import SCHEMA_VERSION


def file_entries(folder: Path, names: list[str]) -> dict[str, dict]:
    """fsync each new file of ``folder`` and return its map.json ``files`` entry (sha256, bytes)."""
    out = {}
    for name in names:
        path = folder / name
        layout.fsync_path(path)
        out[name] = {"sha256": layout.sha256_file(path), "bytes": path.stat().st_size}
    return out


def all_files(meta: dict) -> list[str]:
    """Every data file of a version: the base pair, then each delta pair in order."""
    names = [layout.INDEX_FILE, layout.DB_FILE]
    for entry in meta["deltas"]:
        names.extend(layout.delta_names(entry["seq"]))
    return names


def apply_deltas(version_dir: Path, meta: dict, index: faiss.Index, conn: sqlite3.Connection) -> None:
    """Apply the deltas of ``meta`` (files already verified) to ``index`` and the database ``conn``."""
    for entry in meta["deltas"]:
        vec_name, db_name = layout.delta_names(entry["seq"])
        ids, vectors, removed = delta.read_vectors(version_dir / vec_name, meta["dim"])
        if (len(ids), len(removed)) != (entry["added"], entry["removed"]):
            raise MapConsistencyError(
                f"{version_dir / vec_name}: adds {len(ids)} and removes {len(removed)} vectors but map.json "
                f"field 'deltas' says {entry['added']} and {entry['removed']}"
            )
        try:
            if len(ids):
                index.add_with_ids(vectors, ids)
            if len(removed):
                index.remove_ids(faiss.IDSelectorBatch(removed))
        except RuntimeError as exc:
            raise MapCorruptError(f"{version_dir / vec_name}: cannot apply it ({one_line(exc)})") from None
        delta.apply_rows(conn, version_dir / db_name, version_dir / db_name)


def build_base(source: Path, meta: dict, out: Path) -> dict[str, dict]:
    """Compaction: from the verified version files in ``source``, write the equivalent base pair
    (``index.faiss``, ``places.sqlite``) into ``out``; returns their ``files`` entries."""
    for name in all_files(meta):
        validate.verify_file(source / name, meta["files"][name])
    index = validate.read_index(source / layout.INDEX_FILE)
    shutil.copyfile(source / layout.DB_FILE, out / layout.DB_FILE)
    conn = delta.connect(out / layout.DB_FILE)
    try:
        stored = conn.execute("SELECT value FROM info WHERE key='schema_version'").fetchone()
        if stored is None or stored[0] != str(SCHEMA_VERSION):
            raise MapCorruptError(f"{source / layout.DB_FILE}: base schema {stored} is not {SCHEMA_VERSION}")
        conn.execute("PRAGMA journal_mode=OFF")  # a fresh copy in a scratch folder; fsynced when complete
        conn.execute("PRAGMA synchronous=OFF")
        apply_deltas(source, meta, index, conn)
        conn.execute("PRAGMA journal_mode=DELETE")
    finally:
        conn.close()
    faiss.write_index(index, str(out / layout.INDEX_FILE))
    return file_entries(out, [layout.INDEX_FILE, layout.DB_FILE])
