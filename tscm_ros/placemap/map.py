"""PlaceMap: a faiss index of L2-normalised descriptors plus SQLite metadata, saved atomically.

Training rule (IVF and PCA specs): until the map holds ``spec.train_threshold`` places, descriptors are
kept in an exact inner-product buffer (searched exactly, saved as such). The add() that reaches the
threshold trains the spec's index on every buffered descriptor, moves them into it and drops the buffer;
later adds go straight into the trained index (it is never re-trained).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import shutil
import sqlite3
import tempfile
import threading
import time
import weakref
from collections.abc import Iterable, Sequence
from datetime import datetime, timezone
from pathlib import Path

import faiss
import numpy as np

from . import layout
from .errors import (
    MapConsistencyError,
    MapCorruptError,
    MapDimensionError,
    MapError,
    MapFingerprintError,
    MapFormatError,
    MapNotFoundError,
)
from .records import Match, PlaceMeta
from .spec import IndexSpec, IndexSpecError, search_parameters
from .store import MetadataStore

FORMAT = "tscm_ros.placemap"
FORMAT_VERSION = 1
_NS_PER_S = 1_000_000_000
_FLAT = IndexSpec()
_LOG = logging.getLogger(__name__)


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


def _utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class PlaceMap:
    """Places (keyframes) with a descriptor each. Thread-safe: every public method takes one lock.

    Build with :meth:`create` or :meth:`load`; persist with :meth:`save`. Place ids are int64, assigned
    in increasing order and never reused, also across save/load.
    """

    def __init__(
        self,
        *,
        dim: int,
        spec: IndexSpec,
        index: faiss.Index,
        trained: bool,
        store: MetadataStore,
        workdir: Path,
        info: dict,
        autosave_period_s: float | None = None,
    ) -> None:
        self._lock = threading.RLock()
        self._dim = dim
        self._spec = spec
        self._index = index
        self._trained = trained
        self._store = store
        self._workdir = workdir
        self._finalizer = weakref.finalize(self, _cleanup, store, workdir)
        self._info = info  # persisted map.json fields: fingerprint, created, next ids
        ids, stamps, keyframes = store.arrays()
        self._ids, self._stamps, self._keyframes = _Column(ids), _Column(stamps), _Column(keyframes)
        self._tombstones = store.tombstones()
        self.path: Path | None = None
        self.autosave_period_s = autosave_period_s
        self._last_save = time.monotonic()

    # ------------------------------------------------------------------ construction
    @classmethod
    def create(
        cls,
        dim: int,
        index_spec: str | IndexSpec | None = "flat",
        model_fingerprint: str | None = None,
        *,
        autosave_period_s: float | None = None,
    ) -> PlaceMap:
        """An empty map for ``dim``-d descriptors. ``index_spec``: see :class:`IndexSpec`."""
        dim = int(dim)
        spec = IndexSpec.parse(index_spec)
        spec.validate_for(dim)
        trained = not spec.needs_training
        index = spec.build(dim) if trained else _FLAT.build(dim)
        workdir = Path(tempfile.mkdtemp(prefix="tscm_placemap_"))
        now = _utc_now()
        info = {
            "model_fingerprint": model_fingerprint,
            "created_utc": now,
            "updated_utc": now,
            "next_place_id": 0,
            "next_keyframe_index": 0,
        }
        return cls(
            dim=dim, spec=spec, index=index, trained=trained, store=MetadataStore(workdir / layout.DB_FILE),
            workdir=workdir, info=info, autosave_period_s=autosave_period_s,
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
    ) -> PlaceMap:
        """Load and validate a saved map; later :meth:`save` calls without a path write back to it.

        ``dim`` / ``model_fingerprint``: what the caller's describer produces; a mismatch raises
        :class:`MapDimensionError` / :class:`MapFingerprintError` (the latter only logs a warning with
        ``allow_fingerprint_mismatch=True``). Damaged maps raise :class:`MapCorruptError`,
        :class:`MapFormatError` or :class:`MapConsistencyError` naming the file and the problem.
        """
        root = Path(path)
        version_dir = layout.resolve_version_dir(root)
        meta = _read_map_json(version_dir)
        map_dim = int(meta["dim"])
        if dim is not None and int(dim) != map_dim:
            raise MapDimensionError(f"{root}: map holds {map_dim}-d descriptors, the model produces {dim}-d")
        stored_fp = meta.get("model_fingerprint")
        if model_fingerprint and stored_fp and model_fingerprint != stored_fp:
            message = (
                f"{root}: map was built with model fingerprint {stored_fp[:16]}..., the current model is "
                f"{model_fingerprint[:16]}...; its descriptors are not comparable"
            )
            if not allow_fingerprint_mismatch:
                raise MapFingerprintError(message + " (pass allow_fingerprint_mismatch=True to load anyway)")
            _LOG.warning("%s (loading anyway: allow_fingerprint_mismatch=True)", message)
        try:
            spec = IndexSpec.parse(meta["index_spec"])
        except IndexSpecError as exc:
            raise MapFormatError(f"{version_dir / layout.MAP_JSON}: bad index_spec ({exc})") from exc
        for name in (layout.INDEX_FILE, layout.DB_FILE):
            _verify_file(version_dir / name, meta["files"][name])
        try:
            index = faiss.read_index(str(version_dir / layout.INDEX_FILE))
        except RuntimeError as exc:
            raise MapCorruptError(f"{version_dir / layout.INDEX_FILE}: faiss cannot read it ({exc})") from exc
        if index.d != map_dim:
            raise MapDimensionError(
                f"{version_dir}: index.faiss is {index.d}-d but map.json says {map_dim}-d"
            )
        trained = bool(meta["index_trained"])
        (spec if trained else _FLAT).apply_search_settings(index)
        workdir = Path(tempfile.mkdtemp(prefix="tscm_placemap_"))
        try:
            shutil.copyfile(version_dir / layout.DB_FILE, workdir / layout.DB_FILE)
            store = MetadataStore(workdir / layout.DB_FILE)
            place_map = cls(
                dim=map_dim, spec=spec, index=index, trained=trained, store=store, workdir=workdir,
                info={k: meta[k] for k in ("model_fingerprint", "created_utc", "updated_utc",
                                           "next_place_id", "next_keyframe_index")},
                autosave_period_s=autosave_period_s,
            )  # fmt: skip
        except (sqlite3.DatabaseError, MapError) as exc:
            shutil.rmtree(workdir, ignore_errors=True)
            if isinstance(exc, MapError):
                raise
            raise MapCorruptError(f"{version_dir / layout.DB_FILE}: unreadable metadata ({exc})") from exc
        place_map._check_counts(meta["counts"], version_dir)
        place_map.path = root
        return place_map

    def _check_counts(self, counts: dict, where: Path) -> None:
        n_places, n_index, n_tomb = len(self._ids.values), self._index.ntotal, len(self._tombstones)
        problems = []
        if n_index != n_places + n_tomb:
            problems.append(f"index.faiss holds {n_index} vectors but places.sqlite {n_places} places"
                            + (f" + {n_tomb} removed" if n_tomb else ""))  # fmt: skip
        if counts.get("places") != n_places:
            problems.append(f"map.json counts {counts.get('places')} places, places.sqlite {n_places}")
        if counts.get("index_ntotal") != n_index:
            problems.append(
                f"map.json counts {counts.get('index_ntotal')} index vectors, index.faiss {n_index}"
            )
        if problems:
            self.close()
            raise MapConsistencyError(f"{where}: " + "; ".join(problems))

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
        """Release the working metadata copy (the saved map on disk is untouched)."""
        self._finalizer()

    def set_search_params(self, *, ef_search: int | None = None, nprobe: int | None = None) -> None:
        """Change HNSW ``efSearch`` / IVF ``nprobe`` without rebuilding (saved with the spec)."""
        changes = {k: int(v) for k, v in (("ef_search", ef_search), ("nprobe", nprobe)) if v is not None}
        with self._lock:
            self._spec = dataclasses.replace(self._spec, **changes)
            if self._trained:
                self._spec.apply_search_settings(self._index)

    # ------------------------------------------------------------------ updates
    def add(self, descriptors: np.ndarray, metas: Sequence[PlaceMeta] | PlaceMeta) -> np.ndarray:
        """Add places; returns their new int64 ids. Descriptors are (re-)normalised to unit length."""
        vectors = self._prepare(descriptors)
        metas = [metas] if isinstance(metas, PlaceMeta) else list(metas)
        if len(metas) != len(vectors):
            raise ValueError(f"got {len(vectors)} descriptors but {len(metas)} PlaceMeta records")
        if not all(isinstance(m, PlaceMeta) for m in metas):
            raise TypeError("metas must be PlaceMeta records")
        with self._lock:
            first = int(self._info["next_place_id"])
            ids = np.arange(first, first + len(vectors), dtype=np.int64)
            keyframes = []
            next_kf = int(self._info["next_keyframe_index"])
            for meta in metas:
                kf = next_kf if meta.keyframe_index is None else meta.keyframe_index
                keyframes.append(kf)
                next_kf = max(next_kf, kf + 1)
            self._store.insert(metas, ids, keyframes)  # first: a bad record leaves the index untouched
            self._index.add_with_ids(vectors, ids)
            self._ids.extend(ids)
            self._stamps.extend(np.array([m.stamp_ns for m in metas], np.int64))
            self._keyframes.extend(np.array(keyframes, np.int64))
            self._info["next_place_id"] = first + len(vectors)
            self._info["next_keyframe_index"] = next_kf
            if not self._trained and len(self) >= self._spec.train_threshold:
                self._train_from_buffer()
            self._maybe_autosave()
        return ids

    def remove(self, place_ids: Iterable[int]) -> int:
        """Remove places by id (unknown ids are ignored); returns how many were removed."""
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
        _LOG.info("trained %s on %d places in %.1f s", self._spec, len(ids), time.monotonic() - started)

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
        if not np.all(np.isfinite(array)):
            raise ValueError("descriptors contain NaN or infinite values")
        norms = np.linalg.norm(array, axis=1, keepdims=True)
        if np.any(norms < 1e-12):
            raise ValueError("descriptors must be non-zero (they are L2-normalised)")
        return np.ascontiguousarray(array / norms, dtype=np.float32)

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | Path | None = None) -> Path:
        """Atomically write the map to ``path`` (default: where it was loaded from / last saved).

        See :mod:`tscm_ros.placemap.layout` for the layout and the crash guarantee. Returns the
        version folder written.
        """
        with self._lock:
            root = Path(path) if path is not None else self.path
            if root is None:
                raise MapError("save() needs a path: this map was never saved or loaded")
            staging = layout.new_staging_dir(root)
            try:
                faiss.write_index(self._index, str(staging / layout.INDEX_FILE))
                self._store.snapshot(staging / layout.DB_FILE)
                self._info["updated_utc"] = _utc_now()
                files = {}
                for name in (layout.INDEX_FILE, layout.DB_FILE):
                    layout.fsync_path(staging / name)
                    stat = (staging / name).stat()
                    files[name] = {"sha256": layout.sha256_file(staging / name), "bytes": stat.st_size}
                meta = {
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
                    "files": files,
                    "faiss_version": faiss.__version__,
                }
                with open(staging / layout.MAP_JSON, "w", encoding="utf-8") as stream:
                    json.dump(meta, stream, indent=2)
                    stream.flush()
                layout.fsync_path(staging / layout.MAP_JSON)
                version = layout.commit_staging_dir(root, staging)
            except BaseException:
                shutil.rmtree(staging, ignore_errors=True)
                raise
            self.path = root
            self._last_save = time.monotonic()
            return version

    def _maybe_autosave(self) -> None:
        if self.autosave_period_s is None or self.path is None:
            return
        if time.monotonic() - self._last_save >= self.autosave_period_s:
            self.save()


def _cleanup(store: MetadataStore, workdir: Path) -> None:
    try:
        store.close()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _read_map_json(version_dir: Path) -> dict:
    path = version_dir / layout.MAP_JSON
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise MapNotFoundError(f"{path} is missing") from exc
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise MapCorruptError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise MapFormatError(f"{path}: not a tscm_ros place map (format {meta.get('format')!r})"
                             if isinstance(meta, dict) else f"{path}: not a tscm_ros place map")  # fmt: skip
    version = meta.get("format_version")
    if version != FORMAT_VERSION:
        raise MapFormatError(
            f"{path}: unknown place-map format_version {version!r}; "
            f"this tscm_ros reads version {FORMAT_VERSION}"
        )
    required = ("dim", "metric", "index_spec", "index_trained", "counts", "files", "next_place_id",
                "next_keyframe_index", "created_utc", "updated_utc")  # fmt: skip
    missing = [key for key in required if key not in meta]
    if missing:
        raise MapCorruptError(f"{path}: missing fields {missing}")
    if meta["metric"] != "ip":
        raise MapFormatError(f"{path}: unsupported metric {meta['metric']!r} (only 'ip')")
    if any(name not in meta["files"] for name in (layout.INDEX_FILE, layout.DB_FILE)):
        raise MapCorruptError(f"{path}: 'files' must list {layout.INDEX_FILE} and {layout.DB_FILE}")
    meta.setdefault("model_fingerprint", None)
    return meta


def _verify_file(path: Path, expected: dict) -> None:
    if not path.is_file():
        raise MapNotFoundError(f"{path} is missing")
    size = path.stat().st_size
    if size != expected.get("bytes"):
        raise MapCorruptError(
            f"{path}: {size} bytes, expected {expected.get('bytes')} (truncated or replaced)"
        )
    digest = layout.sha256_file(path)
    if digest != expected.get("sha256"):
        raise MapCorruptError(f"{path}: sha256 {digest[:12]}... does not match map.json (file is corrupt)")
