"""Working folders survive no SIGKILL as leftovers; the max_places growth budget."""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from test_placemap import DIM, metas, unit_vectors

from tscm_ros.placemap import MapError, MapFullError, PlaceMap
from tscm_ros.placemap.workdir import PREFIX, clean_stale_workdirs

REPO = Path(__file__).resolve().parents[1]
CHILD = f"""
import sys, time
import numpy as np
from tscm_ros.placemap import PlaceMap, PlaceMeta
m = PlaceMap.create({DIM})
m.add(np.ones((3, {DIM}), np.float32), [PlaceMeta(stamp_ns=i) for i in range(3)], features=[b"f"] * 3)
print(m._workdir.path, flush=True)
time.sleep(60)
"""


@pytest.fixture()
def tmpdir_for_maps(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private temp dir for working folders (children via TMPDIR, this process via tempfile.tempdir)."""
    folder = tmp_path / "tmp"
    folder.mkdir()
    monkeypatch.setenv("TMPDIR", str(folder))
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder


def start_child() -> tuple[subprocess.Popen, Path]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    child = subprocess.Popen([sys.executable, "-c", CHILD], stdout=subprocess.PIPE, text=True, env=env)
    line = child.stdout.readline().strip()
    assert line, "child did not report its working folder"
    return child, Path(line)


def test_sigkilled_process_leaves_no_working_folder(tmpdir_for_maps: Path) -> None:
    killed, killed_dir = start_child()
    alive, alive_dir = start_child()
    try:
        assert killed_dir.parent == tmpdir_for_maps and killed_dir.name.startswith(f"{PREFIX}{killed.pid}_")
        assert (killed_dir / "places.sqlite").is_file()
        killed.send_signal(signal.SIGKILL)
        killed.wait()
        assert killed_dir.is_dir()  # SIGKILL runs no cleanup ...
        legacy = tmpdir_for_maps / "tscm_placemap_ab12cd34"  # ... and folders of the old naming are not ours
        legacy.mkdir()
        place_map = PlaceMap.create(DIM)  # ... the next create/load removes the dead process's folder
        assert not killed_dir.exists()
        assert alive_dir.is_dir() and (alive_dir / "places.sqlite").is_file()  # a live process keeps its own
        assert legacy.is_dir()
        own = place_map._workdir.path
        assert own.is_dir()
        place_map.close()
        assert not own.exists()
    finally:
        for child in (killed, alive):
            child.kill()
            child.wait()
            child.stdout.close()
    assert alive_dir.is_dir()
    assert clean_stale_workdirs(tmpdir_for_maps) == [alive_dir]


def test_locked_folder_of_an_unknown_pid_is_kept(tmpdir_for_maps: Path) -> None:
    """A folder whose pid is not visible here but whose lock is held (another pid namespace) is kept."""
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    folder = tmpdir_for_maps / f"{PREFIX}{gone.pid}_x1"
    folder.mkdir()
    fd = os.open(folder / ".lock", os.O_CREAT | os.O_WRONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        assert clean_stale_workdirs(tmpdir_for_maps) == []
    finally:
        os.close(fd)
    assert clean_stale_workdirs(tmpdir_for_maps) == [folder] and not folder.exists()


def test_forked_child_does_not_delete_its_parents_working_folder(tmpdir_for_maps: Path) -> None:
    place_map = PlaceMap.create(DIM)
    place_map.add(unit_vectors(2), metas(2))
    pid = os.fork()
    if pid == 0:  # child: closing (or garbage-collecting) an inherited map must leave the parent's copy
        try:
            place_map.close()
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
    assert place_map._workdir.path.is_dir()
    assert place_map.add(unit_vectors(1, seed=3), metas(1))[0] == 2
    assert len(place_map.get_metas([0, 1, 2])) == 3


# ---------------------------------------------------------------------------- growth budget
def test_max_places_refuses_adds_past_the_budget(tmp_path: Path) -> None:
    place_map = PlaceMap.create(DIM, max_places=5)
    assert place_map.max_places == 5 and place_map.utilisation == 0.0
    place_map.add(unit_vectors(3), metas(3), features=[b"a"] * 3)
    assert place_map.utilisation == pytest.approx(0.6)
    with pytest.raises(MapFullError, match="max_places=5") as error:
        place_map.add(unit_vectors(3, seed=1), metas(3, start=3), features=[b"b"] * 3)
    assert isinstance(error.value, MapError) and (error.value.max_places, error.value.places) == (5, 3)
    assert len(place_map) == 3 and place_map.feature_stats().places_with_features == 3  # nothing added
    place_map.add(unit_vectors(2, seed=1), metas(2, start=3))  # exactly up to the budget is fine
    assert place_map.utilisation == 1.0
    with pytest.raises(MapFullError):
        place_map.add(unit_vectors(1, seed=2), metas(1, start=5))
    place_map.remove([0])  # removing frees room
    place_map.add(unit_vectors(1, seed=2), metas(1, start=5))
    place_map.max_places = 10
    place_map.add(unit_vectors(2, seed=3), metas(2, start=6))
    assert place_map.utilisation == pytest.approx(0.7)
    place_map.max_places = None
    assert place_map.utilisation is None
    place_map.save(tmp_path / "m")
    # the budget is a runtime setting (not saved); a map larger than its new budget loads but cannot grow
    small = PlaceMap.load(tmp_path / "m", max_places=4)
    assert len(small) == 7 and small.utilisation == pytest.approx(7 / 4)
    with pytest.raises(MapFullError, match="7 places, max_places=4"):
        small.add(unit_vectors(1, seed=4), metas(1))
    assert PlaceMap.load(tmp_path / "m").max_places is None
    for bad in (0, -1, 2.5, "10", True):
        with pytest.raises(ValueError, match="max_places"):
            PlaceMap.create(DIM, max_places=bad)
        with pytest.raises(ValueError, match="max_places"):
            place_map.max_places = bad
