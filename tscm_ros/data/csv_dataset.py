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
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from tscm_ros.data.pittsburgh import positives_within
from tscm_ros.evaluation.dataset import RetrievalDataset
from tscm_ros.evaluation.datasets import DatasetError, register_dataset

SPLITS = ("train", "val", "test")
ROLES = ("database", "query", "both")
POSITIVE_RADIUS_M = 10.0
NEGATIVE_RADIUS_M = 25.0
COLUMNS = ("image", "easting", "northing", "x", "y", "heading", "split", "role")


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


def read_csv_rows(path: str | Path) -> list[dict]:
    """Parse and validate every row: dicts with image (Path), xy (2-tuple), heading, split, role, line."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"dataset CSV not found: {path}")
    try:
        return _read_rows(path)
    except UnicodeDecodeError as error:
        raise CsvDatasetError(f"{path}: not a UTF-8 text CSV (byte {error.start}: {error.reason})") from None
    except csv.Error as error:
        raise CsvDatasetError(f"{path}: not a readable CSV ({error})") from None


def _read_rows(path: Path) -> list[dict]:
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        header = [h.strip() for h in (reader.fieldnames or [])]
        reader.fieldnames = header
        if "image" not in header:
            raise CsvDatasetError(f"{path}: header must contain an 'image' column (found {header})")
        if {"easting", "northing"} <= set(header):
            xy_columns = ("easting", "northing")
        elif {"x", "y"} <= set(header):
            xy_columns = ("x", "y")
        else:
            raise CsvDatasetError(
                f"{path}: header needs 'easting,northing' or 'x,y' columns (found {header})"
            )
        rows = []
        for line, row in enumerate(reader, start=2):
            image = (row.get("image") or "").strip()
            if not image:
                raise CsvDatasetError(f"{path}:{line}: empty 'image'")
            split = (row.get("split") or "").strip().lower() or None
            if split is not None and split not in SPLITS:
                raise CsvDatasetError(f"{path}:{line}: split {split!r} is not one of {SPLITS}")
            role = (row.get("role") or "").strip().lower() or "both"
            if role not in ROLES:
                raise CsvDatasetError(f"{path}:{line}: role {role!r} is not one of {ROLES}")
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
    database = [r for r in rows if r["role"] in ("database", "both")]
    queries = [r for r in rows if r["role"] in ("query", "both")]
    where = f"{path}" + (f" (split {split})" if split else "")
    if not database or not queries:
        raise CsvDatasetError(f"{where}: needs at least one database and one query row")
    if check_images:
        for r in rows:
            if not r["image"].is_file():
                raise FileNotFoundError(f"{path}:{r['line']}: image {r['image']} not found")
    db_index_of_line = {r["line"]: i for i, r in enumerate(database)}
    same_row = np.array([db_index_of_line.get(r["line"], -1) for r in queries], dtype=np.int64)
    db_xy = np.array([r["xy"] for r in database], dtype=np.float64)
    q_xy = np.array([r["xy"] for r in queries], dtype=np.float64)
    positives = {}
    for label, radius in (("10m", POSITIVE_RADIUS_M), ("25m", NEGATIVE_RADIUS_M)):
        lists = positives_within(db_xy, q_xy, radius)
        positives[label] = [p[p != own] if own >= 0 else p for p, own in zip(lists, same_row, strict=True)]
    return RetrievalDataset(
        name=path.stem + (f"_{split}" if split else ""),
        database=[r["image"] for r in database],
        queries=[r["image"] for r in queries],
        positives=positives,
        database_utm=db_xy,
        query_utm=q_xy,
        query_database_index=same_row,
        extra={
            "database_heading": np.array([r["heading"] for r in database]),
            "query_heading": np.array([r["heading"] for r in queries]),
            "pos_dist_thr": NEGATIVE_RADIUS_M,
            "non_triv_pos_dist": POSITIVE_RADIUS_M,
            "source": str(path),
        },
    )


def load_csv_spec(argument: str) -> RetrievalDataset:
    """``tscm_evaluate`` dataset spec argument: ``FILE`` or ``FILE:SPLIT``."""
    path, sep, split = argument.rpartition(":")
    if sep and split in SPLITS:
        return load_csv_dataset(path, split, check_images=True)
    return load_csv_dataset(argument, check_images=True)


register_dataset("csv", load_csv_spec)
