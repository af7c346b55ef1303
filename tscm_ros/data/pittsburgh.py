"""Pittsburgh (Pitts30k / Pitts250k) ``.mat`` ground-truth files -> :class:`RetrievalDataset`.

Expected layout (the NetVLAD / TSCM / STUN download, ``pittsburgh.zip``)::

    pittsburgh/
      structure/pitts30k_train.mat   pitts30k_val.mat   pitts30k_test.mat   (or pitts250k_*.mat)
      database/<dbImageFns entry>    e.g. database/000/000000_pitch1_yaw1.jpg
      query/<qImageFns entry>        e.g. query/004/004828_pitch2_yaw11.jpg

``load_pittsburgh(mat, root)`` resolves database images against ``root/database`` and queries against
``root/query`` (override with ``database_dir=`` / ``query_dir=``; both may be absolute). ``root`` defaults to
the parent of the folder holding the ``.mat`` file (i.e. ``pittsburgh/`` above).

``tscm_evaluate --dataset pittsburgh:MAT[:ROOT]`` evaluates on such a file (e.g.
``pittsburgh:pittsburgh/structure/pitts30k_test.mat``), reporting both protocols.

The ``dbStruct`` variable is read **positionally**, as the published code does:
``whichSet, dbImageFns, utmDb (2xN), qImageFns, utmQ (2xN), numImages, numQueries, posDistThr,
posDistSqThr, nonTrivPosDistSqThr``. Image lists may be MATLAB cell arrays or char matrices (space-padded
rows); both are accepted. Positives: ``"10m"`` = database images within sqrt(nonTrivPosDistSqThr)
(the TSCM/STUN protocol), ``"25m"`` = within posDistThr (the standard NetVLAD protocol).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import scipy.io

from tscm_ros.data.dataset import DatasetError, RetrievalDataset, positives_within

FIELD_NAMES = (
    "whichSet",
    "dbImageFns",
    "utmDb",
    "qImageFns",
    "utmQ",
    "numImages",
    "numQueries",
    "posDistThr",
    "posDistSqThr",
    "nonTrivPosDistSqThr",
)


class PittsburghFormatError(DatasetError):
    """The ``.mat`` file is not a Pittsburgh ``dbStruct`` file."""


def _strings(value: np.ndarray, field: str, path: Path) -> list[str]:
    """Image list from a cell array ((N,1) object) or a char matrix ((N,) unicode, space padded)."""
    arr = np.asarray(value)
    if arr.dtype == object:
        out = []
        for cell in arr.ravel():
            cell = np.asarray(cell)
            if cell.size == 0:
                raise PittsburghFormatError(f"{path}: empty entry in {field}")
            out.append(str(cell.ravel()[0]).strip())
        return out
    if arr.dtype.kind == "U":
        if arr.ndim == 0:  # a single name stored as one char row
            return [str(arr).rstrip()]
        return [str(s).rstrip() for s in arr.ravel()]
    raise PittsburghFormatError(f"{path}: {field} is neither a cell array nor a char matrix ({arr.dtype})")


def _utm(value: np.ndarray, count: int, field: str, path: Path) -> np.ndarray:
    arr = np.asarray(value, dtype=np.float64)
    if count == 0:
        return np.zeros((0, 2))
    if arr.ndim == 2 and arr.shape == (2, count):
        return arr.T.copy()
    if arr.ndim == 2 and arr.shape == (count, 2):
        return arr.copy()
    if arr.ndim == 1 and count == 1 and arr.size == 2:
        return arr.reshape(1, 2)
    raise PittsburghFormatError(f"{path}: {field} has shape {arr.shape}, expected (2, {count})")


def read_db_struct(path: str | Path) -> dict:
    """Read ``dbStruct`` positionally into a dict keyed by :data:`FIELD_NAMES`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Pittsburgh .mat file not found: {path}")
    try:
        mat = scipy.io.loadmat(str(path))
    except Exception as exc:  # scipy raises several types for corrupt files
        raise PittsburghFormatError(f"{path}: not a readable MATLAB file ({exc})") from exc
    if "dbStruct" not in mat:
        raise PittsburghFormatError(
            f"{path}: no 'dbStruct' variable (found {sorted(k for k in mat if k[0] != '_')})"
        )
    struct = mat["dbStruct"].item()
    if len(struct) < len(FIELD_NAMES):
        raise PittsburghFormatError(f"{path}: dbStruct has {len(struct)} fields, expected {len(FIELD_NAMES)}")
    which_set = _strings(struct[0], "whichSet", path)
    database = _strings(struct[1], "dbImageFns", path)
    queries = _strings(struct[3], "qImageFns", path)
    num_db = int(np.asarray(struct[5]).item())
    num_q = int(np.asarray(struct[6]).item())
    if num_db != len(database) or num_q != len(queries):
        raise PittsburghFormatError(
            f"{path}: numImages/numQueries = {num_db}/{num_q} "
            f"but the lists hold {len(database)}/{len(queries)}"
        )
    return {
        "whichSet": which_set[0] if which_set else "",
        "dbImageFns": database,
        "utmDb": _utm(struct[2], num_db, "utmDb", path),
        "qImageFns": queries,
        "utmQ": _utm(struct[4], num_q, "utmQ", path),
        "numImages": num_db,
        "numQueries": num_q,
        "posDistThr": float(np.asarray(struct[7]).item()),
        "posDistSqThr": float(np.asarray(struct[8]).item()),
        "nonTrivPosDistSqThr": float(np.asarray(struct[9]).item()),
    }


def load_pittsburgh(
    mat_path: str | Path,
    root: str | Path | None = None,
    *,
    database_dir: str | Path | None = None,
    query_dir: str | Path | None = None,
    check_images: bool = False,
) -> RetrievalDataset:
    """Pitts30k/250k ``.mat`` -> :class:`RetrievalDataset` with ``"10m"`` and ``"25m"`` positives.

    ``extra`` holds ``which_set``, ``pos_dist_thr`` (25), ``non_triv_pos_dist`` (10) and the ``.mat`` path.
    ``check_images=True`` raises ``FileNotFoundError`` naming the first missing image.
    """
    mat_path = Path(mat_path)
    s = read_db_struct(mat_path)
    root = Path(root) if root is not None else mat_path.resolve().parent.parent
    db_dir = Path(database_dir) if database_dir is not None else root / "database"
    q_dir = Path(query_dir) if query_dir is not None else root / "query"
    database = [db_dir / name for name in s["dbImageFns"]]
    queries = [q_dir / name for name in s["qImageFns"]]
    if check_images:
        for p in (*database, *queries):
            if not p.is_file():
                raise FileNotFoundError(
                    f"{mat_path.name}: image {p} is missing (expected layout: <root>/database/..., "
                    f"<root>/query/...; root={root})"
                )
    non_triv = float(np.sqrt(s["nonTrivPosDistSqThr"]))
    positives = {
        "10m": positives_within(s["utmDb"], s["utmQ"], non_triv),
        "25m": positives_within(s["utmDb"], s["utmQ"], s["posDistThr"]),
    }
    return RetrievalDataset(
        name=mat_path.stem,
        database=database,
        queries=queries,
        positives=positives,
        database_utm=s["utmDb"],
        query_utm=s["utmQ"],
        extra={
            "which_set": s["whichSet"],
            "pos_dist_thr": s["posDistThr"],
            "non_triv_pos_dist": non_triv,
            "source": str(mat_path),
        },
    )


def write_pittsburgh_mat(
    path: str | Path,
    *,
    which_set: str,
    database: Sequence[str],
    database_utm: np.ndarray,
    queries: Sequence[str],
    query_utm: np.ndarray,
    pos_dist_thr: float = 25.0,
    non_triv_pos_dist_sq_thr: float = 100.0,
    layout: str = "cell",
) -> Path:
    """Write a ``dbStruct`` ``.mat`` file in the Pittsburgh layout (``layout`` = ``"cell"`` or ``"char"``)."""
    if layout not in ("cell", "char"):
        raise ValueError(f"layout must be 'cell' or 'char', not {layout!r}")
    database_utm = np.asarray(database_utm, dtype=np.float64).reshape(-1, 2)
    query_utm = np.asarray(query_utm, dtype=np.float64).reshape(-1, 2)
    if len(database) != len(database_utm) or len(queries) != len(query_utm):
        raise ValueError("image lists and UTM arrays differ in length")

    def names(items: Sequence[str]) -> np.ndarray:
        if layout == "char":
            return np.array(list(items), dtype=str)  # saved as a space-padded char matrix
        cells = np.empty((len(items), 1), dtype=object)
        for i, item in enumerate(items):
            cells[i, 0] = str(item)
        return cells

    values = (
        which_set,
        names(database),
        database_utm.T,
        names(queries),
        query_utm.T,
        float(len(database)),
        float(len(queries)),
        float(pos_dist_thr),
        float(pos_dist_thr) ** 2,
        float(non_triv_pos_dist_sq_thr),
    )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    scipy.io.savemat(str(path), {"dbStruct": dict(zip(FIELD_NAMES, values, strict=True))})
    return path


def load_pittsburgh_spec(argument: str) -> RetrievalDataset:
    """``tscm_evaluate`` dataset spec argument: ``MAT`` or ``MAT:ROOT``."""
    mat, sep, root = argument.partition(".mat:")
    if sep:
        return load_pittsburgh(mat + ".mat", root, check_images=True)
    return load_pittsburgh(argument, check_images=True)
