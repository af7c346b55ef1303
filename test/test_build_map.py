"""Offline map building from a bag (tscm_ros.pipelines.build_map)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image as PILImage

from tscm_ros.bags import write_image_bag
from tscm_ros.cli.build_map import main
from tscm_ros.loop_closure import LoopClosureConfig
from tscm_ros.pipelines.build_map import (
    CSV_COLUMNS,
    build_map_from_bag,
    read_candidates_csv,
)
from tscm_ros.placemap import PlaceMap, Pose

SECOND = 1_000_000_000
START = 100 * SECOND
PERIOD = SECOND // 5


class PixelDescriber:
    """Deterministic stand-in for the network: mean-removed 8x8 thumbnail, L2-normalised (fast, no torch)."""

    label = "pixel thumbnail (test stub)"
    fingerprint = "0" * 64

    def __init__(self) -> None:
        self.calls: list[int] = []

    def describe(self, images) -> np.ndarray:
        self.calls.append(len(images))
        thumbs = []
        for image in images:
            h, w = image.shape[:2]
            small = image[: h - h % 8, : w - w % 8].reshape(8, h // 8, 8, w // 8, 3).mean(axis=(1, 3))
            vector = small.ravel() - small.mean()
            thumbs.append(vector / np.linalg.norm(vector))
        return np.asarray(thumbs, dtype=np.float32)


def places(count: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (24, 32, 3), dtype=np.uint8) for _ in range(count)]


def two_lap_frames(count: int = 10):
    """Lap 1: ``count`` distinct places on a circle; lap 2 revisits them (slightly noisy images)."""
    rng = np.random.default_rng(1)
    images = places(count)
    frames, poses = [], []
    for lap in range(2):
        for index, image in enumerate(images):
            stamp = START + (lap * count + index) * PERIOD
            if lap:
                image = np.clip(image + rng.normal(0, 3, image.shape), 0, 255).astype(np.uint8)
            angle = 2 * math.pi * index / count
            frames.append((stamp, image))
            poses.append((stamp, Pose((10 * math.cos(angle), 10 * math.sin(angle), 0.0), frame_id="map")))
    return frames, poses


@pytest.fixture(scope="module")
def posed_bag(tmp_path_factory) -> Path:
    frames, poses = two_lap_frames()
    return write_image_bag(tmp_path_factory.mktemp("bags") / "posed", frames, poses=poses)


def test_map_csv_and_plots_are_consistent(posed_bag: Path, tmp_path: Path):
    describer = PixelDescriber()
    config = LoopClosureConfig(similarity_threshold=0.9, exclusion_window_s=1.0, top_k=3)
    result = build_map_from_bag(
        posed_bag, tmp_path / "out", describer=describer, detector_config=config, batch_size=4, progress=False
    )
    assert describer.calls == [4, 4, 4, 4, 4]  # batched inference
    assert result.frames == 20 and len(result.keyframes) == 20
    assert result.stats.decoded == 20 and not result.stats.errors
    # each lap-2 frame finds exactly its lap-1 place (noise sigma 3 keeps the cosine > 0.99)
    by_query = {}
    for candidate in result.candidates:
        by_query.setdefault(candidate.query_stamp_ns, []).append(candidate)
    assert sorted(by_query) == [START + (10 + i) * PERIOD for i in range(10)]
    for query_stamp, found in by_query.items():
        assert len(found) == 1 and found[0].rank == 0
        assert found[0].match_stamp_ns == query_stamp - 10 * PERIOD
        assert found[0].similarity > 0.99
    # the saved map
    place_map = PlaceMap.load(result.map_dir, dim=192, model_fingerprint=describer.fingerprint)
    assert len(place_map) == 20
    place_map.close()
    # the csv
    rows = read_candidates_csv(result.csv_path)
    assert tuple(rows[0].keys()) == CSV_COLUMNS
    assert len(rows) == len(result.candidates) == 10
    for row, candidate in zip(rows, result.candidates, strict=True):
        assert int(row["query_id"]) == candidate.query_id and int(row["match_id"]) == candidate.match_id
        assert int(row["query_stamp_ns"]) == candidate.query_stamp_ns
        assert float(row["similarity"]) == pytest.approx(candidate.similarity, abs=1e-6)
        assert float(row["distance_m"]) == pytest.approx(0.0, abs=1e-6)  # same place on the circle
        assert float(row["query_x"]) == pytest.approx(candidate.query_pose.position[0])
    # plots: both, as real PNG files
    names = sorted(path.name for path in result.plots)
    assert names == ["loop_timeline.png", "trajectory.png"]
    for path in result.plots:
        with PILImage.open(path) as image:
            assert image.format == "PNG" and image.size[0] > 300


def test_without_poses_only_timeline(tmp_path: Path):
    frames, _ = two_lap_frames(6)
    bag = write_image_bag(tmp_path / "plain", frames, storage="mcap", compressed="png", topic="/cam")
    config = LoopClosureConfig(similarity_threshold=0.9, exclusion_window_s=0.5)
    result = build_map_from_bag(
        bag, tmp_path / "out", describer=PixelDescriber(), detector_config=config, progress=False
    )
    assert [path.name for path in result.plots] == ["loop_timeline.png"]
    assert len({c.query_stamp_ns for c in result.candidates}) == 6
    rows = read_candidates_csv(result.csv_path)
    assert rows and all(row["query_x"] == "" and row["distance_m"] == "" for row in rows)


def test_corrupt_frames_are_skipped_and_counted(tmp_path: Path):
    from rosbags.rosbag2 import Writer
    from rosbags.typesys import Stores, get_typestore

    good = write_image_bag(tmp_path / "good", two_lap_frames(4)[0])
    store = get_typestore(Stores.ROS2_KILTED)
    from tscm_ros.bags import open_bag

    with open_bag(good) as reader:
        messages = [(connection.msgtype, stamp, bytes(raw)) for connection, stamp, raw in reader.messages()]
    mixed = tmp_path / "mixed"
    with Writer(mixed, version=9) as writer:
        connection = writer.add_connection("/camera/image_raw", "sensor_msgs/msg/Image", typestore=store)
        for number, (_, stamp, raw) in enumerate(messages):
            writer.write(connection, stamp, raw if number % 3 else raw[:40])  # every third message cut short
    result = build_map_from_bag(
        mixed,
        tmp_path / "out",
        describer=PixelDescriber(),
        detector_config=LoopClosureConfig(),
        progress=False,
    )
    assert result.frames == 5 and result.stats.skipped == 3
    assert "skipped" in result.summary() and "corrupt_message=3" in result.summary()


def test_cli_errors_and_real_describer(posed_bag: Path, tmp_path: Path, capsys):
    assert main([str(tmp_path / "nope"), "--out", str(tmp_path / "o")]) == 1
    assert "bag not found" in capsys.readouterr().err
    assert main([str(posed_bag), "--out", str(tmp_path / "o"), "--image-topic", "/missing"]) == 1
    error = capsys.readouterr().err
    assert "/missing" in error and "/camera/image_raw" in error
    # end to end with the untrained student network (slow part: keep it to 6 frames)
    out = tmp_path / "cli"
    code = main([str(posed_bag), "--out", str(out), "--max-frames", "6", "--no-progress", "--device", "cpu"])
    assert code == 0
    printed = capsys.readouterr()
    assert "UNTRAINED student" in printed.err
    assert "6 frames described" in printed.out
    place_map = PlaceMap.load(out / "map")
    assert len(place_map) == 6 and place_map.dim == 2048
    place_map.close()
    assert (out / "loop_closures.csv").is_file() and (out / "trajectory.png").is_file()
