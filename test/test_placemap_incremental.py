"""Incremental saves (deltas on hard-linked base files) and background compaction, crash safety included."""

from __future__ import annotations

import json
import logging
import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest
from test_placemap import DIM, metas, unit_vectors, version_dir

from tscm_ros.placemap import MapError, PlaceMap, PlaceMeta
from tscm_ros.placemap.layout import sha256_file


def meta_of(root: Path) -> dict:
    return json.loads((version_dir(root) / "map.json").read_text())


def same_state(a: PlaceMap, b: PlaceMap, queries: np.ndarray) -> None:
    assert list(a.place_ids) == list(b.place_ids)
    np.testing.assert_array_equal(a.search_arrays(queries, 5)[1], b.search_arrays(queries, 5)[1])
    assert a.get_metas(a.place_ids) == b.get_metas(b.place_ids)
    assert a.get_features(a.place_ids) == b.get_features(b.place_ids)
    assert a.feature_stats() == b.feature_stats()


@pytest.mark.parametrize(
    "spec", ["flat", "hnsw:M=8", "ivf:nlist=4,nprobe=4,train=40", "pca8+flat:train=400", "pca8+flat:train=40"]
)
def test_incremental_saves_round_trip(tmp_path: Path, spec: str) -> None:
    """Adds, removals (HNSW: tombstones), feature changes and spec tweaks saved as deltas reload exactly."""
    root = tmp_path / "m"
    data = unit_vectors(300, seed=21)
    place_map = PlaceMap.create(DIM, spec, model_fingerprint="fp")
    place_map.compact_after_deltas = None
    place_map.add(data[:100], metas(100), features=[bytes([i]) * 50 for i in range(100)])
    first = place_map.save(root)
    assert place_map.delta_count == 0
    base_inode = (first / "index.faiss").stat().st_ino
    place_map.add(data[100:150], metas(50, start=100), thumbnails=[b"t"] * 50)
    place_map.remove([3, 120])
    place_map.save()
    place_map.set_features(7, b"new features", b"thumb")
    place_map.set_features(8, None)
    place_map.save()
    place_map.save()  # nothing changed: a new version, no new delta
    place_map.add(data[150:160], metas(10, start=150))
    place_map.remove([150])
    if place_map.is_trained and place_map.spec.kind != "flat":
        place_map.set_search_params(**({"ef_search": 16} if spec.startswith("hnsw") else {"nprobe": 2}))
    version = place_map.save()
    meta = meta_of(root)
    assert meta["format_version"] == 2 and [d["added"] for d in meta["deltas"]] == [50, 0, 10]
    assert [d["removed"] for d in meta["deltas"]] == [
        0 if spec.startswith("hnsw") else 2,
        0,
        0 if spec.startswith("hnsw") else 1,
    ]
    assert (version / "index.faiss").stat().st_ino == base_inode  # the base is shared, never rewritten
    assert sorted(p.name for p in version.iterdir() if p.name.startswith("delta-")) == [
        f"delta-{s:06d}.{ext}" for s in (1, 2, 3) for ext in ("sqlite", "vec")
    ]
    before = {p.name: (sha256_file(p), p.stat().st_mtime_ns) for p in version.iterdir()}
    loaded = PlaceMap.load(root, model_fingerprint="fp")
    assert {p.name: (sha256_file(p), p.stat().st_mtime_ns) for p in version.iterdir()} == before  # read-only
    assert loaded.delta_count == 3 and loaded.spec == place_map.spec
    same_state(loaded, place_map, data[:160:7])
    assert loaded.get_features([7, 8]) == {7: b"new features"} and loaded.get_thumbnail(7) == b"thumb"
    # the loaded map continues the chain (once the first writer is closed: one writer per directory)
    expected_len = len(place_map)
    place_map.close()
    loaded.add(data[160:170], metas(10, start=160))
    loaded.save()
    again = PlaceMap.load(root)
    assert again.delta_count == 4 and len(again) == expected_len + 10
    assert again.add(data[:1], metas(1))[0] == 170


def test_full_saves_reset_the_chain(tmp_path: Path) -> None:
    data = unit_vectors(120, seed=22)
    place_map = PlaceMap.create(DIM, "pca8+flat:train=100")
    place_map.add(data[:50], metas(50))
    place_map.save(tmp_path / "m")
    place_map.add(data[50:60], metas(10))
    place_map.save()
    assert place_map.delta_count == 1
    place_map.add(data[60:110], metas(50))  # reaches train=100: the index is rebuilt
    assert place_map.is_trained
    place_map.save()
    assert place_map.delta_count == 0 and meta_of(tmp_path / "m")["index_trained"]
    place_map.add(data[110:], metas(10))
    place_map.save(full=True)
    assert place_map.delta_count == 0
    place_map.add(data[:1], metas(1))
    place_map.save(tmp_path / "other")  # another directory: full
    assert place_map.delta_count == 0 and len(PlaceMap.load(tmp_path / "other")) == 121
    place_map.add(data[1:2], metas(1))
    place_map.save()
    assert place_map.delta_count == 1 and len(PlaceMap.load(tmp_path / "other")) == 122
    assert len(PlaceMap.load(tmp_path / "m")) == 120


def test_large_pending_change_is_saved_in_full(tmp_path: Path) -> None:
    data = unit_vectors(3000, seed=23)
    place_map = PlaceMap.create(DIM)
    place_map.add(data[:1000], metas(1000))
    place_map.save(tmp_path / "m")
    place_map.add(data[1000:], metas(2000))  # more than max(1000, len/4) pending vectors
    place_map.save()
    assert place_map.delta_count == 0 and len(PlaceMap.load(tmp_path / "m")) == 3000


def test_another_writer_forces_a_full_save(tmp_path: Path) -> None:
    data = unit_vectors(30, seed=24)
    first = PlaceMap.create(DIM)
    first.add(data[:10], metas(10))
    first.save(tmp_path / "m")
    first.close()
    ours = PlaceMap.load(tmp_path / "m")  # loading takes no writer lock
    theirs = PlaceMap.load(tmp_path / "m")
    theirs.add(data[10:20], metas(10))
    theirs.save()  # 'current' moved under our feet
    theirs.close()  # while open it is the directory's writer: ours could not save (MapLockedError)
    ours.add(data[20:25], metas(5))
    ours.save()
    assert ours.delta_count == 0 and len(PlaceMap.load(tmp_path / "m")) == 15  # last writer wins, whole


def test_schema1_map_saves_in_full_first(tmp_path: Path) -> None:
    from test_placemap_features import write_schema1_map

    write_schema1_map(tmp_path / "old", 5)
    loaded = PlaceMap.load(tmp_path / "old")
    loaded.add(unit_vectors(1, seed=3), metas(1))
    loaded.save()
    assert loaded.delta_count == 0
    loaded.add(unit_vectors(1, seed=4), metas(1))
    loaded.save()
    assert loaded.delta_count == 1 and len(PlaceMap.load(tmp_path / "old")) == 7


def test_compaction_folds_deltas_off_the_hot_path(tmp_path: Path) -> None:
    root = tmp_path / "m"
    data = unit_vectors(400, seed=25)
    place_map = PlaceMap.create(DIM, "hnsw:M=8")
    place_map.compact_after_deltas = None
    place_map.add(data[:100], metas(100), features=[b"f"] * 100)
    place_map.save(root)
    for k in range(5):
        place_map.add(data[100 + 20 * k : 120 + 20 * k], metas(20))
        place_map.remove([k])
        place_map.save()
    assert place_map.delta_count == 5
    assert place_map.compact(wait=True)
    meta = meta_of(root)
    assert meta["deltas"] == [] and meta["base_seq"] == 5 and place_map.delta_count == 0
    assert not place_map.compact()  # nothing left to fold
    compacted = PlaceMap.load(root)
    same_state(compacted, place_map, data[:200:9])
    # a compaction racing with more saves keeps the deltas written meanwhile
    place_map.add(data[200:220], metas(20))
    place_map.save()
    assert place_map.compact(wait=False)
    for k in range(3):
        place_map.add(data[220 + 10 * k : 230 + 10 * k], metas(10))
        place_map.save()
    place_map.close()  # waits for the compaction
    loaded = PlaceMap.load(root)
    assert len(loaded) == 100 + 100 - 5 + 20 + 30
    assert [name for name in os.listdir(root) if name.startswith(".tmp")] == []
    np.testing.assert_array_equal(loaded.search_arrays(data[225], 1)[1][0], [225])


def test_automatic_compaction(tmp_path: Path) -> None:
    place_map = PlaceMap.create(DIM)
    place_map.compact_after_deltas = 3
    place_map.add(unit_vectors(50, seed=26), metas(50))
    place_map.save(tmp_path / "m")
    for k in range(6):
        place_map.add(unit_vectors(2, seed=30 + k), metas(2))
        place_map.save()
        if place_map._compactor is not None:
            place_map._compactor.join()
    assert meta_of(tmp_path / "m")["base_seq"] >= 3
    assert len(PlaceMap.load(tmp_path / "m")) == 62


def test_compaction_of_a_damaged_base_falls_back_to_a_full_save(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = tmp_path / "m"
    place_map = PlaceMap.create(DIM)
    place_map.compact_after_deltas = None
    place_map.add(unit_vectors(40, seed=27), metas(40))
    place_map.save(root)
    place_map.add(unit_vectors(5, seed=28), metas(5))
    place_map.save()
    base = version_dir(root) / "places.sqlite"  # hard-linked into every version: damage them all
    raw = bytearray(base.read_bytes())
    raw[-10] ^= 0xFF
    base.write_bytes(bytes(raw))
    with pytest.raises(MapError, match="sha256"):
        PlaceMap.load(root)
    with caplog.at_level(logging.WARNING, logger="tscm_ros.placemap.map"):
        assert place_map.compact(wait=True)
    assert any("compaction" in r.getMessage() and "full save" in r.getMessage() for r in caplog.records)
    place_map.save()  # rewritten from memory
    assert place_map.delta_count == 0 and len(PlaceMap.load(root)) == 45


# ---------------------------------------------------------------------------- crash safety
def _writer(root: Path, dim: int, batch: int, out_fd: int) -> None:
    """Forked child: add a batch, save (incremental); every third step compact synchronously; forever."""
    try:
        place_map = PlaceMap.load(root)
    except MapError:
        place_map = PlaceMap.create(dim)
    place_map.compact_after_deltas = None
    while True:
        step = len(place_map) // batch
        x = np.random.default_rng(step).standard_normal((batch, dim)).astype(np.float32)
        place_map.add(
            x, [PlaceMeta(stamp_ns=step * batch + i) for i in range(batch)], features=[b"x" * 64] * batch
        )
        place_map.save(root)
        os.write(out_fd, f"saved {step + 1}\n".encode())
        if step % 3 == 2 and place_map.compact(wait=True):
            os.write(out_fd, f"compacted {step + 1}\n".encode())


def test_sigkill_during_incremental_saves_and_compactions(tmp_path: Path) -> None:
    dim, batch = 16, 10
    root = tmp_path / "map"
    rng = np.random.default_rng(1)
    compactions_seen = 0
    for run in range(12):
        read_fd, write_fd = os.pipe()
        pid = os.fork()
        if pid == 0:  # child
            try:
                os.close(read_fd)
                _writer(root, dim, batch, write_fd)
            finally:
                os._exit(1)
        os.close(write_fd)
        with os.fdopen(read_fd) as lines:
            wanted = "compacted" if run % 2 else "saved"  # odd runs: kill only after a compaction
            seen = [lines.readline()]
            while not seen[-1].startswith(wanted):
                assert seen[-1], "writer died"
                seen.append(lines.readline())
            time.sleep(float(rng.uniform(0.0, 0.05)))
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            out = "".join(seen) + lines.read()
        reports = [line.split() for line in out.splitlines()]
        last_saved = max(int(n) for word, n in reports if word == "saved")
        loaded = PlaceMap.load(root)
        steps = len(loaded) // batch
        assert steps in (last_saved, last_saved + 1) and len(loaded) == steps * batch
        x = np.concatenate([np.random.default_rng(s).standard_normal((batch, dim)) for s in range(steps)])
        _, ids = loaded.search_arrays(x.astype(np.float32), 1)
        np.testing.assert_array_equal(ids[:, 0], np.arange(steps * batch))
        assert len(loaded.get_features(loaded.place_ids)) == steps * batch
        if any(word == "compacted" for word, _ in reports):
            compactions_seen += 1
            assert meta_of(root)["base_seq"] > 0
        loaded.close()
    assert compactions_seen >= 6
