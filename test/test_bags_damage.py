"""Damaged bags: reading reports what was lost and fails unless allow_partial (issue 10 item 4).

Small real bags (tscm_ros.bags.write_image_bag; sqlite3, mcap, ROS 1) are damaged systematically: garbage
bytes at 10 / 50 / 90 % of the storage file, truncation, metadata.yaml deleted or its counts edited. Bag
files and garbage are deterministic, so each damage has one expected outcome:

* ``ok``: nothing detectable was lost (the garbage hit image pixels, which have no checksum),
* ``damaged``: the bag opens but messages are lost -> BagDamagedError naming topic, expected, read, reason;
  allow_partial gives the frames that can be read,
* ``lost``: damaged, and allow_partial finds no frame either,
* ``unreadable``: rosbags cannot open it -> a one-line "cannot open bag" error.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

from tscm_ros.bags import BagDamagedError, BagError, BagReadStats, iter_frames, write_image_bag

FRAMES = 20
SECOND = 1_000_000_000
START = 100 * SECOND
IMAGE_TOPIC = "/camera/image_raw"
STORAGES = ("sqlite3", "mcap", "ros1")
DAMAGES = ("garbage@10", "garbage@50", "garbage@90", "truncate@50", "truncate@90")
# (storage, damage) -> outcome for the bags of clean_bags() (rosbags 0.11.9)
EXPECTED = {
    ("sqlite3", "garbage@10"): "unreadable",
    ("sqlite3", "garbage@50"): "ok",
    ("sqlite3", "garbage@90"): "unreadable",
    ("sqlite3", "truncate@50"): "unreadable",
    ("sqlite3", "truncate@90"): "unreadable",
    ("mcap", "garbage@10"): "damaged",  # chunks silently cut short: only the counts reveal it
    ("mcap", "garbage@50"): "ok",
    ("mcap", "garbage@90"): "lost",  # the summary's chunk index is garbage
    ("mcap", "truncate@50"): "unreadable",
    ("mcap", "truncate@90"): "unreadable",
    ("ros1", "garbage@10"): "ok",
    ("ros1", "garbage@50"): "damaged",  # rosbag1 ReaderError mid-read
    ("ros1", "garbage@90"): "damaged",
    ("ros1", "truncate@50"): "unreadable",
    ("ros1", "truncate@90"): "unreadable",
}


class PixelDescriber:
    """Fast deterministic stand-in for the network (as in test_build_map.py)."""

    label = "pixel thumbnail (test stub)"
    fingerprint = "0" * 64

    def __init__(self, *args, **kwargs) -> None:
        pass

    def describe(self, images) -> np.ndarray:
        thumbs = []
        for image in images:
            h, w = image.shape[:2]
            small = image[: h - h % 8, : w - w % 8].reshape(8, h // 8, 8, w // 8, 3).mean(axis=(1, 3))
            vector = small.ravel() - small.mean()
            thumbs.append(vector / np.linalg.norm(vector))
        return np.asarray(thumbs, dtype=np.float32)


def make_bag(path: Path, storage: str, count: int = FRAMES, shape: tuple[int, int] = (24, 32)) -> Path:
    rng = np.random.default_rng(0)
    frames = [
        (START + i * SECOND // 5, rng.integers(0, 256, (*shape, 3), dtype=np.uint8)) for i in range(count)
    ]
    poses = [(stamp, ((float(i), 0.0, 0.0), (0.0, 0.0, 0.0, 1.0))) for i, (stamp, _) in enumerate(frames)]
    return write_image_bag(path, frames, poses=poses, storage=storage)


@pytest.fixture(scope="module")
def clean_bags(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("clean")
    return {storage: make_bag(root / storage / "bag", storage) for storage in STORAGES}


def storage_file(bag: Path) -> Path:
    return bag if bag.is_file() else next(p for p in bag.iterdir() if p.suffix in (".db3", ".mcap"))


def damaged_copy(bag: Path, target_dir: Path, damage: str) -> Path:
    """A copy of ``bag`` (same file names) with ``damage`` applied: garbage@P, truncate@P (P % of the
    storage file), no-metadata (metadata.yaml deleted) or count+N (image topic count raised by N)."""
    target_dir.mkdir(parents=True, exist_ok=True)
    copy = target_dir / bag.name
    if bag.is_dir():
        shutil.copytree(bag, copy)
    else:
        shutil.copy(bag, copy)
    kind, _, amount = damage.partition("@") if "@" in damage else damage.partition("+")
    if kind in ("garbage", "truncate"):
        file = storage_file(copy)
        data = bytearray(file.read_bytes())
        at = len(data) * int(amount) // 100
        if kind == "garbage":
            size = min(2000, len(data) - at)
            data[at : at + size] = (
                np.random.default_rng(int(amount)).integers(0, 256, size, np.uint8).tobytes()
            )
        else:
            del data[at:]
        file.write_bytes(bytes(data))
    elif kind == "no-metadata":
        (copy / "metadata.yaml").unlink()
    elif kind == "count":
        meta_path = copy / "metadata.yaml"
        meta = yaml.safe_load(meta_path.read_text())
        info = meta["rosbag2_bagfile_information"]
        for topic in info["topics_with_message_count"]:
            if topic["topic_metadata"]["name"] == IMAGE_TOPIC:
                topic["message_count"] += int(amount)
        info["message_count"] += int(amount)
        meta_path.write_text(yaml.safe_dump(meta))
    else:
        raise ValueError(damage)
    return copy


def read_all(bag: Path, allow_partial: bool = False) -> tuple[int, BagReadStats]:
    stats = BagReadStats()
    count = sum(1 for _ in iter_frames(bag, IMAGE_TOPIC, stats=stats, allow_partial=allow_partial))
    return count, stats


def error_lines(err: str, prog: str) -> list[str]:
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert all(line.startswith(f"{prog}:") for line in lines), err  # nothing but the tool's own lines
    return [line for line in lines if line.startswith(f"{prog}: error:")]


@pytest.fixture
def fake_describer(monkeypatch):
    import tscm_ros.describer

    monkeypatch.setattr(tscm_ros.describer, "create_describer", PixelDescriber)


def build_cli(bag: Path, out: Path, *extra: str) -> list[str]:
    return [str(bag), "--out", str(out), "--no-progress", "--no-verify", "--image-topic", IMAGE_TOPIC, *extra]


# ---------------------------------------------------------------------------------------------- reading


@pytest.mark.parametrize("storage", STORAGES)
@pytest.mark.parametrize("damage", DAMAGES)
def test_damage_is_reported_or_nothing_was_lost(clean_bags, tmp_path: Path, storage: str, damage: str):
    bag = damaged_copy(clean_bags[storage], tmp_path, damage)
    expected = EXPECTED[(storage, damage)]
    if expected == "unreadable":
        with pytest.raises(BagError, match="cannot open bag") as caught:
            read_all(bag)
        assert not isinstance(caught.value, BagDamagedError)
        return
    if expected == "ok":
        count, stats = read_all(bag)
        assert count == FRAMES and not stats.damaged and not stats.partial
        assert stats.expected == {IMAGE_TOPIC: FRAMES, "/odom": FRAMES} == dict(stats.read)
        return
    with pytest.raises(BagDamagedError) as caught:
        read_all(bag)
    error = caught.value
    assert error.losses or error.reasons
    for loss in error.losses:  # named: topic, expected, read
        assert loss.expected == FRAMES and loss.read < FRAMES
        assert f"{loss.topic}: {loss.read} of {FRAMES} messages read" in str(error)
    for reason in error.reasons:
        assert reason in str(error) and error.detail in str(error)
    count, stats = read_all(bag, allow_partial=True)
    assert stats.partial and stats.damaged
    assert stats.summary().startswith("PARTIAL (damaged bag: ")
    assert count == stats.decoded <= stats.read[IMAGE_TOPIC] <= FRAMES
    assert (count == 0) == (expected == "lost")


def test_read_errors_are_classified(clean_bags, tmp_path: Path):
    error = pytest.raises(BagDamagedError, read_all, damaged_copy(clean_bags["ros1"], tmp_path, "garbage@50"))
    assert error.value.reasons == {"corrupt_record": 1} and "ReaderError" in error.value.detail
    # mcap chunks cut short raise nothing: the mcap summary / metadata counts reveal the loss
    error = pytest.raises(BagDamagedError, read_all, damaged_copy(clean_bags["mcap"], tmp_path, "garbage@10"))
    assert not error.value.reasons and error.value.losses
    # a garbage chunk index: a bare OverflowError from the mcap reader
    error = pytest.raises(
        BagDamagedError, read_all, damaged_copy(clean_bags["mcap"], tmp_path / "b", "garbage@90")
    )
    assert error.value.reasons == {"corrupt_chunk": 1} and "OverflowError" in error.value.detail


def test_sqlite_corrupt_page_mid_read(tmp_path: Path):
    """A larger .db3 whose blob pages are corrupt: apsw fails mid-read (images are read lazily)."""
    bag = make_bag(tmp_path / "clean" / "big", "sqlite3", count=40, shape=(48, 64))
    bag = damaged_copy(bag, tmp_path / "damaged", "garbage@65")
    with pytest.raises(BagDamagedError, match="corrupt_database=1") as caught:
        read_all(bag)
    assert [loss.topic for loss in caught.value.losses] == [IMAGE_TOPIC]  # poses were all read
    assert "CorruptError" in caught.value.detail
    count, stats = read_all(bag, allow_partial=True)
    assert stats.partial and 0 < count < 40 and stats.read_errors == {"corrupt_database": 1}
    assert f"{IMAGE_TOPIC}: {count} of 40 messages read" in stats.summary()


@pytest.mark.parametrize("storage", ["sqlite3", "mcap"])
def test_metadata_counts(clean_bags, tmp_path: Path, storage: str):
    # metadata.yaml lost: the storage file's own counts are used and nothing is missing
    count, stats = read_all(damaged_copy(clean_bags[storage], tmp_path / "a", "no-metadata"))
    assert count == FRAMES and not stats.damaged
    # metadata.yaml lists more messages than the storage holds
    bag = damaged_copy(clean_bags[storage], tmp_path / "b", "count+5")
    with pytest.raises(BagDamagedError, match=f"{IMAGE_TOPIC}: 20 of 25 messages read") as caught:
        read_all(bag)
    assert caught.value.losses[0].expected == 25 and caught.value.losses[0].read == 20
    count, stats = read_all(bag, allow_partial=True)
    assert count == FRAMES and stats.partial


def test_early_stop_is_not_damage(clean_bags):
    stats = BagReadStats()
    frames = iter_frames(clean_bags["mcap"], IMAGE_TOPIC, stats=stats)
    assert len([frame for _, frame in zip(range(3), frames, strict=False)]) == 3
    frames.close()
    assert not stats.partial and not stats.read_errors


# ------------------------------------------------------------------------------------------------- CLIs


@pytest.mark.parametrize("storage", STORAGES)
def test_build_map_cli(clean_bags, tmp_path: Path, storage: str, fake_describer, capsys):
    from tscm_ros.cli.build_map import main

    prog = "tscm_build_map"
    for damage in DAMAGES:
        bag = damaged_copy(clean_bags[storage], tmp_path / damage, damage)
        expected = EXPECTED[(storage, damage)]
        code = main(build_cli(bag, tmp_path / damage / "out"))
        out, err = capsys.readouterr()
        if expected == "ok":
            assert code == 0 and "PARTIAL" not in out and f"{FRAMES} decoded" in out, err
            continue
        assert code == 1, (damage, out, err)
        (line,) = error_lines(err, prog)
        assert ("cannot open bag" if expected == "unreadable" else "damaged bag") in line
        code = main(build_cli(bag, tmp_path / damage / "partial", "--allow-partial"))
        out, err = capsys.readouterr()
        if expected in ("unreadable", "lost"):  # nothing to salvage
            (line,) = error_lines(err, prog)
            assert code == 1 and ("no frame could be decoded (PARTIAL" in line or expected == "unreadable")
        else:
            assert code == 0, err
            assert out.startswith("PARTIAL (damaged bag: ") and "of 20 messages read" in out
            assert (tmp_path / damage / "partial" / "map").is_dir()


def test_build_map_cli_errors(clean_bags, tmp_path: Path, fake_describer, capsys):
    from tscm_ros.cli.build_map import build_parser, main

    prog = "tscm_build_map"
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("x")
    assert main(build_cli(clean_bags["mcap"], not_a_dir)) == 1
    (line,) = error_lines(capsys.readouterr().err, prog)
    assert "is a file" in line
    assert main(build_cli(tmp_path / "missing", tmp_path / "o")) == 1
    assert len(error_lines(capsys.readouterr().err, prog)) == 1
    # metadata.yaml lists more messages than the bag holds
    bag = damaged_copy(clean_bags["sqlite3"], tmp_path / "count", "count+5")
    assert main(build_cli(bag, tmp_path / "o2")) == 1
    (line,) = error_lines(capsys.readouterr().err, prog)
    assert f"{IMAGE_TOPIC}: 20 of 25 messages read" in line and "--allow-partial" in line
    assert "Exit status" in build_parser().format_help() and "--allow-partial" in build_parser().format_help()


def test_export_dataset_cli(clean_bags, tmp_path: Path, capsys):
    from tscm_ros.cli.export_dataset import main

    prog = "tscm_export_dataset"
    bag = damaged_copy(clean_bags["ros1"], tmp_path / "bags", "garbage@50")
    out = tmp_path / "dataset"
    assert main([str(bag), "--out", str(out), "--image-topic", IMAGE_TOPIC]) == 1
    (line,) = error_lines(capsys.readouterr().err, prog)
    assert "damaged bag" in line and "corrupt_record" in line and "/odom: 10 of 20 messages read" in line
    assert not (out / "dataset.csv").exists() and not list((out / "images").iterdir())
    # a failed export leaves no images: the rerun may use the same prefix
    assert main([str(bag), "--out", str(out), "--image-topic", IMAGE_TOPIC, "--allow-partial"]) == 0
    stdout = capsys.readouterr().out
    assert "PARTIAL (damaged bag: /odom: 10 of 20 messages read" in stdout
    assert (out / "dataset.csv").is_file()


@pytest.mark.ros
def test_bag_player_stops_on_damage(clean_bags, tmp_path: Path):
    from tscm_ros.ros.testing import NodeProcess

    bag = damaged_copy(clean_bags["mcap"], tmp_path, "garbage@10")  # chunks cut short, no exception
    arguments = [str(bag), "--rate", "0", "--start-delay", "0", "--no-progress"]
    with NodeProcess("tscm_ros.cli.bag_player", arguments=arguments) as player:
        assert player.wait(60) == 1, player.output()
        output = player.output()
    assert "Traceback" not in output, output
    errors = [line for line in output.splitlines() if line.startswith("bag_player: error:")]
    assert len(errors) == 1 and f"{IMAGE_TOPIC}: 2 of 20 messages read" in errors[0], output
    assert "/odom: 2 of 20 messages read" in errors[0] and "stopped after 4 messages" in errors[0]
    with NodeProcess("tscm_ros.cli.bag_player", arguments=[*arguments, "--allow-partial"]) as player:
        assert player.wait(60) == 0, player.output()
        output = player.output()
    assert "Traceback" not in output, output
    assert "finished: published 4 messages" in output and "PARTIAL" in output, output
