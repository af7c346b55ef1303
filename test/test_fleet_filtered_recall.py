"""Filtered HNSW search keeps its recall: hnsw.ef_search grows with 1 / selectivity of the robot filter.

pgvector filters HNSW results after the graph walk. Clustered places whose queries' own cluster is filtered
out are the hard case (the answer is a near-tie among other clusters): with a fixed ef_search that gives
R@1 1.0 unfiltered, a filter keeping 25 % of the rows dropped R@1 against exact search to 0.86 and a
50 % filter to 0.925 (measured with the previous fixed-ef logic on this data). The store now walks
the graph with ef_search / selectivity (planner estimate), which brings both to >= 0.95.

Reduced mode (PCA + re-ranking on the full descriptor) also re-ranks ``rerank_candidates / sqrt(s)`` places
under a filter keeping a share ``s`` (``SearchSettings.filtered_rerank_scale``); unfiltered queries keep
``rerank_candidates``.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import psycopg
import pytest
from fleet_support import drop_schema, new_schema
from psycopg import sql

from tscm_ros.fleet import FleetPlaceMeta, PcaProjection, PgPlaceStore, SearchSettings
from tscm_ros.fleet import schema as fleet_schema
from tscm_ros.fleet.common import SearchFilter

DIM = 128
ROWS = 6000
VIEWS = 10  # views per cluster; a block of 100 rows (10 clusters) belongs to one robot
NOISE = 1.0
QUERIES = 200
FORCE_HNSW = {"options": "-c enable_seqscan=off -c enable_bitmapscan=off"}  # what a large map's planner picks


def clustered_map(uri: str, reduced_dim: int | None = None, queries: int = QUERIES) -> tuple[str, np.ndarray]:
    """(schema, queries): ROWS clustered 128-d places of robots r0..r3 (25 % each), HNSW built after.

    With ``reduced_dim`` the map has a PCA projection (fitted on the places) and the HNSW index is on the
    reduced vectors, else on the full descriptor.
    """
    name = new_schema(uri, dim=DIM, fingerprint=None, index="none", reduced_dim=reduced_dim)
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((ROWS // VIEWS, DIM))
    x = (centres[np.arange(ROWS) // VIEWS] + NOISE * rng.standard_normal((ROWS, DIM))).astype(np.float32)
    metas = [
        FleetPlaceMeta(stamp_ns=i, keyframe_index=i, robot_id=f"r{(i // 100) % 4}", session_id=f"s{i // 100}")
        for i in range(ROWS)
    ]
    if reduced_dim:
        with PgPlaceStore(uri, schema=name) as admin:
            unit = x / np.linalg.norm(x, axis=1, keepdims=True)
            admin.set_pca(PcaProjection.fit(unit, reduced_dim), backfill=False)
    with PgPlaceStore(uri, schema=name) as admin:  # (re)opened: writes the reduced vectors with the places
        admin.add(x, metas)
    with psycopg.connect(uri, autocommit=True) as conn:
        conn.execute(sql.SQL("ANALYZE {}.places").format(sql.Identifier(name)))
        fleet_schema.create_index(conn, name, "reduced" if reduced_dim else "full")  # m=16, ef_constr. 64
    picked = centres[rng.integers(0, len(centres), queries)]
    return name, (picked + NOISE * rng.standard_normal((queries, DIM))).astype(np.float32)


@pytest.fixture(scope="module")
def clustered(fleet_pg):
    """(uri, schema, queries) of :func:`clustered_map` with HNSW on the full descriptor."""
    uri = fleet_pg.uri()
    name, queries = clustered_map(uri)
    yield uri, name, queries
    drop_schema(uri, name)


@pytest.fixture(scope="module")
def clustered_reduced(fleet_pg):
    """(uri, schema, queries) of :func:`clustered_map` with PCA-64 and HNSW on the reduced vectors."""
    uri = fleet_pg.uri()
    name, queries = clustered_map(uri, reduced_dim=64, queries=400)
    yield uri, name, queries
    drop_schema(uri, name)
    drop_schema(uri, name)


def recall_at_1(store: PgPlaceStore, exact: PgPlaceStore, queries: np.ndarray, **filters) -> float:
    hits = [
        store.search(q, 1, **filters)[0].place_id == exact.search(q, 1, mode="exact", **filters)[0].place_id
        for q in queries
    ]
    return float(np.mean(hits))


def test_filtered_hnsw_recall_at_25_and_50_percent(clustered) -> None:
    uri, name, queries = clustered
    # brute_force_below=0: these filters keep 1500-3000 rows, which the default would rank exactly (btree)
    settings = SearchSettings(mode="full", ef_search=32, rerank_candidates=32, brute_force_below=0)
    with (
        PgPlaceStore(uri, schema=name, search=settings, conninfo_options=FORCE_HNSW) as store,
        PgPlaceStore(uri, schema=name) as exact,  # seq scan + sort: the ground truth
    ):
        assert recall_at_1(store, exact, queries) >= 0.98  # unfiltered: easy at ef_search 32
        quarter = recall_at_1(store, exact, queries, robots=["r1"])
        half = recall_at_1(store, exact, queries, robots=["r1", "r2"])
        quarter_excluding = recall_at_1(store, exact, queries, exclude_robots=["r0", "r2", "r3"])
        assert min(quarter, half, quarter_excluding) >= 0.95, (quarter, half, quarter_excluding)
        plan = store.plan(SearchFilter.build(robots=["r1"]), "full", 1)
        assert not plan.exact and plan.ef_search == pytest.approx(128, rel=0.15)  # 32 / ~25 %
        assert store.plan(SearchFilter.build(), "full", 1).ef_search == 32


def test_without_scaling_the_filtered_recall_drops(clustered) -> None:
    """The same queries with the scaling off (max_ef_search = ef_search): the problem this fixes."""
    uri, name, queries = clustered
    settings = SearchSettings(
        mode="full", ef_search=32, rerank_candidates=32, brute_force_below=0, max_ef_search=32
    )
    with (
        PgPlaceStore(uri, schema=name, search=settings, conninfo_options=FORCE_HNSW) as store,
        PgPlaceStore(uri, schema=name) as exact,
    ):
        assert recall_at_1(store, exact, queries, robots=["r1"]) < 0.95


def test_small_include_filters_are_ranked_exactly(clustered) -> None:
    """Defaults: a robot filter keeping 1500 rows (< brute_force_below / 8 in full mode) skips HNSW."""
    uri, name, queries = clustered
    with (
        PgPlaceStore(uri, schema=name, search=SearchSettings(mode="full")) as store,
        PgPlaceStore(uri, schema=name) as exact,
    ):
        assert store.plan(SearchFilter.build(robots=["r1"]), "full", 1).exact
        assert not store.plan(SearchFilter.build(exclude_robots=["r1"]), "full", 1).exact  # 4500 rows
        assert recall_at_1(store, exact, queries[:50], robots=["r1"]) == 1.0
        # an exclusion keeping 1500 rows: rewritten as the robots it leaves (no btree serves <> ALL)
        others = SearchFilter.build(exclude_robots=["r0", "r2", "r3"])
        plan = store.plan(others, "full", 1)
        assert plan.exact and plan.filter.robots == ("r1",)
        assert recall_at_1(store, exact, queries[:50], exclude_robots=["r0", "r2", "r3"]) == 1.0
        sessions = [f"s{v}" for v in range(60) if v != 7]  # keeps session s7: 100 rows
        plan = store.plan(SearchFilter.build(exclude_sessions=sessions), "full", 1)
        assert plan.exact and plan.filter.sessions == ("s7",)
        found = store.search(queries[0], 5, exclude_sessions=sessions)
        assert [m.place_id for m in found] == [
            m.place_id for m in exact.search(queries[0], 5, mode="exact", sessions=["s7"])
        ]


def test_filtered_reduced_queries_rerank_deeper(clustered_reduced) -> None:
    """plan(): a filter keeping a share s re-ranks ceil(rerank / sqrt(s)) places; unfiltered: rerank."""
    uri, name, _ = clustered_reduced
    settings = SearchSettings(mode="reduced", ef_search=32, rerank_candidates=32, brute_force_below=0)
    with PgPlaceStore(uri, schema=name, search=settings) as store:
        assert store.search_mode == "reduced"
        unfiltered = store.plan(SearchFilter.build(), "reduced", 1)
        assert (unfiltered.exact, unfiltered.ef_search, unfiltered.candidates) == (False, 32, 32)
        quarter = store.plan(SearchFilter.build(robots=["r1"]), "reduced", 1)
        assert quarter.selectivity == pytest.approx(0.25, rel=0.15)  # planner estimate
        assert quarter.candidates == math.ceil(32 / math.sqrt(quarter.selectivity))  # ~64
        assert quarter.ef_search == math.ceil(quarter.candidates / quarter.selectivity)  # ~256
        half = store.plan(SearchFilter.build(robots=["r1", "r2"]), "reduced", 1)
        assert 32 < half.candidates < quarter.candidates
        assert store.plan(SearchFilter.build(robots=["r1"]), "reduced", 100).candidates >= 100  # k first
        assert store.plan(SearchFilter.build(robots=["r1"]), "full", 1).candidates == 1  # full: no re-rank
    tight = SearchSettings(
        mode="reduced", ef_search=32, rerank_candidates=32, brute_force_below=0, max_ef_search=40,
        capped_exact_below=0,
    )  # fmt: skip
    with PgPlaceStore(uri, schema=name, search=tight) as store:  # max_ef_search caps both
        plan = store.plan(SearchFilter.build(robots=["r1"]), "reduced", 1)
        assert (plan.exact, plan.ef_search, plan.candidates) == (False, 40, 40)
    capped = dataclasses.replace(tight, capped_exact_below=60_000)
    with PgPlaceStore(uri, schema=name, search=capped) as store:  # a truncated walk: exact below 60k rows
        assert store.plan(SearchFilter.build(robots=["r1"]), "reduced", 1).exact
        assert not store.plan(SearchFilter.build(), "reduced", 1).exact  # unfiltered: never
    deeper = SearchSettings(mode="reduced", ef_search=32, rerank_candidates=32, brute_force_below=0)
    with PgPlaceStore(uri, schema=name, search=dataclasses.replace(deeper, filtered_ef_factor=2.0)) as store:
        plan = store.plan(SearchFilter.build(robots=["r1"]), "reduced", 1)
        assert plan.ef_search == min(1000, math.ceil(2 * plan.candidates / plan.selectivity))
    off = SearchSettings(
        mode="reduced", ef_search=32, rerank_candidates=32, brute_force_below=0, filtered_rerank_scale=False
    )
    with PgPlaceStore(uri, schema=name, search=off) as store:
        plan = store.plan(SearchFilter.build(robots=["r1"]), "reduced", 1)
        assert plan.candidates == 32 and plan.ef_search == math.ceil(32 / plan.selectivity)
    with PgPlaceStore(uri, schema=name, search=SearchSettings(mode="reduced")) as store:
        plan = store.plan(SearchFilter.build(robots=["r1"]), "reduced", 1)  # 1500 rows: exact, no scaling
        assert plan.exact and plan.candidates == 64
    with pytest.raises(ValueError, match="filtered_rerank_scale"):
        SearchSettings(filtered_rerank_scale=1)
    with pytest.raises(ValueError, match="filtered_ef_factor"):
        SearchSettings(filtered_ef_factor=0.5)
    with pytest.raises(ValueError, match="capped_exact_below"):
        SearchSettings(capped_exact_below=-1)


def test_deeper_filtered_rerank_finds_the_exact_top1(clustered_reduced) -> None:
    """HNSW on PCA-64 of 128-d clusters, a robot filter keeping 25 %, rerank 32: the deeper re-rank (64
    places) returns exact search's top-1 for queries that 32 places miss.

    Measured on this data while the scaled walk still used ef = max(ef_search, rerank) / s (before it became
    c / s, deeper): 353 / 400 hits without the scaling, 380 with it (a 50 % filter: 355 -> 363); on two
    other data seeds (300 queries) 262 -> 283 and 269 -> 291. Not tuned: rerank 32 and PCA-64 make misses
    frequent enough to count on a 6000-place map.
    """
    uri, name, queries = clustered_reduced
    filters = {"robots": ["r1"]}

    def top1(scale: bool) -> np.ndarray:
        settings = SearchSettings(
            mode="reduced", ef_search=32, rerank_candidates=32, brute_force_below=0,
            filtered_rerank_scale=scale,
        )  # fmt: skip
        with PgPlaceStore(uri, schema=name, search=settings, conninfo_options=FORCE_HNSW) as store:
            return np.array([store.search(q, 1, **filters)[0].place_id for q in queries])

    with PgPlaceStore(uri, schema=name) as exact:
        truth = np.array([exact.search(q, 1, mode="exact", **filters)[0].place_id for q in queries])
    before, after = top1(False) == truth, top1(True) == truth
    gained, lost = int(np.sum(after & ~before)), int(np.sum(before & ~after))
    assert gained - lost >= 12, (gained, lost, before.mean(), after.mean())
    assert after.mean() >= 0.93, after.mean()
