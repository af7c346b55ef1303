"""Fleet map schema on PostgreSQL + pgvector: versioned migrations, map info, HNSW indexes and roles.

One fleet map lives in one PostgreSQL schema (default ``tscm``); several maps (e.g. one per model)
can share a database under different schema names. Tables:

* ``schema_migrations`` -- applied migration versions;
* ``map_info`` -- one row: descriptor ``dim``, ``reduced_dim``, ``model_fingerprint``, PCA projection;
* ``places`` -- one row per keyframe, unique per ``(robot_id, session_id, keyframe_index)``; the full
  descriptor as ``halfvec(dim)``, the PCA-reduced one as ``vector(reduced_dim)`` (NULL until a
  projection is fitted), optional ``features`` / ``thumbnail`` blobs.

Every statement is composed with :mod:`psycopg.sql` (identifiers quoted, values bound or literal).
Migrations run in one transaction under an advisory lock, so concurrent ``init``/``migrate`` calls are safe.
"""

from __future__ import annotations

import contextlib
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field

import psycopg
from psycopg import sql

from .errors import SchemaError

DEFAULT_SCHEMA = "tscm"
DEFAULT_REDUCED_DIM = 256
READER_ROLE = "tscm_reader"
WRITER_ROLE = "tscm_writer"
FULL_INDEX = "places_descriptor_hnsw"
REDUCED_INDEX = "places_reduced_hnsw"
MAX_HALFVEC_INDEX_DIM = 4000  # pgvector: HNSW indexes halfvec up to 4000 dimensions
MAX_VECTOR_INDEX_DIM = 2000  # ... and vector up to 2000


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    build: Callable[[sql.Identifier, int, int], list[sql.Composable]]  # (schema, dim, reduced_dim)


def _v1(schema: sql.Identifier, dim: int, reduced_dim: int) -> list[sql.Composable]:
    s, d, r = schema, sql.Literal(int(dim)), sql.Literal(int(reduced_dim))
    return [
        sql.SQL("""
CREATE TABLE {s}.map_info (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    dim integer NOT NULL CHECK (dim > 0),
    reduced_dim integer NOT NULL CHECK (reduced_dim > 0),
    model_fingerprint text,
    pca_components bytea,
    pca_mean bytea,
    pca_explained_variance double precision,
    pca_fitted_on bigint,
    pca_updated_at timestamptz,
    created_at timestamptz NOT NULL DEFAULT now()
)""").format(s=s),
        sql.SQL("""
CREATE TABLE {s}.places (
    place_id bigint PRIMARY KEY,
    robot_id text NOT NULL,
    session_id text NOT NULL,
    keyframe_index bigint NOT NULL,
    stamp_ns bigint NOT NULL,
    frame_id text NOT NULL DEFAULT '',
    source text NOT NULL DEFAULT '',
    px double precision, py double precision, pz double precision,
    qx double precision, qy double precision, qz double precision, qw double precision,
    pose_frame text,
    utm_easting double precision, utm_northing double precision, utm_zone text,
    model_fingerprint text,
    descriptor halfvec({d}) NOT NULL,
    reduced vector({r}),
    features bytea,
    thumbnail bytea,
    inserted_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT places_keyframe_key UNIQUE (robot_id, session_id, keyframe_index)
)""").format(s=s, d=d, r=r),
        # blobs are already compressed (features, JPEG thumbnails): store them out of line, uncompressed
        sql.SQL("ALTER TABLE {s}.places ALTER COLUMN features SET STORAGE EXTERNAL").format(s=s),
        sql.SQL("ALTER TABLE {s}.places ALTER COLUMN thumbnail SET STORAGE EXTERNAL").format(s=s),
        sql.SQL("CREATE INDEX places_stamp_idx ON {s}.places (stamp_ns)").format(s=s),
        sql.SQL("CREATE INDEX places_session_idx ON {s}.places (session_id)").format(s=s),
        # rows written before a PCA projection exists: searched exactly next to the reduced HNSW index
        sql.SQL("CREATE INDEX places_unreduced_idx ON {s}.places (place_id) WHERE reduced IS NULL").format(
            s=s
        ),
    ]


MIGRATIONS: list[Migration] = [Migration(1, "places, map_info, stamp/session/unreduced indexes", _v1)]


def latest_version() -> int:
    return max(m.version for m in MIGRATIONS)


@dataclass
class SchemaStatus:
    """What ``tscm_map_db status`` reports."""

    schema: str
    exists: bool
    applied: list[tuple[int, str, str]] = field(default_factory=list)  # (version, name, applied_at)
    pending: list[tuple[int, str]] = field(default_factory=list)
    info: dict | None = None
    places: int = 0
    indexes: dict[str, str] = field(default_factory=dict)  # name -> definition
    sessions: list[tuple[str, str, int, int, int]] = field(default_factory=list)  # robot, session, n, t0, t1
    roles: dict[str, bool] = field(default_factory=dict)

    @property
    def version(self) -> int:
        return max((v for v, _, _ in self.applied), default=0)


def _lock(conn: psycopg.Connection, schema: str) -> None:
    key = zlib.crc32(f"tscm_ros.fleet:{schema}".encode()) - (1 << 31)
    conn.execute("SELECT pg_advisory_xact_lock(%s)", (key,))


def _table_exists(conn: psycopg.Connection, schema: str, table: str) -> bool:
    row = conn.execute(
        "SELECT 1 FROM information_schema.tables WHERE table_schema = %s AND table_name = %s", (schema, table)
    ).fetchone()
    return row is not None


def _applied(conn: psycopg.Connection, schema: str) -> list[tuple[int, str, str]]:
    if not _table_exists(conn, schema, "schema_migrations"):
        return []
    rows = conn.execute(
        sql.SQL("SELECT version, name, applied_at::text FROM {}.schema_migrations ORDER BY version").format(
            sql.Identifier(schema)
        )
    ).fetchall()
    return [(int(v), n, a) for v, n, a in rows]


def read_info(conn: psycopg.Connection, schema: str) -> dict | None:
    """The map_info row as a dict, or None when the schema holds no fleet map."""
    if not _table_exists(conn, schema, "map_info"):
        return None
    cur = conn.execute(sql.SQL("SELECT * FROM {}.map_info").format(sql.Identifier(schema)))
    row = cur.fetchone()
    if row is None:
        return None
    return {d.name: v for d, v in zip(cur.description, row, strict=True)}


def status(conn: psycopg.Connection, schema: str = DEFAULT_SCHEMA, *, sessions: bool = True) -> SchemaStatus:
    """Migration state, map info, place count, HNSW indexes and per-session counts of ``schema``."""
    exists = conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", (schema,)).fetchone() is not None
    result = SchemaStatus(schema=schema, exists=exists)
    result.roles = {
        role: conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone() is not None
        for role in (READER_ROLE, WRITER_ROLE)
    }
    if not exists:
        result.pending = [(m.version, m.name) for m in MIGRATIONS]
        return result
    result.applied = _applied(conn, schema)
    done = {v for v, _, _ in result.applied}
    result.pending = [(m.version, m.name) for m in MIGRATIONS if m.version not in done]
    result.info = read_info(conn, schema)
    if _table_exists(conn, schema, "places"):
        ident = sql.Identifier(schema)
        result.places = int(
            conn.execute(sql.SQL("SELECT count(*) FROM {}.places").format(ident)).fetchone()[0]
        )
        result.indexes = dict(
            conn.execute(
                "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = %s AND tablename = 'places'",
                (schema,),
            ).fetchall()
        )
        if sessions:
            rows = conn.execute(
                sql.SQL(
                    "SELECT robot_id, session_id, count(*), min(stamp_ns), max(stamp_ns) FROM {}.places "
                    "GROUP BY robot_id, session_id ORDER BY robot_id, session_id"
                ).format(ident)
            ).fetchall()
            result.sessions = [(r, s, int(n), int(a), int(b)) for r, s, n, a, b in rows]
    return result


def _apply_pending(conn: psycopg.Connection, schema: str, dim: int, reduced_dim: int) -> list[int]:
    ident = sql.Identifier(schema)
    conn.execute(
        sql.SQL(
            "CREATE TABLE IF NOT EXISTS {}.schema_migrations (version integer PRIMARY KEY, "
            "name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"
        ).format(ident)
    )
    done = {v for v, _, _ in _applied(conn, schema)}
    applied = []
    for migration in sorted(MIGRATIONS, key=lambda m: m.version):
        if migration.version in done:
            continue
        for statement in migration.build(ident, dim, reduced_dim):
            conn.execute(statement)
        conn.execute(
            sql.SQL("INSERT INTO {}.schema_migrations (version, name) VALUES (%s, %s)").format(ident),
            (migration.version, migration.name),
        )
        applied.append(migration.version)
    return applied


def init(
    conn: psycopg.Connection,
    schema: str = DEFAULT_SCHEMA,
    *,
    dim: int,
    model_fingerprint: str | None = None,
    reduced_dim: int | None = None,
    index: str = "full",
    hnsw_m: int = 16,
    ef_construction: int = 64,
    create_roles: bool = False,
) -> list[int]:
    """Create (or complete) the fleet map in ``schema``; returns the migration versions applied.

    ``index``: which HNSW index to build now -- ``full`` (``halfvec_ip_ops`` on the descriptor; needs
    dim <= 4000), ``reduced`` (``vector_ip_ops`` on the PCA-reduced vector), ``both`` or ``none``.
    An existing map with another dim or fingerprint raises :class:`SchemaError`.
    """
    dim = int(dim)
    reduced_dim = int(reduced_dim) if reduced_dim else default_reduced_dim(dim)
    if dim < 1 or not 1 <= reduced_dim <= MAX_VECTOR_INDEX_DIM:
        raise ValueError(f"bad dimensions: dim={dim}, reduced_dim={reduced_dim} (1..{MAX_VECTOR_INDEX_DIM})")
    if index not in ("full", "reduced", "both", "none"):
        raise ValueError(f"index must be full, reduced, both or none, got {index!r}")
    if index in ("full", "both") and dim > MAX_HALFVEC_INDEX_DIM:
        raise ValueError(f"pgvector indexes halfvec up to {MAX_HALFVEC_INDEX_DIM} dims; use --index reduced")
    ident = sql.Identifier(schema)
    with conn.transaction():
        _lock(conn, schema)
        if conn.execute("SELECT 1 FROM pg_extension WHERE extname = 'vector'").fetchone() is None:
            try:
                conn.execute("CREATE EXTENSION vector")
            except psycopg.errors.InsufficientPrivilege as exc:
                raise SchemaError(
                    "the pgvector extension is not installed in this database and this role may not "
                    "create it; ask an administrator for: CREATE EXTENSION vector;"
                ) from exc
        conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(ident))
        existing = read_info(conn, schema) if _table_exists(conn, schema, "map_info") else None
        if existing is not None:
            if int(existing["dim"]) != dim:
                raise SchemaError(f"schema {schema} already holds a {existing['dim']}-d map, not {dim}-d")
            stored = existing["model_fingerprint"]
            if model_fingerprint and stored and stored != model_fingerprint:
                raise SchemaError(
                    f"schema {schema} already holds a map of model {stored[:16]}..., "
                    f"not {model_fingerprint[:16]}..."
                )
            reduced_dim = int(existing["reduced_dim"])
        applied = _apply_pending(conn, schema, dim, reduced_dim)
        if existing is None:
            conn.execute(
                sql.SQL(
                    "INSERT INTO {}.map_info (dim, reduced_dim, model_fingerprint) VALUES (%s, %s, %s)"
                ).format(ident),
                (dim, reduced_dim, model_fingerprint),
            )
        elif model_fingerprint and not existing["model_fingerprint"]:
            conn.execute(
                sql.SQL("UPDATE {}.map_info SET model_fingerprint = %s").format(ident), (model_fingerprint,)
            )
        if index in ("full", "both"):
            create_index(conn, schema, "full", hnsw_m=hnsw_m, ef_construction=ef_construction)
        if index in ("reduced", "both"):
            create_index(conn, schema, "reduced", hnsw_m=hnsw_m, ef_construction=ef_construction)
        if create_roles:
            ensure_roles(conn, schema)
    return applied


def migrate(conn: psycopg.Connection, schema: str = DEFAULT_SCHEMA) -> list[int]:
    """Apply pending migrations to an initialised map (re-granting the fleet roles if they exist)."""
    with conn.transaction():
        _lock(conn, schema)
        info = read_info(conn, schema)
        if info is None:
            raise SchemaError(
                f"schema {schema} holds no fleet map; run: tscm_map_db init URI --schema {schema}"
            )
        applied = _apply_pending(conn, schema, int(info["dim"]), int(info["reduced_dim"]))
        if all(conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (r,)).fetchone() for r in
               (READER_ROLE, WRITER_ROLE)):  # fmt: skip
            ensure_roles(conn, schema)
    return applied


def default_reduced_dim(dim: int) -> int:
    """256 for the 2048-d TSCM descriptor; half the dimension for small test descriptors."""
    return DEFAULT_REDUCED_DIM if dim > 2 * DEFAULT_REDUCED_DIM else max(1, dim // 2)


def create_index(
    conn: psycopg.Connection, schema: str, which: str, *, hnsw_m: int = 16, ef_construction: int = 64
) -> str:
    """Build the HNSW index on the full (``halfvec_ip_ops``) or reduced (``vector_ip_ops``) descriptor."""
    if which not in ("full", "reduced"):
        raise ValueError(f"index must be 'full' or 'reduced', got {which!r}")
    name, column, ops = (
        (FULL_INDEX, "descriptor", "halfvec_ip_ops")
        if which == "full"
        else (REDUCED_INDEX, "reduced", "vector_ip_ops")
    )
    conn.execute(
        sql.SQL(
            "CREATE INDEX IF NOT EXISTS {name} ON {s}.places USING hnsw ({col} {ops}) "
            "WITH (m = {m}, ef_construction = {efc})"
        ).format(
            name=sql.Identifier(name),
            s=sql.Identifier(schema),
            col=sql.Identifier(column),
            ops=sql.SQL(ops),
            m=sql.Literal(int(hnsw_m)),
            efc=sql.Literal(int(ef_construction)),
        )  # fmt: skip
    )
    return name


def drop_index(conn: psycopg.Connection, schema: str, which: str) -> None:
    name = FULL_INDEX if which == "full" else REDUCED_INDEX
    conn.execute(sql.SQL("DROP INDEX IF EXISTS {}.{}").format(sql.Identifier(schema), sql.Identifier(name)))


def ensure_roles(
    conn: psycopg.Connection, schema: str, *, reader: str = READER_ROLE, writer: str = WRITER_ROLE
) -> None:
    """Create the NOLOGIN group roles (if missing) and grant them on ``schema``.

    ``reader``: SELECT only (localisation-only robots). ``writer``: SELECT plus INSERT/UPDATE of places
    (mapping robots; UPDATE is needed by the idempotent upsert). Neither may DELETE, ALTER or fit PCA.
    Robots log in as their own roles that are members of one of these (see docs/FLEET.md).
    """
    for role in (reader, writer):
        if conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone() is None:
            # roles are cluster-wide and the advisory lock is per database: another init may win the race
            with contextlib.suppress(psycopg.errors.DuplicateObject), conn.transaction():  # savepoint
                conn.execute(sql.SQL("CREATE ROLE {} NOLOGIN").format(sql.Identifier(role)))
    s, r, w = sql.Identifier(schema), sql.Identifier(reader), sql.Identifier(writer)
    conn.execute(sql.SQL("GRANT USAGE ON SCHEMA {} TO {}, {}").format(s, r, w))
    conn.execute(sql.SQL("GRANT SELECT ON ALL TABLES IN SCHEMA {} TO {}, {}").format(s, r, w))
    conn.execute(sql.SQL("GRANT INSERT, UPDATE ON {}.places TO {}").format(s, w))
