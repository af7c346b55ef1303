"""Shared PlaceStore contract, run against the local PlaceMap, LocalPlaceStore, PgPlaceStore and
FleetPlaceStore: add/search/exclusions/metas/features/persistence and fingerprint/dim refusal."""

from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np
import pytest
from fleet_support import DIM, FP, assert_topk, drop_schema, metas, new_schema, unit_vectors

from tscm_ros.fleet import (
    FleetMatch,
    FleetPlaceMeta,
    FleetStore,
    LocalPlaceStore,
    PgPlaceStore,
    PlaceStore,
    open_place_store,
)
from tscm_ros.fleet.local import _map_stores_blobs
from tscm_ros.placemap import MapDimensionError, MapFingerprintError, PlaceMap

KINDS = ("placemap", "local", "postgres", "fleet")


class Harness:
    """Opens stores of one kind; ``open(fp=..., dim=...)`` re-opens the same map (after ``persist``)."""

    def __init__(self, kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
        self.kind = kind
        self.map_path = tmp_path / "map"
        self.opened: list = []
        self.uri = self.schema = None
        if kind in ("postgres", "fleet"):
            pg = request.getfixturevalue("fleet_pg")
            self.uri = pg.uri()
            self.schema = new_schema(self.uri)
            request.addfinalizer(lambda: drop_schema(self.uri, self.schema))
        request.addfinalizer(self.close_all)

    def open(self, *, fp: str | None = FP, dim: int = DIM, local_path: Path | None = None):
        if self.kind == "placemap":
            store = (
                PlaceMap.load(self.map_path, dim=dim, model_fingerprint=fp)
                if self.map_path.exists()
                else PlaceMap.create(dim, "flat", fp)
            )
        elif self.kind == "local":
            store = LocalPlaceStore.open(
                self.map_path, dim=dim, model_fingerprint=fp, robot_id="r1", session_id="s1"
            )
        elif self.kind == "postgres":
            store = PgPlaceStore(
                self.uri, dim=dim, model_fingerprint=fp, robot_id="r1", session_id="s1", schema=self.schema
            )
        else:
            store = open_place_store(
                self.uri,
                dim=dim,
                model_fingerprint=fp,
                robot_id="r1",
                session_id="s1",
                schema=self.schema,
                local_map=local_path or self.map_path,
            )
        self.opened.append(store)
        return store

    def persist(self, store) -> None:
        """Make what was added visible to a later open() (save locally / flush the outbox)."""
        if self.kind == "placemap":
            store.save(self.map_path)
        elif self.kind in ("local", "fleet"):
            store.save()
        if self.kind == "fleet":
            assert store.flush(10.0)

    def close_all(self) -> None:
        for store in self.opened:
            with contextlib.suppress(Exception):  # already closed by the test
                store.close()


@pytest.fixture(params=KINDS)
def harness(request: pytest.FixtureRequest, tmp_path: Path) -> Harness:
    return Harness(request.param, tmp_path, request)


def features_supported(kind: str) -> bool:
    return kind != "placemap" or _map_stores_blobs()


def test_protocol_and_add_search_equal_brute_force(harness: Harness) -> None:
    store = harness.open()
    assert isinstance(store, PlaceStore) or harness.kind == "placemap" and not features_supported("placemap")
    if harness.kind != "placemap":
        assert isinstance(store, FleetStore)
    db = unit_vectors(150, seed=1)
    ids = store.add(db, metas(150))
    assert len(ids) == 150 and len(set(int(i) for i in ids)) == 150
    assert len(store) == 150 and store.next_keyframe_index == 150
    assert store.dim == DIM and store.model_fingerprint == FP
    queries = unit_vectors(8, seed=2)
    brute = queries @ db.T
    for q, row in zip(queries, brute, strict=True):
        matches = store.search(q, 5)
        assert [m.rank for m in matches] == list(range(5))
        assert_topk([m.place_id for m in matches], [m.similarity for m in matches], ids, row, 5)
    batch = store.search(queries[:3], 4)
    assert len(batch) == 3 and all(len(row) == 4 for row in batch)
    near = db[17] + 0.05 * unit_vectors(1, seed=3)[0]
    top = store.search(near, 1)[0]
    assert top.place_id == ids[17] and top.meta.place_id == ids[17]
    if harness.kind != "placemap":
        assert isinstance(top, FleetMatch) and (top.robot_id, top.session_id) == ("r1", "s1")
        assert isinstance(top.meta, FleetPlaceMeta) and top.meta.robot_id == "r1"


def test_exclusions(harness: Harness) -> None:
    store = harness.open()
    db = unit_vectors(100, seed=4)
    ids = store.add(db, metas(100))  # place i: stamp i * 0.1 s, keyframe i
    query = db[90]
    brute = db @ query

    def allowed(mask: np.ndarray, matches: list) -> None:
        allowed_ids = ids[mask]
        assert all(m.place_id in set(int(i) for i in allowed_ids) for m in matches)
        assert_topk(
            [m.place_id for m in matches], [m.similarity for m in matches], allowed_ids, brute[mask], 5
        )

    idx = np.arange(100)
    # time window: places stamped after 9.0 s - 2.0 s = 7.0 s (index > 70) are "now"
    allowed(idx <= 70, store.search(query, 5, query_stamp_ns=9_000_000_000, exclusion_window_s=2.0))
    # keyframe window: within 10 keyframes of 90
    allowed(np.abs(idx - 90) > 10, store.search(query, 5, query_keyframe_index=90, exclusion_keyframes=10))
    # explicit ids
    excluded = [int(i) for i in ids[85:95]]
    allowed((idx < 85) | (idx >= 95), store.search(query, 5, exclude_ids=excluded))
    # everything excluded -> nothing
    assert store.search(query, 5, query_stamp_ns=0, exclusion_window_s=1.0) == []


def test_metas_roundtrip(harness: Harness) -> None:
    store = harness.open()
    records = metas(5, start=40)
    ids = store.add(unit_vectors(5, seed=5), records)
    got = store.get_metas([int(ids[2]), 123456789])
    assert set(got) == {int(ids[2])}
    meta = got[int(ids[2])]
    want = records[2]
    assert meta.place_id == int(ids[2])
    assert (meta.stamp_ns, meta.keyframe_index, meta.frame_id, meta.source) == (
        want.stamp_ns,
        want.keyframe_index,
        want.frame_id,
        want.source,
    )
    assert meta.pose == want.pose and meta.utm == want.utm
    assert store.next_keyframe_index == 45


def test_features(harness: Harness) -> None:
    if not features_supported(harness.kind):
        pytest.skip("this PlaceMap has no feature storage yet")
    store = harness.open()
    blob = bytes(range(256)) * 400  # ~100 KB, like a local-feature record
    ids = store.add(
        unit_vectors(3, seed=6), metas(3), features=[blob, None, b"x"], thumbnails=[b"jpeg", None, None]
    )
    got = store.get_features([int(i) for i in ids] + [987654321])
    assert got[int(ids[0])] == blob and got[int(ids[2])] == b"x"
    assert got.get(int(ids[1])) is None and 987654321 not in got
    assert store.get_thumbnail(int(ids[0])) == b"jpeg" and store.get_thumbnail(int(ids[1])) is None
    if harness.kind != "placemap":
        assert store.get_thumbnails([int(ids[0])])[int(ids[0])] == b"jpeg"


def test_persistence_and_refusals(harness: Harness, tmp_path: Path) -> None:
    store = harness.open()
    ids = store.add(unit_vectors(10, seed=7), metas(10))
    with pytest.raises(MapDimensionError):
        store.add(unit_vectors(1, dim=DIM + 1), metas(1))
    harness.persist(store)
    store.close()
    again = harness.open()
    assert len(again) == 10 and again.next_keyframe_index == 10
    assert again.search(unit_vectors(10, seed=7)[3], 1)[0].place_id == ids[3]
    again.close()
    fresh = tmp_path / "other_map"  # fleet: a new local map, so the server does the refusing
    with pytest.raises(MapFingerprintError):
        harness.open(fp="fp-B" + "1" * 60, local_path=fresh)
    with pytest.raises(MapDimensionError):
        harness.open(dim=DIM * 2, local_path=tmp_path / "third_map")


def test_input_validation(harness: Harness) -> None:
    store = harness.open()
    with pytest.raises(ValueError):
        store.add(unit_vectors(2), metas(3))
    with pytest.raises(ValueError):
        store.add(np.zeros((1, DIM), np.float32), metas(1))
    store.add(unit_vectors(3), metas(3))
    with pytest.raises(ValueError):
        store.search(unit_vectors(1)[0], 0)


def test_loop_closure_detector_runs_on_the_store(harness: Harness) -> None:
    """The detector (what the session wraps) works unchanged on every store: a revisit is found."""
    from tscm_ros.loop_closure import LoopClosureConfig, LoopClosureDetector

    store = harness.open()
    detector = LoopClosureDetector(store, LoopClosureConfig(exclusion_window_s=1.0, similarity_threshold=0.9))
    route = unit_vectors(20, seed=9)
    results = [detector.process(v, i * 500_000_000) for i, v in enumerate(route)]  # 0.5 s apart
    assert all(r.is_keyframe and not r.candidates for r in results)
    revisit = detector.process(route[3] + 0.02 * unit_vectors(1, seed=10)[0], 20 * 500_000_000)
    assert revisit.candidates and revisit.candidates[0].match_id == results[3].place_id
    assert revisit.candidates[0].match_keyframe_index == 3 and len(store) == 21
