"""On-disk layout of a place map and the atomic save/resolve logic.

A map is a directory::

    my_map/
      current -> v00000007          # symlink: the version load() reads
      v00000007/
        map.json                    # format, dim, spec, fingerprint, counts, sha256 of every file below
        index.faiss                 # base: faiss.write_index of the whole index (id layer included)
        places.sqlite               # base: metadata (self-contained, rollback journal)
        delta-000012.vec            # incremental saves since the base (see delta.py), applied in order
        delta-000012.sqlite
      v00000006/                    # the previous version, kept until the next save

A full save writes a complete new version into ``.tmp-<random>``; an incremental save hard-links the
previous version's files into it and writes only a new delta pair. Either way every new file and the
folder are fsynced, the folder is renamed to ``vNNNNNNNN`` (fsync parent), then ``current`` is pointed at
it by renaming a fresh symlink over the old one (``rename(2)`` is atomic; fsync parent). A ``kill -9`` at
any instant therefore leaves ``current`` on either the old or the new complete version. Saved files are
never modified in place (hard links are shared between versions). Leftover ``.tmp-*`` folders and
versions older than the previous one are deleted by the next save. A folder holding ``map.json``
directly (e.g. a copied version) also loads.

One writer per map directory: a map that saves into a directory first takes an exclusive advisory lock
(``flock``) on its ``.lock`` file and keeps it until it is closed (:class:`WriterLock`); a second writer,
in this process or another, gets :class:`MapLockedError` naming the holder's pid. Loading (reading) takes
no lock.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import re
import shutil
import tempfile
import threading
from pathlib import Path

from .errors import MapCorruptError, MapError, MapLockedError, MapNotFoundError, one_line

CURRENT_LINK = "current"
MAP_JSON = "map.json"
INDEX_FILE = "index.faiss"
DB_FILE = "places.sqlite"
LOCK_FILE = ".lock"  # the writer's advisory lock (flock); holds the writer's pid as text
_VERSION_RE = re.compile(r"^v(\d{8})$")
_STAGING_RE = re.compile(r"^\.tmp-(\d+)-")
_ACTIVE: set[str] = set()  # staging folders in use by this process (absolute paths)
_ACTIVE_LOCK = threading.Lock()


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fsync_path(path: Path) -> None:
    """fsync a file or a directory."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def resolve_version_dir(path: Path) -> Path:
    """The folder that holds map.json: ``path/current`` (resolved) or ``path`` itself.

    Dangling links and missing folders raise :class:`MapNotFoundError`, link loops
    :class:`MapCorruptError`; both with one line naming the path.
    """
    path = Path(path)
    link = path / CURRENT_LINK
    try:
        if link.is_symlink() or link.exists():
            try:
                target = link.resolve(strict=True)
            except FileNotFoundError:
                raise MapNotFoundError(
                    f"{link} is a dangling link (points to {os.readlink(link)!r}, which does not exist)"
                ) from None
            except RuntimeError:  # pathlib reports loops as RuntimeError
                raise MapCorruptError(f"{link} is a symlink loop") from None
            if not (target / MAP_JSON).is_file():
                raise MapNotFoundError(f"{link} points to {target}, which holds no {MAP_JSON}")
            return target
        if (path / MAP_JSON).is_file():
            return path
        if not path.exists():
            raise MapNotFoundError(f"place map {path} does not exist")
    except MapError:
        raise
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise MapCorruptError(f"{link}: symlink loop ({one_line(exc)})") from None
        raise MapNotFoundError(f"{path}: cannot open the place map ({one_line(exc)})") from None
    raise MapNotFoundError(f"{path} is not a place map (no '{CURRENT_LINK}' link and no {MAP_JSON})")


def new_staging_dir(root: Path, kind: str = "") -> Path:
    """Create ``root`` if needed (refusing non-map folders) and a fresh staging folder inside it.

    The folder is ``.tmp-<pid>-<kind><random>`` and registered as in use until :func:`release_staging`
    (or the commit): pruning never deletes a folder in use by this process or by another live process.
    """
    root = prepare_root(root)
    staging = Path(tempfile.mkdtemp(prefix=f".tmp-{os.getpid()}-{kind}", dir=root))
    with _ACTIVE_LOCK:
        _ACTIVE.add(str(staging.absolute()))
    return staging


def prepare_root(root: Path) -> Path:
    """Create the map directory ``root`` if needed; MapError when it is a file or holds foreign files."""
    root = Path(root)
    if root.exists():
        if not root.is_dir():
            raise MapError(f"cannot save a place map to {root}: it is not a directory")
        if (root / MAP_JSON).is_file() and not (root / CURRENT_LINK).exists():
            raise MapError(f"{root} holds a single-version map copy; save to a new directory instead")
        entries = [e.name for e in root.iterdir()]
        foreign = [
            n
            for n in entries
            if n not in (CURRENT_LINK, LOCK_FILE) and not _VERSION_RE.match(n) and not n.startswith(".tmp-")
        ]
        if foreign:
            raise MapError(
                f"refusing to save a place map into {root}: it holds other files {sorted(foreign)[:5]}"
            )
    else:
        root.mkdir(parents=True)
        fsync_path(root.parent)
    return root


class WriterLock:
    """The single-writer lock of one map directory, held by one PlaceMap from its first save there until
    :meth:`release` (its close). ``flock`` locks belong to the open file, so a second PlaceMap in the same
    process conflicts exactly like another process; the kernel drops the lock when the holder dies."""

    def __init__(self) -> None:
        self._fd: int | None = None
        self._owner_pid = os.getpid()
        self.root: Path | None = None

    def claim(self, root: Path) -> None:
        """Hold the lock of ``root`` (created if needed), releasing any other directory's lock first.
        MapLockedError when another writer holds it."""
        root = prepare_root(root).resolve()
        if self._fd is not None and root == self.root:
            return
        path = root / LOCK_FILE
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            try:
                holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
            finally:
                os.close(fd)
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise MapError(f"cannot lock {path} for writing ({one_line(exc)})") from None
            raise MapLockedError(
                f"{root} is being written by another open place map (pid {holder}): one writer per map "
                "directory; close that map or stop that process first, or save to another directory"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self.release()
        self._fd, self.root = fd, root

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        """Drop the lock (a forked child that inherited the descriptor leaves it alone)."""
        if self._fd is not None and os.getpid() == self._owner_pid:
            os.close(self._fd)
        self._fd, self.root = None, None


def release_staging(staging: Path, *, remove: bool = True) -> None:
    """Forget (and by default delete) a staging folder of this process."""
    with _ACTIVE_LOCK:
        _ACTIVE.discard(str(Path(staging).absolute()))
    if remove:
        shutil.rmtree(staging, ignore_errors=True)


def delta_names(seq: int) -> tuple[str, str]:
    """File names (vectors, rows) of delta number ``seq`` (see :mod:`.delta`)."""
    return f"delta-{seq:06d}.vec", f"delta-{seq:06d}.sqlite"


def link_files(source: Path, destination: Path, names: list[str]) -> None:
    """Hard-link ``names`` from ``source`` into ``destination`` (saved files are never modified in place)."""
    for name in names:
        os.link(source / name, destination / name)


def commit_staging_dir(root: Path, staging: Path, keep: set[str] | frozenset[str] = frozenset()) -> Path:
    """Make ``staging`` (complete, with fsynced files) the current version; return the version folder.

    ``keep``: other entries of ``root`` (e.g. a compaction in progress) that pruning must leave alone.
    """
    fsync_path(staging)
    numbers = [int(m.group(1)) for e in root.iterdir() if (m := _VERSION_RE.match(e.name))]
    version = root / f"v{max(numbers, default=0) + 1:08d}"
    os.rename(staging, version)
    release_staging(staging, remove=False)
    fsync_path(root)
    link = root / CURRENT_LINK
    previous = os.readlink(link) if link.is_symlink() else ""
    temp_link = root / f".tmp-link-{os.getpid()}"
    if temp_link.is_symlink():
        temp_link.unlink()
    os.symlink(version.name, temp_link)
    os.replace(temp_link, root / CURRENT_LINK)
    fsync_path(root)
    _prune(root, keep={version.name, previous, *keep})  # readers that resolved the old link keep their files
    return version


def _staging_in_use(entry: Path) -> bool:
    """A ``.tmp-<pid>-*`` folder of this process still registered, or of another process still alive."""
    match = _STAGING_RE.match(entry.name)
    if match is None:
        return False  # older naming: left by a crashed save
    pid = int(match.group(1))
    if pid == os.getpid():
        with _ACTIVE_LOCK:
            return str(entry.absolute()) in _ACTIVE
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def _prune(root: Path, keep: set[str]) -> None:
    for entry in root.iterdir():
        if entry.name == CURRENT_LINK or entry.name in keep:
            continue
        if entry.name.startswith(".tmp-") and _staging_in_use(entry):
            continue
        if _VERSION_RE.match(entry.name) or entry.name.startswith(".tmp-"):
            if entry.is_symlink() or entry.is_file():
                entry.unlink(missing_ok=True)
            else:
                shutil.rmtree(entry, ignore_errors=True)
