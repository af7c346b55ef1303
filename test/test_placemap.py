"""PlaceMap: exact search, filters, removal, index specs, persistence, validation and crash safety."""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
from pathlib import Path

import numpy as np
import pytest

from tscm_ros.placemap import (
    IndexSpec,
    IndexSpecError,
    MapConsistencyError,
    MapCorruptError,
    MapDimensionError,
    MapError,
    MapFingerprintError,
    MapFormatError,
    MapNotFoundError,
    PlaceMap,
    PlaceMeta,
    Pose,
    Utm,
)
from tscm_ros.placemap.layout import sha256_file
from tscm_ros.placemap.validate import CHECKSUM_FIELD, meta_checksum

DIM = 32


def unit_vectors(n: int, dim: int = DIM, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def metas(n: int, start: int = 0) -> list[PlaceMeta]:
    return [
        PlaceMeta(
            stamp_ns=(start + i) * 100_000_000,
            frame_id="cam",
            source="test.mcap:/camera/image_raw",
            pose=Pose((float(start + i), 2.0, 0.5), (0.0, 0.0, 0.6, 0.8), "map"),
            utm=Utm(500000.0 + i, 5400000.0 - i, "32U"),
        )
        for i in range(n)
    ]


@pytest.fixture(scope="module", autouse=True)
def single_faiss_thread():
    """faiss' OpenMP threads spin-wait; on a loaded 2-core box one thread is much faster."""
    import faiss

    previous = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(previous)


@pytest.fixture(scope="module")
def db() -> np.ndarray:
    return unit_vectors(400, seed=1)


@pytest.fixture()
def saved_map(tmp_path: Path, db: np.ndarray) -> Path:
    place_map = PlaceMap.create(DIM, "flat", model_fingerprint="fp-A")
    place_map.add(db[:50], metas(50))
    place_map.save(tmp_path / "map")
    place_map.close()
    return tmp_path / "map"


def version_dir(root: Path) -> Path:
    return (root / "current").resolve()


def write_json(root: Path, meta: dict) -> None:
    """Write map.json with a matching self-checksum (what a careful adversary or a buggy tool does)."""
    meta = {k: v for k, v in meta.items() if k != CHECKSUM_FIELD}
    meta[CHECKSUM_FIELD] = meta_checksum(meta)
    (version_dir(root) / "map.json").write_text(json.dumps(meta))


def rewrite_json(root: Path, **changes) -> None:
    meta = json.loads((version_dir(root) / "map.json").read_text())
    meta.update(changes)
    write_json(root, meta)


def refresh_checksum(root: Path, name: str) -> None:
    meta = json.loads((version_dir(root) / "map.json").read_text())
    target = version_dir(root) / name
    meta["files"][name] = {"sha256": sha256_file(target), "bytes": target.stat().st_size}
    write_json(root, meta)


# ---------------------------------------------------------------------------- search
def test_exact_search_equals_numpy_brute_force(db: np.ndarray) -> None:
    place_map = PlaceMap.create(DIM)
    ids = place_map.add(db, metas(len(db)))
    queries = unit_vectors(20, seed=2)
    sims, found = place_map.search_arrays(queries, 7)
    brute = queries @ db.T
    order = np.argsort(-brute, axis=1)[:, :7]
    np.testing.assert_array_equal(found, ids[order])
    np.testing.assert_allclose(sims, np.take_along_axis(brute, order, axis=1), atol=1e-5)
    matches = place_map.search(queries[0], 3)
    assert [m.rank for m in matches] == [0, 1, 2]
    assert [m.place_id for m in matches] == list(ids[order[0, :3]])
    first = matches[0].meta
    assert first.place_id == matches[0].place_id
    assert first.pose.position[0] == pytest.approx(float(order[0, 0]))
    assert first.utm.zone == "32U" and first.source == "test.mcap:/camera/image_raw"


def test_single_queries_run_on_one_faiss_thread_and_restore_the_callers(db: np.ndarray) -> None:
    """A single query scans on one OpenMP thread (faster on a busy robot CPU); the caller's setting and the
    results are unchanged."""
    import faiss

    place_map = PlaceMap.create(DIM)
    ids = place_map.add(db, metas(len(db)))
    query = unit_vectors(1, seed=5)
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(2)
    try:
        seen = []
        original = place_map._index.search

        def spy(*args, **kwargs):
            seen.append(faiss.omp_get_max_threads())
            return original(*args, **kwargs)

        place_map._index.search = spy
        _, found = place_map.search_arrays(query, 3)
        place_map.search_arrays(unit_vectors(4, seed=6), 3)
        assert seen == [1, 2]  # one query: one thread; a batch: the caller's
        assert faiss.omp_get_max_threads() == 2
        np.testing.assert_array_equal(found[0], ids[np.argsort(-(db @ query[0]))[:3]])
    finally:
        faiss.omp_set_num_threads(before)


def test_ids_are_stable_and_never_reused(db: np.ndarray) -> None:
    place_map = PlaceMap.create(DIM)
    first = place_map.add(db[:5], metas(5))
    assert list(first) == [0, 1, 2, 3, 4]
    assert place_map.remove([4, 99]) == 1
    second = place_map.add(db[5:7], metas(2, start=5))
    assert list(second) == [5, 6]
    assert sorted(place_map.place_ids) == [0, 1, 2, 3, 5, 6]


def test_time_and_keyframe_filters(db: np.ndarray) -> None:
    place_map = PlaceMap.create(DIM)
    place_map.add(db[:100], metas(100))  # place i: stamp i*0.1 s, keyframe index i
    query = db[90]
    # stamp 9.0 s, window 2 s: only places stamped <= 7.0 s (ids 0..70) may match
    sims, ids = place_map.search_arrays(query, 100, query_stamp_ns=9_000_000_000, exclusion_window_s=2.0)
    assert set(ids[0][ids[0] >= 0]) == set(range(71))
    assert np.isneginf(sims[0][ids[0] < 0]).all()
    # keyframes within 5 of 90 are excluded, nothing else
    _, ids = place_map.search_arrays(query, 100, query_keyframe_index=90, exclusion_keyframes=5)
    assert set(ids[0][ids[0] >= 0]) == set(range(100)) - set(range(85, 96))
    # excluding the query's own place returns the brute-force runner-up first
    expected = int(np.argsort(-(db[:100] @ query))[1])
    assert place_map.search(query, 1, exclude_ids=[90])[0].place_id == expected


def test_remove_then_search(db: np.ndarray) -> None:
    place_map = PlaceMap.create(DIM)
    place_map.add(db[:30], metas(30))
    assert place_map.remove(range(0, 30, 2)) == 15
    assert len(place_map) == 15
    _, ids = place_map.search_arrays(db[:30], 1)
    odd = db[1:30:2]
    expected = 1 + 2 * np.argmax(db[:30] @ odd.T, axis=1)
    np.testing.assert_array_equal(ids[:, 0], expected)
    with pytest.raises(KeyError):
        place_map.get(0)


def test_bad_input_is_rejected_without_changes(db: np.ndarray) -> None:
    place_map = PlaceMap.create(DIM)
    place_map.add(db[:3], metas(3))
    with pytest.raises(MapDimensionError):
        place_map.add(np.ones((1, DIM + 1), np.float32), metas(1))
    with pytest.raises(ValueError, match="NaN"):
        place_map.add(np.full((1, DIM), np.nan, np.float32), metas(1))
    with pytest.raises(ValueError, match="2 PlaceMeta"):
        place_map.add(db[:1], metas(2))
    assert len(place_map) == 3 and place_map.search(db[0], 1)[0].place_id == 0


# ---------------------------------------------------------------------------- specs
def test_spec_parsing_round_trip_and_errors() -> None:
    spec = IndexSpec.parse("pca256w+hnsw:M=16,efC=100,efS=64")
    assert (spec.pca_dim, spec.pca_whiten, spec.kind, spec.hnsw_m, spec.ef_construction, spec.ef_search) == (
        256, True, "hnsw", 16, 100, 64,
    )  # fmt: skip
    ivf = IndexSpec.parse("ivf:nlist=1024,nprobe=16,pq=64")
    assert (ivf.nlist, ivf.nprobe, ivf.pq_m, ivf.pq_nbits) == (1024, 16, 64, 8)
    assert ivf.train_threshold == 39 * 1024
    assert IndexSpec.parse("pca512+flat").train_threshold == 4 * 512
    assert IndexSpec.parse("flat").train_threshold == 0
    for text in (
        "flat",
        "hnsw:M=32,efC=200,efS=128",
        "pca256+hnsw:M=32",
        "ivf:nlist=64,nprobe=4,pq=8,nbits=6",
    ):
        assert IndexSpec.parse(str(IndexSpec.parse(text))) == IndexSpec.parse(text)
    for bad in ("annoy", "hnsw:nlist=4", "ivf:nlist=abc", "pcaX+flat", "pca8+pca8+flat", "ivf:nlist=0"):
        with pytest.raises(IndexSpecError):
            IndexSpec.parse(bad)
    with pytest.raises(IndexSpecError, match="divide"):
        PlaceMap.create(DIM, "ivf:pq=5")
    with pytest.raises(IndexSpecError, match="reduce"):
        PlaceMap.create(DIM, "pca64+flat")


@pytest.mark.parametrize(
    "spec, min_recall",
    [
        ("flat", 1.0),
        ("hnsw:M=16,efC=80,efS=64", 0.95),
        ("ivf:nlist=16,nprobe=16", 1.0),
        ("ivf:nlist=16,nprobe=16,pq=8,train=1000", 0.9),
        ("pca16+flat:train=600", 0.9),
        ("pca16+hnsw:M=16,train=600", 0.85),
    ],
)
def test_index_specs_build_search_and_persist(spec: str, min_recall: float, tmp_path: Path) -> None:
    """Revisit data: queries are stored vectors plus noise; recall@1 = the noisy copy finds its origin."""
    rng = np.random.default_rng(3)
    centres = unit_vectors(40, seed=4)  # correlated data so that PCA has structure to learn
    data = centres[rng.integers(0, 40, 1200)] + 0.5 * unit_vectors(1200, seed=5)
    data /= np.linalg.norm(data, axis=1, keepdims=True)
    place_map = PlaceMap.create(DIM, spec)
    threshold = place_map.spec.train_threshold
    place_map.add(data[:100], metas(100))
    assert place_map.is_trained == (threshold == 0)
    # while buffering, search is exact
    _, ids = place_map.search_arrays(data[:100], 1)
    np.testing.assert_array_equal(ids[:, 0], np.arange(100))
    place_map.add(data[100:], metas(1100, start=100))
    assert place_map.is_trained and len(place_map) == 1200
    noisy = data[::10] + 0.05 * unit_vectors(120, seed=6)
    _, ids = place_map.search_arrays(noisy, 1)
    recall = float(np.mean(ids[:, 0] == np.arange(0, 1200, 10)))
    assert recall >= min_recall, f"{spec}: recall@1 {recall}"
    assert place_map.remove([0, 10, 20]) == 3
    _, ids = place_map.search_arrays(noisy[:3], 5)
    assert not np.isin(ids, [0, 10, 20]).any()
    place_map.save(tmp_path / "m")
    loaded = PlaceMap.load(tmp_path / "m")
    assert loaded.spec == IndexSpec.parse(spec) and len(loaded) == 1197 and loaded.is_trained
    np.testing.assert_array_equal(loaded.search_arrays(noisy, 3)[1], place_map.search_arrays(noisy, 3)[1])
    assert loaded.add(data[:1], metas(1))[0] == 1200


# ---------------------------------------------------------------------------- persistence
def test_round_trip_keeps_everything(tmp_path: Path, db: np.ndarray) -> None:
    place_map = PlaceMap.create(DIM, "flat", model_fingerprint="fp-A")
    place_map.add(db[:40], metas(40))
    place_map.remove([3])
    version = place_map.save(tmp_path / "map")
    assert version.parent == tmp_path / "map" and (tmp_path / "map" / "current").is_symlink()
    meta = json.loads((version / "map.json").read_text())
    assert meta["format"] == "tscm_ros.placemap" and meta["dim"] == DIM and meta["metric"] == "ip"
    assert meta["counts"] == {"places": 39, "index_ntotal": 39, "tombstones": 0}
    assert meta["files"]["index.faiss"]["sha256"] == sha256_file(version / "index.faiss")
    loaded = PlaceMap.load(tmp_path / "map", dim=DIM, model_fingerprint="fp-A")
    assert loaded.model_fingerprint == "fp-A" and loaded.path == tmp_path / "map"
    assert list(loaded.place_ids) == list(place_map.place_ids)
    np.testing.assert_array_equal(loaded.search_arrays(db[:40], 5)[1], place_map.search_arrays(db[:40], 5)[1])
    assert loaded.get(7) == place_map.get(7)
    shutil.copytree(version, tmp_path / "copy")
    place_map.close()  # one writer per map directory (test_placemap_writer_lock.py)
    # saving again without a path writes a new version, loadable; older versions get pruned
    loaded.add(db[40:41], metas(1, start=40))
    loaded.save()
    loaded.save()
    versions = sorted(p.name for p in (tmp_path / "map").iterdir() if p.name.startswith("v"))
    assert len(versions) == 2
    assert len(PlaceMap.load(tmp_path / "map")) == 40
    # a copied single version folder loads too
    assert len(PlaceMap.load(tmp_path / "copy")) == 39


def test_save_refuses_foreign_directories(tmp_path: Path, db: np.ndarray) -> None:
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "notes.txt").write_text("keep me")
    place_map = PlaceMap.create(DIM)
    place_map.add(db[:2], metas(2))
    with pytest.raises(MapError, match="other files"):
        place_map.save(tmp_path / "docs")
    assert (tmp_path / "docs" / "notes.txt").read_text() == "keep me"
    with pytest.raises(MapError, match="needs a path"):
        place_map.save()


def test_autosave(tmp_path: Path, db: np.ndarray) -> None:
    place_map = PlaceMap.create(DIM, autosave_period_s=0.0)
    place_map.add(db[:2], metas(2))  # never saved yet: nowhere to autosave
    place_map.save(tmp_path / "m")
    place_map.add(db[2:3], metas(1, start=2))
    assert len(PlaceMap.load(tmp_path / "m")) == 3
    place_map.autosave_period_s = 3600.0
    place_map.add(db[3:4], metas(1, start=3))
    assert len(PlaceMap.load(tmp_path / "m")) == 3


# ---------------------------------------------------------------------------- validation
def test_missing_map(tmp_path: Path) -> None:
    with pytest.raises(MapNotFoundError, match="does not exist"):
        PlaceMap.load(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(MapNotFoundError, match="not a place map"):
        PlaceMap.load(tmp_path / "empty")


def test_truncated_index(saved_map: Path) -> None:
    index = version_dir(saved_map) / "index.faiss"
    index.write_bytes(index.read_bytes()[:-100])
    with pytest.raises(MapCorruptError, match=r"index\.faiss.*truncated"):
        PlaceMap.load(saved_map)
    refresh_checksum(saved_map, "index.faiss")  # past the checksum, faiss itself must refuse it
    with pytest.raises(MapCorruptError, match="faiss cannot read"):
        PlaceMap.load(saved_map)


def test_garbage_sqlite(saved_map: Path) -> None:
    database = version_dir(saved_map) / "places.sqlite"
    size = database.stat().st_size
    database.write_bytes(np.random.default_rng(0).bytes(size))
    with pytest.raises(MapCorruptError, match=r"places\.sqlite.*sha256"):
        PlaceMap.load(saved_map)
    refresh_checksum(saved_map, "places.sqlite")
    with pytest.raises(MapCorruptError, match="places.sqlite"):
        PlaceMap.load(saved_map)


def test_garbage_map_json(saved_map: Path) -> None:
    (version_dir(saved_map) / "map.json").write_bytes(b"\x00\xffnot json")
    with pytest.raises(MapCorruptError, match="map.json"):
        PlaceMap.load(saved_map)


def test_count_mismatch(saved_map: Path) -> None:
    import sqlite3

    database = version_dir(saved_map) / "places.sqlite"
    with sqlite3.connect(database) as conn:
        conn.execute("DELETE FROM places WHERE place_id < 5")
    refresh_checksum(saved_map, "places.sqlite")
    with pytest.raises(MapConsistencyError, match="50 vectors but places.sqlite 45"):
        PlaceMap.load(saved_map)


def test_dim_mismatch(saved_map: Path) -> None:
    with pytest.raises(MapDimensionError, match=f"{DIM}-d descriptors, the model produces 2048-d"):
        PlaceMap.load(saved_map, dim=2048)
    rewrite_json(saved_map, dim=64)
    with pytest.raises(MapDimensionError, match="index.faiss is 32-d"):
        PlaceMap.load(saved_map)


def test_fingerprint_mismatch(saved_map: Path) -> None:
    with pytest.raises(MapFingerprintError, match="allow_fingerprint_mismatch"):
        PlaceMap.load(saved_map, model_fingerprint="fp-B")
    loaded = PlaceMap.load(saved_map, model_fingerprint="fp-B", allow_fingerprint_mismatch=True)
    assert len(loaded) == 50 and loaded.model_fingerprint == "fp-A"


def test_unknown_format_version(saved_map: Path) -> None:
    rewrite_json(saved_map, format_version=99)
    with pytest.raises(MapFormatError, match="format_version 99"):
        PlaceMap.load(saved_map)
    rewrite_json(saved_map, format_version=1, format="something.else")
    with pytest.raises(MapFormatError, match="not a tscm_ros place map"):
        PlaceMap.load(saved_map)


# ---------------------------------------------------------------------------- crash safety
def _writer(root: Path, dim: int, batch: int, out_fd: int) -> None:
    """Forked child: add a deterministic batch, save, report; forever (until SIGKILL)."""
    try:
        place_map = PlaceMap.load(root)
    except MapError:
        place_map = PlaceMap.create(dim)
    place_map.compact_after_deltas = 4  # background compactions race with the saves and the kill
    while True:
        step = len(place_map) // batch
        x = np.random.default_rng(step).standard_normal((batch, dim)).astype(np.float32)
        place_map.add(x, [PlaceMeta(stamp_ns=step * batch + i) for i in range(batch)])
        place_map.save(root)
        os.write(out_fd, f"saved {step + 1}\n".encode())


def _expected_state(steps: int, dim: int, batch: int) -> np.ndarray:
    x = np.concatenate([np.random.default_rng(s).standard_normal((batch, dim)) for s in range(steps)])
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def test_sigkill_during_saves_leaves_old_or_new_map(tmp_path: Path) -> None:
    dim, batch = 16, 20
    root = tmp_path / "map"
    rng = np.random.default_rng(0)
    last_saved = 0
    killed_inside_save = 0
    max_deltas = 0
    for _ in range(20):
        read_fd, write_fd = os.pipe()
        pid = os.fork()  # fork, not spawn: no re-import per run (flat add/save use no OpenMP threads)
        if pid == 0:  # child
            try:
                os.close(read_fd)
                _writer(root, dim, batch, write_fd)
            finally:
                os._exit(1)
        os.close(write_fd)
        with os.fdopen(read_fd) as lines:
            first = lines.readline()  # wait for one completed save, then kill at a random later point
            assert first.startswith("saved"), "writer died before its first save"
            time.sleep(float(rng.uniform(0.0, 0.03)))
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            out = first + lines.read()
        last_reported = max(int(line.split()[1]) for line in out.splitlines() if line.startswith("saved"))
        killed_inside_save += any(p.name.startswith(".tmp-") for p in root.iterdir())  # staging dir left
        loaded = PlaceMap.load(root)
        max_deltas = max(max_deltas, loaded.delta_count)
        steps = len(loaded) // batch
        # the save in flight when killed either completed (new state) or not (old state)
        assert steps in (last_reported, last_reported + 1), (steps, last_reported)
        assert len(loaded) == steps * batch
        expected = _expected_state(steps, dim, batch)
        _, ids = loaded.search_arrays(expected, 1)
        np.testing.assert_array_equal(ids[:, 0], np.arange(steps * batch))
        assert loaded.get(steps * batch - 1).stamp_ns == steps * batch - 1
        loaded.close()
        assert steps > last_saved  # every run completed at least one save
        last_saved = steps
    assert killed_inside_save >= 5  # most kills hit a save half-way (saving dominates the writer loop)
    assert max_deltas >= 1  # saves were incremental (see test_placemap_incremental for compactions)
    # the next completed save removes what the killed saves left behind
    final = PlaceMap.load(root)
    final.save()
    final.close()  # waits for a background compaction the save may have started
    names = [p.name for p in root.iterdir() if p.name not in ("current", ".lock")]
    assert sorted(name.startswith("v") for name in names) == [True, True]


def test_search_params_can_be_tuned_and_are_saved(tmp_path: Path, db: np.ndarray) -> None:
    place_map = PlaceMap.create(DIM, "ivf:nlist=8,nprobe=1,train=300")
    place_map.add(db, metas(len(db)))
    queries = db[:100] + 0.02 * unit_vectors(100, seed=9)
    place_map.set_search_params(nprobe=8)  # all lists: exact for IVF-Flat
    _, full = place_map.search_arrays(queries, 1)
    np.testing.assert_array_equal(full[:, 0], np.arange(100))
    place_map.save(tmp_path / "m")
    loaded = PlaceMap.load(tmp_path / "m")
    assert loaded.spec.nprobe == 8
    np.testing.assert_array_equal(loaded.search_arrays(queries, 1)[1][:, 0], np.arange(100))
