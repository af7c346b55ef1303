"""LocalPlaceStore: a :class:`PlaceMap` plus a fleet sidecar, with the same API as the PostgreSQL store.

The sidecar is a folder next to the map, ``<map>.fleet/`` (the map folder itself accepts no foreign
files): ``places.sqlite`` holds each place's ``(robot_id, session_id)`` -- places without a row are
*unlabelled* (maps built before fleets existed, e.g. by ``tscm_build_map``) -- and, while
:class:`PlaceMap` has no feature storage of its own, the per-place ``features``/``thumbnail`` blobs;
``pca.json`` holds a PCA projection pulled with the map; ``outbox.sqlite`` is the robot's outbox
(:mod:`tscm_ros.fleet.outbox`).

Consistency with the map: sidecar rows are committed at add() time, the map at save() time. On open,
rows of place ids the saved map never reached (ids above its largest id; ids are never reused) are
dropped, so a crash between the two leaves no stale identities.

Local ids are the map's own place ids. Exclusion windows (time, keyframes) apply to the store's own
(robot, session) places and to unlabelled places (``exclusion_scope="session"``), or to all places
(``"all"``); with a single-session map both are what :meth:`PlaceMap.search` does.
"""

from __future__ import annotations

import inspect
import logging
import shutil
import sqlite3
import tempfile
import threading
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import faiss
import numpy as np

from ..placemap import PlaceMap
from ..placemap.errors import MapDimensionError, MapError, MapNotFoundError
from ..placemap.records import Match, PlaceMeta
from .common import (
    EXCLUSION_SCOPES,
    SearchFilter,
    normalize_one,
    prepare_blobs,
    prepare_descriptors,
    prepare_metas,
)
from .pca import PcaProjection
from .records import FleetMatch, FleetPlaceMeta, identity_of, with_identity

_LOG = logging.getLogger(__name__)
SIDECAR_SUFFIX = ".fleet"
SIDECAR_DB = "places.sqlite"
PCA_FILE = "pca.json"
OUTBOX_FILE = "outbox.sqlite"
_CHUNK = 500
_SCHEMA = """
CREATE TABLE IF NOT EXISTS identity (
    place_id INTEGER PRIMARY KEY,
    robot_id TEXT NOT NULL,
    session_id TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS blobs (place_id INTEGER PRIMARY KEY, features BLOB, thumbnail BLOB);
CREATE TABLE IF NOT EXISTS info (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


def sidecar_dir(map_path: str | Path) -> Path:
    """``<map>.fleet`` next to the map folder."""
    path = Path(map_path)
    return path.parent / (path.name + SIDECAR_SUFFIX)


def _map_stores_blobs() -> bool:
    """Whether this PlaceMap keeps features/thumbnails itself (``add(..., features=...)``)."""
    return "features" in inspect.signature(PlaceMap.add).parameters and hasattr(PlaceMap, "get_features")


class _Sidecar:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.conn = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA synchronous=NORMAL")
        self.conn.executescript(_SCHEMA)

    def close(self) -> None:
        self.conn.close()

    def prune_above(self, max_id: int) -> int:
        with self.conn:
            self.conn.execute("BEGIN")
            removed = self.conn.execute("DELETE FROM identity WHERE place_id > ?", (max_id,)).rowcount
            self.conn.execute("DELETE FROM blobs WHERE place_id > ?", (max_id,))
        return removed

    def identities(self) -> dict[int, tuple[str, str]]:
        return {
            int(p): (r, s)
            for p, r, s in self.conn.execute("SELECT place_id, robot_id, session_id FROM identity")
        }

    def insert(
        self, ids: Sequence[int], identities: Sequence[tuple[str, str]], blobs: Sequence[tuple]
    ) -> None:
        with self.conn:
            self.conn.execute("BEGIN")
            self.conn.executemany(
                "INSERT OR REPLACE INTO identity VALUES (?, ?, ?)",
                [(int(i), r, s) for i, (r, s) in zip(ids, identities, strict=True)],
            )
            self.conn.executemany("INSERT OR REPLACE INTO blobs VALUES (?, ?, ?)", blobs)

    def blobs(self, column: str, ids: Sequence[int]) -> dict[int, bytes | None]:
        if column not in ("features", "thumbnail"):
            raise ValueError(column)
        out: dict[int, bytes | None] = {}
        for start in range(0, len(ids), _CHUNK):
            chunk = [int(i) for i in ids[start : start + _CHUNK]]
            query = f"SELECT place_id, {column} FROM blobs WHERE place_id IN ({','.join('?' * len(chunk))})"
            out.update((int(p), v) for p, v in self.conn.execute(query, chunk))
        return out

    def copy_to(self, destination: Path) -> None:
        destination.parent.mkdir(parents=True, exist_ok=True)
        target = sqlite3.connect(str(destination))
        try:
            self.conn.backup(target)
        finally:
            target.close()


class LocalPlaceStore:
    """A local place map with robot/session identity per place. Thread-safe (one lock)."""

    def __init__(
        self,
        place_map: PlaceMap,
        path: Path | None,
        *,
        robot_id: str = "",
        session_id: str = "",
        exclusion_scope: str = "session",
    ) -> None:
        if exclusion_scope not in EXCLUSION_SCOPES:
            raise ValueError(f"exclusion_scope must be one of {EXCLUSION_SCOPES}, got {exclusion_scope!r}")
        self.place_map = place_map
        self.path = Path(path) if path is not None else None
        self.robot_id, self.session_id = str(robot_id), str(session_id)
        self.exclusion_scope = exclusion_scope
        self._lock = threading.RLock()
        self._temp_dir: Path | None = None
        if self.path is None:
            self._temp_dir = Path(tempfile.mkdtemp(prefix="tscm_fleet_sidecar_"))
            self.sidecar_path = self._temp_dir
        else:
            self.sidecar_path = sidecar_dir(self.path)
        self._sidecar = _Sidecar(self.sidecar_path / SIDECAR_DB)
        self._blobs_in_map = _map_stores_blobs()
        ids = place_map.place_ids
        dropped = self._sidecar.prune_above(int(ids.max()) if len(ids) else -1)
        if dropped:
            _LOG.info(
                "%s: dropped %d sidecar rows of places the saved map never reached",
                self.sidecar_path,
                dropped,
            )
        self.pca: PcaProjection | None = None
        if (self.sidecar_path / PCA_FILE).is_file():
            self.pca = PcaProjection.load(self.sidecar_path / PCA_FILE)
        self._load_identity(ids)

    # ------------------------------------------------------------------ construction
    @classmethod
    def open(
        cls,
        path: str | Path | None,
        *,
        dim: int,
        model_fingerprint: str | None = None,
        robot_id: str = "",
        session_id: str = "",
        create: bool = True,
        index_spec: str = "flat",
        allow_fingerprint_mismatch: bool = False,
        autosave_period_s: float | None = None,
        exclusion_scope: str = "session",
    ) -> LocalPlaceStore:
        """Load the map at ``path`` (checking dim and fingerprint), or create an empty one if it is absent
        and ``create`` (it is written by the first :meth:`save`); ``path=None``: in memory."""
        root = Path(path) if path is not None else None
        if root is not None and root.exists():
            place_map = PlaceMap.load(
                root, dim=dim, model_fingerprint=model_fingerprint,
                allow_fingerprint_mismatch=allow_fingerprint_mismatch, autosave_period_s=autosave_period_s,
            )  # fmt: skip
        elif root is None or create:
            place_map = PlaceMap.create(
                dim, index_spec, model_fingerprint, autosave_period_s=autosave_period_s
            )
            if root is not None:
                place_map.path = root  # autosave and save() without a path write here
        else:
            raise MapNotFoundError(f"place map {root} does not exist")
        try:
            return cls(
                place_map, root, robot_id=robot_id, session_id=session_id, exclusion_scope=exclusion_scope
            )
        except BaseException:
            place_map.close()
            raise

    def _load_identity(self, ids: np.ndarray) -> None:
        rows = self._sidecar.identities()
        unlabelled = [int(i) for i in ids if int(i) not in rows]
        metas = self.place_map.get_metas(ids) if len(ids) else {}
        self._codes: dict[str, int] = {"": 0}
        self._names: list[str] = [""]
        self._ids: list[int] = []
        self._robot: list[int] = []
        self._session: list[int] = []
        self._stamp: list[int] = []
        self._kf: list[int] = []
        self._row_of: dict[int, int] = {}
        for place_id in (int(i) for i in ids):
            robot, session = rows.get(place_id, ("", ""))
            meta = metas[place_id]
            self._append(place_id, robot, session, meta.stamp_ns, meta.keyframe_index)
        self._arrays_cache: tuple[np.ndarray, ...] | None = None
        own = self._own_mask()
        kfs = np.asarray(self._kf, np.int64)
        self._next_own_kf = int(kfs[own].max()) + 1 if own.any() else 0
        if own.all():
            self._next_own_kf = max(self._next_own_kf, self.place_map.next_keyframe_index)
        if unlabelled and len(unlabelled) != len(ids):
            _LOG.info("%s: %d of %d places carry no robot/session", self.path, len(unlabelled), len(ids))

    def _code(self, name: str) -> int:
        code = self._codes.get(name)
        if code is None:
            code = self._codes[name] = len(self._names)
            self._names.append(name)
        return code

    def _append(self, place_id: int, robot: str, session: str, stamp: int, kf: int) -> None:
        self._row_of[place_id] = len(self._ids)
        self._ids.append(place_id)
        self._robot.append(self._code(robot))
        self._session.append(self._code(session))
        self._stamp.append(int(stamp))
        self._kf.append(int(kf))
        self._arrays_cache = None

    def _arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        if self._arrays_cache is None:
            self._arrays_cache = (
                np.asarray(self._ids, np.int64), np.asarray(self._robot, np.int32),
                np.asarray(self._session, np.int32), np.asarray(self._stamp, np.int64),
                np.asarray(self._kf, np.int64),
            )  # fmt: skip
        return self._arrays_cache

    def _own_mask(self) -> np.ndarray:
        _, robots, sessions, _, _ = self._arrays()
        own = (robots == self._codes.get(self.robot_id, -1)) & (
            sessions == self._codes.get(self.session_id, -1)
        )
        return own | ((robots == 0) & (sessions == 0))

    # ------------------------------------------------------------------ properties
    @property
    def dim(self) -> int:
        return self.place_map.dim

    @property
    def model_fingerprint(self) -> str | None:
        return self.place_map.model_fingerprint

    @property
    def next_keyframe_index(self) -> int:
        """The next keyframe index of this store's own session."""
        return self._next_own_kf

    @property
    def connection_state(self) -> str:
        return "local"

    @property
    def outbox_depth(self) -> int:
        return 0

    def __len__(self) -> int:
        return len(self.place_map)

    def __enter__(self) -> LocalPlaceStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def diagnostics(self) -> dict[str, str]:
        return {
            "backend": "local",
            "target": str(self.path) if self.path else "(in memory)",
            "robot_id": self.robot_id,
            "session_id": self.session_id,
            "connection_state": "local",
            "outbox_depth": "0",
            "places_local": str(len(self)),
        }

    def fleet_ids(self) -> dict[int, int]:
        """``{local id: fleet id}`` of every place (unlabelled places hash with robot and session "")."""
        from .records import fleet_place_id

        with self._lock:
            return {
                pid: fleet_place_id(self._names[r], self._names[s], kf)
                for pid, r, s, kf in zip(self._ids, self._robot, self._session, self._kf, strict=True)
            }

    def identity(self, place_id: int) -> tuple[str, str]:
        """(robot_id, session_id) of a local place ("" for unlabelled ones); KeyError when unknown."""
        row = self._row_of[int(place_id)]
        return self._names[self._robot[row]], self._names[self._session[row]]

    def sessions(self) -> list[tuple[str, str, int]]:
        """(robot_id, session_id, places) of every session in the map."""
        _, robots, sessions, _, _ = self._arrays()
        pairs, counts = np.unique(np.stack([robots, sessions], axis=1), axis=0, return_counts=True) if len(
            robots
        ) else (np.zeros((0, 2), np.int32), np.zeros(0, np.int64))  # fmt: skip
        return [(self._names[r], self._names[s], int(n)) for (r, s), n in zip(pairs, counts, strict=True)]

    # ------------------------------------------------------------------ writes
    def add(
        self,
        descriptors: np.ndarray,
        metas: Sequence[PlaceMeta] | PlaceMeta,
        *,
        features: Sequence[bytes | None] | bytes | None = None,
        thumbnails: Sequence[bytes | None] | bytes | None = None,
    ) -> np.ndarray:
        """Add places; returns their local ids. Identity: the meta's (FleetPlaceMeta) or the store's."""
        vectors = prepare_descriptors(descriptors, self.dim)
        metas = prepare_metas(metas, len(vectors))
        feats = prepare_blobs(features, len(vectors), "features")
        thumbs = prepare_blobs(thumbnails, len(vectors), "thumbnails")
        with self._lock:
            next_kf = self._next_own_kf
            plain, identities = [], []
            for meta in metas:
                robot, session = identity_of(meta, self.robot_id, self.session_id)
                own = (robot, session) in ((self.robot_id, self.session_id), ("", ""))
                kf = meta.keyframe_index if meta.keyframe_index is not None else next_kf
                if own:
                    next_kf = max(next_kf, kf + 1)
                plain.append(PlaceMeta(stamp_ns=meta.stamp_ns, frame_id=meta.frame_id, source=meta.source,
                                       keyframe_index=kf, pose=meta.pose, utm=meta.utm))  # fmt: skip
                identities.append((robot, session))
            if self._blobs_in_map:
                ids = self.place_map.add(vectors, plain, features=feats, thumbnails=thumbs)
                blob_rows = []
            else:
                ids = self.place_map.add(vectors, plain)
                blob_rows = [(int(i), f, t) for i, f, t in zip(ids, feats, thumbs, strict=True) if f or t]
            labelled = [
                (int(i), ident) for i, ident in zip(ids, identities, strict=True) if ident != ("", "")
            ]
            self._sidecar.insert([i for i, _ in labelled], [ident for _, ident in labelled], blob_rows)
            for place_id, meta, (robot, session) in zip(ids, plain, identities, strict=True):
                self._append(int(place_id), robot, session, meta.stamp_ns, meta.keyframe_index)
            self._next_own_kf = next_kf
        return ids

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
        """Top-``k`` places (:class:`FleetMatch`), filters as :meth:`PgPlaceStore.search`."""
        filt = SearchFilter.build(
            query_stamp_ns=query_stamp_ns, exclusion_window_s=exclusion_window_s,
            query_keyframe_index=query_keyframe_index, exclusion_keyframes=exclusion_keyframes,
            exclude_ids=exclude_ids, robots=robots, exclude_robots=exclude_robots, sessions=sessions,
            exclude_sessions=exclude_sessions,
        )  # fmt: skip
        with self._lock:
            excluded = self.excluded_ids(filt)
            results = self.place_map.search(query, k, exclude_ids=excluded)
            if np.ndim(query) == 1:
                return self._fleet_matches(results)
            return [self._fleet_matches(row) for row in results]

    def excluded_ids(self, filt: SearchFilter) -> np.ndarray:
        """Local ids a query with ``filt`` must not return."""
        ids, robots, sessions, stamps, kfs = self._arrays()
        mask = np.zeros(len(ids), bool)

        def codes(names: Iterable[str]) -> list[int]:
            return [self._codes[n] for n in names if n in self._codes]

        if filt.robots is not None:
            mask |= ~np.isin(robots, codes(filt.robots))
        if filt.exclude_robots:
            mask |= np.isin(robots, codes(filt.exclude_robots))
        if filt.sessions is not None:
            mask |= ~np.isin(sessions, codes(filt.sessions))
        if filt.exclude_sessions:
            mask |= np.isin(sessions, codes(filt.exclude_sessions))
        scope = self._own_mask() if self.exclusion_scope == "session" else np.ones(len(ids), bool)
        if filt.stamp_cutoff_ns is not None:
            mask |= scope & (stamps > filt.stamp_cutoff_ns)
        if filt.keyframe_window is not None:
            lo, hi = filt.keyframe_window
            mask |= scope & (kfs >= lo) & (kfs <= hi)
        excluded = ids[mask]
        if filt.exclude_ids:
            excluded = np.concatenate([excluded, np.asarray(filt.exclude_ids, np.int64)])
        return excluded

    def _fleet_matches(self, matches: list[Match]) -> list[FleetMatch]:
        out = []
        for rank, match in enumerate(matches):
            robot, session = self.identity(match.place_id)
            out.append(FleetMatch(place_id=match.place_id, similarity=match.similarity, rank=rank,
                                  meta=with_identity(match.meta, robot, session), robot_id=robot,
                                  session_id=session))  # fmt: skip
        return out

    # ------------------------------------------------------------------ reads
    def get_metas(self, place_ids: Iterable[int]) -> dict[int, FleetPlaceMeta]:
        with self._lock:
            metas = self.place_map.get_metas(place_ids)
            return {pid: with_identity(meta, *self.identity(pid)) for pid, meta in metas.items()}

    def get(self, place_id: int) -> FleetPlaceMeta:
        meta = self.get_metas([place_id]).get(int(place_id))
        if meta is None:
            raise KeyError(f"no place with id {place_id}")
        return meta

    def _blobs(self, column: str, place_ids: Iterable[int]) -> dict[int, bytes | None]:
        ids = [int(i) for i in place_ids]
        with self._lock:
            known = [i for i in ids if i in self._row_of]
            if self._blobs_in_map and column == "features":
                found = self.place_map.get_features(known)
            elif self._blobs_in_map:  # PlaceMap reads thumbnails one at a time
                found = {i: self.place_map.get_thumbnail(i) for i in known}
            else:
                found = self._sidecar.blobs(column, known)
        return {i: found.get(i) for i in known}

    def get_features(self, place_ids: Iterable[int]) -> dict[int, bytes | None]:
        """Feature blobs by local id: bytes, or None for a known place stored without; unknown ids absent."""
        return self._blobs("features", place_ids)

    def get_thumbnails(self, place_ids: Iterable[int]) -> dict[int, bytes | None]:
        return self._blobs("thumbnail", place_ids)

    def get_thumbnail(self, place_id: int) -> bytes | None:
        """The JPEG thumbnail of one place (None when it has none or is unknown), as PlaceMap has it."""
        return self.get_thumbnails([place_id]).get(int(place_id))

    def normalize(self, descriptor: np.ndarray) -> np.ndarray:
        """One ``(dim,)`` descriptor checked and L2-normalised, as :meth:`PlaceMap.normalize`."""
        return normalize_one(descriptor, self.dim)

    def get_descriptors(self, place_ids: Sequence[int]) -> np.ndarray:
        """(N, dim) float32 descriptors reconstructed from the faiss index (exact for flat/HNSW maps).

        Uses the map's index directly: PlaceMap has no public accessor yet (see docs/FLEET.md).
        """
        ids = np.asarray([int(i) for i in place_ids], np.int64)
        if len(ids) == 0:
            return np.zeros((0, self.dim), np.float32)
        index = self.place_map._index  # noqa: SLF001
        if self.place_map.spec.pca_dim is not None and self.place_map.is_trained:
            _LOG.warning("%s: descriptors of a PCA-indexed map are reconstructed approximately", self.path)
        try:
            if self.place_map.spec.kind == "ivf" and self.place_map.is_trained:
                faiss.extract_index_ivf(index).make_direct_map()
            out = np.vstack([index.reconstruct(int(i)) for i in ids]).astype(np.float32)
        except RuntimeError as exc:
            raise MapError(f"{self.path}: cannot read descriptors back from the index ({exc})") from exc
        if out.shape[1] != self.dim:
            raise MapDimensionError(f"reconstructed {out.shape[1]}-d descriptors from a {self.dim}-d map")
        return out

    def iter_places(
        self,
        *,
        robots: Iterable[str] | None = None,
        sessions: Iterable[str] | None = None,
        since_ns: int | None = None,
        until_ns: int | None = None,
        label: tuple[str, str] | None = None,
        with_blobs: bool = True,
        batch: int = 1000,
    ) -> Iterator[tuple[FleetPlaceMeta, np.ndarray, bytes | None, bytes | None]]:
        """Stream ``(meta, descriptor, features, thumbnail)`` in id order; ``label`` names unlabelled places
        (applied before the robot/session filters)."""
        with self._lock:
            ids, robot_codes, session_codes, stamps, _ = self._arrays()
            names = np.asarray(self._names, dtype=object)
            robot_names, session_names = names[robot_codes], names[session_codes]
            if label is not None:
                blank = (robot_codes == 0) & (session_codes == 0)
                robot_names = np.where(blank, label[0], robot_names)
                session_names = np.where(blank, label[1], session_names)
            keep = np.ones(len(ids), bool)
            if robots is not None:
                keep &= np.isin(robot_names, list(robots))
            if sessions is not None:
                keep &= np.isin(session_names, list(sessions))
            if since_ns is not None:
                keep &= stamps >= since_ns
            if until_ns is not None:
                keep &= stamps <= until_ns
            selected = np.flatnonzero(keep)
        for start in range(0, len(selected), batch):
            rows = selected[start : start + batch]
            chunk = [int(ids[r]) for r in rows]
            with self._lock:
                vectors = self.get_descriptors(chunk)
                metas = self.place_map.get_metas(chunk)
                feats = self.get_features(chunk) if with_blobs else {}
                thumbs = self.get_thumbnails(chunk) if with_blobs else {}
            for j, (row, place_id) in enumerate(zip(rows, chunk, strict=True)):
                meta = with_identity(metas[place_id], str(robot_names[row]), str(session_names[row]))
                yield meta, vectors[j], feats.get(place_id), thumbs.get(place_id)

    # ------------------------------------------------------------------ persistence
    def set_pca(self, projection: PcaProjection | None) -> None:
        """Keep ``projection`` with the map (``<map>.fleet/pca.json``; None removes it)."""
        with self._lock:
            target = self.sidecar_path / PCA_FILE
            if projection is None:
                target.unlink(missing_ok=True)
            else:
                if projection.dim != self.dim:
                    raise MapDimensionError(f"PCA for {projection.dim}-d descriptors, map is {self.dim}-d")
                projection.save(target)
            self.pca = projection

    def save(self, path: str | Path | None = None) -> Path:
        """Save the map atomically (see :meth:`PlaceMap.save`); the sidecar follows a new ``path``."""
        with self._lock:
            version = self.place_map.save(path)
            new_root = Path(path) if path is not None else self.path
            if new_root is not None and new_root != self.path:
                new_sidecar = sidecar_dir(new_root)
                self._sidecar.copy_to(new_sidecar / SIDECAR_DB)
                if self.pca is not None:
                    self.pca.save(new_sidecar / PCA_FILE)
                self._sidecar.close()
                self._sidecar = _Sidecar(new_sidecar / SIDECAR_DB)
                self.sidecar_path, self.path = new_sidecar, new_root
                if self._temp_dir is not None:
                    shutil.rmtree(self._temp_dir, ignore_errors=True)
                    self._temp_dir = None
            return version

    def close(self) -> None:
        with self._lock:
            self.place_map.close()
            self._sidecar.close()
            if self._temp_dir is not None:
                shutil.rmtree(self._temp_dir, ignore_errors=True)
                self._temp_dir = None
