"""Benchmark dataset folders as :class:`~tscm_ros.data.dataset.RetrievalDataset`.

* ``corridor:DIR`` -- a folder with ``ground_truth.csv`` (``query_index, query_file, positive_ref_indices
  (';'-separated), positive_ref_files``), ``query/`` and ``ref/`` (our copy of VPR-Bench Corridor).
* ``vprbench:DIR`` -- a VPR-Bench dataset folder: ``ground_truth_new.npy`` (rows ``[query_index,
  [ref indices]]``), ``query/`` and ``ref/`` with images sorted by file name.
* ``folders:DIR`` -- one folder per place (images anywhere below it), or a ``ground_truth.csv`` with
  ``place_id, file`` columns. The first image of each place (sorted by path) is its query, the others
  are the database; places with a single image only join the database.
"""

from __future__ import annotations

import csv
import pickle
from pathlib import Path

import numpy as np

from tscm_ros.data.dataset import DatasetError, RetrievalDataset
from tscm_ros.image_files import IMAGE_SUFFIXES, list_images


def _images_in(folder: Path) -> list[Path]:
    try:
        return list_images(folder)
    except FileNotFoundError as error:
        raise DatasetError(str(error)) from None


def _require_dir(path: str | Path) -> Path:
    root = Path(path).expanduser()
    if not root.is_dir():
        raise DatasetError(f"dataset folder {root} does not exist")
    return root


# ---------------------------------------------------------------------------- corridor (CSV)
def load_corridor(path: str | Path) -> RetrievalDataset:
    """Corridor-style folder: ``ground_truth.csv`` + ``query/`` + ``ref/`` (see module docstring)."""
    root = _require_dir(path)
    database = _images_in(root / "ref")
    csv_path = root / "ground_truth.csv"
    if not csv_path.is_file():
        raise DatasetError(f"{csv_path} is missing")
    queries: list[Path] = []
    positives: list[np.ndarray] = []
    with open(csv_path, newline="", encoding="utf-8") as stream:
        for line, row in enumerate(csv.DictReader(stream), start=2):
            try:
                query_index = int(row["query_index"])
                indices = np.array(
                    [int(v) for v in row["positive_ref_indices"].split(";") if v.strip()], np.int64
                )
                files = [f for f in row["positive_ref_files"].split(";") if f.strip()]
                query_file = root / row["query_file"]
            except (KeyError, ValueError, AttributeError) as exc:
                raise DatasetError(f"{csv_path}:{line}: bad row {row} ({exc})") from exc
            if query_index != len(queries):
                raise DatasetError(f"{csv_path}:{line}: query_index {query_index}, expected {len(queries)}")
            if not query_file.is_file():
                raise DatasetError(f"{csv_path}:{line}: missing query image {query_file}")
            if indices.size and (indices.min() < 0 or indices.max() >= len(database)):
                raise DatasetError(f"{csv_path}:{line}: ref index out of range 0..{len(database) - 1}")
            if [str(database[i].relative_to(root)) for i in indices] != files:
                raise DatasetError(
                    f"{csv_path}:{line}: ref indices {indices.tolist()} do not name files {files}"
                )
            queries.append(query_file)
            positives.append(indices)
    return RetrievalDataset(
        name=root.name, database=database, queries=queries, positives={"gt": positives},
        extra={"source": "corridor-csv"},
    )  # fmt: skip


# ---------------------------------------------------------------------------- VPR-Bench .npy
class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickler that can only rebuild numpy arrays/dtypes/scalars, never run other code."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a ground-truth file")
        return super().find_class(module, name)


def read_vprbench_ground_truth(path: str | Path) -> list[np.ndarray]:
    """Positives per query from a VPR-Bench ``ground_truth_new.npy``.

    That file is a numpy *object* array (rows ``[query_index, [ref indices]]``), which numpy can only
    store pickled. ``np.load(allow_pickle=True)`` would execute any code a crafted file names, so instead
    the pickle payload is read with an unpickler that accepts nothing but numpy's array/dtype/scalar
    constructors; the result must be a (Q, 2) array of ints and int lists.
    """
    path = Path(path)
    try:
        with open(path, "rb") as stream:
            version = np.lib.format.read_magic(stream)
            read_header = (
                np.lib.format.read_array_header_1_0
                if version == (1, 0)
                else np.lib.format.read_array_header_2_0
            )
            _, _, dtype = read_header(stream)
            if dtype.hasobject:
                array = _NumpyOnlyUnpickler(stream).load()
            else:
                stream.seek(0)
                array = np.load(stream, allow_pickle=False)
    except (OSError, ValueError, pickle.UnpicklingError, EOFError) as exc:
        raise DatasetError(f"{path}: not a readable VPR-Bench ground-truth file ({exc})") from exc
    array = np.asarray(array, dtype=object)
    if array.ndim != 2 or array.shape[1] != 2:
        raise DatasetError(f"{path}: expected rows [query_index, [ref indices]], got shape {array.shape}")
    positives: list[np.ndarray] = [np.zeros(0, np.int64)] * len(array)
    for query_index, refs in array:
        q = int(query_index)
        if not 0 <= q < len(array):
            raise DatasetError(f"{path}: query index {q} out of range")
        positives[q] = np.asarray(list(np.atleast_1d(refs)), dtype=np.int64)
    return positives


def load_vprbench(path: str | Path) -> RetrievalDataset:
    """VPR-Bench folder: ``ground_truth_new.npy`` + ``query/`` + ``ref/`` (images sorted by name)."""
    root = _require_dir(path)
    database, queries = _images_in(root / "ref"), _images_in(root / "query")
    positives = read_vprbench_ground_truth(root / "ground_truth_new.npy")
    if len(positives) != len(queries):
        raise DatasetError(
            f"{root}: ground truth has {len(positives)} queries, query/ holds {len(queries)} images"
        )
    for q, refs in enumerate(positives):
        if refs.size and (refs.min() < 0 or refs.max() >= len(database)):
            raise DatasetError(f"{root}: query {q} names ref indices outside 0..{len(database) - 1}")
    return RetrievalDataset(
        name=root.name, database=database, queries=queries, positives={"gt": positives},
        extra={"source": "vprbench-npy"},
    )  # fmt: skip


# ---------------------------------------------------------------------------- folder per place
def load_place_folders(path: str | Path) -> RetrievalDataset:
    """Folder-per-place dataset (see module docstring)."""
    root = _require_dir(path)
    groups: dict[str, list[Path]] = {}
    csv_path = root / "ground_truth.csv"
    if csv_path.is_file():
        with open(csv_path, newline="", encoding="utf-8") as stream:
            for line, row in enumerate(csv.DictReader(stream), start=2):
                if "place_id" not in row or "file" not in row:
                    raise DatasetError(f"{csv_path}: needs 'place_id' and 'file' columns")
                image = root / row["file"]
                if not image.is_file():
                    raise DatasetError(f"{csv_path}:{line}: missing image {image}")
                groups.setdefault(str(row["place_id"]).strip(), []).append(image)
    else:
        for folder in sorted(p for p in root.iterdir() if p.is_dir()):
            images = sorted(
                p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
            )
            if images:
                groups[folder.name] = images
    if not groups:
        raise DatasetError(f"{root}: no place folders with images")
    database: list[Path] = []
    database_place: list[str] = []
    queries: list[Path] = []
    query_place: list[str] = []
    for place, images in groups.items():
        images = sorted(images)
        if len(images) > 1:
            queries.append(images[0])
            query_place.append(place)
            images = images[1:]
        database += images
        database_place += [place] * len(images)
    db_places = np.array(database_place)
    positives = [np.flatnonzero(db_places == place).astype(np.int64) for place in query_place]
    return RetrievalDataset(
        name=root.name, database=database, queries=queries, positives={"gt": positives},
        extra={"database_place": database_place, "query_place": query_place, "source": "place-folders"},
    )  # fmt: skip
