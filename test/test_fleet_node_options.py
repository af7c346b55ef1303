"""The node's fleet-map search parameters reach the store; a read-only role in mapping mode only localises.

* ``map_search_mode``, ``map_ef_search``, ``map_rerank_candidates``, ``map_max_ef_search``: declared with
  ranges/choices (a bad value is rejected naming the parameter, by the node's validator and by
  RecognitionSession.open), and a valid value ends up in the server store's SearchSettings;
* a robot whose role is ``tscm_reader`` (read-only) with ``mode: mapping``: the session does not raise or
  add per keyframe; it searches, adds nothing, and says so in ``mapping_refused`` / ``map_diagnostics``.
"""

from __future__ import annotations

import uuid

import numpy as np
import psycopg
import pytest

pytest.importorskip("psycopg")
pytest.importorskip("pgvector")

from fleet_support import DIM, FP, drop_schema, metas, new_schema, unit_vectors  # noqa: E402
from psycopg import sql  # noqa: E402

from tscm_ros.fleet import PgPlaceStore, SearchSettings  # noqa: E402
from tscm_ros.fleet import schema as fleet_schema  # noqa: E402
from tscm_ros.recognition import SEARCH_OPTIONS, RecognitionError, RecognitionSession  # noqa: E402
from tscm_ros.ros.parameters import PARAMETERS_BY_NAME  # noqa: E402

OPTIONS = {
    "similarity_threshold": -1.0,
    "min_interval_s": 0.0,
    "min_travel_m": 0.0,
    "verify": False,
    "top_k": 3,
}


@pytest.fixture
def fleet(fleet_pg):
    uri = fleet_pg.uri()
    schema = new_schema(uri, roles=True)
    yield uri, schema
    drop_schema(uri, schema)


def open_session(uri: str, schema: str, map_path, **options) -> RecognitionSession:
    return RecognitionSession.open(
        dim=DIM, model_fingerprint=FP, map_path=str(map_path), load=False, index_spec="flat",
        options={**OPTIONS, **options}, map_uri=uri, map_schema=schema, robot_id="r1", session_id="s1",
    )  # fmt: skip


def test_parameters_are_declared_with_ranges_and_choices() -> None:
    assert set(SEARCH_OPTIONS) <= set(PARAMETERS_BY_NAME)
    defaults = SearchSettings()
    for option, field_name in SEARCH_OPTIONS.items():
        spec = PARAMETERS_BY_NAME[option]
        assert spec.read_only and spec.default == getattr(defaults, field_name), option
        assert spec.validate(spec.default) is None
    for name, bad in (("map_ef_search", 0), ("map_ef_search", 1001), ("map_rerank_candidates", 5000),
                      ("map_max_ef_search", -3), ("map_search_mode", "fast")):  # fmt: skip
        error = PARAMETERS_BY_NAME[name].validate(bad)
        assert error is not None and name in error, (name, bad, error)
    descriptor = PARAMETERS_BY_NAME["map_ef_search"].descriptor()
    assert (descriptor.integer_range[0].from_value, descriptor.integer_range[0].to_value) == (1, 1000)
    assert (
        "auto, reduced, full, exact"
        in PARAMETERS_BY_NAME["map_search_mode"].descriptor().additional_constraints
    )


def test_search_options_reach_the_store(fleet, tmp_path) -> None:
    uri, schema = fleet
    with PgPlaceStore(uri, schema=schema, robot_id="r0", session_id="s0") as admin:
        admin.add(unit_vectors(20), metas(20))
    session = open_session(
        uri, schema, tmp_path / "map", map_search_mode="full", map_ef_search=100, map_rerank_candidates=32,
        map_max_ef_search=400,
    )  # fmt: skip
    try:
        store = session.place_map
        expected = SearchSettings(mode="full", ef_search=100, rerank_candidates=32, max_ef_search=400)
        assert store.settings == expected
        assert store._reader.settings == expected  # noqa: SLF001
        reader = store._reader  # noqa: SLF001 -- the robot's searching connection: its server settings
        with reader._connection() as conn:  # noqa: SLF001
            assert conn.execute("SHOW hnsw.ef_search").fetchone()[0] == "100"
        result = session.process(unit_vectors(1, seed=5)[0], 10**12)
        assert len(result.candidates) == 3
    finally:
        session.close()


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("map_ef_search", 0),
        ("map_ef_search", 1001),
        ("map_rerank_candidates", 0),
        ("map_search_mode", "fast"),
        ("map_max_ef_search", 2000),
    ],  # fmt: skip
)
def test_bad_search_option_is_refused_naming_it(fleet, tmp_path, option, value) -> None:
    uri, schema = fleet
    with pytest.raises(RecognitionError, match=option) as excinfo:
        open_session(uri, schema, tmp_path / "map", **{option: value})
    assert "\n" not in str(excinfo.value)


@pytest.fixture
def reader_uri(fleet_pg, fleet):
    """A login role in tscm_reader (the documented read-only role of localisation-only robots)."""
    role = "robot_ro_" + uuid.uuid4().hex[:6]
    with psycopg.connect(fleet_pg.uri(), autocommit=True) as conn:
        conn.execute(
            sql.SQL("CREATE ROLE {} LOGIN IN ROLE {}").format(
                sql.Identifier(role), sql.Identifier(fleet_schema.READER_ROLE)
            )
        )
    yield fleet_pg.uri(user=role)
    with psycopg.connect(fleet_pg.uri(), autocommit=True) as conn:
        conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
        conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))


def test_read_only_role_in_mapping_mode_only_localises(fleet, reader_uri, tmp_path) -> None:
    uri, schema = fleet
    db = unit_vectors(30)
    with PgPlaceStore(uri, schema=schema, robot_id="r0", session_id="s0") as admin:
        admin.add(db, metas(30))
    session = open_session(reader_uri, schema, tmp_path / "ro", mode="mapping")
    try:
        assert "read-only for this role" in session.mapping_refused
        assert "localisation only" in session.mapping_refused and "\n" not in session.mapping_refused
        assert session.map_diagnostics()["mapping_refused"] == "true"
        rng = np.random.default_rng(1)
        for index in range(8):  # keyframes: searched against r0's places, never added, no error
            query = db[index] + 0.01 * rng.standard_normal(DIM).astype(np.float32)
            result = session.process(query, 10**12 + index * 10**9)
            assert result.is_keyframe and result.place_id is None
            assert result.candidates and result.candidates[0].match_robot_id == "r0"
        assert session.place_map.outbox_depth == 0 and len(session.place_map.local) == 0
        assert session.map_diagnostics()["last_error"] == ""
        session.configure({**OPTIONS, "mode": "localization"})  # what the WARN asks for: no longer refused
        assert session.mapping_refused == "" and session.map_diagnostics()["mapping_refused"] == "false"
        assert session.process(db[9], 10**13).place_id is None
    finally:
        session.close()
    with psycopg.connect(uri) as conn:
        assert (
            conn.execute(sql.SQL("SELECT count(*) FROM {}.places").format(sql.Identifier(schema))).fetchone()[
                0
            ]
            == 30
        )
