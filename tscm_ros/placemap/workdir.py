"""Working folders of open maps: ``<tmp>/tscm_placemap_pid<PID>_<random>/`` (the working SQLite copy).

Each folder holds a ``.lock`` file that its process keeps ``flock()``-ed while the map is open. The kernel
drops that lock when the process dies, SIGKILL included, so a folder whose pid is not running and whose
lock can be taken is stale: :func:`clean_stale_workdirs` (run by every ``PlaceMap.create``/``load``)
deletes it. Both conditions are required, so a folder is never taken from a live process (pid reuse
keeps a stale folder until that pid exits; a process in another pid namespace still holds its lock).
Only folders owned by the current user are touched; ``TMPDIR`` chooses the parent folder.
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
import shutil
import stat
import tempfile
from pathlib import Path

PREFIX = "tscm_placemap_pid"
LOCK_FILE = ".lock"
_NAME_RE = re.compile(rf"^{PREFIX}(\d+)_[A-Za-z0-9_]+$")
_LOG = logging.getLogger(__name__)


class WorkDir:
    """A fresh, locked working folder; :meth:`release` deletes it (only in the process that made it)."""

    def __init__(self, parent: str | Path | None = None) -> None:
        parent = Path(parent) if parent is not None else Path(tempfile.gettempdir())
        clean_stale_workdirs(parent)
        self.owner_pid = os.getpid()
        self.path = Path(tempfile.mkdtemp(prefix=f"{PREFIX}{self.owner_pid}_", dir=parent))
        try:
            flags = os.O_CREAT | os.O_WRONLY | os.O_CLOEXEC
            self._fd: int | None = os.open(self.path / LOCK_FILE, flags, 0o600)
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BaseException:
            shutil.rmtree(self.path, ignore_errors=True)
            raise

    def release(self) -> None:
        """Delete the folder and drop the lock. A forked child that inherited it leaves it alone."""
        if os.getpid() != self.owner_pid:
            return
        if self._fd is not None:
            shutil.rmtree(self.path, ignore_errors=True)
            os.close(self._fd)
            self._fd = None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: alive, another user's
        return True
    return True


def clean_stale_workdirs(parent: str | Path | None = None) -> list[Path]:
    """Delete this user's working folders in ``parent`` (default: the temp dir) whose process is gone."""
    parent = Path(parent) if parent is not None else Path(tempfile.gettempdir())
    removed: list[Path] = []
    try:
        entries = list(os.scandir(parent))
    except OSError:
        return removed
    uid = os.getuid()
    for entry in entries:
        match = _NAME_RE.match(entry.name)
        if not match:
            continue
        try:
            info = entry.stat(follow_symlinks=False)
        except OSError:
            continue
        pid = int(match.group(1))
        if not stat.S_ISDIR(info.st_mode) or info.st_uid != uid or pid == os.getpid() or _pid_alive(pid):
            continue
        path = Path(entry.path)
        try:
            fd = os.open(path / LOCK_FILE, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            fd = None  # created by a process that died before locking (or already being removed)
        except OSError:
            continue
        try:
            if fd is not None:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError:
                    continue  # still locked: a live process (e.g. in another pid namespace) owns it
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
            _LOG.info("removed stale place-map working folder %s (process %d is gone)", path, pid)
        finally:
            if fd is not None:
                os.close(fd)
    return removed
