"""PostgreSQL fleet map: migrations, multi-robot/session filters, filtered recall (iterative index scans),
PCA-reduced search with exact re-ranking, and the tscm_map_db CLI."""

from __future__ import annotations

import json

import numpy as np
import psycopg
import pytest
from fleet_support import DIM, FP, drop_schema, metas, new_schema, unit_vectors
from pgvector import HalfVector
from pgvector.psycopg import register_vector
from psycopg import sql

from tscm_ros.cli.map_db import main as map_db_main
from tscm_ros.fleet import FleetPlaceMeta, PgPlaceStore, SchemaError, SearchSettings
from tscm_ros.fleet import schema as fleet_schema
from tscm_ros.placemap import MapFormatError

FORCE_HNSW = {"options": "-c enable_seqscan=off -c enable_bitmapscan=off"}  # what a large map's planner picks


@pytest.fixture()
def uri(fleet_pg) -> str:
    return fleet_pg.uri()


@pytest.fixture()
def schema_name(uri: str):
    name = new_schema(uri)
    yield name
    drop_schema(uri, name)


def fleet_metas(n: int, robots: int, sessions_per_robot: int, start: int = 0) -> list[FleetPlaceMeta]:
    """Places spread over robots r0.. and sessions s0..; keyframes count per session."""
    per = n // (robots * sessions_per_robot)
    out = []
    for i in range(start, start + n):
        block = i // per
        out.append(
            FleetPlaceMeta(
                stamp_ns=i * 1_000_000,
                keyframe_index=i % per,
                robot_id=f"r{block % robots}",
                session_id=f"s{block}",
            )
        )
    return out


# ---------------------------------------------------------------------------- schema and migrations
def test_init_migrate_status(uri: str, monkeypatch: pytest.MonkeyPatch) -> None:
    name = "t_migrations"
    with psycopg.connect(uri, autocommit=True) as conn:
        before = fleet_schema.status(conn, name)
        assert not before.exists and [v for v, _ in before.pending] == [1]
        assert fleet_schema.init(conn, name, dim=DIM, model_fingerprint=FP) == [1]
        assert fleet_schema.init(conn, name, dim=DIM, model_fingerprint=FP) == []  # idempotent
        assert fleet_schema.migrate(conn, name) == []
        with pytest.raises(SchemaError, match="already holds a 32-d map"):
            fleet_schema.init(conn, name, dim=64)
        with pytest.raises(SchemaError, match="already holds a map of model"):
            fleet_schema.init(conn, name, dim=DIM, model_fingerprint="other")
        status = fleet_schema.status(conn, name)
        assert status.version == 1 and not status.pending and status.info["dim"] == DIM
        assert (
            fleet_schema.FULL_INDEX in status.indexes
            and "halfvec_ip_ops" in status.indexes[fleet_schema.FULL_INDEX]
        )

        # a newer tscm_ros adds migration 2: stores refuse the old schema until it is migrated
        def v2(schema, dim, reduced_dim):
            return [sql.SQL("ALTER TABLE {}.places ADD COLUMN note text").format(schema)]

        monkeypatch.setattr(
            fleet_schema, "MIGRATIONS", [*fleet_schema.MIGRATIONS, fleet_schema.Migration(2, "note", v2)]
        )
        with pytest.raises(SchemaError, match="tscm_map_db migrate"):
            PgPlaceStore(uri, schema=name)
        assert fleet_schema.migrate(conn, name) == [2]
        assert fleet_schema.status(conn, name).version == 2
        PgPlaceStore(uri, schema=name).close()
        monkeypatch.undo()
        with pytest.raises(MapFormatError, match="newer"):  # an older tscm_ros meets the migrated schema
            PgPlaceStore(uri, schema=name)
        conn.execute("DROP SCHEMA t_migrations CASCADE")
    with pytest.raises(SchemaError, match="tscm_map_db init"):
        PgPlaceStore(uri, schema="t_absent")


def test_cli_init_status_index(uri: str, capsys: pytest.CaptureFixture) -> None:
    name = "t_cli"
    try:
        assert map_db_main(["status", uri, "--schema", name]) == 3
        assert (
            map_db_main(
                [
                    "init",
                    uri,
                    "--schema",
                    name,
                    "--dim",
                    "64",
                    "--fingerprint",
                    FP,
                    "--index",
                    "none",
                    "--create-roles",
                ]
            )
            == 0
        )
        assert map_db_main(["migrate", uri, "--schema", name]) == 0
        assert map_db_main(["index", uri, "create", "full", "--schema", name]) == 0
        capsys.readouterr()
        assert map_db_main(["status", uri, "--schema", name, "--json"]) == 0
        status = json.loads(capsys.readouterr().out)
        assert status["dim"] == 64 and status["reduced_dim"] == 32 and status["version"] == 1
        assert (
            status["hnsw_indexes"] == [fleet_schema.FULL_INDEX] and status["roles"][fleet_schema.READER_ROLE]
        )
        assert map_db_main(["init", uri, "--schema", name, "--dim", "32"]) == 2  # wrong dim: refused
        assert "already holds a 64-d map" in capsys.readouterr().err
    finally:
        drop_schema(uri, name)


# ---------------------------------------------------------------------------- multi-robot filters
def test_robot_and_session_filters(uri: str, schema_name: str) -> None:
    store = PgPlaceStore(uri, schema=schema_name)
    db = unit_vectors(240, seed=11)
    ids = store.add(db, fleet_metas(240, robots=3, sessions_per_robot=2))  # 6 sessions of 40
    assert store.count() == 240 and store.count(robots=["r1"]) == 80
    assert [(r, s, n) for r, s, n, _, _ in store.sessions()] == [
        ("r0", "s0", 40),
        ("r0", "s3", 40),
        ("r1", "s1", 40),
        ("r1", "s4", 40),
        ("r2", "s2", 40),
        ("r2", "s5", 40),
    ]
    q = db[5]
    only_r1 = store.search(q, 10, robots=["r1"])
    assert len(only_r1) == 10 and {m.robot_id for m in only_r1} == {"r1"}
    assert {m.robot_id for m in store.search(q, 30, exclude_robots="r0")} == {"r1", "r2"}
    assert {m.session_id for m in store.search(q, 20, sessions=["s2", "s3"])} == {"s2", "s3"}
    found = store.search(q, 40, robots=["r0"], exclude_sessions=["s0"])
    assert {(m.robot_id, m.session_id) for m in found} == {("r0", "s3")}
    top = store.search(q, 1)[0]
    assert top.place_id == ids[5] and top.meta.robot_id == "r0" and top.meta.session_id == "s0"


def test_exclusion_windows_apply_to_own_session_only(uri: str, schema_name: str) -> None:
    """A robot excludes its own recent keyframes, not another robot's: that is an inter-robot loop closure."""
    db = unit_vectors(4, seed=12)
    now = 100_000_000_000
    other = PgPlaceStore(uri, schema=schema_name, robot_id="r2", session_id="b")
    other.add(db[:2], [PlaceMetaAt(now - 1_000_000_000, 0), PlaceMetaAt(now - 2_000_000_000, 1)])
    own = PgPlaceStore(uri, schema=schema_name, robot_id="r1", session_id="a")
    own.add(db[2:], [PlaceMetaAt(now - 1_000_000_000, 0), PlaceMetaAt(now - 2_000_000_000, 1)])
    window = dict(query_stamp_ns=now, exclusion_window_s=30.0, query_keyframe_index=2, exclusion_keyframes=5)
    assert {m.robot_id for m in own.search(db[0], 4, **window)} == {"r2"}
    everything = PgPlaceStore(uri, schema=schema_name, robot_id="r1", session_id="a", exclusion_scope="all")
    assert everything.search(db[0], 4, **window) == []


def PlaceMetaAt(stamp_ns: int, keyframe: int):  # noqa: N802 - reads like a record
    from tscm_ros.placemap import PlaceMeta

    return PlaceMeta(stamp_ns=stamp_ns, keyframe_index=keyframe)


def test_filtered_search_keeps_recall_with_iterative_scans(uri: str, schema_name: str) -> None:
    """A session filter keeping 5 % of the rows, on the HNSW plan: iterative scans return k exact results."""
    admin = PgPlaceStore(uri, schema=schema_name)
    db = unit_vectors(2000, seed=13)
    admin.add(db, fleet_metas(2000, robots=4, sessions_per_robot=5))  # 20 sessions of 100 (5 % each)
    with psycopg.connect(uri, autocommit=True, **FORCE_HNSW) as conn:
        conn.execute(sql.SQL("ANALYZE {}.places").format(sql.Identifier(schema_name)))
        register_vector(conn)
        plan = conn.execute(
            sql.SQL(
                "EXPLAIN SELECT place_id FROM {}.places WHERE session_id = ANY(%s) "
                "ORDER BY descriptor <#> %s "
                "LIMIT 10"
            ).format(sql.Identifier(schema_name)),
            (["s7"], HalfVector(db[0])),
        ).fetchall()
    assert fleet_schema.FULL_INDEX in " ".join(r[0] for r in plan)

    def run(
        iterative: str, fallback: bool, brute_force_below: int = 0, max_ef_search: int = 20
    ) -> tuple[list[int], int]:
        settings = SearchSettings(
            ef_search=20,
            rerank_candidates=20,
            iterative_scan=iterative,
            exact_fallback=fallback,
            brute_force_below=brute_force_below,
            max_ef_search=max_ef_search,  # 20: no ef scaling by selectivity
        )
        store = PgPlaceStore(uri, schema=schema_name, search=settings, conninfo_options=FORCE_HNSW)
        counts, equal = [], 0
        for q in unit_vectors(20, seed=14):
            found = store.search(q, 10, sessions=["s7"])
            exact = store.search(q, 10, sessions=["s7"], mode="exact")
            counts.append(len(found))
            equal += [m.place_id for m in found] == [m.place_id for m in exact]
        store.close()
        return counts, equal

    counts, _ = run("off", fallback=False)
    assert max(counts) < 10  # the problem: ef_search=20 candidates, 5 % of them pass the filter
    counts, equal = run("relaxed_order", fallback=False)
    assert counts == [10] * 20 and equal >= 19
    counts, equal = run("off", fallback=True)  # without iterative scans the exact fallback still answers
    assert counts == [10] * 20 and equal == 20
    counts, equal = run("off", fallback=False, brute_force_below=1000)  # default: 100 rows -> btree, exact
    assert counts == [10] * 20 and equal == 20
    counts, equal = run("off", fallback=False, max_ef_search=1000)  # ef 20 / 5 % = 400: 20 pass the filter
    assert counts == [10] * 20 and equal >= 19


# ---------------------------------------------------------------------------- PCA + re-ranking
def low_rank(n: int, dim: int, seed: int, basis_seed: int = 99) -> np.ndarray:
    rng = np.random.default_rng(seed)
    basis = np.random.default_rng(basis_seed).standard_normal((12, dim))
    x = rng.standard_normal((n, 12)) @ basis + 0.15 * rng.standard_normal((n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def test_pca_reduced_search_with_rerank(uri: str) -> None:
    name = new_schema(uri, dim=64, index="none", reduced_dim=16)
    try:
        writer = PgPlaceStore(
            uri, schema=name, robot_id="r1", session_id="s1"
        )  # opened before the PCA exists
        db = low_rank(1200, 64, seed=1)
        writer.add(db[:1000], metas(1000))
        assert map_db_main(["pca", uri, "--schema", name, "--sample", "800"]) == 0
        store = PgPlaceStore(uri, schema=name, conninfo_options=FORCE_HNSW)
        assert store.pca is not None and store.search_mode == "reduced" and store.pca.explained_variance > 0.8
        writer.add(db[1000:1100], metas(100, start=1000))  # no projection known: reduced stays NULL
        writer.reconnect()  # picks the projection up
        writer.add(db[1100:], metas(100, start=1100))
        with psycopg.connect(uri) as conn:
            nulls = conn.execute(
                sql.SQL("SELECT count(*) FROM {}.places WHERE reduced IS NULL").format(sql.Identifier(name))
            ).fetchone()[0]
        assert nulls == 100
        queries = low_rank(60, 64, seed=2)
        queries[:20] = db[1000:1100:5] + 0.01 * queries[:20]  # 20 queries whose answer has no reduced vector
        hits = sum(
            store.search(q, 1)[0].place_id == store.search(q, 1, mode="exact")[0].place_id for q in queries
        )
        assert hits >= 57  # recall@1 >= 0.95 against exact
        assert PgPlaceStore(uri, schema=name).backfill_reduced() == 100
    finally:
        drop_schema(uri, name)
