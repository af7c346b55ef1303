"""place_recognition_node whose map writes are slow, or fail (tests only): every PlaceMap write phase sleeps
first, then raises ``OSError`` (ENOSPC) when ``TSCM_TEST_SAVE_FAILS=1``.

``python -m slow_save_node --ros-args ...`` with this folder on PYTHONPATH; the delay (seconds) comes from
``TSCM_TEST_SAVE_DELAY_S``. The snapshot (under the map's lock) is untouched: only the write, which runs
outside every lock, is slowed down (or fails), as a slow (or full) disk would.
"""

from __future__ import annotations

import errno
import os
import sys
import time

from tscm_ros.placemap.map import PlaceMap
from tscm_ros.ros.place_recognition_node import main

DELAY_S = float(os.environ.get("TSCM_TEST_SAVE_DELAY_S", "1.0"))
FAILS = os.environ.get("TSCM_TEST_SAVE_FAILS") == "1"
_write_job = PlaceMap._write_job


def _slow_write_job(self, job):
    time.sleep(DELAY_S)
    if FAILS:
        raise OSError(errno.ENOSPC, "No space left on device (test)")
    return _write_job(self, job)


PlaceMap._write_job = _slow_write_job

if __name__ == "__main__":
    sys.exit(main())
