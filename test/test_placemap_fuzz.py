"""Systematic load fuzzing: every map.json field and every file, damaged in many ways, must raise MapError.

Each case copies a small saved map, damages it, loads it and checks: the error is the expected
:class:`MapError` subclass, ``str(error)`` is one line that names the file or field, and no working
folder is left behind. Field cases rewrite map.json with a matching self-checksum so that the field
validation itself is exercised; byte-level cases do not.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np
import pytest
from test_placemap import metas, unit_vectors

from tscm_ros.placemap import (
    MapConsistencyError,
    MapCorruptError,
    MapDimensionError,
    MapError,
    MapFormatError,
    MapNotFoundError,
    PlaceMap,
)
from tscm_ros.placemap.layout import sha256_file
from tscm_ros.placemap.validate import CHECKSUM_FIELD, meta_checksum
from tscm_ros.placemap.workdir import PREFIX

DIM = 16
N = 60
MISSING = object()
# base maps: spec, places added, ids removed
BASES = {
    "flat": ("flat", 20, [3, 7]),
    "hnsw": ("hnsw:M=8", 20, [2, 5]),  # removals are tombstones
    "ivf": ("ivf:nlist=4,nprobe=4,train=40", N, [1]),
    "pca_buffer": ("pca8+flat:train=100", 20, []),  # untrained: the flat buffer
    "pca": ("pca8+flat:train=40", N, [0]),
}
VECTORS = unit_vectors(N, DIM, seed=11)


@pytest.fixture(scope="module")
def bases(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    faiss.omp_set_num_threads(1)
    folder = tmp_path_factory.mktemp("bases")
    out = {}
    for name, (spec, count, removed) in BASES.items():
        place_map = PlaceMap.create(DIM, spec, model_fingerprint="fp")
        place_map.add(VECTORS[:count], metas(count), features=[bytes([i]) * 300 for i in range(count)])
        place_map.remove(removed)
        place_map.save(folder / name)
        place_map.close()
        out[name] = folder / name
    # "delta": a flat map saved incrementally: base of 20 places, then delta 1 (+10, -1 removed, features
    # changed) and delta 2 (+5)
    place_map = PlaceMap.create(DIM, "flat", model_fingerprint="fp")
    place_map.compact_after_deltas = None
    place_map.add(VECTORS[:20], metas(20), features=[b"f" * 300] * 20)
    place_map.save(folder / "delta")
    place_map.add(VECTORS[20:30], metas(10, start=20), features=[b"g" * 300] * 10)
    place_map.remove([4])
    place_map.set_features(5, b"changed")
    place_map.save()
    place_map.add(VECTORS[30:35], metas(5, start=30))
    place_map.save()
    assert place_map.delta_count == 2
    place_map.close()
    out["delta"] = folder / "delta"
    return out


@pytest.fixture(scope="module")
def workdir_parent(tmp_path_factory: pytest.TempPathFactory):
    folder = tmp_path_factory.mktemp("work")
    previous, tempfile.tempdir = tempfile.tempdir, str(folder)
    yield folder
    tempfile.tempdir = previous


# ---------------------------------------------------------------------------- helpers
def vdir(root: Path) -> Path:
    return (root / "current").resolve()


def read_meta(root: Path) -> dict:
    return json.loads((vdir(root) / "map.json").read_text())


def write_meta(root: Path, meta: dict) -> None:
    meta = {k: v for k, v in meta.items() if k != CHECKSUM_FIELD}
    meta[CHECKSUM_FIELD] = meta_checksum(meta)
    (vdir(root) / "map.json").write_text(json.dumps(meta))


def refresh(root: Path, *names: str) -> None:
    meta = read_meta(root)
    for name in names:
        path = vdir(root) / name
        meta["files"][name] = {"sha256": sha256_file(path), "bytes": path.stat().st_size}
    write_meta(root, meta)


def set_field(path: tuple[str, ...], value: object) -> Callable[[Path], None]:
    def mutate(root: Path) -> None:
        meta = read_meta(root)
        node = meta
        for key in path[:-1]:
            node = node[key]
        if value is MISSING:
            node.pop(path[-1], None)
        else:
            node[path[-1]] = value
        write_meta(root, meta)

    return mutate


def edit_bytes(name: str, edit: Callable[[bytes], bytes], *, recompute: bool) -> Callable[[Path], None]:
    def mutate(root: Path) -> None:
        path = vdir(root) / name
        path.write_bytes(edit(path.read_bytes()))
        if recompute and name != "map.json":
            refresh(root, name)

    return mutate


def flip(offset: float, mask: int = 0x01) -> Callable[[bytes], bytes]:
    """XOR one byte at ``offset`` (a fraction of the length, or an absolute index when >= 1)."""

    def edit(data: bytes) -> bytes:
        out = bytearray(data)
        pos = int(offset) if offset >= 1 else int(offset * (len(data) - 1))
        out[pos] ^= mask
        return bytes(out)

    return edit


def garbage(size: int | None = None) -> Callable[[bytes], bytes]:
    return lambda data: np.random.default_rng(5).bytes(len(data) if size is None else size)


def sql(*statements: str) -> Callable[[Path], None]:
    """Tamper with places.sqlite, then recompute its checksum (only the content checks can tell)."""

    def mutate(root: Path) -> None:
        conn = sqlite3.connect(vdir(root) / "places.sqlite")
        with conn:
            for statement in statements:
                conn.execute(statement)
        conn.close()
        refresh(root, "places.sqlite")

    return mutate


def stored_ids(base: str) -> np.ndarray:
    _, count, _ = BASES[base]
    return np.arange(count, dtype=np.int64)  # tombstoned (HNSW) ids stay in the index


def replace_index(base: str, build: Callable[[str], faiss.Index]) -> Callable[[Path], None]:
    def mutate(root: Path) -> None:
        faiss.write_index(build(base), str(vdir(root) / "index.faiss"))
        refresh(root, "index.faiss")

    return mutate


def fill(index: faiss.Index, ids: np.ndarray, train: bool = False) -> faiss.Index:
    vectors = VECTORS[: len(ids)]
    if train:
        index.train(VECTORS)
    index.add_with_ids(vectors, ids)
    return index


def l2_twin(base: str) -> faiss.Index:
    """The same structure, vectors and ids as the base map's index, but with the L2 metric."""
    spec, count, removed = BASES[base]
    ids = stored_ids(base)
    if base != "hnsw":
        ids = np.setdiff1d(ids, removed)
    factory = {
        "flat": "IDMap2,Flat",
        "hnsw": "IDMap2,HNSW8",
        "ivf": "IVF4,Flat",
        "pca_buffer": "IDMap2,Flat",
        "pca": "IDMap2,PCA8,L2norm,Flat",
    }[base]
    index = faiss.index_factory(DIM, factory, faiss.METRIC_L2)
    vectors = VECTORS[ids]
    if not index.is_trained:
        index.train(VECTORS)
    index.add_with_ids(vectors, ids)
    return index


def ip_header_over_l2(base: str) -> faiss.Index:
    """An id layer that claims inner product around an L2 flat index."""
    index = faiss.IndexIDMap2(faiss.IndexFlatL2(DIM))
    ids = np.setdiff1d(stored_ids(base), BASES[base][2])
    index.add_with_ids(VECTORS[ids], ids)
    index.metric_type = faiss.METRIC_INNER_PRODUCT
    return index


def ip_flat(ids_fn: Callable[[np.ndarray], np.ndarray], dim: int = DIM) -> Callable[[str], faiss.Index]:
    def build(base: str) -> faiss.Index:
        ids = ids_fn(np.setdiff1d(stored_ids(base), BASES[base][2]))
        index = faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
        index.add_with_ids(unit_vectors(len(ids), dim, seed=3), ids)
        return index

    return build


def ip_hnsw(base: str) -> faiss.Index:
    ids = np.setdiff1d(stored_ids(base), BASES[base][2])
    index = faiss.IndexIDMap2(faiss.IndexHNSWFlat(DIM, 8, faiss.METRIC_INNER_PRODUCT))
    index.add_with_ids(VECTORS[ids], ids)
    return index


def link(target: str, extra: Callable[[Path], None] | None = None) -> Callable[[Path], None]:
    def mutate(root: Path) -> None:
        if extra:
            extra(root)
        (root / "current").unlink()
        os.symlink(target, root / "current")

    return mutate


# ---------------------------------------------------------------------------- cases
@dataclass(frozen=True)
class Case:
    id: str
    base: str
    mutate: Callable[[Path], None]
    error: type[MapError]
    names: tuple[str, ...]  # at least one must appear in the message


def field_cases() -> list[Case]:
    hexes = "ab" * 32
    corrupt, fmt, cons, dim_err = MapCorruptError, MapFormatError, MapConsistencyError, MapDimensionError
    table: list[tuple[tuple[str, ...], list[tuple[object, type[MapError]]]]] = [
        (("format",), [(MISSING, fmt), (None, fmt), (1, fmt), ("tscm_ros.other", fmt), (["x"], fmt)]),
        (
            ("format_version",),
            [(v, fmt) for v in (MISSING, None, "1", 0, -1, 1, 3, 10**30, True, 2.0)],
        ),
        (
            ("dim",),
            [(v, corrupt) for v in (MISSING, None, "16", 0, -1, 2**17, 10**30, True, 16.0, [16])]
            + [(8, dim_err), (32, dim_err)],
        ),
        (("metric",), [(MISSING, corrupt)] + [(v, fmt) for v in (None, "l2", "IP", 0)]),
        (
            ("index_spec",),
            [(MISSING, corrupt), (None, corrupt), (0, corrupt)]
            + [(v, fmt) for v in ("annoy", "pca64+flat", "ivf:nlist=0")]
            + [("hnsw:M=8", cons), ("ivf:nlist=4,train=40", cons)],
        ),
        (("index_trained",), [(v, corrupt) for v in (MISSING, None, "true", 1, 0, False)]),
        (
            ("next_place_id",),
            [(v, corrupt) for v in (MISSING, None, "x", -1, 2**63, 2**64, 1.5, True)]
            + [(v, cons) for v in (0, 19)],
        ),
        (
            ("next_keyframe_index",),
            [(v, corrupt) for v in (MISSING, None, "x", -1, 2**64, 1.5)] + [(v, cons) for v in (0, 19)],
        ),
        (("model_fingerprint",), [(v, corrupt) for v in (MISSING, 5, 1.5, [], {}, True)]),
        (("created_utc",), [(v, corrupt) for v in (MISSING, None, 5, "", "yesterday")]),
        (("updated_utc",), [(v, corrupt) for v in (MISSING, None, 5, "2026-13-45T00:00:00")]),
        (("counts",), [(v, corrupt) for v in (MISSING, None, [], "x", 5, {})]),
        (
            ("counts", "places"),
            [(v, corrupt) for v in (MISSING, None, -1, "18", 1.5)] + [(v, cons) for v in (0, 17, 19, 10**18)],
        ),
        (("counts", "index_ntotal"), [(v, corrupt) for v in (MISSING, None, -1, 2**64)] + [(19, cons)]),
        (("counts", "tombstones"), [(v, corrupt) for v in (MISSING, None, -1, "0")] + [(1, cons)]),
        (("files",), [(v, corrupt) for v in (MISSING, None, [], "x", {})]),
        (("train_threshold",), [(v, corrupt) for v in ("x", -1, 1.5, None)]),
        (("faiss_version",), [(v, corrupt) for v in (5, None)]),
        (("unexpected_field",), [(1, fmt)]),
    ]
    for name in ("index.faiss", "places.sqlite"):
        table += [
            (("files", name), [(v, corrupt) for v in (MISSING, None, "x", [])]),
            (
                ("files", name, "sha256"),
                [(v, corrupt) for v in (MISSING, None, 5, "", "ab", hexes.upper(), "zz" * 32, hexes)],
            ),
            (("files", name, "bytes"), [(v, corrupt) for v in (MISSING, None, -1, "100", 0, 10**30, 1.5, 7)]),
        ]
    cases = []
    for path, values in table:
        label = ".".join(path)
        for k, (value, error) in enumerate(values):
            shown = "missing" if value is MISSING else repr(value)[:20]
            names = (path[-1], *(("index.faiss", "places.sqlite") if path[0] == "files" else ()))
            cases.append(Case(f"json.{label}={shown}#{k}", "flat", set_field(path, value), error, names))
    return cases


def map_json_byte_cases() -> list[Case]:
    cases = [
        Case(
            "map.json:deleted",
            "flat",
            lambda r: (vdir(r) / "map.json").unlink(),
            MapNotFoundError,
            ("map.json",),
        ),
        Case(
            "map.json:empty",
            "flat",
            edit_bytes("map.json", lambda d: b"", recompute=False),
            MapCorruptError,
            ("map.json",),
        ),
        Case(
            "map.json:truncated",
            "flat",
            edit_bytes("map.json", lambda d: d[: len(d) // 2], recompute=False),
            MapCorruptError,
            ("map.json",),
        ),
        Case(
            "map.json:garbage",
            "flat",
            edit_bytes("map.json", garbage(), recompute=False),
            MapCorruptError,
            ("map.json",),
        ),
        Case(
            "map.json:list",
            "flat",
            edit_bytes("map.json", lambda d: b"[1, 2]", recompute=False),
            MapFormatError,
            ("map.json",),
        ),
        Case(
            "map.json:huge",
            "flat",
            edit_bytes("map.json", lambda d: b" " * (17 << 20), recompute=False),
            MapCorruptError,
            ("map.json",),
        ),
        Case(
            "map.json:nested",
            "flat",
            edit_bytes("map.json", lambda d: b"[" * 100000, recompute=False),
            MapCorruptError,
            ("map.json",),
        ),
    ]
    for k in range(
        40
    ):  # every single-byte flip must be caught: JSON syntax, field names or the self-checksum
        offset = 0.025 * k
        for mask in (0x01, 0x80):
            cases.append(
                Case(
                    f"map.json:flip{k}^{mask:#x}",
                    "flat",
                    edit_bytes("map.json", flip(offset, mask), recompute=False),
                    MapError,
                    ("map.json",),
                )
            )
    return cases


def file_cases() -> list[Case]:
    cases = []
    for name in ("index.faiss", "places.sqlite"):
        c = MapCorruptError
        cases += [
            Case(
                f"{name}:deleted", "flat", lambda r, n=name: (vdir(r) / n).unlink(), MapNotFoundError, (name,)
            ),
            Case(
                f"{name}:directory",
                "flat",
                lambda r, n=name: ((vdir(r) / n).unlink(), (vdir(r) / n).mkdir()),
                MapNotFoundError,
                (name,),
            ),
            Case(
                f"{name}:truncated",
                "flat",
                edit_bytes(name, lambda d: d[: len(d) // 2], recompute=False),
                c,
                (name,),
            ),
            Case(
                f"{name}:truncated-1", "flat", edit_bytes(name, lambda d: d[:-1], recompute=False), c, (name,)
            ),
            Case(f"{name}:empty", "flat", edit_bytes(name, lambda d: b"", recompute=False), c, (name,)),
            Case(f"{name}:garbage", "flat", edit_bytes(name, garbage(), recompute=False), c, (name,)),
            Case(
                f"{name}:appended", "flat", edit_bytes(name, lambda d: d + b"\0", recompute=False), c, (name,)
            ),
            # past the checksum (recomputed), the reader itself must refuse
            Case(
                f"{name}:truncated+sum",
                "flat",
                edit_bytes(name, lambda d: d[: len(d) // 2], recompute=True),
                c,
                (name,),
            ),
            Case(f"{name}:garbage+sum", "flat", edit_bytes(name, garbage(), recompute=True), c, (name,)),
            Case(
                f"{name}:garbage4k+sum", "flat", edit_bytes(name, garbage(4096), recompute=True), c, (name,)
            ),
            Case(f"{name}:header+sum", "flat", edit_bytes(name, flip(1, 0x20), recompute=True), c, (name,)),
        ]
        for k, offset in enumerate((0, 0.1, 0.3, 0.5, 0.7, 0.9, 0.999)):
            cases.append(
                Case(f"{name}:flip{k}", "flat", edit_bytes(name, flip(offset), recompute=False), c, (name,))
            )
    cases.append(
        Case(
            "places.sqlite:empty+sum",
            "flat",
            edit_bytes("places.sqlite", lambda d: b"", recompute=True),
            MapCorruptError,
            ("places.sqlite",),
        )
    )
    return cases


def index_cases() -> list[Case]:
    cases = [
        Case(f"index:L2-twin:{base}", base, replace_index(base, l2_twin), MapFormatError, ("index.faiss",))
        for base in BASES
    ]
    cons = MapConsistencyError
    cases += [
        Case(
            "index:ip-header-over-L2",
            "flat",
            replace_index("flat", ip_header_over_l2),
            MapFormatError,
            ("index.faiss",),
        ),
        Case("index:hnsw-in-flat-map", "flat", replace_index("flat", ip_hnsw), cons, ("index_spec",)),
        Case(
            "index:flat-in-ivf-map", "ivf", replace_index("ivf", ip_flat(lambda i: i)), cons, ("index_spec",)
        ),
        Case(
            "index:trained-pca-as-buffer",
            "pca",
            set_field(("index_trained",), False),
            cons,
            ("index_trained",),
        ),
        Case(
            "index:buffer-as-trained",
            "pca_buffer",
            set_field(("index_trained",), True),
            cons,
            ("index_trained",),
        ),
        Case("index:other-ids", "flat", replace_index("flat", ip_flat(lambda i: i + 100)), cons, ("ids",)),
        Case(
            "index:duplicate-id",
            "flat",
            replace_index("flat", ip_flat(lambda i: np.r_[i[:-1], i[0]])),
            cons,
            ("twice",),
        ),
        Case("index:negative-ids", "flat", replace_index("flat", ip_flat(lambda i: i - 100)), cons, ("ids",)),
        Case(
            "index:one-more",
            "flat",
            replace_index("flat", ip_flat(lambda i: np.r_[i, 50])),
            cons,
            ("index.faiss",),
        ),
        Case(
            "index:hnsw-tombstones-dropped",
            "hnsw",
            replace_index("hnsw", ip_flat(lambda i: i)),
            cons,
            ("index_spec",),
        ),
        Case(
            "index:other-dim",
            "flat",
            replace_index("flat", ip_flat(lambda i: i, dim=8)),
            MapDimensionError,
            ("dim",),
        ),
    ]
    return cases


def sqlite_cases() -> list[Case]:
    c, cons = MapCorruptError, MapConsistencyError
    return [
        Case(
            "sqlite:row-deleted",
            "flat",
            sql("DELETE FROM places WHERE place_id=4"),
            cons,
            ("places.sqlite",),
        ),
        Case(
            "sqlite:id-changed",
            "flat",
            sql("UPDATE places SET place_id=55 WHERE place_id=19"),
            cons,
            ("ids",),
        ),
        Case(
            "sqlite:tombstone-added",
            "flat",
            sql("INSERT INTO tombstones VALUES (3)"),
            cons,
            ("tombstones",),
        ),
        Case(
            "sqlite:live-and-removed",
            "hnsw",
            sql(
                "INSERT INTO places (place_id, stamp_ns, keyframe_index) VALUES (2, 0, 0)",
            ),
            cons,
            ("places.sqlite",),
        ),
        Case(
            "sqlite:schema-newer",
            "flat",
            sql("UPDATE info SET value='99' WHERE key='schema_version'"),
            MapFormatError,
            ("schema",),
        ),
        Case(
            "sqlite:schema-text",
            "flat",
            sql("UPDATE info SET value='two' WHERE key='schema_version'"),
            c,
            ("schema_version",),
        ),
        Case(
            "sqlite:schema-zero",
            "flat",
            sql("UPDATE info SET value='0' WHERE key='schema_version'"),
            c,
            ("schema_version",),
        ),
        Case("sqlite:schema-missing", "flat", sql("DELETE FROM info"), c, ("schema_version",)),
        Case(
            "sqlite:stamp-text",
            "flat",
            sql("UPDATE places SET stamp_ns='x' WHERE place_id=4"),
            c,
            ("places.sqlite",),
        ),
        Case(
            "sqlite:keyframe-ahead",
            "flat",
            sql("UPDATE places SET keyframe_index=500 WHERE place_id=4"),
            cons,
            ("next_keyframe_index",),
        ),
        Case("sqlite:no-places-table", "flat", sql("DROP TABLE places"), c, ("places",)),
        Case("sqlite:no-features-table", "flat", sql("DROP TABLE features"), c, ("places.sqlite",)),
        Case(
            "sqlite:places-column-dropped",
            "flat",
            sql("ALTER TABLE places DROP COLUMN utm_zone"),
            c,
            ("places.sqlite",),
        ),
        Case(
            "sqlite:foreign-db",
            "flat",
            sql(
                "DROP TABLE places",
                "DROP TABLE tombstones",
                "DROP TABLE info",
                "DROP TABLE features",
                "DROP TABLE thumbnails",
                "CREATE TABLE foo (x)",
            ),
            c,
            ("places.sqlite",),
        ),
    ]


def layout_cases() -> list[Case]:
    def remove_root(root: Path) -> None:
        shutil.rmtree(root)

    def root_is_file(root: Path) -> None:
        shutil.rmtree(root)
        root.write_text("not a map")

    def root_empty(root: Path) -> None:
        shutil.rmtree(root)
        root.mkdir()

    def loop2(root: Path) -> None:
        os.symlink("current", root / "other")
        (root / "current").unlink()
        os.symlink("other", root / "current")

    return [
        Case("layout:self-loop", "flat", link("current"), MapCorruptError, ("current",)),
        Case("layout:two-link-loop", "flat", loop2, MapCorruptError, ("current",)),
        Case("layout:dangling", "flat", link("v99999999"), MapNotFoundError, ("current",)),
        Case(
            "layout:dangling-absolute", "flat", link("/nonexistent/place/map"), MapNotFoundError, ("current",)
        ),
        Case("layout:to-file", "flat", link("v00000001/map.json"), MapNotFoundError, ("current",)),
        Case(
            "layout:to-empty-dir",
            "flat",
            link("empty", lambda r: (r / "empty").mkdir()),
            MapNotFoundError,
            ("current",),
        ),
        Case(
            "layout:version-deleted", "flat", lambda r: shutil.rmtree(vdir(r)), MapNotFoundError, ("current",)
        ),
        Case("layout:root-missing", "flat", remove_root, MapNotFoundError, ("does not exist",)),
        Case("layout:root-is-file", "flat", root_is_file, MapNotFoundError, ("not a place map",)),
        Case("layout:root-empty", "flat", root_empty, MapNotFoundError, ("not a place map",)),
    ]


def write_vec(
    ids: np.ndarray, vectors: np.ndarray, removed: np.ndarray, tail: bytes = b""
) -> Callable[[Path], None]:
    """Replace delta 1's vector file (checksum recomputed)."""

    def mutate(root: Path) -> None:
        path = vdir(root) / "delta-000001.vec"
        with open(path, "wb") as stream:
            for array in (ids, vectors, removed):
                np.lib.format.write_array(stream, array, allow_pickle=array.dtype == object)
            stream.write(tail)
        refresh(root, path.name)

    return mutate


def edit_meta(edit: Callable[[dict], None]) -> Callable[[Path], None]:
    def mutate(root: Path) -> None:
        meta = read_meta(root)
        edit(meta)
        write_meta(root, meta)

    return mutate


def drop_last_delta(meta: dict) -> None:
    entry = meta["deltas"].pop()
    for suffix in ("vec", "sqlite"):
        meta["files"].pop(f"delta-{entry['seq']:06d}.{suffix}")


def delta_cases() -> list[Case]:
    c, cons, fmt = MapCorruptError, MapConsistencyError, MapFormatError
    vec, db = "delta-000001.vec", "delta-000001.sqlite"
    ids10 = np.arange(20, 30, dtype=np.int64)
    good = VECTORS[20:30]
    removed = np.array([4], np.int64)
    cases = []
    for name in (vec, db, "delta-000002.vec"):
        cases += [
            Case(
                f"delta:{name}:deleted",
                "delta",
                lambda r, n=name: (vdir(r) / n).unlink(),
                MapNotFoundError,
                (name,),
            ),
            Case(
                f"delta:{name}:truncated",
                "delta",
                edit_bytes(name, lambda d: d[: len(d) // 2], recompute=False),
                c,
                (name,),
            ),
            Case(f"delta:{name}:flip", "delta", edit_bytes(name, flip(0.6), recompute=False), c, (name,)),
            Case(
                f"delta:{name}:garbage+sum", "delta", edit_bytes(name, garbage(), recompute=True), c, (name,)
            ),
            Case(
                f"delta:{name}:truncated+sum",
                "delta",
                edit_bytes(name, lambda d: d[: len(d) // 2], recompute=True),
                c,
                (name,),
            ),
        ]
    cases += [
        Case(
            "delta:vec:wrong-dim", "delta", write_vec(ids10, np.ones((10, 8), np.float32), removed), c, (vec,)
        ),
        Case("delta:vec:float64", "delta", write_vec(ids10, good.astype(np.float64), removed), c, (vec,)),
        Case("delta:vec:negative-ids", "delta", write_vec(-ids10, good, removed), c, (vec,)),
        Case(
            "delta:vec:nan",
            "delta",
            write_vec(ids10, np.full((10, DIM), np.nan, np.float32), removed),
            c,
            (vec,),
        ),
        Case("delta:vec:trailing", "delta", write_vec(ids10, good, removed, b"x"), c, (vec,)),
        Case("delta:vec:pickled", "delta", write_vec(np.array([1], object), good, removed), c, (vec,)),
        Case("delta:vec:count-mismatch", "delta", write_vec(ids10[:9], good[:9], removed), cons, ("deltas",)),
        Case("delta:vec:duplicate-ids", "delta", write_vec(ids10 - 10, good, removed), cons, ("ids",)),
        Case(
            "delta:vec:remove-unknown",
            "delta",
            write_vec(ids10, good, np.array([99], np.int64)),
            cons,
            ("index.faiss",),
        ),
        Case("delta:db:no-touched", "delta", lambda r: sql_file(r, db, "DROP TABLE touched"), c, (db,)),
        Case("delta:db:schema", "delta", lambda r: sql_file(r, db, "UPDATE info SET value='1'"), c, (db,)),
        Case(
            "delta:db:conflict",
            "delta",
            lambda r: sql_file(
                r, db, "INSERT INTO places (place_id, stamp_ns, keyframe_index) VALUES (0, 0, 0)"
            ),
            c,
            (db,),
        ),
        Case("delta:json:format1", "delta", set_field(("format_version",), 1), fmt, ("base_seq", "deltas")),
    ]
    for field, values in (
        ("deltas", [MISSING, None, "x", {}, [{}], [1]]),
        ("base_seq", [MISSING, None, -1, "0", 1.5, 1]),
    ):
        for k, value in enumerate(values):
            cases.append(
                Case(
                    f"delta:json:{field}={'missing' if value is MISSING else repr(value)}#{k}",
                    "delta",
                    set_field((field,), value),
                    c,
                    (field, "deltas"),
                )
            )
    cases += [
        Case(
            "delta:json:seq-repeated", "delta", edit_meta(lambda m: m["deltas"][1].update(seq=1)), c, ("seq",)
        ),
        Case("delta:json:seq-reordered", "delta", edit_meta(lambda m: m["deltas"].reverse()), c, ("seq",)),
        Case(
            "delta:json:extra-key",
            "delta",
            edit_meta(lambda m: m["deltas"][0].update(x=1)),
            c,
            ("deltas[0]",),
        ),
        Case(
            "delta:json:added-off",
            "delta",
            edit_meta(lambda m: m["deltas"][0].update(added=9)),
            cons,
            ("deltas",),
        ),
        Case(
            "delta:json:removed-off",
            "delta",
            edit_meta(lambda m: m["deltas"][0].update(removed=0)),
            cons,
            ("deltas",),
        ),
        Case(
            "delta:json:unknown-file",
            "delta",
            edit_meta(lambda m: m["files"].update({"delta-000099.vec": m["files"][vec]})),
            c,
            ("delta-000099.vec",),
        ),
        Case("delta:json:file-entry-missing", "delta", edit_meta(lambda m: m["files"].pop(db)), c, (db,)),
        Case("delta:json:delta-dropped", "delta", edit_meta(drop_last_delta), cons, ("counts",)),
    ]
    return cases


def sql_file(root: Path, name: str, statement: str) -> None:
    conn = sqlite3.connect(vdir(root) / name)
    with conn:
        conn.execute(statement)
    conn.close()
    refresh(root, name)


CASES = (
    field_cases()
    + map_json_byte_cases()
    + file_cases()
    + index_cases()
    + sqlite_cases()
    + layout_cases()
    + delta_cases()
)


def test_case_ids_are_unique() -> None:
    assert len({c.id for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_damaged_map_raises_one_line_map_error(
    case: Case, bases: dict[str, Path], workdir_parent: Path, tmp_path: Path
) -> None:
    root = tmp_path / "map"
    shutil.copytree(bases[case.base], root, symlinks=True)
    case.mutate(root)
    with pytest.raises(MapError) as info:
        PlaceMap.load(root)
    error = info.value
    message = str(error)
    assert isinstance(error, case.error), f"{type(error).__name__}: {message}"
    assert message.strip() and "\n" not in message, message
    assert any(name in message for name in case.names), message
    assert PREFIX not in message, "names the working copy instead of the map's file"
    assert not [p for p in workdir_parent.iterdir() if p.name.startswith(PREFIX)], (
        "working folder left behind"
    )


@pytest.mark.parametrize("base", [*BASES, "delta"])
def test_undamaged_bases_load(base: str, bases: dict[str, Path], workdir_parent: Path) -> None:
    place_map = PlaceMap.load(bases[base], dim=DIM, model_fingerprint="fp")
    spec, count, removed = BASES.get(base, ("flat", 35, [4]))
    assert len(place_map) == count - len(removed)
    assert place_map.search(VECTORS[count - 1], 1)[0].place_id == count - 1
    place_map.close()
