"""tscm_export_dataset: a bag written with tscm_ros.bags -> images + the generic CSV -> RetrievalDataset."""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest
from PIL import Image

from tscm_ros.bags import write_image_bag
from tscm_ros.cli.export_dataset import main
from tscm_ros.data.csv_dataset import load_csv_dataset
from tscm_ros.data.export_bag import assign_splits, yaw_degrees

SECOND = 1_000_000_000


def frame_image(i: int) -> np.ndarray:
    image = np.zeros((24, 32, 3), np.uint8)
    image[..., 0] = 10 * i
    image[:, i % 32, 1] = 255
    return image


def write_run(path, count: int, y: float, *, first_stamp: int = 0, yaw: float = 0.0) -> None:
    """``count`` frames at 1 s intervals driving +x at 1 m/s along y = ``y``; odometry every 0.5 s."""
    frames = [(first_stamp + i * SECOND, frame_image(i)) for i in range(count)]
    quaternion = (0.0, 0.0, math.sin(yaw / 2), math.cos(yaw / 2))
    poses = [(first_stamp + k * SECOND // 2, ((k / 2, y, 0.0), quaternion)) for k in range(2 * count - 1)]
    write_image_bag(path, frames, poses=poses, topic="/cam", pose_topic="/odom")


def test_export_bag_to_csv_dataset(tmp_path, capsys):
    write_run(tmp_path / "map_run", 12, 0.0, yaw=math.pi / 2)
    write_run(tmp_path / "revisit", 12, 2.0)
    out = tmp_path / "dataset"
    common = ["--out", str(out), "--image-topic", "/cam", "--pose-topic", "/odom", "--split-by", "distance"]
    common += ["--val-fraction", "0.25", "--test-fraction", "0.25"]
    assert main([str(tmp_path / "map_run"), *common, "--min-distance-m", "2", "--role", "database"]) == 0
    assert "exported 6 of 12 frames" in capsys.readouterr().out
    assert main([str(tmp_path / "revisit"), *common, "--every-n", "3", "--role", "query", "--append"]) == 0

    with (out / "dataset.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    database = [r for r in rows if r["role"] == "database"]
    queries = [r for r in rows if r["role"] == "query"]
    assert [float(r["x"]) for r in database] == [0, 2, 4, 6, 8, 10]  # one frame every >= 2 m
    assert [float(r["x"]) for r in queries] == [0, 3, 6, 9]  # every 3rd frame
    assert {float(r["y"]) for r in queries} == {2.0}
    assert {float(r["heading"]) for r in database} == {90.0} and {float(r["heading"]) for r in queries} == {
        0.0
    }
    assert [r["split"] for r in database] == ["train"] * 3 + ["val"] + ["test"] * 2
    assert [int(r["stamp_ns"]) for r in database] == [
        0,
        2 * SECOND,
        4 * SECOND,
        6 * SECOND,
        8 * SECOND,
        10 * SECOND,
    ]
    # the images are the bag's frames
    third = np.asarray(Image.open(out / database[2]["image"]))
    assert third.shape == (24, 32, 3) and abs(int(third[0, 0, 0]) - 40) <= 3 and third[5, 4, 1] > 150  # JPEG

    everything = load_csv_dataset(out / "dataset.csv")
    assert len(everything.database) == 6 and len(everything.queries) == 4
    # query at (3, 2): database x in {0..6} lie within 10 m ... all of them (<= 10 m: x - 3 in [-3, 7])
    assert everything.positives["10m"][1].tolist() == [0, 1, 2, 3, 4, 5]
    train = load_csv_dataset(out / "dataset.csv", "train")
    assert len(train.database) == 3 and len(train.queries) == 2

    # nothing is overwritten
    assert main([str(tmp_path / "revisit"), *common]) == 1
    assert "exists" in capsys.readouterr().err


def test_export_errors(tmp_path, capsys):
    write_image_bag(tmp_path / "no_poses", [(i * SECOND, frame_image(i)) for i in range(3)], topic="/cam")
    assert main([str(tmp_path / "no_poses"), "--out", str(tmp_path / "d")]) == 1
    assert "no pose topic" in capsys.readouterr().err
    assert main([str(tmp_path / "missing"), "--out", str(tmp_path / "e")]) == 1


def test_split_and_heading_helpers():
    positions = np.array([[0.0, 0], [1, 0], [2, 0], [10, 0]])  # travelled: 0, 1, 2, 10 of 10
    assert assign_splits(positions, "distance", 0.2, 0.1, "train") == ["train", "train", "train", "test"]
    assert assign_splits(positions, "sequence", 0.25, 0.25, "train") == ["train", "train", "val", "test"]
    assert assign_splits(positions, "none", 0.1, 0.1, "val") == ["val"] * 4
    with pytest.raises(ValueError):
        assign_splits(positions, "random", 0.1, 0.1, "train")
    assert yaw_degrees((0, 0, math.sin(-math.pi / 4), math.cos(-math.pi / 4))) == pytest.approx(-90.0)
