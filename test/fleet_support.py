"""Helpers shared by the fleet tests (the server fixture ``fleet_pg`` lives in conftest.py)."""

from __future__ import annotations

import uuid

import numpy as np
import psycopg
from psycopg import sql

from tscm_ros.fleet import schema as fleet_schema
from tscm_ros.placemap import PlaceMeta, Pose, Utm

DIM = 32
FP = "fp-A" + "0" * 60


def unit_vectors(n: int, dim: int = DIM, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def metas(n: int, start: int = 0, *, step_ns: int = 100_000_000) -> list[PlaceMeta]:
    return [
        PlaceMeta(
            stamp_ns=(start + i) * step_ns,
            frame_id="cam",
            source="test.mcap:/camera/image_raw",
            keyframe_index=start + i,
            pose=Pose((float(start + i), 2.0, 0.5), (0.0, 0.0, 0.6, 0.8), "map"),
            utm=Utm(500000.0 + i, 5400000.0 - i, "32U"),
        )
        for i in range(n)
    ]


def new_schema(
    uri: str,
    *,
    dim: int = DIM,
    fingerprint: str | None = FP,
    index: str = "full",
    reduced_dim: int | None = None,
    roles: bool = False,
) -> str:
    name = "t_" + uuid.uuid4().hex[:12]
    with psycopg.connect(uri, autocommit=True) as conn:
        fleet_schema.init(
            conn,
            name,
            dim=dim,
            model_fingerprint=fingerprint,
            index=index,
            reduced_dim=reduced_dim,
            create_roles=roles,
        )
    return name


def drop_schema(uri: str, name: str) -> None:
    with psycopg.connect(uri, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(name)))


def server_rows(uri: str, schema: str) -> list[tuple[str, str, int]]:
    """(robot, session, keyframe) of every row, sorted."""
    with psycopg.connect(uri, autocommit=True) as conn:
        return conn.execute(
            sql.SQL("SELECT robot_id, session_id, keyframe_index FROM {}.places ORDER BY 1, 2, 3").format(
                sql.Identifier(schema)
            )
        ).fetchall()


def assert_topk(found_ids, found_sims, db_ids, brute_row: np.ndarray, k: int, tol: float = 3e-3) -> None:
    """Found results are a correct top-k of ``brute_row`` (similarities of db_ids) up to ``tol`` (halfvec)."""
    index_of = {int(i): n for n, i in enumerate(db_ids)}
    expected = np.sort(brute_row)[::-1][:k]
    assert len(found_ids) == min(k, len(brute_row))
    for rank, (pid, sim) in enumerate(zip(found_ids, found_sims, strict=True)):
        true_sim = brute_row[index_of[int(pid)]]
        assert abs(true_sim - sim) < tol, (rank, true_sim, sim)
        assert true_sim >= expected[rank] - tol, (rank, true_sim, expected[rank])
    assert list(found_sims) == sorted(found_sims, reverse=True)
