"""Per-place local features and thumbnails: storage, persistence, migration of schema-1 maps, damage."""

from __future__ import annotations

import logging
import sqlite3
import threading
from pathlib import Path

import numpy as np
import pytest
from test_placemap import DIM, metas, refresh_checksum, unit_vectors, version_dir

from tscm_ros.placemap import MapCorruptError, MapFormatError, PlaceMap
from tscm_ros.placemap.store import SCHEMA_VERSION

# The metadata schema exactly as schema-1 tscm_ros wrote it (store.py before features existed).
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


def blob(i: int, size: int = 3000) -> bytes:
    """A distinctive feature blob for place i."""
    return np.random.default_rng(1000 + i).bytes(size)


def thumb(i: int) -> bytes:
    return b"\xff\xd8\xff\xe0JFIF" + bytes([i % 256]) * 200


def table_names(database: Path) -> set[str]:
    with sqlite3.connect(database) as conn:
        return {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}


def schema_version(database: Path) -> int:
    with sqlite3.connect(database) as conn:
        return int(conn.execute("SELECT value FROM info WHERE key='schema_version'").fetchone()[0])


def test_features_and_thumbnails_round_trip(tmp_path: Path) -> None:
    place_map = PlaceMap.create(DIM)
    feats = [blob(0), None, blob(2), bytearray(blob(3))]
    thumbs = [thumb(0), thumb(1), None, None]
    ids = place_map.add(unit_vectors(4), metas(4), features=feats, thumbnails=thumbs)
    got = place_map.get_features(ids)
    assert got == {0: blob(0), 2: blob(2), 3: blob(3)}  # absent: the place has no features
    assert place_map.get_features(2) == {2: blob(2)} and place_map.get_features([99]) == {}
    assert place_map.get_thumbnail(1) == thumb(1) and place_map.get_thumbnail(2) is None
    stats = place_map.feature_stats()
    assert (stats.places_with_features, stats.feature_bytes) == (3, 9000)
    assert (stats.places_with_thumbnails, stats.thumbnail_bytes) == (2, 2 * len(thumb(0)))
    assert stats.feature_bytes_per_place == 3000
    place_map.save(tmp_path / "m")
    database = version_dir(tmp_path / "m") / "places.sqlite"
    assert {"features", "thumbnails"} <= table_names(database) and schema_version(database) == SCHEMA_VERSION

    place_map.close()  # one writer per map directory
    loaded = PlaceMap.load(tmp_path / "m")
    assert loaded.get_features(ids) == got and loaded.get_thumbnail(0) == thumb(0)
    assert loaded.feature_stats() == stats
    # later: add features to a place, replace a thumbnail, delete features; all persist
    loaded.set_features(1, blob(1), thumb(11))
    loaded.set_features(3, None)
    loaded.set_features(0, blob(100))  # thumbnail=None keeps the stored thumbnail
    loaded.save()
    again = PlaceMap.load(tmp_path / "m")
    assert again.get_features(range(4)) == {0: blob(100), 1: blob(1), 2: blob(2)}
    assert again.get_thumbnail(1) == thumb(11) and again.get_thumbnail(0) == thumb(0)
    assert again.damaged_feature_rows == 0
    with pytest.raises(KeyError):
        again.set_features(99, blob(0))


def test_feature_arguments_are_checked_before_anything_is_added() -> None:
    place_map = PlaceMap.create(DIM)
    with pytest.raises(ValueError, match="2 descriptors but 1 features"):
        place_map.add(unit_vectors(2), metas(2), features=[blob(0)])
    with pytest.raises(ValueError, match="thumbnails"):
        place_map.add(unit_vectors(2), metas(2), thumbnails=[None, None, None])
    with pytest.raises(TypeError, match="one bytes"):
        place_map.add(unit_vectors(1), metas(1), features=blob(0))
    with pytest.raises(TypeError, match=r"features\[1\] must be bytes"):
        place_map.add(unit_vectors(2), metas(2), features=[blob(0), "text"])
    assert len(place_map) == 0 and place_map.feature_stats().places_with_features == 0
    # a failing metadata insert rolls the feature rows back too (one transaction)
    place_map.add(unit_vectors(1), metas(1), features=[blob(0)])
    place_map._info["next_place_id"] = 0  # force a UNIQUE violation on the next insert
    with pytest.raises(sqlite3.IntegrityError):
        place_map.add(unit_vectors(1), metas(1), features=[blob(5)])
    assert place_map.get_features([0]) == {0: blob(0)} and len(place_map) == 1


@pytest.mark.parametrize("spec", ["flat", "hnsw:M=8"])
def test_remove_removes_features(tmp_path: Path, spec: str) -> None:
    place_map = PlaceMap.create(DIM, spec)
    place_map.add(unit_vectors(5), metas(5), features=[blob(i) for i in range(5)], thumbnails=[thumb(0)] * 5)
    assert place_map.remove([1, 3]) == 2  # HNSW: tombstoned in the index, rows deleted all the same
    assert set(place_map.get_features(range(5))) == {0, 2, 4}
    assert place_map.get_thumbnail(1) is None
    assert place_map.feature_stats().places_with_features == 3
    place_map.save(tmp_path / "m")
    loaded = PlaceMap.load(tmp_path / "m")
    assert set(loaded.get_features(range(5))) == {0, 2, 4}
    assert loaded.feature_stats().places_with_thumbnails == 3


def write_schema1_map(root: Path, n: int) -> np.ndarray:
    """A map as schema-1 tscm_ros saved it: no feature tables, info.schema_version = 1."""
    vectors = unit_vectors(n, seed=7)
    place_map = PlaceMap.create(DIM, model_fingerprint="fp-old")
    place_map.add(vectors, metas(n))
    place_map.save(root)
    place_map.close()
    database = version_dir(root) / "places.sqlite"
    old = database.with_name("old.sqlite")
    with sqlite3.connect(old) as conn:
        conn.executescript(SCHEMA_V1)
        conn.execute("INSERT INTO info VALUES ('schema_version', '1')")
        conn.execute("ATTACH DATABASE ? AS new", (str(database),))
        conn.execute("INSERT INTO places SELECT * FROM new.places")
    conn.close()
    old.replace(database)
    refresh_checksum(root, "places.sqlite")
    assert "features" not in table_names(database) and schema_version(database) == 1
    return vectors


def test_schema1_map_loads_gains_features_and_saves_as_current_schema(tmp_path: Path) -> None:
    root = tmp_path / "old"
    vectors = write_schema1_map(root, 6)
    saved_db = version_dir(root) / "places.sqlite"
    loaded = PlaceMap.load(root, model_fingerprint="fp-old")
    assert len(loaded) == 6 and loaded.get(3).pose.position[0] == 3.0
    assert schema_version(saved_db) == 1  # only the working copy is migrated until the next save
    assert loaded.get_features(range(6)) == {} and loaded.feature_stats().places_with_features == 0
    np.testing.assert_array_equal(loaded.search_arrays(vectors, 1)[1][:, 0], np.arange(6))
    loaded.set_features(2, blob(2), thumb(2))
    loaded.add(unit_vectors(1, seed=8), metas(1, start=6), features=[blob(6)])
    loaded.save()
    database = version_dir(root) / "places.sqlite"
    assert schema_version(database) == SCHEMA_VERSION and {"features", "thumbnails"} <= table_names(database)
    again = PlaceMap.load(root)
    assert again.get_features(range(7)) == {2: blob(2), 6: blob(6)} and again.get_thumbnail(2) == thumb(2)


def test_newer_schema_is_refused(saved_features: Path) -> None:
    database = version_dir(saved_features) / "places.sqlite"
    with sqlite3.connect(database) as conn:
        conn.execute("UPDATE info SET value='99' WHERE key='schema_version'")
    conn.close()
    refresh_checksum(saved_features, "places.sqlite")
    with pytest.raises(MapFormatError, match="schema 99 is newer"):
        PlaceMap.load(saved_features)


@pytest.fixture()
def saved_features(tmp_path: Path) -> Path:
    place_map = PlaceMap.create(DIM)
    place_map.add(
        unit_vectors(5),
        metas(5),
        features=[blob(i) for i in range(5)],
        thumbnails=[thumb(i) for i in range(5)],
    )
    place_map.save(tmp_path / "m")
    place_map.close()
    return tmp_path / "m"


def flip_blob_byte(database: Path, table: str, place_id: int) -> None:
    """Damage one stored blob but keep its recorded CRC (as bit rot inside the row would)."""
    with sqlite3.connect(database) as conn:
        data = bytearray(
            conn.execute(f"SELECT data FROM {table} WHERE place_id=?", (place_id,)).fetchone()[0]
        )
        data[len(data) // 2] ^= 0x40
        conn.execute(f"UPDATE {table} SET data=? WHERE place_id=?", (bytes(data), place_id))
    conn.close()


def test_damaged_feature_row_gives_none_and_is_counted_once(
    saved_features: Path, caplog: pytest.LogCaptureFixture
) -> None:
    database = version_dir(saved_features) / "places.sqlite"
    flip_blob_byte(database, "features", 2)
    flip_blob_byte(database, "thumbnails", 4)
    refresh_checksum(saved_features, "places.sqlite")  # past the file checksum: only the row CRC can tell
    loaded = PlaceMap.load(saved_features)
    with caplog.at_level(logging.WARNING, logger="tscm_ros.placemap.map"):
        first = loaded.get_features(range(5))
        second = loaded.get_features([2, 3])
    assert first == {0: blob(0), 1: blob(1), 2: None, 3: blob(3), 4: blob(4)}
    assert second == {2: None, 3: blob(3)}
    assert loaded.damaged_feature_rows == 1
    assert len([r for r in caplog.records if "features of place 2" in r.getMessage()]) == 1
    assert loaded.get_thumbnail(4) is None and loaded.get_thumbnail(3) == thumb(3)
    assert loaded.damaged_thumbnail_rows == 1
    # rewriting the row repairs it
    loaded.set_features(2, blob(2))
    assert loaded.get_features([2]) == {2: blob(2)} and loaded.damaged_feature_rows == 1


def test_file_checksum_still_catches_tampering_inside_a_blob(saved_features: Path) -> None:
    database = version_dir(saved_features) / "places.sqlite"
    raw = bytearray(database.read_bytes())
    offset = raw.find(blob(3)[:64])
    assert offset > 0
    raw[offset + 10] ^= 0x01
    database.write_bytes(bytes(raw))
    with pytest.raises(MapCorruptError, match=r"places\.sqlite: sha256"):
        PlaceMap.load(saved_features)


def test_concurrent_adds_and_feature_reads() -> None:
    place_map = PlaceMap.create(DIM)
    errors: list[BaseException] = []

    def writer(offset: int) -> None:
        try:
            for i in range(20):
                place_map.add(unit_vectors(1, seed=offset + i), metas(1), features=[blob(offset + i, 100)])
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    def reader() -> None:
        try:
            for _ in range(50):
                for data in place_map.get_features(place_map.place_ids).values():
                    assert data is not None and len(data) == 100
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(k * 100,)) for k in range(3)] + [
        threading.Thread(target=reader)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert len(place_map) == 60 and place_map.feature_stats().places_with_features == 60
