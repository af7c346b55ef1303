"""One pixel limit for every image reader: files (tscm_describe, evaluation, training), bags, messages."""

from __future__ import annotations

import io
import struct
import tracemalloc
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tscm_ros.image_files import read_rgb
from tscm_ros.images import MAX_PIXELS_ENV, ImageDecodeError


def png_claiming(width: int, height: int) -> bytes:
    """A valid 1x1 PNG whose IHDR (CRC fixed) claims width x height: the shape of a decompression bomb."""
    buffer = io.BytesIO()
    Image.new("RGB", (1, 1)).save(buffer, "PNG")
    png = bytearray(buffer.getvalue())
    ihdr = png.index(b"IHDR")
    png[ihdr + 4 : ihdr + 12] = struct.pack(">II", width, height)
    png[ihdr + 17 : ihdr + 21] = struct.pack(">I", zlib.crc32(bytes(png[ihdr : ihdr + 17])))
    return bytes(png)


@pytest.fixture
def bomb_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "images"
    folder.mkdir()
    Image.fromarray(np.full((40, 60, 3), 90, np.uint8)).save(folder / "a_small.png")
    (folder / "b_bomb.png").write_bytes(png_claiming(12000, 12000))
    return folder


def test_read_rgb_refuses_before_decoding(bomb_folder):
    assert read_rgb(bomb_folder / "a_small.png").shape == (40, 60, 3)
    tracemalloc.start()
    try:
        with pytest.raises(ImageDecodeError, match="12000x12000") as info:
            read_rgb(bomb_folder / "b_bomb.png")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert info.value.reason == "too_large" and isinstance(info.value, ValueError)
    assert peak < 2 * 2**20, peak  # decoding would need 432 MB
    assert read_rgb(bomb_folder / "a_small.png", max_pixels=40 * 60).shape == (40, 60, 3)
    with pytest.raises(ImageDecodeError, match="too_large"):
        read_rgb(bomb_folder / "a_small.png", max_pixels=40 * 60 - 1)


def test_environment_variable_applies_to_files(bomb_folder, monkeypatch):
    monkeypatch.setenv(MAX_PIXELS_ENV, "1000")
    with pytest.raises(ImageDecodeError, match="too_large"):
        read_rgb(bomb_folder / "a_small.png")
    monkeypatch.setenv(MAX_PIXELS_ENV, str(12000 * 12000))
    assert read_rgb(bomb_folder / "a_small.png").shape == (40, 60, 3)


def test_tscm_describe_prints_one_line(bomb_folder, capsys):
    from tscm_ros.cli.describe import main

    assert main([str(bomb_folder), "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "too_large" in err[0] and "b_bomb.png" in err[0], err


def test_training_loader_refuses(bomb_folder):
    from tscm_ros.data.tuples import load_image

    assert load_image(bomb_folder / "a_small.png", (32, 32)).shape == (3, 32, 32)
    with pytest.raises(ImageDecodeError, match="too_large"):
        load_image(bomb_folder / "b_bomb.png", (32, 32))


def test_evaluation_describe_files_refuses(bomb_folder):
    from tscm_ros.describer import create_describer, describe_files

    describer = create_describer(device="cpu", batch_size=2)
    files = sorted(bomb_folder.iterdir())
    with pytest.raises(ImageDecodeError, match="too_large"):
        describe_files(describer, files)


def test_bag_frames_over_the_limit_are_counted(tmp_path, monkeypatch):
    from tscm_ros.bags import BagReadStats, iter_frames, write_image_bag

    frames = [(1_000_000_000 * (i + 1), np.full((30, 40, 3), 10 * i, np.uint8)) for i in range(3)]
    bag = write_image_bag(tmp_path / "bag", frames, compressed="png")
    stats = BagReadStats()
    assert len(list(iter_frames(bag, pose_topic="", stats=stats))) == 3
    monkeypatch.setenv(MAX_PIXELS_ENV, str(30 * 40 - 1))
    stats = BagReadStats()
    assert list(iter_frames(bag, pose_topic="", stats=stats)) == []
    assert stats.errors["too_large"] == 3
    assert len(list(iter_frames(bag, pose_topic="", max_pixels=30 * 40))) == 3
