"""FleetPlaceStore: what a robot uses -- the shared PostgreSQL map when reachable, its local map always.

* **Writes** go to the local map (for offline queries) and to the durable outbox; a background thread
  flushes the outbox to the server in batches with an idempotent upsert keyed by
  ``(robot_id, session_id, keyframe_index)`` and deletes entries only after the server committed them.
  ``add()`` never waits for the network.
* **Queries** go to the server while it is reachable (also for a read-only role); this session's own
  places are merged in from the local map while keyframes wait in the outbox. When the server is away
  (refused connection, timeout, lost connection), queries answer from the local map -- the robot's own
  keyframes plus whatever was pulled with ``tscm_map_sync pull`` -- and the background thread
  reconnects with exponential back-off.
* **Ids** are fleet ids (:func:`fleet_place_id`), identical online and offline.
* **Diagnostics**: ``connection_state`` (connected | disconnected | refused), ``outbox_depth`` and
  :meth:`diagnostics` (string key/values for ``diagnostic_msgs/KeyValue``).

On open, outbox entries missing from the local map (the local map is saved on ``save()``; a SIGKILL
loses its unsaved tail) are re-added to it, so nothing acknowledged by ``add()`` is lost locally either.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from ..placemap.records import PlaceMeta
from . import schema as schema_mod
from .common import normalize_one, prepare_blobs, prepare_descriptors, prepare_metas
from .conninfo import redact, scrub
from .errors import ReadOnlyStoreError, StoreUnavailableError
from .local import OUTBOX_FILE, LocalPlaceStore
from .outbox import Outbox
from .postgres import PgPlaceStore, SearchSettings
from .records import FleetMatch, FleetPlaceMeta, fleet_place_id, identity_of, with_identity

_LOG = logging.getLogger(__name__)
# TCP settings so a vanished Wi-Fi link is noticed in seconds, not after minutes of retransmissions
ROBOT_CONNINFO_DEFAULTS = {
    "keepalives": "1",
    "keepalives_idle": "5",
    "keepalives_interval": "2",
    "keepalives_count": "3",
    "tcp_user_timeout": "5000",
}
CONNECTED, DISCONNECTED, REFUSED = "connected", "disconnected", "refused"


class FleetPlaceStore:
    """Robot-side fleet store (see module docstring). Thread-safe."""

    def __init__(
        self,
        target: str,
        local: LocalPlaceStore,
        *,
        schema: str = schema_mod.DEFAULT_SCHEMA,
        search: SearchSettings | None = None,
        conninfo_options: dict[str, str] | None = None,
        connect_timeout_s: float = 3.0,
        allow_fingerprint_mismatch: bool = False,
        flush_batch: int = 64,
        retry_min_s: float = 0.2,
        retry_max_s: float = 10.0,
        count_cache_s: float = 1.0,
    ) -> None:
        self._local = local
        self.robot_id, self.session_id = local.robot_id, local.session_id
        self.schema = schema
        self._pg_kwargs = dict(
            dim=local.dim, model_fingerprint=local.model_fingerprint, robot_id=self.robot_id,
            session_id=self.session_id, schema=schema, allow_fingerprint_mismatch=allow_fingerprint_mismatch,
            search=search, exclusion_scope=local.exclusion_scope, connect_timeout_s=connect_timeout_s,
            conninfo_options=ROBOT_CONNINFO_DEFAULTS | dict(conninfo_options or {}),
        )  # fmt: skip
        self._target = target
        self.target_description = redact(target)
        self.settings = search or SearchSettings()  # how the server searches (PgPlaceStore.settings)
        self._flush_batch = int(flush_batch)
        self._retry = (float(retry_min_s), float(retry_max_s))
        self._count_cache_s = float(count_cache_s)
        self._lock = threading.RLock()
        self._reader: PgPlaceStore | None = None
        self._writer: PgPlaceStore | None = None
        self._state = DISCONNECTED
        self.last_error = ""
        self.read_only = False
        self.flushed_total = 0
        self.server_queries = 0
        self.fallback_queries = 0
        self._count_cache: tuple[float, int] = (0.0, 0)
        self._flush_lock = threading.Lock()
        self._outbox = Outbox(local.sidecar_path / OUTBOX_FILE)
        self._l2g = local.fleet_ids()
        self._g2l = {g: lid for lid, g in self._l2g.items()}
        self._pending: set[int] = set()
        self._next_kf = local.next_keyframe_index
        self._replay_outbox()
        self._wake = threading.Event()
        self._stop = threading.Event()
        try:
            self._connect()
        except StoreUnavailableError as exc:
            self._set_down(exc)
        except BaseException:  # wrong fingerprint/dim/schema: a configuration error, raised to the caller
            self._outbox.close()
            raise
        self._thread = threading.Thread(
            target=self._run, name=f"tscm-fleet-flush-{self.robot_id}", daemon=True
        )
        self._thread.start()

    def __repr__(self) -> str:
        who = f"robot={self.robot_id!r}, session={self.session_id!r}"
        return f"FleetPlaceStore({self.target_description!r}, {who})"

    # ------------------------------------------------------------------ state
    def _replay_outbox(self) -> None:
        entries = self._outbox.all()
        missing = [e for e in entries if e.meta.place_id not in self._g2l]
        for entry in entries:
            self._pending.add(int(entry.meta.place_id))
            if (entry.meta.robot_id, entry.meta.session_id) == (self.robot_id, self.session_id):
                self._next_kf = max(self._next_kf, int(entry.meta.keyframe_index) + 1)
        if missing:
            local_ids = self._local.add(
                np.stack([e.descriptor for e in missing]), [e.meta for e in missing],
                features=[e.features for e in missing], thumbnails=[e.thumbnail for e in missing],
            )  # fmt: skip
            for entry, lid in zip(missing, local_ids, strict=True):
                self._l2g[int(lid)] = int(entry.meta.place_id)
                self._g2l[int(entry.meta.place_id)] = int(lid)
            _LOG.info("re-added %d outbox keyframes missing from the local map", len(missing))

    def _connect(self) -> None:
        """Open reader and writer connections; fatal mismatches propagate (they are configuration errors)."""
        writer = PgPlaceStore(self._target, **self._pg_kwargs)
        try:
            reader = PgPlaceStore(self._target, **self._pg_kwargs)
        except BaseException:
            writer.close()
            raise
        with self._lock:
            self._writer, self._reader = writer, reader
            self.read_only = writer.read_only
            self._next_kf = max(self._next_kf, writer.next_keyframe_index)
            self._state = REFUSED if self.read_only and self._outbox.depth() else CONNECTED
            if self._state == REFUSED:
                self.last_error = writer._read_only_message()  # noqa: SLF001
            else:
                self.last_error = ""
        _LOG.info("fleet map %s connected (schema %s)", self.target_description, self.schema)

    def _set_down(self, exc: BaseException, state: str = DISCONNECTED) -> None:
        with self._lock:
            was = self._state
            self._state = state
            self.last_error = " ".join(scrub(str(exc), self._target).split())
            for store in (self._reader, self._writer):
                if store is not None:
                    store.close()
            self._reader = self._writer = None
        if was != state:
            _LOG.warning("fleet map %s: %s (%s)", self.target_description, state, self.last_error)
        self._wake.set()

    def _run(self) -> None:
        delay = self._retry[0]
        while not self._stop.is_set():
            if self._state != CONNECTED:
                if self._stop.wait(delay):
                    return
                try:
                    self._connect()
                    delay = self._retry[0]
                except StoreUnavailableError as exc:
                    self._set_down(exc)
                    delay = min(2 * delay, self._retry[1])
                    continue
                except Exception as exc:  # dim/fingerprint/schema mismatch, privileges: configuration errors
                    self._set_down(exc, REFUSED)
                    delay = self._retry[1]
                    continue
            try:
                flushed = self._flush_some()
            except StoreUnavailableError as exc:
                self._set_down(exc)
                continue
            except ReadOnlyStoreError as exc:
                with self._lock:
                    self._state, self.last_error = REFUSED, str(exc)
                delay = self._retry[1]
                continue
            except Exception as exc:  # e.g. an id collision or a full disk: keep the entries, report, retry
                _LOG.exception("fleet map %s: flushing the outbox failed", self.target_description)
                with self._lock:
                    self.last_error = " ".join(scrub(str(exc), self._target).split())
                self._stop.wait(self._retry[1])
                continue
            if not flushed:
                self._wake.wait(timeout=1.0)
                self._wake.clear()

    def _flush_some(self) -> int:
        entries = self._outbox.peek(self._flush_batch)
        writer = self._writer
        if not entries or writer is None:
            return 0
        with self._flush_lock:  # server commit + outbox delete, atomic for __len__
            writer.add(
                np.stack([e.descriptor for e in entries]), [e.meta for e in entries],
                features=[e.features for e in entries], thumbnails=[e.thumbnail for e in entries],
            )  # fmt: skip
            self._outbox.ack([e.seq for e in entries])
        with self._lock:
            self.flushed_total += len(entries)
            self._pending.difference_update(int(e.meta.place_id) for e in entries)
        return len(entries)

    def flush(self, timeout_s: float = 10.0) -> bool:
        """Wait until the outbox is empty (True) or ``timeout_s`` passed (False)."""
        deadline = time.monotonic() + timeout_s
        while self._outbox.depth():
            if time.monotonic() > deadline:
                return False
            self._wake.set()
            time.sleep(0.02)
        return True

    # ------------------------------------------------------------------ properties
    @property
    def dim(self) -> int:
        return self._local.dim

    @property
    def model_fingerprint(self) -> str | None:
        return self._local.model_fingerprint

    @property
    def next_keyframe_index(self) -> int:
        return self._next_kf

    @property
    def connection_state(self) -> str:
        return self._state

    @property
    def outbox_depth(self) -> int:
        return self._outbox.depth()

    @property
    def local(self) -> LocalPlaceStore:
        return self._local

    def __len__(self) -> int:
        """Places searchable now: the server's count plus the outbox when connected, else the local map's."""
        reader = self._reader
        if reader is None:
            return len(self._local)
        stamp, total = self._count_cache  # server + outbox does not change when a batch is flushed
        if time.monotonic() - stamp <= self._count_cache_s:
            return total
        try:
            with self._flush_lock:
                total = len(reader) + self.outbox_depth
        except StoreUnavailableError as exc:
            self._set_down(exc)
            return len(self._local)
        self._count_cache = (time.monotonic(), total)
        return total

    def diagnostics(self) -> dict[str, str]:
        """``/diagnostics`` key/values (strings; no credentials)."""
        reader = self._reader
        return {
            "backend": "postgresql+local",
            "target": self.target_description,
            "schema": self.schema,
            "robot_id": self.robot_id,
            "session_id": self.session_id,
            "connection_state": self._state,
            "outbox_depth": str(self.outbox_depth),
            "outbox_oldest_age_s": f"{self._outbox.oldest_age_s():.1f}",
            "flushed_total": str(self.flushed_total),
            "server_queries": str(self.server_queries),
            "fallback_queries": str(self.fallback_queries),
            "places_local": str(len(self._local)),
            "read_only": str(self.read_only).lower(),
            "search_mode": reader.search_mode if reader is not None else "local",
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
        """Queue places durably (outbox) and add them to the local map; returns their fleet ids."""
        if self.read_only:
            raise ReadOnlyStoreError(
                f"fleet map {self.target_description} schema {self.schema!r} is read-only for this role: "
                f"writes are refused (a localisation-only robot; use a role in {schema_mod.WRITER_ROLE})"
            )
        vectors = prepare_descriptors(descriptors, self.dim)
        metas = prepare_metas(metas, len(vectors))
        feats = prepare_blobs(features, len(vectors), "features")
        thumbs = prepare_blobs(thumbnails, len(vectors), "thumbnails")
        with self._lock:
            next_kf = self._next_kf
            fleet_metas = []
            for meta in metas:
                robot, session = identity_of(meta, self.robot_id, self.session_id)
                kf = meta.keyframe_index if meta.keyframe_index is not None else next_kf
                if (robot, session) == (self.robot_id, self.session_id):
                    next_kf = max(next_kf, kf + 1)
                meta = dataclasses.replace(with_identity(meta, robot, session), keyframe_index=kf)
                fleet_metas.append(dataclasses.replace(meta, place_id=fleet_place_id(robot, session, kf)))
            self._outbox.put(fleet_metas, vectors, feats, thumbs)  # durable before anything else
            local_ids = self._local.add(vectors, fleet_metas, features=feats, thumbnails=thumbs)
            ids = [int(m.place_id) for m in fleet_metas]
            for lid, gid in zip(local_ids, ids, strict=True):
                self._l2g[int(lid)] = gid
                self._g2l[gid] = int(lid)
            self._pending.update(ids)
            self._next_kf = next_kf
            self._count_cache = (0.0, 0)
        self._wake.set()
        return np.asarray(ids, dtype=np.int64)

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
    ) -> list[FleetMatch] | list[list[FleetMatch]]:
        """Top-``k`` places (fleet ids): the server when connected, else the local map."""
        if int(k) < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        queries = prepare_descriptors(query, self.dim)
        filters = dict(
            query_stamp_ns=query_stamp_ns, exclusion_window_s=exclusion_window_s,
            query_keyframe_index=query_keyframe_index, exclusion_keyframes=exclusion_keyframes,
            exclude_ids=None if exclude_ids is None else [int(i) for i in exclude_ids], robots=robots,
            exclude_robots=exclude_robots, sessions=sessions, exclude_sessions=exclude_sessions,
        )  # fmt: skip
        results = [self._search_one(q, int(k), filters) for q in queries]
        return results[0] if np.ndim(query) == 1 else results

    def _search_one(self, query: np.ndarray, k: int, filters: dict) -> list[FleetMatch]:
        reader = self._reader
        if reader is not None:
            pending = bool(self._pending)  # before the query: a flush may land while it runs
            try:
                matches = reader.search(query, k, **filters)
            except StoreUnavailableError as exc:
                self._set_down(exc)
            else:
                self.server_queries += 1
                if pending:
                    matches = self._merge_own(query, k, filters, matches)
                return matches
        self.fallback_queries += 1
        return self._local_search(query, k, filters)

    def _local_search(self, query: np.ndarray, k: int, filters: dict) -> list[FleetMatch]:
        filters = dict(filters)
        if filters["exclude_ids"]:
            filters["exclude_ids"] = [self._g2l[g] for g in filters["exclude_ids"] if g in self._g2l]
        matches = self._local.search(query, k, **filters)
        return [self._to_fleet(m, rank) for rank, m in enumerate(matches)]

    def _to_fleet(self, match: FleetMatch, rank: int) -> FleetMatch:
        gid = self._l2g[match.place_id]
        return dataclasses.replace(
            match, place_id=gid, rank=rank, meta=dataclasses.replace(match.meta, place_id=gid)
        )

    def _merge_own(
        self, query: np.ndarray, k: int, filters: dict, matches: list[FleetMatch]
    ) -> list[FleetMatch]:
        """Merge in this session's local places: some are still in the outbox, not yet on the server.

        All own places take part (not only those pending now): a batch flushed while the server query
        ran is in neither the server's answer nor the outbox. Duplicates are dropped by fleet id.
        """
        robots, sessions = filters["robots"], filters["sessions"]
        if robots is not None and self.robot_id not in (
            [robots] if isinstance(robots, str) else list(robots)
        ):
            return matches
        if sessions is not None and self.session_id not in (
            [sessions] if isinstance(sessions, str) else list(sessions)
        ):
            return matches
        local = self._local_search(
            query, k, {**filters, "robots": [self.robot_id], "sessions": [self.session_id]}
        )
        seen = {m.place_id for m in matches}
        extra = [m for m in local if m.place_id not in seen]
        if not extra:
            return matches
        merged = sorted(matches + extra, key=lambda m: -m.similarity)[:k]
        return [dataclasses.replace(m, rank=rank) for rank, m in enumerate(merged)]

    def _server_or_local(self, method: str, place_ids: Iterable[int]) -> dict:
        ids = [int(i) for i in place_ids]
        found: dict = {}
        reader = self._reader
        if reader is not None:
            try:
                found = getattr(reader, method)(ids)
            except StoreUnavailableError as exc:
                self._set_down(exc)
        missing = [self._g2l[g] for g in ids if g not in found and g in self._g2l]
        if missing:
            local = getattr(self._local, method)(missing)
            for lid, value in local.items():
                gid = self._l2g[lid]
                found[gid] = (
                    dataclasses.replace(value, place_id=gid) if isinstance(value, PlaceMeta) else value
                )
        return found

    def get_metas(self, place_ids: Iterable[int]) -> dict[int, FleetPlaceMeta]:
        """Metadata by fleet id (server, else local; unknown ids absent)."""
        return self._server_or_local("get_metas", place_ids)

    def get(self, place_id: int) -> FleetPlaceMeta:
        meta = self.get_metas([place_id]).get(int(place_id))
        if meta is None:
            raise KeyError(f"no place with id {place_id}")
        return meta

    def get_features(self, place_ids: Iterable[int]) -> dict[int, bytes | None]:
        return self._server_or_local("get_features", place_ids)

    def get_thumbnails(self, place_ids: Iterable[int]) -> dict[int, bytes | None]:
        return self._server_or_local("get_thumbnails", place_ids)

    def get_thumbnail(self, place_id: int) -> bytes | None:
        return self.get_thumbnails([place_id]).get(int(place_id))

    def normalize(self, descriptor: np.ndarray) -> np.ndarray:
        """One ``(dim,)`` descriptor checked and L2-normalised, as :meth:`PlaceMap.normalize`."""
        return normalize_one(descriptor, self.dim)

    # ------------------------------------------------------------------ lifecycle
    def save(self, path: str | Path | None = None) -> Path:
        """Save the local map (the outbox is always durable; the server commits every flush)."""
        return self._local.save(path)

    def close(self, flush_timeout_s: float = 2.0) -> None:
        """Try to flush for up to ``flush_timeout_s`` (the outbox keeps the rest), then release everything."""
        if self._state == CONNECTED and flush_timeout_s > 0:
            self.flush(flush_timeout_s)
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=10)
        with self._lock:
            for store in (self._reader, self._writer):
                if store is not None:
                    store.close()
            self._reader = self._writer = None
            self._outbox.close()
            self._local.close()

    def __enter__(self) -> FleetPlaceStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
