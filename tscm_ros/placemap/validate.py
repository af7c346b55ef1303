"""Load-time validation of a saved map: every map.json field, the faiss index structure and metric, ids.

Every check raises a :class:`MapError` subclass whose message is one line naming the file and the field.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import faiss
import numpy as np

from . import layout
from .errors import (
    MapConsistencyError,
    MapCorruptError,
    MapDimensionError,
    MapError,
    MapFormatError,
    MapNotFoundError,
    one_line,
)
from .spec import IndexSpec, IndexSpecError

FORMAT = "tscm_ros.placemap"
FORMAT_VERSION = 2  # written; 1 (no deltas) is read too
READABLE_VERSIONS = (1, 2)
MAX_DELTAS = 100_000
MAX_DIM = 1 << 16
INT64_MAX = 2**63 - 1
_MAX_JSON_BYTES = 16 << 20
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
_METRIC_NAMES = {faiss.METRIC_INNER_PRODUCT: "inner product", faiss.METRIC_L2: "L2"}


def _show(value: object) -> str:
    text = " ".join(repr(value).split())
    return text if len(text) <= 60 else text[:57] + "..."


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _int_in(low: int, high: int = INT64_MAX) -> Callable[[object], bool]:
    return lambda v: _is_int(v) and low <= v <= high


def _is_timestamp(value: object) -> bool:
    if not isinstance(value, str):
        return False
    try:
        datetime.fromisoformat(value)
    except ValueError:
        return False
    return True


# field -> (check, what it must be); all required
_FIELDS: dict[str, tuple[Callable[[object], bool], str]] = {
    "dim": (_int_in(1, MAX_DIM), f"an integer in 1..{MAX_DIM}"),
    "metric": (lambda v: v == "ip", "'ip' (inner product; the only supported metric)"),
    "index_spec": (lambda v: isinstance(v, str), "an index spec string"),
    "index_trained": (lambda v: isinstance(v, bool), "true or false"),
    "next_place_id": (_int_in(0), "an integer in 0..2^63-1"),
    "next_keyframe_index": (_int_in(0), "an integer in 0..2^63-1"),
    "model_fingerprint": (lambda v: v is None or isinstance(v, str), "a string or null"),
    "created_utc": (_is_timestamp, "an ISO-8601 timestamp string"),
    "updated_utc": (_is_timestamp, "an ISO-8601 timestamp string"),
    "counts": (lambda v: isinstance(v, dict), "an object"),
    "files": (lambda v: isinstance(v, dict), "an object"),
}
# informational fields: checked when present
_OPTIONAL_FIELDS: dict[str, tuple[Callable[[object], bool], str]] = {
    "train_threshold": (_int_in(0), "a non-negative integer"),
    "faiss_version": (lambda v: isinstance(v, str), "a string"),
}
DELTA_FIELDS = ("base_seq", "deltas")  # format_version 2 only
KNOWN_FIELDS = {"format", "format_version", "meta_sha256", *_FIELDS, *_OPTIONAL_FIELDS, *DELTA_FIELDS}
COUNT_KEYS = ("places", "index_ntotal", "tombstones")
FILE_NAMES = (layout.INDEX_FILE, layout.DB_FILE)
CHECKSUM_FIELD = "meta_sha256"


def meta_checksum(meta: dict) -> str:
    """sha256 of the canonical JSON of every map.json field except the checksum itself."""
    fields = {k: v for k, v in meta.items() if k != CHECKSUM_FIELD}
    canonical = json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(canonical.encode("ascii")).hexdigest()


def read_map_json(version_dir: Path) -> tuple[dict, IndexSpec]:
    """Read and validate ``version_dir/map.json``; returns the fields and the parsed index spec."""
    path = version_dir / layout.MAP_JSON
    try:
        size = path.stat().st_size
        if size > _MAX_JSON_BYTES:
            raise MapCorruptError(f"{path}: {size} bytes is too large for a place-map map.json")
        meta = json.loads(path.read_bytes().decode("utf-8"))
    except FileNotFoundError:
        raise MapNotFoundError(f"{path} is missing") from None
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise MapCorruptError(f"{path}: not valid JSON ({one_line(exc)})") from None
    except OSError as exc:
        raise MapCorruptError(f"{path}: cannot read it ({one_line(exc)})") from None
    if not isinstance(meta, dict):
        raise MapFormatError(f"{path}: not a tscm_ros place map (top level is {type(meta).__name__})")
    if meta.get("format") != FORMAT:
        found = _show(meta.get("format"))
        raise MapFormatError(f"{path}: not a tscm_ros place map (field 'format' is {found})")
    version = meta.get("format_version")
    if not _is_int(version) or version not in READABLE_VERSIONS:
        raise MapFormatError(
            f"{path}: unknown place-map format_version {_show(version)} (field 'format_version'); "
            f"this tscm_ros reads versions {', '.join(map(str, READABLE_VERSIONS))}"
        )
    # absent in maps saved before it was introduced
    if CHECKSUM_FIELD in meta and meta[CHECKSUM_FIELD] != meta_checksum(meta):
        raise MapCorruptError(f"{path}: content fails its field '{CHECKSUM_FIELD}' (edited or damaged)")
    unknown = sorted(set(meta) - KNOWN_FIELDS)
    if unknown:
        raise MapFormatError(
            f"{path}: unknown field {_show(unknown[0])} (written by a newer tscm_ros, or edited)"
        )
    for name, (check, expected) in _FIELDS.items():
        if name not in meta:
            raise MapCorruptError(f"{path}: field '{name}' is missing")
        if not check(meta[name]):
            error = MapFormatError if name == "metric" else MapCorruptError
            raise error(f"{path}: field '{name}' must be {expected}, got {_show(meta[name])}")
    for name, (check, expected) in _OPTIONAL_FIELDS.items():
        if name in meta and not check(meta[name]):
            raise MapCorruptError(f"{path}: field '{name}' must be {expected}, got {_show(meta[name])}")
    for key in COUNT_KEYS:
        value = meta["counts"].get(key)
        if not _int_in(0)(value):
            raise MapCorruptError(f"{path}: field 'counts.{key}' must be an integer >= 0, got {_show(value)}")
    file_names = [*FILE_NAMES, *_check_deltas(meta, path)]
    extra = sorted(set(meta["files"]) - set(file_names), key=str)
    if extra:
        raise MapCorruptError(f"{path}: field 'files' lists {_show(extra[0])}, which is not part of this map")
    for name in file_names:
        entry = meta["files"].get(name)
        if not isinstance(entry, dict):
            raise MapCorruptError(f"{path}: field 'files.{name}' must be an object, got {_show(entry)}")
        if not (isinstance(entry.get("sha256"), str) and _SHA256_RE.match(entry["sha256"])):
            raise MapCorruptError(
                f"{path}: field 'files.{name}.sha256' must be 64 lowercase hex digits, "
                f"got {_show(entry.get('sha256'))}"
            )
        if not _int_in(0)(entry.get("bytes")):
            raise MapCorruptError(
                f"{path}: field 'files.{name}.bytes' must be an integer >= 0, got {_show(entry.get('bytes'))}"
            )
    try:
        spec = IndexSpec.parse(meta["index_spec"])
        spec.validate_for(meta["dim"])
    except IndexSpecError as exc:
        raise MapFormatError(f"{path}: field 'index_spec' is invalid ({one_line(exc)})") from None
    if not spec.needs_training and not meta["index_trained"]:
        raise MapCorruptError(f"{path}: field 'index_trained' is false but {spec} needs no training")
    return meta, spec


def _check_deltas(meta: dict, path: Path) -> list[str]:
    """Validate ``base_seq`` / ``deltas`` (format 2; absent in format 1); return the delta file names."""
    if meta["format_version"] == 1:
        for name in DELTA_FIELDS:
            if name in meta:
                raise MapFormatError(f"{path}: field '{name}' is not valid in format_version 1")
        meta["base_seq"], meta["deltas"] = 0, []
        return []
    for name in DELTA_FIELDS:
        if name not in meta:
            raise MapCorruptError(f"{path}: field '{name}' is missing")
    if not _int_in(0)(meta["base_seq"]):
        raise MapCorruptError(
            f"{path}: field 'base_seq' must be an integer >= 0, got {_show(meta['base_seq'])}"
        )
    deltas = meta["deltas"]
    if not isinstance(deltas, list) or len(deltas) > MAX_DELTAS:
        raise MapCorruptError(
            f"{path}: field 'deltas' must be a list of at most {MAX_DELTAS}, got {_show(deltas)}"
        )
    names: list[str] = []
    previous = meta["base_seq"]
    for k, entry in enumerate(deltas):
        keys_ok = isinstance(entry, dict) and set(entry) == {"seq", "added", "removed"}
        if not keys_ok or not all(_int_in(0)(entry[key]) for key in ("seq", "added", "removed")):
            raise MapCorruptError(
                f"{path}: field 'deltas[{k}]' must be {{seq, added, removed}} integers >= 0, "
                f"got {_show(entry)}"
            )
        if entry["seq"] <= previous:
            raise MapCorruptError(
                f"{path}: field 'deltas[{k}].seq' {entry['seq']} must exceed {previous} "
                "(base_seq and earlier deltas)"
            )
        previous = entry["seq"]
        names.extend(layout.delta_names(entry["seq"]))
    return names


def verify_file(path: Path, expected: dict) -> None:
    """Size and sha256 of ``path`` against its ``files`` entry in map.json."""
    try:
        exists = path.is_file()
    except OSError as exc:
        raise MapCorruptError(f"{path}: cannot read it ({one_line(exc)})") from None
    if not exists:
        raise MapNotFoundError(f"{path} is missing")
    try:
        size = path.stat().st_size
        if size != expected["bytes"]:
            expected_size = expected["bytes"]
            raise MapCorruptError(f"{path}: {size} bytes, expected {expected_size} (truncated or replaced)")
        digest = layout.sha256_file(path)
    except OSError as exc:
        raise MapCorruptError(f"{path}: cannot read it ({one_line(exc)})") from None
    if digest != expected["sha256"]:
        raise MapCorruptError(f"{path}: sha256 {digest[:12]}... does not match map.json (file is corrupt)")


def read_index(path: Path) -> faiss.Index:
    """``faiss.read_index`` with every failure as :class:`MapCorruptError`."""
    try:
        return faiss.read_index(str(path))
    except (RuntimeError, MemoryError, OverflowError, ValueError, TypeError) as exc:
        raise MapCorruptError(f"{path}: faiss cannot read it ({one_line(exc)})") from None


def _layers(index: faiss.Index) -> list[faiss.Index]:
    layers = [faiss.downcast_index(index)]
    while isinstance(layers[-1], (faiss.IndexIDMap2, faiss.IndexIDMap, faiss.IndexPreTransform)):
        layers.append(faiss.downcast_index(layers[-1].index))
    return layers


def check_index(index: faiss.Index, *, spec: IndexSpec, trained: bool, dim: int, path: Path) -> None:
    """The index is ``dim``-d, inner product at every level and shaped as ``spec`` (or the flat buffer)."""
    layers = _layers(index)
    base = layers[-1]
    inner = [*layers]
    if isinstance(base, faiss.IndexHNSW) and base.storage is not None:
        inner.append(faiss.downcast_index(base.storage))
    if isinstance(base, faiss.IndexIVF) and base.quantizer is not None:
        inner.append(faiss.downcast_index(base.quantizer))
    for layer in inner:
        if layer.metric_type != faiss.METRIC_INNER_PRODUCT:
            metric = _METRIC_NAMES.get(layer.metric_type, f"metric {layer.metric_type}")
            raise MapFormatError(
                f"{path}: {type(layer).__name__} uses {metric}; place maps use inner product only"
            )
    if index.d != dim:
        message = f"{path.name} is {index.d}-d but map.json field 'dim' is {dim}"
        raise MapDimensionError(f"{path.parent}: {message}")
    names = [type(layer).__name__ for layer in layers]
    use_spec = spec if trained else IndexSpec()
    expected: list[type] = [faiss.IndexIDMap2] if use_spec.uses_id_map else []
    if use_spec.pca_dim is not None:
        expected.append(faiss.IndexPreTransform)
    base_type = {"flat": faiss.IndexFlat, "hnsw": faiss.IndexHNSWFlat}.get(use_spec.kind)
    if base_type is None:
        base_type = faiss.IndexIVFPQ if use_spec.pq_m else faiss.IndexIVFFlat
    expected.append(base_type)
    state = "trained" if trained else "untrained (flat buffer)"
    shape_ok = len(layers) == len(expected)
    shape_ok = shape_ok and all(isinstance(a, b) for a, b in zip(layers, expected, strict=True))
    if shape_ok and use_spec.pca_dim is not None:
        shape_ok = _pca_matches(layers[-2], use_spec)
    if shape_ok and isinstance(base, faiss.IndexIVF):
        shape_ok = base.nlist == use_spec.nlist and (not use_spec.pq_m or use_spec.pq_m == base.pq.M)
    if not shape_ok:
        raise MapConsistencyError(
            f"{path}: the index is {'/'.join(names)}, not the {state} '{use_spec}' index that map.json "
            f"fields 'index_spec' and 'index_trained' describe"
        )
    if not index.is_trained:
        raise MapConsistencyError(f"{path}: index is not trained but map.json field 'index_trained' is true")


def _pca_matches(pre: faiss.IndexPreTransform, spec: IndexSpec) -> bool:
    if pre.chain.size() != 2:
        return False
    pca = faiss.downcast_VectorTransform(pre.chain.at(0))
    norm = faiss.downcast_VectorTransform(pre.chain.at(1))
    return (
        isinstance(pca, faiss.PCAMatrix)
        and isinstance(norm, faiss.NormalizationTransform)
        and pca.d_out == spec.pca_dim
        and (pca.eigen_power != 0) == spec.pca_whiten
    )


def index_ids(index: faiss.Index) -> np.ndarray:
    """Every id stored in the index (id map, or the inverted lists of an IVF index), unsorted."""
    top = faiss.downcast_index(index)
    if isinstance(top, (faiss.IndexIDMap2, faiss.IndexIDMap)):
        return faiss.vector_to_array(top.id_map).astype(np.int64)
    base = _layers(index)[-1]
    if not isinstance(base, faiss.IndexIVF):
        raise MapError(f"cannot list the ids of a {type(base).__name__} index")
    invlists = base.invlists
    parts = []
    for list_no in range(base.nlist):
        size = invlists.list_size(list_no)
        if size:
            ids = np.empty(size, np.int64)
            pointer = invlists.get_ids(list_no)
            try:
                faiss.memcpy(faiss.swig_ptr(ids), pointer, ids.nbytes)
            finally:
                invlists.release_ids(list_no, pointer)
            parts.append(ids)
    return np.concatenate(parts) if parts else np.zeros(0, np.int64)


def check_ids(
    *,
    index: faiss.Index,
    place_ids: np.ndarray,
    tombstones: np.ndarray,
    keyframes: np.ndarray,
    meta: dict,
    where: Path,
) -> None:
    """Counts in map.json, faiss ids vs SQLite ids (+ tombstones) and the next-id counters agree."""
    problems = []
    n_places, n_index, n_tomb = len(place_ids), int(index.ntotal), len(tombstones)
    counts = meta["counts"]
    if n_index != n_places + n_tomb:
        problems.append(
            f"index.faiss holds {n_index} vectors but places.sqlite {n_places} places"
            + (f" + {n_tomb} removed" if n_tomb else "")
        )
    for key, actual, source in (
        ("places", n_places, "places.sqlite"),
        ("index_ntotal", n_index, "index.faiss"),
        ("tombstones", n_tomb, "places.sqlite"),
    ):
        if counts[key] != actual:
            problems.append(f"map.json field 'counts.{key}' is {counts[key]} but {source} holds {actual}")
    if problems:
        raise MapConsistencyError(f"{where}: " + "; ".join(problems))
    overlap = np.intersect1d(place_ids, tombstones)
    if overlap.size:
        raise MapConsistencyError(f"{where}: places.sqlite lists place {int(overlap[0])} as live and removed")
    stored = np.sort(index_ids(index))
    expected = np.union1d(place_ids, tombstones)
    if expected.size and expected[0] < 0:
        raise MapConsistencyError(f"{where}: places.sqlite holds a negative place id {int(expected[0])}")
    if not np.array_equal(stored, expected):
        duplicates = stored[1:][stored[1:] == stored[:-1]]
        if duplicates.size:
            detail = f"index.faiss holds place id {int(duplicates[0])} twice"
        else:
            only_index = np.setdiff1d(stored, expected)
            only_db = np.setdiff1d(expected, stored)
            detail = (
                f"index.faiss has place id {int(only_index[0])} that places.sqlite lacks"
                if only_index.size
                else f"places.sqlite has place id {int(only_db[0])} that index.faiss lacks"
            )
        raise MapConsistencyError(f"{where}: faiss ids and SQLite ids differ ({detail})")
    if expected.size and meta["next_place_id"] <= int(expected[-1]):
        raise MapConsistencyError(
            f"{where}: map.json field 'next_place_id' {meta['next_place_id']} must exceed the largest stored "
            f"place id {int(expected[-1])}"
        )
    if keyframes.size and meta["next_keyframe_index"] <= int(keyframes.max()):
        raise MapConsistencyError(
            f"{where}: map.json field 'next_keyframe_index' {meta['next_keyframe_index']} must exceed the "
            f"largest stored keyframe index {int(keyframes.max())}"
        )
