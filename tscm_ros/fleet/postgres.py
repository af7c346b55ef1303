"""PgPlaceStore: the fleet place map on PostgreSQL + pgvector (online only; see FleetPlaceStore for robots).

Search modes (``SearchSettings.mode``):

* ``reduced`` -- HNSW (``vector_ip_ops``) on the PCA-reduced vectors returns ``rerank_candidates``
  places, re-ranked exactly on the full ``halfvec`` descriptor; rows without a reduced vector (written
  before the projection existed) are searched exactly next to it;
* ``full`` -- HNSW (``halfvec_ip_ops``) on the full descriptor, or an exact scan when there is none;
* ``exact`` -- sequential scan (ground truth);
* ``auto`` (default) -- ``reduced`` when a projection and its index exist, else ``full``.

Filtered queries keep the recall of unfiltered ones. pgvector filters HNSW results *after* the graph
walk, so a filter that keeps a fraction ``s`` of the rows leaves about ``s * ef_search`` of the walk's
candidates, and the best filtered place is often not among them. Per filter the store estimates ``s``
from the planner statistics (``EXPLAIN`` row estimates of the robot/session filter against the whole
table, cached for a minute) and

* ranks the filtered rows exactly when the filter keeps fewer than ``brute_force_below`` rows (reduced
  mode; an eighth of it on the 2048-d halfvec), or, in reduced mode, fewer than ``capped_exact_below``
  rows when the scaled walk below would need more than ``max_ef_search`` (pgvector's cap truncates it):
  the btree yields them, which beats walking ~``ef/s`` graph nodes and is exact (an exclude-only filter
  is first rewritten as the robots / sessions it leaves, read from the btree by a skip scan and cached
  for 10 s);
* otherwise walks the HNSW graph with ``hnsw.ef_search = ef / s`` (capped at ``max_ef_search``, pgvector's
  limit 1000), so that about ``ef`` filtered candidates come from the first, best-quality batch, with
  pgvector >= 0.8 iterative scans (``hnsw.iterative_scan``, ``hnsw.max_scan_tuples`` scaled likewise)
  to continue the walk when they do not; in reduced mode it also re-ranks deeper
  (``filtered_rerank_scale``): ``c = ceil(rerank_candidates / sqrt(s))`` places (at most
  ``max_ef_search``), walking with ``ef_search = filtered_ef_factor * c / s`` (same cap). The hard
  filtered queries are those whose own place is filtered out: their answer is the best of unrelated
  places, and the walk, which converges on the query's own (filtered-out) neighbourhood, reaches it less
  often than a revisit's. On synthetic clustered 2048-d data at 100k places (PCA-256) a robot filter
  keeping 25 % missed the exact top-1 in 19 of 1000 queries with 64 candidates and 9 with 128 (each of
  the misses inspected was also the top-1 on the reduced vectors: the walk, not the re-ranking, had
  missed it). Unfiltered queries and exact plans keep ``rerank_candidates``;
* repeats a query that still comes back with fewer than k places as an exact scan (``exact_fallback``).

Exclusion windows (time, keyframes) apply
to the places of the querying robot's own session (``exclusion_scope="session"``, default: another
robot's place seen a second ago is a genuine inter-robot loop closure) or to all places (``"all"``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import numbers
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import psycopg
from pgvector import HalfVector
from pgvector.psycopg import register_vector
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from ..placemap.errors import MapDimensionError, MapError, MapFingerprintError, MapFormatError
from ..placemap.records import PlaceMeta, Pose, Utm
from . import schema as schema_mod
from .common import (
    EXCLUSION_SCOPES,
    SearchFilter,
    normalize_one,
    prepare_blobs,
    prepare_descriptors,
    prepare_metas,
)
from .conninfo import build_conninfo, redact, scrub
from .errors import ReadOnlyStoreError, SchemaError, StoreUnavailableError
from .pca import PcaProjection
from .records import FleetMatch, FleetPlaceMeta, fleet_place_id, identity_of

_LOG = logging.getLogger(__name__)
META_COLUMNS = (
    "place_id", "robot_id", "session_id", "keyframe_index", "stamp_ns", "frame_id", "source",
    "px", "py", "pz", "qx", "qy", "qz", "qw", "pose_frame", "utm_easting", "utm_northing", "utm_zone",
)  # fmt: skip
WRITE_COLUMNS = META_COLUMNS + ("model_fingerprint", "descriptor", "reduced", "features", "thumbnail")
_BINARY_COLUMNS = ("descriptor", "reduced", "features", "thumbnail")
_BLOB_COLUMNS = ("features", "thumbnail")
_MIN_PGVECTOR = (0, 7)
SEARCH_MODES = ("auto", "reduced", "full", "exact")
_ESTIMATE_TTL_S = 60.0
_IDENTITIES_TTL_S = 10.0  # distinct robots/sessions, for rewriting small exclude-filters as include-filters
MAX_EF_SEARCH = 1000  # pgvector: hnsw.ef_search <= 1000


@dataclass(frozen=True)
class SearchSettings:
    """How the server searches (see module docstring)."""

    mode: str = "auto"
    ef_search: int = 64
    rerank_candidates: int = 64
    iterative_scan: str = "relaxed_order"  # off | relaxed_order | strict_order
    max_scan_tuples: int = 20_000
    exact_fallback: bool = True
    statement_timeout_ms: int = 5_000
    # robots/sessions include-filters matching fewer rows than this (planner estimate) skip HNSW: the rows
    # come from the btree and are ranked exactly (reduced mode: on the 256-d vectors, then re-ranked);
    # an iterative HNSW scan would walk ~k/selectivity candidates instead
    brute_force_below: int = 20_000
    # a filter keeping a fraction s of the rows walks the graph with ef_search / s, at most this (pgvector's
    # maximum is 1000); max_ef_search <= ef_search turns the scaling off
    max_ef_search: int = MAX_EF_SEARCH
    # reduced mode: an HNSW walk under a filter keeping a fraction s of the rows re-ranks
    # c = ceil(rerank_candidates / sqrt(s)) places (at most max(max_ef_search, rerank_candidates)) on the
    # full descriptor, and walks with ef_search = c / s (same cap); unfiltered queries and exact plans are
    # unchanged
    filtered_rerank_scale: bool = True
    # ... walking ef_search = filtered_ef_factor * c / s (a larger factor: a longer, slower, surer walk)
    filtered_ef_factor: float = 1.0
    # reduced mode: a filter whose scaled walk would exceed max_ef_search is ranked exactly below this many
    # rows (the truncated walk loses recall; the exact scan costs ~0.7 us per reduced row)
    capped_exact_below: int = 60_000

    def __post_init__(self) -> None:
        if self.mode not in SEARCH_MODES:
            raise ValueError(f"search mode must be one of {SEARCH_MODES}, got {self.mode!r}")
        if self.iterative_scan not in ("off", "relaxed_order", "strict_order"):
            raise ValueError(
                f"iterative_scan must be off, relaxed_order or strict_order, got {self.iterative_scan!r}"
            )
        for name in ("ef_search", "rerank_candidates", "max_scan_tuples", "max_ef_search"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
                raise ValueError(f"SearchSettings.{name} must be an integer >= 1, got {value!r}")
        for name in ("ef_search", "rerank_candidates", "max_ef_search"):
            if getattr(self, name) > MAX_EF_SEARCH:
                raise ValueError(
                    f"SearchSettings.{name} must be <= {MAX_EF_SEARCH} (pgvector's hnsw.ef_search limit), "
                    f"got {getattr(self, name)}"
                )
        if not isinstance(self.filtered_rerank_scale, bool):
            raise ValueError(
                f"SearchSettings.filtered_rerank_scale must be a bool, got {self.filtered_rerank_scale!r}"
            )
        if isinstance(self.filtered_ef_factor, bool) or not (
            isinstance(self.filtered_ef_factor, numbers.Real) and 1.0 <= self.filtered_ef_factor <= 100.0
        ):
            raise ValueError(
                "SearchSettings.filtered_ef_factor must be a number in [1, 100], "
                f"got {self.filtered_ef_factor!r}"
            )
        if self.capped_exact_below < 0:
            raise ValueError(f"SearchSettings.capped_exact_below must be >= 0, got {self.capped_exact_below}")
        if self.brute_force_below < 0:
            raise ValueError(f"SearchSettings.brute_force_below must be >= 0, got {self.brute_force_below}")

    @property
    def base_ef(self) -> int:
        """hnsw.ef_search of an unfiltered query."""
        return max(self.ef_search, self.rerank_candidates)


@dataclass(frozen=True)
class QueryPlan:
    """How one query runs: ``exact`` (no HNSW), else HNSW with these ``ef_search`` / ``max_scan_tuples``."""

    exact: bool
    ef_search: int
    max_scan_tuples: int
    selectivity: float = 1.0
    filter: SearchFilter | None = None  # the filter to run instead (exclusions rewritten as inclusions)
    candidates: int = 0  # places re-ranked on the full descriptor in reduced mode (0: max(rerank, k))


def meta_from_row(row: Sequence) -> FleetPlaceMeta:
    """A :class:`FleetPlaceMeta` from the :data:`META_COLUMNS` of a row."""
    (place_id, robot, session, kf, stamp, frame, source, px, py, pz, qx, qy, qz, qw, pframe,
     ue, un, uz) = row[: len(META_COLUMNS)]  # fmt: skip
    pose = Pose((px, py, pz), (qx, qy, qz, qw), pframe or "") if px is not None else None
    utm = Utm(ue, un, uz or "") if ue is not None else None
    return FleetPlaceMeta(
        stamp_ns=int(stamp), frame_id=frame, source=source, keyframe_index=int(kf), pose=pose, utm=utm,
        place_id=int(place_id), robot_id=robot, session_id=session,
    )  # fmt: skip


def meta_values(meta: PlaceMeta, place_id: int, robot: str, session: str, keyframe: int) -> tuple:
    """The :data:`META_COLUMNS` values of one place."""
    pose, utm = meta.pose, meta.utm
    pose_values = (*pose.position, *pose.orientation, pose.frame_id) if pose else (None,) * 8
    utm_values = (utm.easting, utm.northing, utm.zone) if utm else (None,) * 3
    return (place_id, robot, session, keyframe, meta.stamp_ns, meta.frame_id, meta.source, *pose_values,
            *utm_values)  # fmt: skip


def _version_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in text.split(".")[:3] if p.isdigit())


class PgPlaceStore:
    """Places of every robot and session in one PostgreSQL schema. Thread-safe (one lock, one connection).

    Opening validates the schema version, descriptor ``dim`` (:class:`MapDimensionError`) and model
    fingerprint (:class:`MapFingerprintError`, like :meth:`PlaceMap.load`). A lost connection raises
    :class:`StoreUnavailableError` and is re-opened by the next call. Ids are :func:`fleet_place_id`.
    """

    def __init__(
        self,
        target: str,
        *,
        dim: int | None = None,
        model_fingerprint: str | None = None,
        robot_id: str = "",
        session_id: str = "",
        schema: str = schema_mod.DEFAULT_SCHEMA,
        allow_fingerprint_mismatch: bool = False,
        search: SearchSettings | None = None,
        exclusion_scope: str = "session",
        connect_timeout_s: float = 5.0,
        conninfo_options: dict[str, str] | None = None,
        application_name: str = "tscm_ros fleet",
    ) -> None:
        if exclusion_scope not in EXCLUSION_SCOPES:
            raise ValueError(f"exclusion_scope must be one of {EXCLUSION_SCOPES}, got {exclusion_scope!r}")
        self._target = target
        given = conninfo_to_dict(target.strip()) if target.strip() else {}
        defaults = {"connect_timeout": max(1, round(connect_timeout_s)), "application_name": application_name}
        options = {k: v for k, v in defaults.items() if k not in given} | dict(conninfo_options or {})
        self._conninfo = build_conninfo(target, **options)
        self.target_description = redact(self._conninfo)
        self.schema = schema
        self.robot_id, self.session_id = str(robot_id), str(session_id)
        self.settings = search or SearchSettings()
        self.exclusion_scope = exclusion_scope
        self._expected_dim = None if dim is None else int(dim)
        self._expected_fp = model_fingerprint
        self._allow_fp_mismatch = allow_fingerprint_mismatch
        self._lock = threading.RLock()
        self._conn: psycopg.Connection | None = None
        self._table = sql.Identifier(schema, "places")
        self._next_kf = 0
        self.info: dict = {}
        self.pca: PcaProjection | None = None
        self.read_only = False
        self.pgvector_version = ""
        self.indexes: set[str] = set()
        self.last_error = ""
        self._estimates: dict[tuple, tuple[float, float]] = {}  # identity filter -> (time, rows)
        self._hnsw_gucs = (0, 0)  # (ef_search, max_scan_tuples) set on the connection
        self._identities: dict[str, tuple[float, tuple[str, ...]]] = {}  # column -> (time, distinct values)
        self._connect()

    def __repr__(self) -> str:
        return f"PgPlaceStore({self.target_description!r}, schema={self.schema!r}, robot={self.robot_id!r})"

    # ------------------------------------------------------------------ connection
    def _unavailable(self, exc: BaseException) -> StoreUnavailableError:
        message = " ".join(scrub(str(exc), self._conninfo).split()) or type(exc).__name__
        self.last_error = message
        return StoreUnavailableError(f"map server {self.target_description} unavailable: {message}")

    def _connect(self) -> None:
        try:
            conn = psycopg.connect(self._conninfo, autocommit=True)
        except psycopg.Error as exc:
            raise self._unavailable(exc) from None
        try:
            self._setup(conn)
        except psycopg.OperationalError as exc:
            conn.close()
            raise self._unavailable(exc) from None
        except psycopg.Error as exc:
            conn.close()
            raise MapError(f"{self.target_description}: {scrub(str(exc), self._conninfo)}") from None
        except BaseException:
            conn.close()
            raise
        self._conn = conn
        self.last_error = ""

    def _setup(self, conn: psycopg.Connection) -> None:
        row = conn.execute("SELECT extversion FROM pg_extension WHERE extname = 'vector'").fetchone()
        if row is None:
            raise SchemaError(f"{self.target_description}: pgvector is not installed; run tscm_map_db init")
        self.pgvector_version = row[0]
        if _version_tuple(row[0]) < _MIN_PGVECTOR:
            raise SchemaError(
                f"{self.target_description}: pgvector {row[0]} is too old (halfvec needs >= 0.7)"
            )
        register_vector(conn)
        status = schema_mod.status(conn, self.schema, sessions=False)
        if status.info is None:
            raise SchemaError(
                f"{self.target_description}: schema {self.schema!r} holds no fleet map; "
                f"run: tscm_map_db init URI --schema {self.schema} --dim DIM"
            )
        if status.version > schema_mod.latest_version():
            raise MapFormatError(
                f"{self.target_description}: fleet map schema version {status.version} is newer than this "
                f"tscm_ros supports ({schema_mod.latest_version()})"
            )
        if status.pending:
            raise SchemaError(
                f"{self.target_description}: fleet map schema {self.schema!r} is at version "
                f"{status.version}, this tscm_ros needs {schema_mod.latest_version()}; "
                f"run: tscm_map_db migrate URI --schema {self.schema}"
            )
        info = status.info
        where = f"{self.target_description} schema {self.schema!r}"
        if self._expected_dim is not None and int(info["dim"]) != self._expected_dim:
            raise MapDimensionError(
                f"{where}: map holds {info['dim']}-d descriptors, the model produces {self._expected_dim}-d"
            )
        stored_fp = info["model_fingerprint"]
        if self._expected_fp and stored_fp and stored_fp != self._expected_fp:
            message = (
                f"{where}: map was built with model fingerprint {stored_fp[:16]}..., the current model is "
                f"{self._expected_fp[:16]}...; its descriptors are not comparable"
            )
            if not self._allow_fp_mismatch:
                raise MapFingerprintError(message + " (pass allow_fingerprint_mismatch=True to open anyway)")
            _LOG.warning("%s (opening anyway: allow_fingerprint_mismatch=True)", message)
        self.info = info
        self.pca = None
        if info["pca_components"] is not None:
            self.pca = PcaProjection.from_columns(
                info["pca_components"], info["pca_mean"], int(info["dim"]), info["pca_explained_variance"],
                info["pca_fitted_on"],
            )  # fmt: skip
        self.indexes = set(status.indexes)
        qualified = sql.Identifier(self.schema, "places").as_string(conn)
        self.read_only = not conn.execute(
            "SELECT has_table_privilege(%s, 'INSERT') AND has_table_privilege(%s, 'UPDATE')",
            (qualified, qualified),
        ).fetchone()[0]
        s = self.settings
        conn.execute(
            "SELECT set_config('hnsw.ef_search', %s, false), set_config('hnsw.iterative_scan', %s, false), "
            "set_config('hnsw.max_scan_tuples', %s, false), set_config('statement_timeout', %s, false)",
            (str(s.base_ef), s.iterative_scan, str(s.max_scan_tuples), str(int(s.statement_timeout_ms))),
        )  # fmt: skip
        self._hnsw_gucs = (s.base_ef, s.max_scan_tuples)
        row = conn.execute(
            sql.SQL("SELECT max(keyframe_index) FROM {} WHERE robot_id = %s AND session_id = %s").format(
                self._table
            ),
            (self.robot_id, self.session_id),
        ).fetchone()
        if row[0] is not None:
            self._next_kf = max(self._next_kf, int(row[0]) + 1)

    @property
    def connected(self) -> bool:
        return self._conn is not None and not self._conn.closed and not self._conn.broken

    @contextmanager
    def _connection(self) -> Iterator[psycopg.Connection]:
        """The connection under the lock; connection-level failures become StoreUnavailableError."""
        with self._lock:
            if not self.connected:
                self._drop()
                self._connect()
            try:
                yield self._conn
            except psycopg.errors.InsufficientPrivilege as exc:
                raise ReadOnlyStoreError(self._read_only_message(exc)) from None
            except psycopg.OperationalError as exc:
                self._drop()
                raise self._unavailable(exc) from None
            except psycopg.Error as exc:
                if self._conn is not None and self._conn.broken:
                    self._drop()
                    raise self._unavailable(exc) from None
                raise MapError(f"{self.target_description}: {scrub(str(exc), self._conninfo)}") from None

    def _read_only_message(self, exc: BaseException | None = None) -> str:
        detail = f" (server: {' '.join(str(exc).split())})" if exc else ""
        return (
            f"fleet map {self.target_description} schema {self.schema!r} is read-only for this role: "
            f"writes are refused (a localisation-only robot; use a role in {schema_mod.WRITER_ROLE}){detail}"
        )

    def _drop(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(psycopg.Error):
                self._conn.close()
        self._conn = None

    def reconnect(self) -> None:
        """Close and re-open the connection (re-reading map info, PCA and indexes)."""
        with self._lock:
            self._drop()
            self._connect()

    def close(self) -> None:
        with self._lock:
            self._drop()

    def __enter__(self) -> PgPlaceStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ properties
    @property
    def dim(self) -> int:
        return int(self.info["dim"])

    @property
    def reduced_dim(self) -> int:
        return int(self.info["reduced_dim"])

    @property
    def model_fingerprint(self) -> str | None:
        return self.info.get("model_fingerprint")

    @property
    def next_keyframe_index(self) -> int:
        """The keyframe index the next place of this robot's session gets when added without one."""
        return self._next_kf

    @property
    def connection_state(self) -> str:
        return "connected" if self.connected else "disconnected"

    @property
    def outbox_depth(self) -> int:
        return 0

    @property
    def search_mode(self) -> str:
        mode = self.settings.mode
        if mode == "auto":
            return "reduced" if self.pca is not None and schema_mod.REDUCED_INDEX in self.indexes else "full"
        return mode

    def __len__(self) -> int:
        with self._connection() as conn:
            return int(conn.execute(sql.SQL("SELECT count(*) FROM {}").format(self._table)).fetchone()[0])

    def count(self, *, robots: Iterable[str] | None = None, sessions: Iterable[str] | None = None) -> int:
        where, params = self._where(SearchFilter.build(robots=robots, sessions=sessions))
        with self._connection() as conn:
            query = sql.SQL("SELECT count(*) FROM {} WHERE {}").format(self._table, where)
            return int(conn.execute(query, params).fetchone()[0])

    def diagnostics(self) -> dict[str, str]:
        """Key/values for ``/diagnostics`` (no credentials)."""
        return {
            "backend": "postgresql",
            "target": self.target_description,
            "schema": self.schema,
            "robot_id": self.robot_id,
            "session_id": self.session_id,
            "connection_state": self.connection_state,
            "outbox_depth": "0",
            "read_only": str(self.read_only).lower(),
            "search_mode": self.search_mode,
            "pgvector": self.pgvector_version,
            "last_error": self.last_error,
        }

    # ------------------------------------------------------------------ writes
    def add(
        self,
        descriptors: np.ndarray,
        metas: Sequence[PlaceMeta] | PlaceMeta,
        *,
        features: Sequence[bytes | None] | bytes | None = None,
        thumbnails: Sequence[bytes | None] | bytes | None = None,
    ) -> np.ndarray:
        """Upsert places; returns their fleet ids (int64).

        Places are keyed by ``(robot_id, session_id, keyframe_index)``: the store's own robot/session, or
        the meta's when it is a :class:`FleetPlaceMeta` carrying one. Re-adding a key updates the row
        (idempotent; blobs given as None keep stored ones). ``keyframe_index=None`` takes
        :attr:`next_keyframe_index`.
        """
        if self.read_only:
            raise ReadOnlyStoreError(self._read_only_message())
        vectors = prepare_descriptors(descriptors, self.dim)
        metas = prepare_metas(metas, len(vectors))
        feats = prepare_blobs(features, len(vectors), "features")
        thumbs = prepare_blobs(thumbnails, len(vectors), "thumbnails")
        with self._lock:
            rows, ids, next_kf = self._rows(vectors, metas, feats, thumbs)
            self.upsert_rows(rows)
            self._next_kf = next_kf
        return np.asarray(ids, dtype=np.int64)

    def _rows(self, vectors, metas, feats, thumbs) -> tuple[list[tuple], list[int], int]:
        reduced = self.pca.project(vectors) if self.pca is not None else None
        next_kf = self._next_kf
        rows, ids = [], []
        for i, meta in enumerate(metas):
            robot, session = identity_of(meta, self.robot_id, self.session_id)
            own = (robot, session) == (self.robot_id, self.session_id)
            kf = meta.keyframe_index if meta.keyframe_index is not None else next_kf
            if own:
                next_kf = max(next_kf, kf + 1)
            place_id = fleet_place_id(robot, session, kf)
            ids.append(place_id)
            rows.append((
                *meta_values(meta, place_id, robot, session, kf), self._expected_fp or self.model_fingerprint,
                HalfVector(vectors[i]), None if reduced is None else reduced[i], feats[i], thumbs[i],
            ))  # fmt: skip
        return rows, ids, next_kf

    def upsert_rows(self, rows: Sequence[tuple]) -> None:
        """Upsert rows of :data:`WRITE_COLUMNS` values (descriptor as HalfVector) in one transaction."""
        if not rows:
            return
        if self.read_only:
            raise ReadOnlyStoreError(self._read_only_message())
        names = [sql.Identifier(c) for c in WRITE_COLUMNS]
        placeholders = [sql.Placeholder(format="b" if c in _BINARY_COLUMNS else "s") for c in WRITE_COLUMNS]
        keys = ("place_id", "robot_id", "session_id", "keyframe_index")
        updates = [
            sql.SQL("{c} = COALESCE(EXCLUDED.{c}, {t}.{c})" if c in _BLOB_COLUMNS else "{c} = EXCLUDED.{c}")
            .format(c=sql.Identifier(c), t=sql.Identifier("places"))
            for c in WRITE_COLUMNS if c not in keys
        ]  # fmt: skip
        statement = sql.SQL(
            "INSERT INTO {t} ({cols}) VALUES ({vals}) ON CONFLICT (robot_id, session_id, keyframe_index) "
            "DO UPDATE SET {updates}"
        ).format(t=self._table, cols=sql.SQL(", ").join(names), vals=sql.SQL(", ").join(placeholders),
                 updates=sql.SQL(", ").join(updates))  # fmt: skip
        with self._connection() as conn, conn.transaction(), conn.cursor() as cur:
            try:
                cur.executemany(statement, rows)
            except psycopg.errors.UniqueViolation as exc:
                raise MapError(
                    f"{self.target_description}: place id collision (two keyframes hash to one id): "
                    f"{' '.join(str(exc).split())}"
                ) from None

    # ------------------------------------------------------------------ queries
    def search(
        self,
        query: np.ndarray,
        k: int = 10,
        *,
        query_stamp_ns: int | None = None,
        exclusion_window_s: float = 0.0,
        query_keyframe_index: int | None = None,
        exclusion_keyframes: int | None = None,
        exclude_ids: Iterable[int] | None = None,
        robots: Iterable[str] | str | None = None,
        exclude_robots: Iterable[str] | str | None = None,
        sessions: Iterable[str] | str | None = None,
        exclude_sessions: Iterable[str] | str | None = None,
        mode: str | None = None,
    ) -> list[FleetMatch] | list[list[FleetMatch]]:
        """Top-``k`` places by inner product, best first (:class:`FleetMatch` with robot and session).

        Filters as :meth:`PlaceMap.search`, plus ``robots``/``sessions`` (only these) and
        ``exclude_robots``/``exclude_sessions``. ``mode`` overrides :attr:`SearchSettings.mode` for
        this call (``"exact"`` for ground truth). A (D,) query gives a list, an (N, D) batch a list of lists.
        """
        if int(k) < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        single = np.ndim(query) == 1
        queries = prepare_descriptors(query, self.dim)
        filt = SearchFilter.build(
            query_stamp_ns=query_stamp_ns, exclusion_window_s=exclusion_window_s,
            query_keyframe_index=query_keyframe_index, exclusion_keyframes=exclusion_keyframes,
            exclude_ids=exclude_ids, robots=robots, exclude_robots=exclude_robots, sessions=sessions,
            exclude_sessions=exclude_sessions,
        )  # fmt: skip
        mode = mode or self.search_mode
        if mode not in SEARCH_MODES or mode == "auto":
            raise ValueError(f"search mode must be reduced, full or exact, got {mode!r}")
        if mode == "reduced" and self.pca is None:
            raise MapError(f"{self.target_description}: no PCA projection; run tscm_map_db pca URI --fit")
        results = [self._search_one(q, int(k), filt, mode) for q in queries]
        return results[0] if single else results

    def _search_one(self, query: np.ndarray, k: int, filt: SearchFilter, mode: str) -> list[FleetMatch]:
        plan = self.plan(filt, mode, k)
        matches = self._run_search(query, k, filt, mode, plan)
        if len(matches) < k and not plan.exact and self.settings.exact_fallback and not filt.is_empty:
            matches = self._run_search(query, k, filt, "exact", self.plan(filt, "exact", k))
        return matches

    def _estimate_rows(self, filt: SearchFilter) -> float:
        """Planner estimate of the rows ``filt`` keeps (cached per filter for a minute)."""
        key = (filt.robots, filt.exclude_robots, filt.sessions, filt.exclude_sessions)
        cached = self._estimates.get(key)
        if cached is None or time.monotonic() - cached[0] > _ESTIMATE_TTL_S:
            where, params = self._where(filt)
            with self._connection() as conn:
                plan = conn.execute(
                    sql.SQL("EXPLAIN (FORMAT JSON) SELECT 1 FROM {} WHERE {}").format(self._table, where),
                    params,
                ).fetchone()[0]
            cached = (time.monotonic(), float(plan[0]["Plan"]["Plan Rows"]))
            self._estimates[key] = cached
        return cached[1]

    def _distinct(self, column: str) -> tuple[str, ...]:
        """Distinct ``robot_id`` / ``session_id`` values (btree skip scan: one descent per value; cached)."""
        cached = self._identities.get(column)
        if cached is None or time.monotonic() - cached[0] > _IDENTITIES_TTL_S:
            c = sql.Identifier(column)
            statement = sql.SQL(
                "WITH RECURSIVE v AS ((SELECT {c} FROM {t} ORDER BY {c} LIMIT 1) UNION ALL "
                "SELECT (SELECT {c} FROM {t} WHERE {c} > v.{c} ORDER BY {c} LIMIT 1) FROM v "
                "WHERE v.{c} IS NOT NULL) SELECT {c} FROM v WHERE {c} IS NOT NULL"
            ).format(c=c, t=self._table)
            with self._connection() as conn:
                values = tuple(row[0] for row in conn.execute(statement).fetchall())
            cached = (time.monotonic(), values)
            self._identities[column] = cached
        return cached[1]

    def plan(self, filt: SearchFilter, mode: str, k: int) -> QueryPlan:
        """How a query with ``filt`` runs (see the module docstring); public for tests and benchmarks."""
        s = self.settings
        candidates = max(s.rerank_candidates, k) if mode == "reduced" else k
        base = max(s.base_ef, candidates)
        if mode == "exact" or base > MAX_EF_SEARCH:  # k beyond what HNSW may return: rank exactly
            return QueryPlan(True, min(base, MAX_EF_SEARCH), s.max_scan_tuples)
        selectivity, rows = 1.0, None
        if filt.restricts_identity:
            identity = SearchFilter(
                robots=filt.robots, exclude_robots=filt.exclude_robots, sessions=filt.sessions,
                exclude_sessions=filt.exclude_sessions,
            )  # fmt: skip
            rows = self._estimate_rows(identity)
            total = max(self._estimate_rows(SearchFilter()), 1.0)
            selectivity = min(1.0, max(rows, 1.0) / total)
        depth, walk = candidates, None  # re-rank depth, and the scaled walk (None: not scaled)
        if mode == "reduced" and s.filtered_rerank_scale and selectivity < 1.0:
            cap = max(s.max_ef_search, candidates)
            depth = min(cap, math.ceil(candidates / math.sqrt(selectivity)))
            walk = math.ceil(s.filtered_ef_factor * depth / selectivity)
        if rows is not None and rows < self._exact_limit(mode, walk):
            return self._exact_plan(filt, base, selectivity, candidates)
        ef = min(max(s.max_ef_search, base), math.ceil(base / selectivity))
        if walk is not None:
            ef = max(ef, min(max(s.max_ef_search, candidates), walk))  # the walk, not the re-rank, missed
        scan = max(s.max_scan_tuples, math.ceil(2 * depth / selectivity))
        return QueryPlan(False, ef, scan, selectivity, candidates=depth)

    def _exact_limit(self, mode: str, walk: int | None) -> int:
        """Filtered sets smaller than this are ranked exactly: ``brute_force_below`` rows, or in reduced mode
        ``capped_exact_below`` when the scaled ``walk`` would need more than ``max_ef_search`` (pgvector's cap
        truncates it: at 1M places a 5 % robot filter walked ef 1000 in 57 ms for R@1 0.980, the exact scan
        of its 50k reduced rows took 36 ms for 1.000). Full mode: an eighth (8x the bytes per row)."""
        s = self.settings
        if mode != "reduced":
            return s.brute_force_below // 8
        if walk is not None and walk > s.max_ef_search:
            return max(s.brute_force_below, s.capped_exact_below)
        return s.brute_force_below

    def _exact_plan(self, filt: SearchFilter, base: int, selectivity: float, candidates: int) -> QueryPlan:
        """The btree plan; an exclude-only filter is rewritten as the robots / sessions it leaves."""
        s = self.settings
        if filt.robots is not None or filt.sessions is not None:
            return QueryPlan(True, base, s.max_scan_tuples, selectivity, candidates=candidates)
        # only exclusions (no btree serves <> ALL): the robots / sessions they leave, from the index
        column, excluded = (
            ("robot_id", filt.exclude_robots)
            if filt.exclude_robots
            else ("session_id", filt.exclude_sessions)
        )
        kept = tuple(v for v in self._distinct(column) if v not in set(excluded))
        rewritten = dataclasses.replace(filt, **{"robots" if column == "robot_id" else "sessions": kept})
        return QueryPlan(True, base, s.max_scan_tuples, selectivity, rewritten, candidates)

    def _run_search(
        self, query: np.ndarray, k: int, filt: SearchFilter, mode: str, plan: QueryPlan
    ) -> list[FleetMatch]:
        where, params = self._where(plan.filter or filt)
        params |= {"q": HalfVector(query), "k": k}
        cols = sql.SQL(", ").join(sql.Identifier(c) for c in META_COLUMNS)
        if mode == "reduced":
            candidates = plan.candidates or max(self.settings.rerank_candidates, k)
            params |= {"r": self.pca.project(query), "c": candidates}
            statement = sql.SQL(
                "WITH cand AS MATERIALIZED ("
                "(SELECT {cols}, descriptor FROM {t} WHERE reduced IS NOT NULL AND {where} "
                "ORDER BY reduced <#> %(r)b LIMIT %(c)s) UNION ALL "
                "(SELECT {cols}, descriptor FROM {t} WHERE reduced IS NULL AND {where} "
                "ORDER BY descriptor <#> %(q)b LIMIT %(k)s)) "
                "SELECT {cols}, -(descriptor <#> %(q)b) AS sim FROM cand "
                "ORDER BY sim DESC, place_id LIMIT %(k)s"
            ).format(cols=cols, t=self._table, where=where)
        else:
            statement = sql.SQL(
                "WITH cand AS MATERIALIZED (SELECT {cols}, descriptor <#> %(q)b AS dist "
                "FROM {t} WHERE {where} "
                "ORDER BY descriptor <#> %(q)b LIMIT %(k)s) SELECT {cols}, -dist AS sim FROM cand "
                "ORDER BY dist, place_id"
            ).format(cols=cols, t=self._table, where=where)
        with self._connection() as conn:
            if plan.exact:  # no HNSW: btree/bitmap scans of the filtered rows, ranked exactly
                with conn.transaction():
                    conn.execute("SELECT set_config('enable_indexscan', 'off', true)")
                    rows = conn.execute(statement, params).fetchall()
            else:
                gucs = (plan.ef_search, plan.max_scan_tuples)
                if gucs != self._hnsw_gucs:  # one extra round trip, only when the filter's scale changes
                    conn.execute(
                        "SELECT set_config('hnsw.ef_search', %s, false), "
                        "set_config('hnsw.max_scan_tuples', %s, false)",
                        (str(gucs[0]), str(gucs[1])),
                    )
                    self._hnsw_gucs = gucs
                rows = conn.execute(statement, params).fetchall()
        return [
            FleetMatch(
                place_id=int(row[0]),
                similarity=float(row[-1]),
                rank=rank,
                meta=meta_from_row(row),
                robot_id=row[1],
                session_id=row[2],
            )  # fmt: skip
            for rank, row in enumerate(rows)
        ]

    def _where(self, filt: SearchFilter) -> tuple[sql.Composable, dict]:
        clauses: list[sql.Composable] = []
        params: dict = {"own_robot": self.robot_id, "own_session": self.session_id}
        own = sql.SQL("robot_id = %(own_robot)s AND session_id = %(own_session)s")
        if filt.robots is not None:
            clauses.append(sql.SQL("robot_id = ANY(%(robots)s)"))
            params["robots"] = list(filt.robots)
        if filt.exclude_robots:
            clauses.append(sql.SQL("robot_id <> ALL(%(exclude_robots)s)"))
            params["exclude_robots"] = list(filt.exclude_robots)
        if filt.sessions is not None:
            clauses.append(sql.SQL("session_id = ANY(%(sessions)s)"))
            params["sessions"] = list(filt.sessions)
        if filt.exclude_sessions:
            clauses.append(sql.SQL("session_id <> ALL(%(exclude_sessions)s)"))
            params["exclude_sessions"] = list(filt.exclude_sessions)
        if filt.exclude_ids:
            clauses.append(sql.SQL("place_id <> ALL(%(exclude_ids)s::bigint[])"))
            params["exclude_ids"] = list(filt.exclude_ids)
        scoped = self.exclusion_scope == "session"
        if filt.stamp_cutoff_ns is not None:
            params["cutoff"] = filt.stamp_cutoff_ns
            recent = sql.SQL("stamp_ns > %(cutoff)s")
            clauses.append(
                sql.SQL("NOT ({} AND {})").format(own, recent)
                if scoped
                else sql.SQL("NOT ({})").format(recent)
            )
        if filt.keyframe_window is not None:
            params["kf_lo"], params["kf_hi"] = filt.keyframe_window
            near = sql.SQL("keyframe_index BETWEEN %(kf_lo)s AND %(kf_hi)s")
            clauses.append(
                sql.SQL("NOT ({} AND {})").format(own, near) if scoped else sql.SQL("NOT ({})").format(near)
            )
        return (sql.SQL(" AND ").join(clauses) if clauses else sql.SQL("true")), params

    # ------------------------------------------------------------------ reads
    def get_metas(self, place_ids: Iterable[int]) -> dict[int, FleetPlaceMeta]:
        """Metadata by fleet id (unknown ids are absent)."""
        ids = [int(i) for i in place_ids]
        if not ids:
            return {}
        cols = sql.SQL(", ").join(sql.Identifier(c) for c in META_COLUMNS)
        with self._connection() as conn:
            rows = conn.execute(
                sql.SQL("SELECT {} FROM {} WHERE place_id = ANY(%s::bigint[])").format(cols, self._table),
                (ids,),
            ).fetchall()
        return {int(row[0]): meta_from_row(row) for row in rows}

    def get(self, place_id: int) -> FleetPlaceMeta:
        meta = self.get_metas([place_id]).get(int(place_id))
        if meta is None:
            raise KeyError(f"no place with id {place_id}")
        return meta

    def _get_column(self, column: str, place_ids: Iterable[int]) -> dict[int, bytes | None]:
        ids = [int(i) for i in place_ids]
        if not ids:
            return {}
        with self._connection() as conn:
            rows = conn.execute(
                sql.SQL("SELECT place_id, {} FROM {} WHERE place_id = ANY(%s::bigint[])").format(
                    sql.Identifier(column), self._table
                ),
                (ids,),
            ).fetchall()
        return {int(pid): (bytes(value) if value is not None else None) for pid, value in rows}

    def get_features(self, place_ids: Iterable[int]) -> dict[int, bytes | None]:
        """Feature blobs by fleet id: bytes, or None for a known place stored without; unknown ids absent."""
        return self._get_column("features", place_ids)

    def get_thumbnails(self, place_ids: Iterable[int]) -> dict[int, bytes | None]:
        return self._get_column("thumbnail", place_ids)

    def get_thumbnail(self, place_id: int) -> bytes | None:
        return self.get_thumbnails([place_id]).get(int(place_id))

    def normalize(self, descriptor: np.ndarray) -> np.ndarray:
        """One ``(dim,)`` descriptor checked and L2-normalised, as :meth:`PlaceMap.normalize`."""
        return normalize_one(descriptor, self.dim)

    def get_descriptors(self, place_ids: Sequence[int]) -> np.ndarray:
        """(N, dim) float32 descriptors (half precision on the server) in the order of ``place_ids``."""
        ids = [int(i) for i in place_ids]
        with self._connection() as conn:
            rows = conn.execute(
                sql.SQL("SELECT place_id, descriptor FROM {} WHERE place_id = ANY(%s::bigint[])").format(
                    self._table
                ),
                (ids,),
            ).fetchall()
        found = {int(pid): vec.to_numpy() for pid, vec in rows}
        missing = [i for i in ids if i not in found]
        if missing:
            raise KeyError(f"no places with ids {missing[:5]}")
        return (
            np.stack([found[i] for i in ids]).astype(np.float32)
            if ids
            else np.zeros((0, self.dim), np.float32)
        )

    def iter_places(
        self,
        *,
        robots: Iterable[str] | None = None,
        sessions: Iterable[str] | None = None,
        since_ns: int | None = None,
        until_ns: int | None = None,
        with_blobs: bool = True,
        batch: int = 1000,
    ) -> Iterator[tuple[FleetPlaceMeta, np.ndarray, bytes | None, bytes | None]]:
        """Stream ``(meta, descriptor float32, features, thumbnail)`` in (robot, session, keyframe) order."""
        where, params = self._where(SearchFilter.build(robots=robots, sessions=sessions))
        extra = []
        if since_ns is not None:
            extra.append(sql.SQL("stamp_ns >= %(since)s"))
            params["since"] = int(since_ns)
        if until_ns is not None:
            extra.append(sql.SQL("stamp_ns <= %(until)s"))
            params["until"] = int(until_ns)
        if extra:
            where = sql.SQL(" AND ").join([where, *extra])
        blobs = sql.SQL("features, thumbnail") if with_blobs else sql.SQL("NULL::bytea, NULL::bytea")
        statement = sql.SQL(
            "SELECT {cols}, descriptor, {blobs} FROM {t} WHERE {where} "
            "ORDER BY robot_id, session_id, keyframe_index"
        ).format(cols=sql.SQL(", ").join(sql.Identifier(c) for c in META_COLUMNS), blobs=blobs, t=self._table,
                 where=where)  # fmt: skip
        n = len(META_COLUMNS)
        with (
            self._connection() as conn,
            conn.transaction(),
            conn.cursor(name="tscm_iter_places", binary=True) as cur,
        ):
            cur.itersize = batch
            cur.execute(statement, params)
            for row in cur:
                feats, thumb = row[n + 1], row[n + 2]
                yield (
                    meta_from_row(row),
                    row[n].to_numpy().astype(np.float32),
                    None if feats is None else bytes(feats),
                    None if thumb is None else bytes(thumb),
                )

    def sessions(self) -> list[tuple[str, str, int, int, int]]:
        """``(robot_id, session_id, places, first stamp_ns, last stamp_ns)`` of every session."""
        with self._connection() as conn:
            return schema_mod.status(conn, self.schema).sessions

    # ------------------------------------------------------------------ maintenance
    def set_pca(self, projection: PcaProjection, *, backfill: bool = True, batch: int = 2000) -> int:
        """Store ``projection`` in map_info and recompute every row's reduced vector; returns rows updated."""
        if projection.dim != self.dim or projection.reduced_dim != self.reduced_dim:
            raise MapDimensionError(
                f"PCA {projection.dim}->{projection.reduced_dim} does not fit this map "
                f"({self.dim}->{self.reduced_dim})"
            )
        components, mean = projection.to_columns()
        with self._connection() as conn:
            conn.execute(
                sql.SQL(
                    "UPDATE {} SET pca_components = %b, pca_mean = %b, pca_explained_variance = %s, "
                    "pca_fitted_on = %s, pca_updated_at = now()"
                ).format(sql.Identifier(self.schema, "map_info")),
                (components, mean, projection.explained_variance, projection.fitted_on),
            )
        self.pca = projection
        return self.backfill_reduced(batch=batch, all_rows=True) if backfill else 0

    def backfill_reduced(self, *, batch: int = 2000, all_rows: bool = False) -> int:
        """Compute missing (or, with ``all_rows``, all) reduced vectors with the stored projection."""
        if self.pca is None:
            raise MapError(f"{self.target_description}: no PCA projection to backfill with")
        updated, last_id = 0, -(1 << 63)
        condition = sql.SQL("true") if all_rows else sql.SQL("reduced IS NULL")
        while True:
            with self._connection() as conn:
                rows = conn.execute(
                    sql.SQL("SELECT place_id, descriptor FROM {} WHERE {} AND place_id > %s "
                            "ORDER BY place_id LIMIT %s")
                    .format(self._table, condition),
                    (last_id, batch),
                    binary=True,
                ).fetchall()  # fmt: skip
                if not rows:
                    return updated
                vectors = np.stack([vec.to_numpy() for _, vec in rows]).astype(np.float32)
                reduced = self.pca.project(vectors)
                with conn.transaction(), conn.cursor() as cur:
                    cur.executemany(
                        sql.SQL("UPDATE {} SET reduced = %b WHERE place_id = %s").format(self._table),
                        [(reduced[i], int(pid)) for i, (pid, _) in enumerate(rows)],
                    )
            updated += len(rows)
            last_id = int(rows[-1][0])

    def sample_descriptors(self, n: int, *, seed: float = 0.5) -> np.ndarray:
        """Up to ``n`` descriptors drawn at random (for fitting a PCA projection)."""
        with self._connection() as conn:
            conn.execute("SELECT setseed(%s)", (seed,))
            rows = conn.execute(
                sql.SQL("SELECT descriptor FROM {} ORDER BY random() LIMIT %s").format(self._table),
                (int(n),),
                binary=True,
            ).fetchall()
        if not rows:
            return np.zeros((0, self.dim), np.float32)
        return np.stack([r[0].to_numpy() for r in rows]).astype(np.float32)

    def save(self, path: object = None) -> None:
        """Nothing to do: every add() is committed on the server."""
        return None
