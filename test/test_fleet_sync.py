"""tscm_map_sync push/pull and tscm_merge_maps: local maps <-> server, filters, labels, offline use."""

from __future__ import annotations

from pathlib import Path

import pytest
from fleet_support import DIM, FP, drop_schema, metas, new_schema, server_rows, unit_vectors

from tscm_ros.cli.map_db import main as map_db_main
from tscm_ros.cli.map_sync import main as sync_main
from tscm_ros.cli.merge_maps import main as merge_main
from tscm_ros.fleet import LocalPlaceStore, PcaProjection, PgPlaceStore, open_place_store, sidecar_dir
from tscm_ros.placemap import PlaceMap


@pytest.fixture()
def uri(fleet_pg) -> str:
    return fleet_pg.uri()


@pytest.fixture()
def schema(uri: str):
    name = new_schema(uri, index="none")
    yield name
    drop_schema(uri, name)


def robot_map(path: Path, robot: str, session: str, n: int, seed: int) -> None:
    store = LocalPlaceStore.open(path, dim=DIM, model_fingerprint=FP, robot_id=robot, session_id=session)
    store.add(unit_vectors(n, seed=seed), metas(n), features=[b"feat%d" % i for i in range(n)])
    store.save()
    store.close()


def legacy_map(path: Path, n: int, seed: int, fingerprint: str = FP) -> None:
    """A map as tscm_build_map writes it: no fleet sidecar, no robot/session."""
    place_map = PlaceMap.create(DIM, "flat", fingerprint)
    place_map.add(unit_vectors(n, seed=seed), metas(n))
    place_map.save(path)
    place_map.close()


def test_push_pull_and_offline_localisation(uri: str, schema: str, tmp_path: Path, capsys) -> None:
    robot_map(tmp_path / "robot_a", "rA", "s1", 30, seed=31)
    legacy_map(tmp_path / "legacy", 20, seed=32)
    assert sync_main(["push", str(tmp_path / "robot_a"), uri, "--schema", schema]) == 0
    assert sync_main(["push", str(tmp_path / "robot_a"), uri, "--schema", schema]) == 0  # idempotent
    assert "wrote 30" in capsys.readouterr().out
    assert (
        sync_main(
            [
                "push",
                str(tmp_path / "legacy"),
                uri,
                "--schema",
                schema,
                "--label-robot",
                "rB",
                "--label-session",
                "old",
            ]
        )
        == 0
    )
    rows = server_rows(uri, schema)
    assert len(rows) == 50 and rows[0] == ("rA", "s1", 0) and rows[-1] == ("rB", "old", 19)

    pulled = tmp_path / "pulled"
    assert sync_main(["pull", uri, str(pulled), "--schema", schema, "--robot", "rA"]) == 0
    assert sync_main(["pull", uri, str(pulled), "--schema", schema, "--robot", "rA"]) == 0
    assert "skipped 30 already present" in capsys.readouterr().out
    assert (
        sync_main(
            [
                "pull",
                uri,
                str(pulled),
                "--schema",
                schema,
                "--session",
                "old",
                "--since",
                "500000000",
                "--until",
                "1970-01-01T00:00:01",
            ]
        )
        == 0
    )  # keyframes 5..10 of the legacy session
    with LocalPlaceStore.open(pulled, dim=DIM, model_fingerprint=FP) as local:
        assert len(local) == 36
        assert sorted(local.sessions()) == [("rA", "s1", 30), ("rB", "old", 6)]
        top = local.search(unit_vectors(30, seed=31)[7], 1)[0]
        assert (top.robot_id, top.session_id, top.meta.keyframe_index) == ("rA", "s1", 7)
        assert local.get_features([top.place_id])[top.place_id] == b"feat7"

    # a robot without its server localises on the pulled map (fallback), with the same fleet ids
    server_ids = {
        m.meta.keyframe_index: m.place_id
        for m in PgPlaceStore(uri, schema=schema).search(unit_vectors(30, seed=31)[7], 1, robots=["rA"])
    }
    offline = open_place_store(
        f"postgresql://rC@/postgres?host={tmp_path / 'nowhere'}",
        dim=DIM,
        model_fingerprint=FP,
        robot_id="rC",
        session_id="today",
        local_map=pulled,
    )
    try:
        assert offline.connection_state == "disconnected"
        match = offline.search(unit_vectors(30, seed=31)[7], 1)[0]
        assert (match.robot_id, match.meta.keyframe_index) == ("rA", 7) and match.place_id == server_ids[7]
        assert offline.get_features([match.place_id])[match.place_id] == b"feat7"
    finally:
        offline.close(flush_timeout_s=0)


def test_merge_local_maps_and_server_sessions(uri: str, schema: str, tmp_path: Path, capsys) -> None:
    robot_map(tmp_path / "robot_a", "rA", "s1", 12, seed=41)
    sync_main(["push", str(tmp_path / "robot_a"), uri, "--schema", schema])
    legacy_map(tmp_path / "site_x", 10, seed=42)
    legacy_map(tmp_path / "site_y", 10, seed=43)
    merged = tmp_path / "merged"
    assert (
        merge_main([str(merged), str(tmp_path / "site_x"), str(tmp_path / "site_y"), uri, "--schema", schema])
        == 0
    )
    with LocalPlaceStore.open(merged, dim=DIM, model_fingerprint=FP) as local:
        assert sorted(local.sessions()) == [("", "site_x", 10), ("", "site_y", 10), ("rA", "s1", 12)]
        top = local.search(unit_vectors(10, seed=43)[4], 1)[0]
        assert (top.session_id, top.meta.keyframe_index) == ("site_y", 4)
    assert (sidecar_dir(merged) / "places.sqlite").is_file()

    # merge into a server schema (only the sessions asked for)
    target = new_schema(uri, index="none")
    try:
        assert (
            merge_main([uri, str(merged), "--schema", target, "--session", "site_x", "--session", "s1"]) == 0
        )
        assert {(r, s) for r, s, _ in server_rows(uri, target)} == {("", "site_x"), ("rA", "s1")}
        assert len(server_rows(uri, target)) == 22
    finally:
        drop_schema(uri, target)

    legacy_map(tmp_path / "other_model", 5, seed=44, fingerprint="fp-Z" + "9" * 60)
    capsys.readouterr()
    assert merge_main([str(tmp_path / "bad"), str(tmp_path / "site_x"), str(tmp_path / "other_model")]) == 2
    assert "different models" in capsys.readouterr().err and not (tmp_path / "bad").exists()


def test_pull_carries_the_pca_projection(uri: str, tmp_path: Path) -> None:
    schema = new_schema(uri, dim=DIM, index="none", reduced_dim=8)
    try:
        store = PgPlaceStore(uri, schema=schema, robot_id="r1", session_id="s1")
        store.add(unit_vectors(100, seed=51), metas(100))
        assert map_db_main(["pca", uri, "--schema", schema, "--sample", "100", "--no-index"]) == 0
        assert sync_main(["pull", uri, str(tmp_path / "pulled"), "--schema", schema, "--no-blobs"]) == 0
        projection = PcaProjection.load(sidecar_dir(tmp_path / "pulled") / "pca.json")
        assert projection.reduced_dim == 8 and projection.dim == DIM
        assert (
            abs(projection.explained_variance - PgPlaceStore(uri, schema=schema).pca.explained_variance)
            < 1e-9
        )
    finally:
        drop_schema(uri, schema)
