"""open_place_store: one call that gives the session its map, local or shared."""

from __future__ import annotations

import os
from collections.abc import Mapping

from . import schema as schema_mod
from .conninfo import is_server_target
from .local import LocalPlaceStore
from .postgres import PgPlaceStore, SearchSettings
from .protocol import FleetStore
from .robot import FleetPlaceStore


def open_place_store(
    target: str | os.PathLike,
    *,
    dim: int,
    model_fingerprint: str | None = None,
    robot_id: str = "",
    session_id: str = "",
    local_map: str | os.PathLike | None = None,
    schema: str = schema_mod.DEFAULT_SCHEMA,
    create: bool = True,
    index_spec: str = "flat",
    allow_fingerprint_mismatch: bool = False,
    autosave_period_s: float | None = None,
    exclusion_scope: str = "session",
    search: SearchSettings | None = None,
    conninfo_options: Mapping[str, str] | None = None,
    connect_timeout_s: float = 3.0,
) -> FleetStore:
    """Open the place store named by ``target``.

    * ``postgresql://...`` / ``postgres://...`` URIs and libpq conninfo strings (``service=fleet``,
      ``host=... dbname=...``; an empty ``"postgresql://"`` takes everything from ``PG*`` variables)
      select the shared PostgreSQL map in ``schema``:

      - with ``local_map`` (the robot's own map folder): a :class:`FleetPlaceStore` -- outbox, local
        fallback while the server is away, background flushing;
      - without: a :class:`PgPlaceStore` (online only; for tools and servers).

      ``conninfo_options`` adds libpq options (``sslmode``, ``sslrootcert``, ``sslcert``, ``sslkey``...);
      credentials come from ``.pgpass`` / the service file / ``PGPASSWORD``, never from logs.
    * Anything else is a local map folder: a :class:`LocalPlaceStore` (created when missing and
      ``create``; written by ``save()``).

    ``dim`` / ``model_fingerprint`` are what the describer produces: a map holding other descriptors
    raises :class:`MapDimensionError` / :class:`MapFingerprintError`. ``robot_id`` / ``session_id`` label
    the places this store adds and scope the exclusion windows (``exclusion_scope="session"``).
    """
    if isinstance(target, str) and is_server_target(target):
        options = dict(conninfo_options or {})
        if local_map is None:
            return PgPlaceStore(
                target, dim=dim, model_fingerprint=model_fingerprint, robot_id=robot_id,
                session_id=session_id, schema=schema, allow_fingerprint_mismatch=allow_fingerprint_mismatch,
                search=search, exclusion_scope=exclusion_scope, connect_timeout_s=connect_timeout_s,
                conninfo_options=options,
            )  # fmt: skip
        local = LocalPlaceStore.open(
            local_map, dim=dim, model_fingerprint=model_fingerprint, robot_id=robot_id, session_id=session_id,
            create=True, index_spec=index_spec, allow_fingerprint_mismatch=allow_fingerprint_mismatch,
            autosave_period_s=autosave_period_s, exclusion_scope=exclusion_scope,
        )  # fmt: skip
        try:
            return FleetPlaceStore(
                target, local, schema=schema, search=search, conninfo_options=options,
                connect_timeout_s=connect_timeout_s, allow_fingerprint_mismatch=allow_fingerprint_mismatch,
            )  # fmt: skip
        except BaseException:
            local.close()
            raise
    if local_map is not None:
        raise ValueError("local_map is only used with a PostgreSQL target; the target itself is a local map")
    return LocalPlaceStore.open(
        target, dim=dim, model_fingerprint=model_fingerprint, robot_id=robot_id, session_id=session_id,
        create=create, index_spec=index_spec, allow_fingerprint_mismatch=allow_fingerprint_mismatch,
        autosave_period_s=autosave_period_s, exclusion_scope=exclusion_scope,
    )  # fmt: skip
