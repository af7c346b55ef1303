"""``tscm_export_dataset`` (:mod:`tscm_ros.cli.export_dataset`): images + poses of a rosbag -> a CSV dataset.

Examples::

    # mapping run: every frame at least 1 m apart, database images, split along the route
    tscm_export_dataset run1 --out data/campus --image-topic /camera/image_raw --pose-topic /odom \\
        --min-distance-m 1 --role database --split-by distance --val-fraction 0.1 --test-fraction 0.1
    # revisit of the same route, appended as queries (same split rule)
    tscm_export_dataset run2 --out data/campus --image-topic /camera/image_raw --pose-topic /odom \\
        --min-distance-m 1 --role query --split-by distance --val-fraction 0.1 --test-fraction 0.1 --append

Writes ``DIR/images/<prefix>/<index>.jpg`` (``--prefix`` defaults to the bag name) and ``DIR/dataset.csv``
with the columns of :mod:`tscm_ros.data.csv_dataset` (``image,x,y,heading,split,role``) plus ``stamp_ns``,
``frame_id`` and ``bag``. Positions are the pose topic's x/y in its frame (metres; use a metric, globally
consistent frame such as ``map`` or UTM for two runs to be comparable); heading is the yaw in degrees.
Frames without a pose (outside the pose topic's time range) are skipped and counted.

``--split-by``: ``none`` writes ``--split`` (default train) on every row; ``sequence`` / ``distance`` cut the
exported frames into train / val / test blocks along the recording, by frame count or by travelled distance
(the last ``--test-fraction`` is test, the ``--val-fraction`` before it val). Blocks along one route keep the
splits apart in space only when the route does not come back to the same places.

A damaged bag (corrupt storage, fewer messages than it lists) is an error unless ``--allow-partial``: then
the frames that could be read are exported and the summary says PARTIAL.

Exit status: 0 exported, 1 error (one line on stderr), 2 command-line usage error.
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

CSV_NAME = "dataset.csv"
COLUMNS = ("image", "x", "y", "heading", "split", "role", "stamp_ns", "frame_id", "bag")


@dataclass
class ExportedFrame:
    image: str
    x: float
    y: float
    heading: float
    stamp_ns: int
    frame_id: str


def yaw_degrees(orientation_xyzw: Sequence[float]) -> float:
    """Heading (rotation about z) of a quaternion, degrees in (-180, 180]."""
    x, y, z, w = orientation_xyzw
    return math.degrees(math.atan2(2.0 * (w * z + x * y), 1.0 - 2.0 * (y * y + z * z)))


def assign_splits(
    positions: np.ndarray, split_by: str, val_fraction: float, test_fraction: float, fixed: str
) -> list[str]:
    """Split label per exported frame (see module docstring)."""
    count = len(positions)
    if split_by == "none":
        return [fixed] * count
    if split_by == "sequence":
        progress = (np.arange(count) + 0.5) / max(count, 1)
    elif split_by == "distance":
        steps = np.linalg.norm(np.diff(positions, axis=0), axis=1) if count > 1 else np.zeros(0)
        travelled = np.concatenate([[0.0], np.cumsum(steps)])
        total = travelled[-1] if count else 0.0
        progress = travelled / total if total > 0 else (np.arange(count) + 0.5) / max(count, 1)
    else:
        raise ValueError(f"split_by must be none, sequence or distance, not {split_by!r}")
    train_end = 1.0 - val_fraction - test_fraction
    return ["train" if p < train_end else "val" if p < 1.0 - test_fraction else "test" for p in progress]


def _check_options(
    every_n: int,
    min_distance_m: float,
    val_fraction: float,
    test_fraction: float,
    split: str,
    role: str,
    image_format: str,
) -> None:
    if every_n < 1 or min_distance_m < 0:
        raise ValueError("every_n must be >= 1 and min_distance_m >= 0")
    if min(val_fraction, test_fraction) < 0 or val_fraction + test_fraction >= 1:
        raise ValueError("need val_fraction, test_fraction >= 0 and val_fraction + test_fraction < 1")
    if split not in ("train", "val", "test") or role not in ("", "database", "query", "both"):
        raise ValueError(f"bad split {split!r} or role {role!r}")
    if image_format not in ("jpg", "png"):
        raise ValueError(f"image_format must be jpg or png, not {image_format!r}")


def _existing_rows(csv_path: Path, append: bool) -> list[dict]:
    """Rows of the dataset.csv an ``append`` adds to ([] for a new dataset)."""
    if csv_path.exists() and not append:
        raise FileExistsError(f"{csv_path} exists; pass --append to add this bag's frames to it")
    if not (append and csv_path.exists()):
        return []
    with csv_path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        if tuple(reader.fieldnames or ()) != COLUMNS:
            raise ValueError(
                f"{csv_path} was not written by tscm_export_dataset (columns {reader.fieldnames})"
            )
        return list(reader)


def _export_frames(
    bag: Path,
    image_dir: Path,
    image_path: str,
    frames: list[ExportedFrame],
    read: dict,
    every_n: int,
    min_distance_m: float,
    image_format: str,
) -> int:
    """Save the kept frames of ``bag`` that have a pose into ``image_dir`` and append them to ``frames``.

    ``read`` holds the keyword arguments of :func:`tscm_ros.bags.iter_frames` (topics, stats, allow_partial).
    Returns the number of decoded frames with a pose.
    """
    from tscm_ros.bags import iter_frames

    last_kept: np.ndarray | None = None
    decoded_with_pose = 0
    for frame in iter_frames(bag, **read):
        if frame.pose is None:
            continue
        decoded_with_pose += 1
        if (decoded_with_pose - 1) % every_n:
            continue
        position = np.array(frame.pose.position[:2], dtype=np.float64)
        if last_kept is not None and np.linalg.norm(position - last_kept) < min_distance_m:
            continue
        last_kept = position
        name = f"{len(frames):06d}.{image_format}"
        Image.fromarray(frame.rgb).save(
            image_dir / name, **({"quality": 95} if image_format == "jpg" else {})
        )
        frames.append(
            ExportedFrame(
                image=f"{image_path}/{name}",
                x=float(position[0]),
                y=float(position[1]),
                heading=yaw_degrees(frame.pose.orientation),
                stamp_ns=int(frame.stamp_ns),
                frame_id=frame.pose.frame_id,
            )
        )
    return decoded_with_pose


def _new_image_dir(image_dir: Path) -> Path:
    """Create ``image_dir``; an existing one must be empty (a bag never overwrites another's images)."""
    if image_dir.exists() and any(image_dir.iterdir()):
        raise FileExistsError(f"{image_dir} already holds images; choose another --prefix")
    image_dir.mkdir(parents=True, exist_ok=True)
    return image_dir


def _rows(frames: list[ExportedFrame], splits: list[str], role: str, bag_name: str) -> list[dict]:
    """The dataset.csv rows of the exported frames."""
    return [
        {
            "image": f.image,
            "x": repr(f.x),
            "y": repr(f.y),
            "heading": f"{f.heading:.3f}",
            "split": s,
            "role": role,
            "stamp_ns": str(f.stamp_ns),
            "frame_id": f.frame_id,
            "bag": bag_name,
        }
        for f, s in zip(frames, splits, strict=True)
    ]


def _write_csv(csv_path: Path, rows: list[dict]) -> None:
    """Write ``rows`` to ``csv_path`` atomically (a temporary file renamed over it)."""
    tmp = csv_path.with_suffix(".csv.tmp")
    with tmp.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, csv_path)


def export_bag(
    bag: str | Path,
    out: str | Path,
    *,
    image_topic: str | None = None,
    pose_topic: str | None = None,
    every_n: int = 1,
    min_distance_m: float = 0.0,
    image_format: str = "jpg",
    split_by: str = "none",
    split: str = "train",
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
    role: str = "",
    prefix: str | None = None,
    append: bool = False,
    allow_partial: bool = False,
) -> dict:
    """Export one bag (see module docstring); returns counts, the CSV path and the read summary.

    Raises:
        BagDamagedError: damaged bag, unless ``allow_partial`` (then ``result["partial"]`` is True).
    """
    from tscm_ros.bags import BagReadStats

    _check_options(every_n, min_distance_m, val_fraction, test_fraction, split, role, image_format)
    bag = Path(bag)
    out = Path(out)
    csv_path = out / CSV_NAME
    existing = _existing_rows(csv_path, append)
    prefix = prefix or bag.name.removesuffix(".bag")
    image_dir = _new_image_dir(out / "images" / prefix)
    stats = BagReadStats()
    frames: list[ExportedFrame] = []
    read = {
        "image_topic": image_topic,
        "pose_topic": pose_topic,
        "stats": stats,
        "allow_partial": allow_partial,
    }
    try:
        decoded_with_pose = _export_frames(
            bag, image_dir, f"images/{prefix}", frames, read, every_n, min_distance_m, image_format
        )
        if stats.pose_topic is None:
            raise ValueError(
                f"{bag}: no pose topic found; give --pose-topic "
                "(nav_msgs/Odometry, geometry_msgs/PoseStamped or PoseWithCovarianceStamped)"
            )
        if not frames:
            raise ValueError(f"{bag}: no frame with a pose was exported ({stats.summary()})")
    except BaseException:  # a failed export leaves no images behind (a rerun may use the same prefix)
        for written in frames:
            (out / written.image).unlink(missing_ok=True)
        if not any(image_dir.iterdir()):
            image_dir.rmdir()
        raise
    splits = assign_splits(
        np.array([[f.x, f.y] for f in frames]), split_by, val_fraction, test_fraction, split
    )
    _write_csv(csv_path, existing + _rows(frames, splits, role, bag.name))
    return {
        "csv": csv_path,
        "exported": len(frames),
        "frames_with_pose": decoded_with_pose,
        "splits": {name: splits.count(name) for name in ("train", "val", "test")},
        "read": stats.summary(),
        "partial": stats.partial,
    }
