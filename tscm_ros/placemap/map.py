"""PlaceMap: a faiss index of L2-normalised descriptors plus SQLite metadata, saved atomically.

Each place may also carry opaque local-feature bytes and a thumbnail (SQLite tables with a CRC-32 per
row, saved with the rest). Saves are incremental when possible (see :meth:`PlaceMap.save` and
:mod:`.delta`); loads validate every file and field (:mod:`.validate`).

Training rule (IVF and PCA specs): until the map holds ``spec.train_threshold`` places, descriptors are
kept in an exact inner-product buffer (searched exactly, saved as such). The add() that reaches the
threshold trains the spec's index on every buffered descriptor, moves them into it and drops the buffer;
later adds go straight into the trained index (it is never re-trained).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import shutil
import sqlite3
import threading
import time
import weakref
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import faiss
import numpy as np

from tscm_ros.descriptors import normalize_rows
from tscm_ros.poses import NS_PER_S as _NS_PER_S

from . import delta, layout, persist, validate
from .errors import MapCorruptError, MapDimensionError, MapError, MapFingerprintError, MapFullError, one_line
from .records import FeatureStats, Match, PlaceMeta
from .spec import IndexSpec, search_parameters
from .store import SCHEMA_VERSION, MetadataStore, as_blob
from .validate import FORMAT, FORMAT_VERSION
from .workdir import WorkDir

_FLAT = IndexSpec()
_LOG = logging.getLogger(__name__)


@contextlib.contextmanager
def _faiss_threads(count: int | None):
    """faiss's OpenMP threads for the calling thread only (an OpenMP ICV is per thread); None: unchanged.

    A single query on a flat index ran 1.5x faster on one thread than on two (9.6 vs 14.6 ms at 35k x 2048
    on the 2-core development machine, quiet): the scan is memory-bound and the second thread only adds
    OpenMP hand-over, while on a robot it competes with inference for the same cores.
    """
    if count is None:
        yield
        return
    previous = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(count)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(previous)


class _Column:
    """A growable int64 array (amortised O(1) append)."""

    def __init__(self, values: np.ndarray | None = None) -> None:
        values = np.zeros(0, np.int64) if values is None else np.asarray(values, np.int64)
        self._data = np.empty(max(16, 2 * len(values)), np.int64)
        self._data[: len(values)] = values
        self._size = len(values)

    @property
    def values(self) -> np.ndarray:
        return self._data[: self._size]

    def extend(self, values: np.ndarray) -> None:
        need = self._size + len(values)
        if need > len(self._data):
            grown = np.empty(max(need, 2 * len(self._data)), np.int64)
            grown[: self._size] = self.values
            self._data = grown
        self._data[self._size : need] = values
        self._size = need

    def keep(self, mask: np.ndarray) -> None:
        kept = self.values[mask]
        self._data[: len(kept)] = kept
        self._size = len(kept)


@dataclass
class _Pending:
    """Changes since the last save, for the next incremental save (see :mod:`.delta`)."""

    add_ids: list[np.ndarray] = field(default_factory=list)
    add_vectors: list[np.ndarray] = field(default_factory=list)
    removed: list[np.ndarray] = field(default_factory=list)  # ids removed from the faiss index
    touched: set[int] = field(default_factory=set)  # ids whose SQLite rows changed
    n_vectors: int = 0

    def clear(self) -> None:
        self.add_ids, self.add_vectors, self.removed, self.touched, self.n_vectors = [], [], [], set(), 0


@dataclass(frozen=True)
class _Chain:
    """The saved version that the next incremental save builds on (``meta``: its map.json)."""

    root: Path  # resolved map directory
    version: str  # version folder name
    meta: dict
    generation: int  # changes with every full save / compaction: a compaction started before is stale


# Auto-compaction: after a save whose chain has this many deltas, or whose deltas are this large a
# fraction of the base, compact in the background. Past MAX_CHAIN deltas a save is a full save.
COMPACT_AFTER_DELTAS = 64
COMPACT_BYTES_RATIO = 0.25
MAX_CHAIN = 1000


def _utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class PlaceMap:
    """Places (keyframes) with a descriptor each, optional local features and a thumbnail.

    Thread-safe: every public method takes one lock. Build with :meth:`create` or :meth:`load`; persist
    with :meth:`save`. Place ids are int64, assigned in increasing order and never reused, also across
    save/load. ``max_places`` (optional) is a growth budget: an :meth:`add` that would exceed it raises
    :class:`MapFullError` and adds nothing.
    """

    def __init__(
        self,
        *,
        dim: int,
        spec: IndexSpec,
        index: faiss.Index,
        trained: bool,
        store: MetadataStore,
        workdir: WorkDir,
        info: dict,
        autosave_period_s: float | None = None,
        max_places: int | None = None,
    ) -> None:
        self._lock = threading.RLock()
        self._save_lock = threading.Lock()  # one save (or compaction commit) at a time; taken before _lock
        self._writer = layout.WriterLock()
        self._dim = dim
        self._spec = spec
        self._index = index
        self._trained = trained
        self._store = store
        self._workdir = workdir
        self._finalizer = weakref.finalize(self, _cleanup, store, workdir, self._writer)
        self._info = info  # persisted map.json fields: fingerprint, created, next ids
        ids, stamps, keyframes = store.arrays()
        self._ids, self._stamps, self._keyframes = _Column(ids), _Column(stamps), _Column(keyframes)
        self._tombstones = store.tombstones()
        self._damaged: dict[str, set[int]] = {"features": set(), "thumbnails": set()}
        self._damage_counts = {"features": 0, "thumbnails": 0}
        self._max_places = _check_max_places(max_places)
        self.path: Path | None = None
        self.autosave_period_s = autosave_period_s
        self._last_save = time.monotonic()
        self._chain: _Chain | None = None
        self._generation = 0
        self._pending = _Pending()
        self._tracking = False  # a saved version exists (or is being written) that deltas can extend
        self._needs_full = False
        self.last_saved_places: int | None = None  # places in the version last saved (None: not saved)
        self.compact_after_deltas: int | None = COMPACT_AFTER_DELTAS  # None: never compact automatically
        self._compactor: threading.Thread | None = None

    # ------------------------------------------------------------------ construction
    @classmethod
    def create(
        cls,
        dim: int,
        index_spec: str | IndexSpec | None = "flat",
        model_fingerprint: str | None = None,
        *,
        autosave_period_s: float | None = None,
        max_places: int | None = None,
    ) -> PlaceMap:
        """An empty map for ``dim``-d descriptors. ``index_spec``: see :class:`IndexSpec`."""
        dim = int(dim)
        spec = IndexSpec.parse(index_spec)
        spec.validate_for(dim)
        _check_max_places(max_places)
        trained = not spec.needs_training
        index = spec.build(dim) if trained else _FLAT.build(dim)
        workdir = WorkDir()
        now = _utc_now()
        info = {
            "model_fingerprint": model_fingerprint,
            "created_utc": now,
            "updated_utc": now,
            "next_place_id": 0,
            "next_keyframe_index": 0,
        }
        try:
            store = MetadataStore(workdir.path / layout.DB_FILE)
        except BaseException:
            workdir.release()
            raise
        return cls(
            dim=dim, spec=spec, index=index, trained=trained, store=store, workdir=workdir, info=info,
            autosave_period_s=autosave_period_s, max_places=max_places,
        )  # fmt: skip

    @classmethod
    def load(
        cls,
        path: str | Path,
        *,
        dim: int | None = None,
        model_fingerprint: str | None = None,
        allow_fingerprint_mismatch: bool = False,
        autosave_period_s: float | None = None,
        max_places: int | None = None,
    ) -> PlaceMap:
        """Load and validate a saved map; later :meth:`save` calls without a path write back to it.

        ``dim`` / ``model_fingerprint``: what the caller's describer produces; a mismatch raises
        :class:`MapDimensionError` / :class:`MapFingerprintError` (the latter only logs a warning with
        ``allow_fingerprint_mismatch=True``). Every other problem (missing or damaged files, invalid
        map.json fields, a non-inner-product index, ids that disagree) raises a :class:`MapError`
        subclass with a one-line message naming the file and the field; see :mod:`.validate`.
        A map of an older metadata schema is migrated (in the working copy; saved at the next save).
        ``max_places`` may be below the loaded size: the map loads, further adds raise.
        """
        _check_max_places(max_places)
        root = Path(path)
        try:
            return cls._load(
                root, dim=dim, model_fingerprint=model_fingerprint,
                allow_fingerprint_mismatch=allow_fingerprint_mismatch,
                autosave_period_s=autosave_period_s, max_places=max_places,
            )  # fmt: skip
        except MapError:
            raise
        except (OSError, RuntimeError, TypeError, KeyError, ValueError, IndexError, OverflowError,
                MemoryError, sqlite3.Error) as exc:  # fmt: skip
            raise MapCorruptError(
                f"{root}: cannot load the place map ({type(exc).__name__}: {one_line(exc)})"
            ) from exc

    @classmethod
    def _load(
        cls,
        root: Path,
        *,
        dim: int | None,
        model_fingerprint: str | None,
        allow_fingerprint_mismatch: bool,
        autosave_period_s: float | None,
        max_places: int | None,
    ) -> PlaceMap:
        version_dir = layout.resolve_version_dir(root)
        meta, spec = validate.read_map_json(version_dir)
        map_dim = meta["dim"]
        if dim is not None and int(dim) != map_dim:
            raise MapDimensionError(f"{root}: map holds {map_dim}-d descriptors, the model produces {dim}-d")
        stored_fp = meta["model_fingerprint"]
        if model_fingerprint and stored_fp and model_fingerprint != stored_fp:
            message = (
                f"{root}: map was built with model fingerprint {stored_fp[:16]}..., the current model is "
                f"{model_fingerprint[:16]}...; its descriptors are not comparable"
            )
            if not allow_fingerprint_mismatch:
                raise MapFingerprintError(message + " (pass allow_fingerprint_mismatch=True to load anyway)")
            _LOG.warning("%s (loading anyway: allow_fingerprint_mismatch=True)", message)
        for name in persist.all_files(meta):
            validate.verify_file(version_dir / name, meta["files"][name])
        index_path = version_dir / layout.INDEX_FILE
        index = validate.read_index(index_path)
        trained = meta["index_trained"]
        validate.check_index(index, spec=spec, trained=trained, dim=map_dim, path=index_path)
        (spec if trained else _FLAT).apply_search_settings(index)
        workdir = WorkDir()
        store = None
        try:
            shutil.copyfile(version_dir / layout.DB_FILE, workdir.path / layout.DB_FILE)
            store = MetadataStore(
                workdir.path / layout.DB_FILE, create=False, label=version_dir / layout.DB_FILE
            )
            persist.apply_deltas(version_dir, meta, index, store.conn)
            ids, _, keyframes = store.arrays()
            validate.check_ids(
                index=index, place_ids=ids, tombstones=store.tombstones(), keyframes=keyframes, meta=meta,
                where=version_dir,
            )  # fmt: skip
            place_map = cls(
                dim=map_dim, spec=spec, index=index, trained=trained, store=store, workdir=workdir,
                info={k: meta[k] for k in ("model_fingerprint", "created_utc", "updated_utc",
                                           "next_place_id", "next_keyframe_index")},
                autosave_period_s=autosave_period_s, max_places=max_places,
            )  # fmt: skip
        except BaseException as exc:
            if store is not None:
                store.close()
            workdir.release()
            if isinstance(exc, (sqlite3.Error, ValueError, TypeError, OverflowError)) and not isinstance(
                exc, MapError
            ):
                raise MapCorruptError(
                    f"{version_dir / layout.DB_FILE}: unreadable metadata ({one_line(exc)})"
                ) from exc
            raise
        if store.migrated_from is not None:
            _LOG.info(
                "%s: metadata schema %d migrated to %d in the working copy (written at the next save)",
                root, store.migrated_from, SCHEMA_VERSION,
            )  # fmt: skip
        place_map.path = root
        if store.migrated_from is None and version_dir != root.resolve():  # loaded through 'current'
            place_map._generation += 1
            place_map._chain = _Chain(root.resolve(), version_dir.name, meta, place_map._generation)
            place_map._tracking = True
        return place_map

    # ------------------------------------------------------------------ properties
    @property
    def dim(self) -> int:
        return self._dim

    @property
    def spec(self) -> IndexSpec:
        return self._spec

    @property
    def model_fingerprint(self) -> str | None:
        return self._info["model_fingerprint"]

    @property
    def is_trained(self) -> bool:
        """False while an IVF/PCA map is still buffering descriptors (see module docstring)."""
        return self._trained

    @property
    def next_keyframe_index(self) -> int:
        """The keyframe index the next place added without one gets."""
        return int(self._info["next_keyframe_index"])

    @property
    def next_place_id(self) -> int:
        """The id the next added place gets (ids are never reused)."""
        return int(self._info["next_place_id"])

    @property
    def max_places(self) -> int | None:
        """Growth budget (live places; None = unlimited). May be set below ``len(self)``: adds then raise."""
        return self._max_places

    @max_places.setter
    def max_places(self, value: int | None) -> None:
        with self._lock:
            self._max_places = _check_max_places(value)

    @property
    def utilisation(self) -> float | None:
        """``len(self) / max_places`` (can exceed 1.0 after lowering the budget); None when unlimited."""
        with self._lock:
            return None if self._max_places is None else len(self) / self._max_places

    @property
    def damaged_feature_rows(self) -> int:
        """Feature rows found damaged (CRC mismatch) by :meth:`get_features`, each place counted once."""
        return self._damage_counts["features"]

    @property
    def damaged_thumbnail_rows(self) -> int:
        """Thumbnail rows found damaged by :meth:`get_thumbnail`, each place counted once."""
        return self._damage_counts["thumbnails"]

    @property
    def place_ids(self) -> np.ndarray:
        with self._lock:
            return self._ids.values.copy()

    def __len__(self) -> int:
        return len(self._ids.values)

    def __enter__(self) -> PlaceMap:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Release the working metadata copy (the saved map on disk is untouched).

        Waits for a save in progress and a background compaction to finish first, then releases the map
        directory's writer lock.
        """
        thread = self._compactor
        if thread is not None and thread is not threading.current_thread():
            thread.join()
        with self._save_lock:  # a save in progress finishes first
            self._finalizer()

    def set_search_params(self, *, ef_search: int | None = None, nprobe: int | None = None) -> None:
        """Change HNSW ``efSearch`` / IVF ``nprobe`` without rebuilding (saved with the spec)."""
        changes = {k: int(v) for k, v in (("ef_search", ef_search), ("nprobe", nprobe)) if v is not None}
        with self._lock:
            self._spec = dataclasses.replace(self._spec, **changes)
            if self._trained:
                self._spec.apply_search_settings(self._index)

    # ------------------------------------------------------------------ updates
    def add(
        self,
        descriptors: np.ndarray,
        metas: Sequence[PlaceMeta] | PlaceMeta,
        *,
        features: Sequence[bytes | None] | None = None,
        thumbnails: Sequence[bytes | None] | None = None,
    ) -> np.ndarray:
        """Add places; returns their new int64 ids. Descriptors are (re-)normalised to unit length.

        ``features`` / ``thumbnails``: one opaque blob (or None) per place, stored with the metadata in
        one transaction. Raises :class:`MapFullError` (nothing added) past ``max_places``.
        """
        vectors = self._prepare(descriptors)
        metas = [metas] if isinstance(metas, PlaceMeta) else list(metas)
        if len(metas) != len(vectors):
            raise ValueError(f"got {len(vectors)} descriptors but {len(metas)} PlaceMeta records")
        if not all(isinstance(m, PlaceMeta) for m in metas):
            raise TypeError("metas must be PlaceMeta records")
        blobs = {
            name: _blob_list(values, name, len(vectors))
            for name, values in (("features", features), ("thumbnails", thumbnails))
            if values is not None
        }
        with self._lock:
            if self._max_places is not None and len(self) + len(vectors) > self._max_places:
                raise MapFullError(
                    f"place map is full: {len(self)} places, max_places={self._max_places}; "
                    f"adding {len(vectors)} would exceed it",
                    max_places=self._max_places, places=len(self),
                )  # fmt: skip
            first = int(self._info["next_place_id"])
            ids = np.arange(first, first + len(vectors), dtype=np.int64)
            keyframes = []
            next_kf = int(self._info["next_keyframe_index"])
            for meta in metas:
                kf = next_kf if meta.keyframe_index is None else meta.keyframe_index
                keyframes.append(kf)
                next_kf = max(next_kf, kf + 1)
            self._store.insert(metas, ids, keyframes, blobs)  # first: a bad record leaves the index untouched
            self._index.add_with_ids(vectors, ids)
            self._ids.extend(ids)
            self._stamps.extend(np.array([m.stamp_ns for m in metas], np.int64))
            self._keyframes.extend(np.array(keyframes, np.int64))
            self._info["next_place_id"] = first + len(vectors)
            self._info["next_keyframe_index"] = next_kf
            self._track(ids, added=vectors)
            if not self._trained and len(self) >= self._spec.train_threshold:
                self._train_from_buffer()
        self._maybe_autosave()
        return ids

    def remove(self, place_ids: Iterable[int]) -> int:
        """Remove places (and their features and thumbnails) by id; unknown ids are ignored.

        Returns how many were removed.
        """
        with self._lock:
            wanted = np.unique(np.asarray(list(place_ids), np.int64))
            present = wanted[np.isin(wanted, self._ids.values)]
            if present.size == 0:
                return 0
            tombstone = self._trained and not self._spec.supports_removal
            self._store.delete(present, tombstone=tombstone)
            if tombstone:
                self._tombstones = np.union1d(self._tombstones, present)
            else:
                self._index.remove_ids(faiss.IDSelectorBatch(present))
            self._track(present, removed=not tombstone)
            keep = ~np.isin(self._ids.values, present)
            for column in (self._ids, self._stamps, self._keyframes):
                column.keep(keep)
        self._maybe_autosave()
        return int(present.size)

    def _train_from_buffer(self) -> None:
        flat = faiss.downcast_index(self._index.index)
        vectors = flat.reconstruct_n(0, flat.ntotal)
        ids = faiss.vector_to_array(self._index.id_map).astype(np.int64)
        started = time.monotonic()
        index = self._spec.build(self._dim)
        index.train(vectors)
        index.add_with_ids(vectors, ids)
        self._index, self._trained = index, True
        self._needs_full = True  # the saved base is a flat buffer: deltas cannot describe this
        self._pending.clear()
        _LOG.info("trained %s on %d places in %.1f s", self._spec, len(ids), time.monotonic() - started)

    # ------------------------------------------------------------------ features and thumbnails
    def get_features(self, place_ids: Iterable[int] | int) -> dict[int, bytes | None]:
        """Feature blobs by place id. Absent: no features stored (or unknown place); ``None``: stored but
        damaged (CRC mismatch; logged once per place and counted in :attr:`damaged_feature_rows`)."""
        ids = [place_ids] if isinstance(place_ids, (int, np.integer)) else place_ids
        with self._lock:
            found, damaged = self._store.get_blobs("features", ids)
            self._report_damage("features", damaged)
            return found

    def get_thumbnail(self, place_id: int) -> bytes | None:
        """The thumbnail of a place; None if it has none or it is damaged (:attr:`damaged_thumbnail_rows`)."""
        with self._lock:
            found, damaged = self._store.get_blobs("thumbnails", [int(place_id)])
            self._report_damage("thumbnails", damaged)
            return found.get(int(place_id))

    def set_features(self, place_id: int, features: bytes | None, thumbnail: bytes | None = None) -> None:
        """Store (replace) the features of an existing place, e.g. to add features to an older map.

        ``features=None`` deletes its features; ``thumbnail=None`` leaves its thumbnail as it is.
        Raises KeyError for an unknown place.
        """
        blob = None if features is None else as_blob(features, "features")
        values: dict[str, bytes | None] = {"features": blob}
        if thumbnail is not None:
            values["thumbnails"] = as_blob(thumbnail, "thumbnail")
        place_id = int(place_id)
        with self._lock:
            if not np.isin(place_id, self._ids.values):
                raise KeyError(f"no place with id {place_id}")
            self._store.set_blobs(place_id, values)
            self._track(np.array([place_id], np.int64))
            for table in values:
                self._damaged[table].discard(place_id)
        self._maybe_autosave()

    def feature_stats(self) -> FeatureStats:
        """How many places have features / thumbnails and their total payload bytes."""
        with self._lock:
            return self._store.blob_stats()

    def _report_damage(self, table: str, damaged: list[int]) -> None:
        for place_id in damaged:
            if place_id not in self._damaged[table]:
                self._damaged[table].add(place_id)
                self._damage_counts[table] += 1
                _LOG.warning(
                    "place map %s: %s of place %d fail their CRC check (damaged row); treated as missing",
                    self.path or "(unsaved)",
                    table,
                    place_id,
                )

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
    ) -> list[Match] | list[list[Match]]:
        """Top-``k`` places by inner product, best first, with metadata.

        Filters: with ``query_stamp_ns``, places stamped after ``query_stamp_ns - exclusion_window_s``
        are excluded; with ``query_keyframe_index`` and ``exclusion_keyframes=N``, places whose keyframe
        index is within N of it are excluded; ``exclude_ids`` are excluded. Filtering happens inside
        faiss (an ``IDSelector``), so k results are returned whenever k places pass the filters.
        A (D,) query gives ``list[Match]``, an (N, D) batch ``list[list[Match]]``.
        """
        single = np.ndim(query) == 1
        sims, ids = self.search_arrays(
            query, k, query_stamp_ns=query_stamp_ns, exclusion_window_s=exclusion_window_s,
            query_keyframe_index=query_keyframe_index, exclusion_keyframes=exclusion_keyframes,
            exclude_ids=exclude_ids,
        )  # fmt: skip
        metas = self.get_metas(np.unique(ids[ids >= 0]))
        results = [
            [
                Match(place_id=int(pid), similarity=float(sim), rank=rank, meta=metas[int(pid)])
                for rank, (pid, sim) in enumerate(zip(row_ids, row_sims, strict=True))
                if pid >= 0 and int(pid) in metas
            ]
            for row_ids, row_sims in zip(ids, sims, strict=True)
        ]
        return results[0] if single else results

    def search_arrays(
        self,
        query: np.ndarray,
        k: int = 10,
        *,
        query_stamp_ns: int | None = None,
        exclusion_window_s: float = 0.0,
        query_keyframe_index: int | None = None,
        exclusion_keyframes: int | None = None,
        exclude_ids: Iterable[int] | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Like :meth:`search` but returns ``(similarities (N,k) float32, place_ids (N,k) int64)``,
        padded with ``-inf`` / ``-1`` when fewer than k places pass."""
        if int(k) < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        k = int(k)
        queries = self._prepare(query)
        sims = np.full((len(queries), k), -np.inf, np.float32)
        ids = np.full((len(queries), k), -1, np.int64)
        with self._lock:
            if len(self) == 0:
                return sims, ids
            excluded = self._excluded_ids(
                query_stamp_ns, exclusion_window_s, query_keyframe_index, exclusion_keyframes, exclude_ids
            )
            k_eff = min(k, self._index.ntotal)
            batch = faiss.IDSelectorBatch(excluded) if excluded.size else None
            selector = faiss.IDSelectorNot(batch) if batch is not None else None
            params = search_parameters(self._spec if self._trained else _FLAT, selector)
            with _faiss_threads(1 if len(queries) == 1 else None):
                found_sims, found_ids = self._index.search(queries, k_eff, params=params)
        sims[:, :k_eff], ids[:, :k_eff] = found_sims, found_ids
        sims[ids < 0] = -np.inf
        return sims, ids

    def _excluded_ids(
        self,
        query_stamp_ns: int | None,
        exclusion_window_s: float,
        query_keyframe_index: int | None,
        exclusion_keyframes: int | None,
        exclude_ids: Iterable[int] | None,
    ) -> np.ndarray:
        parts = [self._tombstones]
        mask = None
        if query_stamp_ns is not None:
            if not math.isfinite(exclusion_window_s) or exclusion_window_s < 0:
                raise ValueError(f"exclusion_window_s must be finite and >= 0, got {exclusion_window_s}")
            cutoff = int(query_stamp_ns) - round(exclusion_window_s * _NS_PER_S)
            mask = self._stamps.values > cutoff
        if query_keyframe_index is not None and exclusion_keyframes is not None:
            near = np.abs(self._keyframes.values - int(query_keyframe_index)) <= int(exclusion_keyframes)
            mask = near if mask is None else mask | near
        if mask is not None:
            parts.append(self._ids.values[mask])
        if exclude_ids is not None:
            parts.append(np.asarray(list(exclude_ids), np.int64))
        return np.concatenate(parts) if len(parts) > 1 else parts[0]

    def get_metas(self, place_ids: Iterable[int]) -> dict[int, PlaceMeta]:
        """Metadata by place id (unknown ids are absent from the result)."""
        with self._lock:
            return self._store.get(place_ids)

    def get(self, place_id: int) -> PlaceMeta:
        meta = self.get_metas([place_id]).get(int(place_id))
        if meta is None:
            raise KeyError(f"no place with id {place_id}")
        return meta

    def normalize(self, descriptor: np.ndarray) -> np.ndarray:
        """One ``(D,)`` descriptor checked (dimension, finite, non-zero) and L2-normalised, as stored."""
        return self._prepare(np.asarray(descriptor).reshape(1, -1))[0]

    def _prepare(self, descriptors: np.ndarray) -> np.ndarray:
        array = np.asarray(descriptors, dtype=np.float32)
        if array.ndim == 1:
            array = array[None, :]
        if array.ndim != 2 or array.shape[1] != self._dim:
            raise MapDimensionError(
                f"expected descriptors of shape (N, {self._dim}), got {np.shape(descriptors)}"
            )
        return normalize_rows(array)

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | Path | None = None, *, full: bool = False) -> Path:
        """Atomically write the map to ``path`` (default: where it was loaded from / last saved).

        Incremental by default: when ``path`` holds the version this map last saved or loaded, only the
        changes since then are written (a delta, cost proportional to them) next to hard links of the
        previous files. ``full=True``, another ``path``, a training step, a migrated schema or a very
        long chain write everything. Long chains are compacted into a full version in a background
        thread (:meth:`compact`). See :mod:`tscm_ros.placemap.layout` for the layout and the crash
        guarantee. Returns the version folder written.

        Only the *snapshot* holds the map's lock: for a delta the rows and vectors changed since the last
        save (proportional to them), for a full save the serialised index (in memory) and a read
        transaction on the working database (copy-on-write through its WAL). Writing, hashing and fsyncing
        run outside the lock, so adds and searches go on meanwhile; what they change goes into the next
        save. Saves of one map run one at a time. The first save into a directory takes its writer lock
        (:class:`~tscm_ros.placemap.layout.WriterLock`, held until :meth:`close`): MapLockedError when
        another open map holds it.
        """
        with self._save_lock:
            root = Path(path) if path is not None else self.path
            if root is None:
                raise MapError("save() needs a path: this map was never saved or loaded")
            self._writer.claim(root)
            job = self._snapshot(root, full=full)
            try:
                written = self._write_job(job)
                if written is None:  # no hard links here: write everything
                    job.close()
                    job = self._snapshot(root, full=True)
                    written = self._write_job(job)
            except BaseException:
                with self._lock:
                    self._needs_full = True  # what the snapshot took is not on disk: the next save is full
                raise
            finally:
                job.close()
            version, chain = written
            with self._lock:
                self._chain = chain
                self.path = root
                self._last_save = time.monotonic()
                self.last_saved_places = job.head["counts"]["places"]
            self._maybe_compact()
            return version

    @property
    def delta_count(self) -> int:
        """Deltas on top of the base in the version last saved or loaded (0 after a full save)."""
        with self._lock:
            return len(self._chain.meta["deltas"]) if self._chain else 0

    @property
    def saving(self) -> bool:
        """True while a save (or a compaction's commit) is writing."""
        return self._save_lock.locked()

    def _delta_possible(self, root: Path) -> bool:
        chain = self._chain
        if chain is None or self._needs_full or len(chain.meta["deltas"]) >= MAX_CHAIN:
            return False
        try:
            return root.resolve() == chain.root and _is_current(chain)
        except OSError:
            return False

    def _snapshot(self, root: Path, *, full: bool) -> _SaveJob:
        """What the save writes, taken under the lock (see :meth:`save`); the caller holds _save_lock."""
        incremental = not full and self._delta_possible(root)  # the chain only changes under _save_lock
        with self._lock:
            self._info["updated_utc"] = _utc_now()
            head = {
                "format": FORMAT,
                "format_version": FORMAT_VERSION,
                "dim": self._dim,
                "metric": "ip",
                "index_spec": str(self._spec),
                "index_trained": self._trained,
                "train_threshold": self._spec.train_threshold,
                **self._info,
                "counts": {
                    "places": len(self),
                    "index_ntotal": int(self._index.ntotal),
                    "tombstones": len(self._tombstones),
                },
            }
            if incremental and not self._needs_full:
                pending, self._pending = self._pending, _Pending()
                touched = np.array(sorted(pending.touched), np.int64)
                cat = np.concatenate
                no_vectors = np.zeros((0, self._dim), np.float32)
                return _SaveJob(
                    root=root, head=head, chain=self._chain, touched=touched,
                    rows=delta.read_rows(self._store.conn, touched) if len(touched) else {},
                    add_ids=cat(pending.add_ids) if pending.add_ids else np.zeros(0, np.int64),
                    add_vectors=cat(pending.add_vectors) if pending.add_vectors else no_vectors,
                    removed=cat(pending.removed) if pending.removed else np.zeros(0, np.int64),
                )  # fmt: skip
            index_bytes = faiss.serialize_index(self._index)
            reader = self._store.read_snapshot()
            self._pending = _Pending()
            self._needs_full = False
            self._tracking = True  # changes from now on go into the next (incremental) save
            return _SaveJob(root=root, head=head, chain=None, index_bytes=index_bytes, reader=reader)

    def _write_job(self, job: _SaveJob) -> tuple[Path, _Chain] | None:
        """Write a snapshot as a new version (no map lock held); None when a delta cannot hard-link."""
        root = job.root
        staging = layout.new_staging_dir(root)
        try:
            if job.chain is None:  # full
                job.index_bytes.tofile(staging / layout.INDEX_FILE)
                self._store.snapshot(staging / layout.DB_FILE, source=job.reader)
                files = persist.file_entries(staging, [layout.INDEX_FILE, layout.DB_FILE])
                deltas: list[dict] = []
                base_seq = _last_seq(self._chain.meta) if self._chain else 0
                generation = self._generation + 1
            else:
                chain = job.chain
                try:
                    layout.link_files(root / chain.version, staging, persist.all_files(chain.meta))
                except OSError as exc:
                    _LOG.info("incremental save not possible in %s (%s): saving in full", root, one_line(exc))
                    layout.release_staging(staging)
                    return None
                files, deltas = dict(chain.meta["files"]), list(chain.meta["deltas"])
                if len(job.touched):
                    seq = _last_seq(chain.meta) + 1
                    vec_name, db_name = layout.delta_names(seq)
                    delta.write_vectors(staging / vec_name, job.add_ids, job.add_vectors, job.removed)
                    delta.write_rows(staging / db_name, job.touched, job.rows)
                    files.update(persist.file_entries(staging, [vec_name, db_name]))
                    deltas.append({"seq": seq, "added": len(job.add_ids), "removed": len(job.removed)})
                base_seq = chain.meta["base_seq"]
                generation = chain.generation
            meta = {**job.head, "files": files, "base_seq": base_seq, "deltas": deltas,
                    "faiss_version": faiss.__version__}  # fmt: skip
            _write_map_json(staging, meta)
            version = layout.commit_staging_dir(root, staging)
        except BaseException:
            layout.release_staging(staging)
            raise
        self._generation = generation
        return version, _Chain(root.resolve(), version.name, meta, generation)

    def _commit(self, root: Path, staging: Path, meta: dict, generation: int) -> Path:
        _write_map_json(staging, meta)
        version = layout.commit_staging_dir(root, staging)
        with self._lock:
            self._chain = _Chain(root.resolve(), version.name, meta, generation)
        return version

    def _track(self, ids: np.ndarray, *, added: np.ndarray | None = None, removed: bool = False) -> None:
        """Record a change for the next incremental save (only while there is a saved version to extend)."""
        if not self._tracking or self._needs_full:
            return
        pending = self._pending
        pending.touched.update(int(i) for i in ids)
        if added is not None:
            pending.add_ids.append(ids)
            pending.add_vectors.append(added)
            pending.n_vectors += len(ids)
        if removed:
            pending.removed.append(ids)
        if pending.n_vectors > max(1000, len(self) // 4):  # a delta this large: save in full instead
            self._needs_full = True
            pending.clear()

    # ------------------------------------------------------------------ compaction
    def compact(self, *, wait: bool = True) -> bool:
        """Fold the saved deltas into a new full version, in a background thread (from the saved files,
        without blocking adds or saves for the heavy part). ``wait``: return once it is done.
        Returns False when there is nothing to compact or a compaction is already running."""
        with self._save_lock:
            started = self._start_compaction()
            thread = self._compactor
        if wait and thread is not None and thread is not threading.current_thread():
            thread.join()
        return started

    def _maybe_compact(self) -> None:
        chain = self._chain
        if chain is None or not chain.meta["deltas"] or self.compact_after_deltas is None:
            return
        files = chain.meta["files"]
        base = files[layout.INDEX_FILE]["bytes"] + files[layout.DB_FILE]["bytes"]
        delta_bytes = sum(e["bytes"] for n, e in files.items() if n.startswith("delta-"))
        if (
            len(chain.meta["deltas"]) >= self.compact_after_deltas
            or delta_bytes >= COMPACT_BYTES_RATIO * base
        ):
            self._start_compaction()

    def _start_compaction(self) -> bool:
        chain = self._chain
        if chain is None or not chain.meta["deltas"] or (self._compactor and self._compactor.is_alive()):
            return False
        try:
            work = layout.new_staging_dir(chain.root, kind="compact-")
        except (OSError, MapError) as exc:
            _LOG.warning("cannot compact %s (%s)", chain.root, one_line(exc))
            return False
        try:
            (work / "src").mkdir()
            (work / "out").mkdir()
            layout.link_files(chain.root / chain.version, work / "src", persist.all_files(chain.meta))
        except OSError as exc:
            layout.release_staging(work)
            _LOG.warning("cannot compact %s (%s)", chain.root, one_line(exc))
            return False
        self._compactor = threading.Thread(
            target=self._compact, args=(chain, work), name="placemap-compact", daemon=True
        )
        self._compactor.start()
        return True

    def _compact(self, snapshot: _Chain, work: Path) -> None:
        """Background thread: build a base from ``snapshot``'s files, then commit it under the lock."""
        try:
            started = time.monotonic()
            entries = persist.build_base(work / "src", snapshot.meta, work / "out")
            with self._save_lock:  # never while a save writes; adds and searches go on
                self._commit_compaction(snapshot, work, entries)
            _LOG.info("compacted %s in %.2f s", snapshot.root, time.monotonic() - started)
        except Exception as exc:  # noqa: BLE001 - a failed compaction must never take the map down
            _LOG.warning(
                "compaction of %s failed (%s); the next save will be a full save",
                snapshot.root,
                one_line(exc),
            )
            with self._lock:
                self._needs_full = True
        finally:
            layout.release_staging(work)

    def _commit_compaction(self, snapshot: _Chain, work: Path, entries: dict) -> None:
        current = self._chain
        if current is None or current.generation != snapshot.generation or not _is_current(current):
            _LOG.info("compaction of %s discarded: the map was saved in full meanwhile", snapshot.root)
            return
        folded = _last_seq(snapshot.meta)
        remaining = [d for d in current.meta["deltas"] if d["seq"] > folded]
        names = [n for d in remaining for n in layout.delta_names(d["seq"])]
        root = current.root
        staging = layout.new_staging_dir(root)
        try:
            for name in (layout.INDEX_FILE, layout.DB_FILE):
                os.rename(work / "out" / name, staging / name)
            layout.link_files(root / current.version, staging, names)
            files = {**entries, **{n: current.meta["files"][n] for n in names}}
            meta = {**current.meta, "format_version": FORMAT_VERSION, "files": files, "deltas": remaining,
                    "base_seq": folded}  # fmt: skip
            self._generation += 1
            self._commit(root, staging, meta, self._generation)
        except BaseException:
            layout.release_staging(staging)
            raise

    def _maybe_autosave(self) -> None:
        """Save when ``autosave_period_s`` elapsed (called after an update, without the map's lock)."""
        if self.autosave_period_s is None or self.path is None or self._save_lock.locked():
            return
        if time.monotonic() - self._last_save >= self.autosave_period_s:
            self.save()


@dataclass
class _SaveJob:
    """A save's snapshot (see :meth:`PlaceMap.save`): ``chain`` None = a full save."""

    root: Path
    head: dict  # map.json fields as of the snapshot (all but files / base_seq / deltas / faiss_version)
    chain: _Chain | None
    touched: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    rows: dict = field(default_factory=dict)
    add_ids: np.ndarray | None = None
    add_vectors: np.ndarray | None = None
    removed: np.ndarray | None = None
    index_bytes: np.ndarray | None = None
    reader: sqlite3.Connection | None = None

    def close(self) -> None:
        if self.reader is not None:
            self.reader.close()
            self.reader = None


def _cleanup(store: MetadataStore, workdir: WorkDir, writer: layout.WriterLock) -> None:
    if workdir.owner_pid != os.getpid():  # a forked child must not close or delete its parent's copy
        return
    try:
        store.close()
    finally:
        workdir.release()
        writer.release()


def _is_current(chain: _Chain) -> bool:
    """``current`` still points at the chain's version (no other writer replaced it)."""
    try:
        return (chain.root / layout.CURRENT_LINK).resolve() == chain.root / chain.version
    except OSError:
        return False


def _last_seq(meta: dict) -> int:
    return meta["deltas"][-1]["seq"] if meta["deltas"] else meta["base_seq"]


def _write_map_json(folder: Path, meta: dict) -> None:
    meta.pop(validate.CHECKSUM_FIELD, None)
    meta[validate.CHECKSUM_FIELD] = validate.meta_checksum(meta)
    with open(folder / layout.MAP_JSON, "w", encoding="utf-8") as stream:
        json.dump(meta, stream, indent=2)
        stream.flush()
    layout.fsync_path(folder / layout.MAP_JSON)


def _check_max_places(value: int | None) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"max_places must be a positive integer or None, got {value!r}")
    return int(value)


def _blob_list(values: Sequence[bytes | None], name: str, count: int) -> list[bytes | None]:
    if isinstance(values, (bytes, bytearray, memoryview, str)):
        raise TypeError(f"{name} must be a sequence with one bytes (or None) per place, not a single value")
    blobs = [None if v is None else as_blob(v, f"{name}[{i}]") for i, v in enumerate(values)]
    if len(blobs) != count:
        raise ValueError(f"got {count} descriptors but {len(blobs)} {name}")
    return blobs
