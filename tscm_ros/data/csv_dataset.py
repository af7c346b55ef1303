"""A generic, hand-writable CSV place-recognition dataset -> :class:`RetrievalDataset`.

One row per image. Columns (header required, order free, extra columns ignored):

=============  ========  =====================================================================
column         required  meaning
=============  ========  =====================================================================
``image``      yes       image path, relative to the CSV's folder (absolute paths also work)
``easting``,   yes (one  position in metres (UTM or any local metric frame); use either the
``northing``   pair)     ``easting``/``northing`` pair or the ``x``/``y`` pair
``x``, ``y``
``heading``    no        degrees; kept in ``extra["database_heading"]`` / ``["query_heading"]``,
                         not used for ground truth
``split``      no        ``train`` / ``val`` / ``test``; needed only to load one split
``role``       no        ``database`` / ``query``. **Default when the column is absent or the cell
                         is empty: the row is both a database image and a query** (leave-one-out:
                         a query never counts its own database entry as a positive or negative)
=============  ========  =====================================================================

Ground truth: ``"10m"`` positives = database images within 10 m of the query (the TSCM protocol, also used
to pick training positives) and ``"25m"`` = within 25 m (the standard protocol; training negatives lie
beyond it). Example (``lap1`` is the mapping run, ``lap2`` the revisit)::

    image,easting,northing,heading,split,role
    lap1/000000.jpg,0.0,0.0,90,train,database
    lap1/000001.jpg,1.0,0.0,90,train,database
    lap2/000000.jpg,0.3,0.1,92,train,query
    lap1/000400.jpg,400.0,0.0,90,test,database
    lap2/000400.jpg,400.2,0.1,91,test,query

``tscm_export_dataset`` writes this format from a rosbag. ``tscm_evaluate --dataset csv:FILE[:SPLIT]``
evaluates on it (all rows, or one split).

Older files (``utm-csv:FILE[:METRES]``) go through the same reader: a ``split`` column that holds the role
(``db``/``database`` or ``query``/``q``), ``path`` or ``file`` for ``image``, ``utm_easting``/``utm_northing``
(or ``utm_east``/``utm_north``) for the coordinates; their positives are the database images within METRES
(default 25), protocol ``"<METRES>m"``.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from tscm_ros.data.dataset import DatasetError, RetrievalDataset, positives_within

SPLITS = ("train", "val", "test")
ROLES = ("database", "query", "both")
POSITIVE_RADIUS_M = 10.0
NEGATIVE_RADIUS_M = 25.0
COLUMNS = ("image", "easting", "northing", "x", "y", "heading", "split", "role")
COORDINATE_PAIRS = (
    ("easting", "northing"),
    ("utm_easting", "utm_northing"),
    ("utm_east", "utm_north"),
    ("x", "y"),
)
IMAGE_COLUMNS = ("image", "path", "file")
LEGACY_ROLES = {"db": "database", "database": "database", "query": "query", "q": "query", "queries": "query"}
LEGACY_RADIUS_M = 25.0


class CsvDatasetError(DatasetError):
    """The CSV file does not follow the documented format (the message names the row and column)."""


def _number(row: dict, column: str, line: int, path: Path) -> float:
    text = (row.get(column) or "").strip()
    try:
        value = float(text)
    except ValueError:
        raise CsvDatasetError(f"{path}:{line}: column {column!r} is not a number: {text!r}") from None
    if not np.isfinite(value):
        raise CsvDatasetError(f"{path}:{line}: column {column!r} is not finite: {text!r}")
    return value


def read_csv_rows(path: str | Path, *, split_is_role: bool = False) -> list[dict]:
    """Parse and validate every row: dicts with image (Path), xy (2-tuple), heading, split, role, line.

    ``split_is_role``: the older layout, whose ``split`` column says ``db`` or ``query`` (module docstring).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"dataset CSV not found: {path}")
    try:
        return _read_rows(path, split_is_role)
    except UnicodeDecodeError as error:
        raise CsvDatasetError(f"{path}: not a UTF-8 text CSV (byte {error.start}: {error.reason})") from None
    except csv.Error as error:
        raise CsvDatasetError(f"{path}: not a readable CSV ({error})") from None


def _header_columns(header: list[str], path: Path, legacy: bool) -> tuple[str, tuple[str, str]]:
    """(image column, (x column, y column)) of a header, first match in the documented order; the
    ``path``/``file`` and ``utm_*`` names only in the older layout."""
    image_names = IMAGE_COLUMNS if legacy else IMAGE_COLUMNS[:1]
    image_column = next((name for name in image_names if name in header), None)
    if image_column is None:
        raise CsvDatasetError(f"{path}: header must contain an 'image' column (found {header})")
    pairs = COORDINATE_PAIRS if legacy else (COORDINATE_PAIRS[0], COORDINATE_PAIRS[-1])
    pair = next((pair for pair in pairs if set(pair) <= set(header)), None)
    if pair is None:
        raise CsvDatasetError(f"{path}: header needs 'easting,northing' or 'x,y' columns (found {header})")
    return image_column, pair


def _split_and_role(row: dict, line: int, path: Path, split_is_role: bool) -> tuple[str | None, str]:
    split = (row.get("split") or "").strip().lower() or None
    if split_is_role:
        if split not in LEGACY_ROLES:
            raise CsvDatasetError(f"{path}:{line}: split must be db or query, got {row.get('split')!r}")
        return None, LEGACY_ROLES[split]
    if split is not None and split not in SPLITS:
        raise CsvDatasetError(f"{path}:{line}: split {split!r} is not one of {SPLITS}")
    role = (row.get("role") or "").strip().lower() or "both"
    if role not in ROLES:
        raise CsvDatasetError(f"{path}:{line}: role {role!r} is not one of {ROLES}")
    return split, role


def _read_rows(path: Path, split_is_role: bool) -> list[dict]:
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        header = [h.strip() for h in (reader.fieldnames or [])]
        reader.fieldnames = header
        image_column, xy_columns = _header_columns(header, path, split_is_role)
        rows = []
        for line, row in enumerate(reader, start=2):
            image = (row.get(image_column) or "").strip()
            if not image:
                raise CsvDatasetError(f"{path}:{line}: empty {image_column!r}")
            split, role = _split_and_role(row, line, path, split_is_role)
            heading = (row.get("heading") or "").strip()
            rows.append(
                {
                    "image": path.parent / image,
                    "xy": (_number(row, xy_columns[0], line, path), _number(row, xy_columns[1], line, path)),
                    "heading": _number(row, "heading", line, path) if heading else float("nan"),
                    "split": split,
                    "role": role,
                    "line": line,
                }
            )
    if not rows:
        raise CsvDatasetError(f"{path}: no data rows")
    return rows


def load_csv_dataset(
    path: str | Path, split: str | None = None, *, check_images: bool = False
) -> RetrievalDataset:
    """Load one split (``None`` = every row) of a dataset CSV as a :class:`RetrievalDataset`.

    ``query_database_index`` gives, per query, the database index of the same row (leave-one-out ``both``
    rows) or -1; that entry is removed from the query's positives and every search skips it.
    """
    path = Path(path)
    if split is not None and split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS} or None, not {split!r}")
    rows = read_csv_rows(path)
    if split is not None:
        if all(r["split"] is None for r in rows):
            raise CsvDatasetError(f"{path}: no 'split' values; load it with split=None or add a split column")
        rows = [r for r in rows if r["split"] == split]
        if not rows:
            raise CsvDatasetError(f"{path}: no rows with split={split!r}")
    if check_images:
        for r in rows:
            if not r["image"].is_file():
                raise FileNotFoundError(f"{path}:{r['line']}: image {r['image']} not found")
    dataset = _dataset_from_rows(
        rows, path.stem + (f"_{split}" if split else ""), f"{path}" + (f" (split {split})" if split else ""),
        {"10m": POSITIVE_RADIUS_M, "25m": NEGATIVE_RADIUS_M},
    )  # fmt: skip
    dataset.extra.update(
        pos_dist_thr=NEGATIVE_RADIUS_M, non_triv_pos_dist=POSITIVE_RADIUS_M, source=str(path)
    )
    return dataset


def _dataset_from_rows(
    rows: list[dict], name: str, where: str, radii: dict[str, float], *, leave_one_out: bool = True
) -> RetrievalDataset:
    """Database/query rows -> dataset with positives within each radius (a ``both`` row's own entry
    excluded); ``leave_one_out`` False leaves ``query_database_index`` unset (no row is both)."""
    database = [r for r in rows if r["role"] in ("database", "both")]
    queries = [r for r in rows if r["role"] in ("query", "both")]
    if not database or not queries:
        raise CsvDatasetError(f"{where}: needs at least one database and one query row")
    db_index_of_line = {r["line"]: i for i, r in enumerate(database)}
    same_row = np.array([db_index_of_line.get(r["line"], -1) for r in queries], dtype=np.int64)
    db_xy = np.array([r["xy"] for r in database], dtype=np.float64)
    q_xy = np.array([r["xy"] for r in queries], dtype=np.float64)
    positives = {}
    for label, radius in radii.items():
        lists = positives_within(db_xy, q_xy, radius)
        positives[label] = [p[p != own] if own >= 0 else p for p, own in zip(lists, same_row, strict=True)]
    return RetrievalDataset(
        name=name,
        database=[r["image"] for r in database],
        queries=[r["image"] for r in queries],
        positives=positives,
        database_utm=db_xy,
        query_utm=q_xy,
        query_database_index=same_row if leave_one_out else None,
        extra={
            "database_heading": np.array([r["heading"] for r in database]),
            "query_heading": np.array([r["heading"] for r in queries]),
        },
    )


def load_csv_spec(argument: str) -> RetrievalDataset:
    """``tscm_evaluate`` dataset spec argument: ``FILE`` or ``FILE:SPLIT``."""
    path, sep, split = argument.rpartition(":")
    if sep and split in SPLITS:
        return load_csv_dataset(path, split, check_images=True)
    return load_csv_dataset(argument, check_images=True)


def load_utm_csv_spec(argument: str) -> RetrievalDataset:
    """``utm-csv:FILE[:METRES]``: the older layout (module docstring), positives within METRES (25)."""
    head, sep, tail = str(argument).rpartition(":")
    try:
        radius, text = (float(tail), head) if sep else (LEGACY_RADIUS_M, str(argument))
    except ValueError:
        radius, text = LEGACY_RADIUS_M, str(argument)
    if not radius > 0:
        raise DatasetError(f"utm-csv distance threshold must be > 0 m, got {radius}")
    path = Path(text).expanduser()
    dataset = _dataset_from_rows(
        read_csv_rows(path, split_is_role=True), path.stem, str(path), {f"{radius:g}m": radius},
        leave_one_out=False,
    )  # fmt: skip
    dataset.extra.update(threshold_m=radius, source="utm-csv")
    return dataset
