"""PCA projection, fleet ids and time parsing (no server needed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tscm_ros.fleet import PcaProjection, fleet_place_id
from tscm_ros.fleet.common import parse_time_ns


def low_rank(n: int, dim: int = 96, rank: int = 10, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, rank)) @ np.random.default_rng(7).standard_normal((rank, dim))
    x += 0.05 * rng.standard_normal((n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.mark.parametrize("n", [60, 400])  # fewer and more samples than dimensions (SVD and eigh paths)
def test_fit_project_and_ranking(n: int) -> None:
    db = low_rank(n)
    pca = PcaProjection.fit(db, 16)
    assert pca.components.shape == (16, 96) and pca.fitted_on == n
    np.testing.assert_allclose(pca.components @ pca.components.T, np.eye(16), atol=1e-4)
    assert pca.explained_variance > 0.95
    queries = low_rank(40, seed=1)
    exact = np.argmax(queries @ db.T, axis=1)
    reduced = np.argmax(pca.project(queries) @ pca.project(db).T, axis=1)
    assert np.mean(exact == reduced) >= 0.9
    assert pca.project(db[0]).shape == (16,)


def test_serialisation(tmp_path: Path) -> None:
    pca = PcaProjection.fit(low_rank(200), 8)
    pca.save(tmp_path / "pca.json")
    again = PcaProjection.load(tmp_path / "pca.json")
    np.testing.assert_array_equal(again.components, pca.components)
    np.testing.assert_array_equal(again.mean, pca.mean)
    columns = PcaProjection.from_columns(*pca.to_columns(), 96, pca.explained_variance, pca.fitted_on)
    np.testing.assert_array_equal(columns.components, pca.components)
    with pytest.raises(ValueError, match="more than 8"):
        PcaProjection.fit(low_rank(8), 8)
    with pytest.raises(ValueError, match="expects 96-d"):
        pca.project(np.zeros(95, np.float32))


def test_fleet_ids_and_times() -> None:
    assert fleet_place_id("r1", "s1", 3) == fleet_place_id("r1", "s1", 3)
    ids = {fleet_place_id(r, s, k) for r in ("r1", "r2") for s in ("a", "b") for k in range(1000)}
    assert len(ids) == 4000 and all(0 <= i < 2**63 for i in ids)
    assert fleet_place_id("r1", "s", 12) != fleet_place_id("r1", "s1", 2)  # no ambiguity across fields
    assert parse_time_ns("1500") == 1500 and parse_time_ns(None) is None
    assert parse_time_ns("1970-01-01T00:00:02") == 2_000_000_000
    assert parse_time_ns("1970-01-01T01:00:00+01:00") == 0
