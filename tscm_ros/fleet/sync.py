"""Moving places between local maps and the server: push, pull and merge.

All three stream places (descriptor, metadata, robot/session, optional blobs) from sources to one
destination, filtered by robot, session and time range:

* a local destination skips places it already holds (same robot, session and keyframe);
* a server destination upserts (idempotent: pushing twice changes nothing).

Unlabelled places of a local source (maps built before fleets, e.g. by ``tscm_build_map``) get the
``label`` given, by default robot ``""`` and the source folder's name as session, so merging two such
maps keeps them apart.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..placemap.errors import MapDimensionError, MapFingerprintError
from . import schema as schema_mod
from .conninfo import is_server_target
from .local import LocalPlaceStore
from .postgres import PgPlaceStore
from .records import FleetPlaceMeta, fleet_place_id

_LOG = logging.getLogger(__name__)
Row = tuple[FleetPlaceMeta, np.ndarray, "bytes | None", "bytes | None"]


@dataclass
class Selection:
    """Which places to move (None: all)."""

    robots: list[str] | None = None
    sessions: list[str] | None = None
    since_ns: int | None = None
    until_ns: int | None = None


@dataclass
class TransferReport:
    read: int = 0
    written: int = 0
    skipped: int = 0
    seconds: float = 0.0
    sessions: dict[tuple[str, str], int] = field(default_factory=dict)

    def summary(self) -> str:
        per = ", ".join(f"{r or '-'}/{s or '-'}: {n}" for (r, s), n in sorted(self.sessions.items()))
        return (f"read {self.read}, wrote {self.written}, skipped {self.skipped} already present "
                f"in {self.seconds:.1f} s" + (f" [{per}]" if per else ""))  # fmt: skip


def _default_label(path: str | os.PathLike) -> tuple[str, str]:
    return "", Path(path).resolve().name


class _Source:
    """A local map or a server schema, opened for reading."""

    def __init__(self, target: str | os.PathLike, *, schema: str, label: tuple[str, str] | None,
                 allow_fingerprint_mismatch: bool) -> None:  # fmt: skip
        self.target = target
        if isinstance(target, str) and is_server_target(target):
            self.store: PgPlaceStore | LocalPlaceStore = PgPlaceStore(
                target, schema=schema, allow_fingerprint_mismatch=allow_fingerprint_mismatch
            )
            self.label = None
        else:
            path = Path(target)
            info = _local_info(path)
            self.store = LocalPlaceStore.open(path, dim=info["dim"], create=False)
            self.label = label or _default_label(path)

    @property
    def dim(self) -> int:
        return self.store.dim

    @property
    def fingerprint(self) -> str | None:
        return self.store.model_fingerprint

    def rows(self, selection: Selection, with_blobs: bool) -> Iterator[Row]:
        kwargs = dict(robots=selection.robots, sessions=selection.sessions, since_ns=selection.since_ns,
                      until_ns=selection.until_ns, with_blobs=with_blobs)  # fmt: skip
        if isinstance(self.store, LocalPlaceStore):
            yield from self.store.iter_places(label=self.label, **kwargs)
        else:
            yield from self.store.iter_places(**kwargs)

    def close(self) -> None:
        self.store.close()


def _local_info(path: Path) -> dict:
    import json

    from ..placemap import layout

    version = layout.resolve_version_dir(path)
    return json.loads((version / layout.MAP_JSON).read_text(encoding="utf-8"))


def _check_compatible(sources: list[_Source], allow_fingerprint_mismatch: bool) -> tuple[int, str | None]:
    dims = {s.dim for s in sources}
    if len(dims) != 1:
        raise MapDimensionError(f"sources hold descriptors of different sizes: {sorted(dims)}")
    fingerprints = {s.fingerprint for s in sources if s.fingerprint}
    if len(fingerprints) > 1 and not allow_fingerprint_mismatch:
        raise MapFingerprintError(
            "sources were built with different models (fingerprints "
            + ", ".join(f[:16] + "..." for f in sorted(fingerprints))
            + "); their descriptors are not comparable (pass --allow-fingerprint-mismatch to merge anyway)"
        )
    return dims.pop(), (sorted(fingerprints)[0] if fingerprints else None)


def _batches(rows: Iterable[Row], size: int) -> Iterator[list[Row]]:
    batch: list[Row] = []
    for row in rows:
        batch.append(row)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def transfer(
    sources: list[str | os.PathLike],
    destination: str | os.PathLike,
    *,
    selection: Selection | None = None,
    schema: str = schema_mod.DEFAULT_SCHEMA,
    label: tuple[str, str] | None = None,
    with_blobs: bool = True,
    index_spec: str = "flat",
    allow_fingerprint_mismatch: bool = False,
    batch: int = 500,
) -> TransferReport:
    """Copy the selected places of every source into ``destination`` (see module docstring)."""
    selection = selection or Selection()
    report = TransferReport()
    started = time.monotonic()
    with ExitStack() as stack:
        opened = []
        for source in sources:
            src = _Source(
                source, schema=schema, label=label, allow_fingerprint_mismatch=allow_fingerprint_mismatch
            )
            stack.callback(src.close)
            opened.append(src)
        dim, fingerprint = _check_compatible(opened, allow_fingerprint_mismatch)
        to_server = isinstance(destination, str) and is_server_target(destination)
        if to_server:
            dest: PgPlaceStore | LocalPlaceStore = PgPlaceStore(
                destination, dim=dim, model_fingerprint=fingerprint, schema=schema,
                allow_fingerprint_mismatch=allow_fingerprint_mismatch,
            )  # fmt: skip
            present: set[int] = set()
        else:
            dest = LocalPlaceStore.open(
                destination, dim=dim, model_fingerprint=fingerprint, index_spec=index_spec,
                allow_fingerprint_mismatch=allow_fingerprint_mismatch,
            )  # fmt: skip
            present = set(dest.fleet_ids().values())
        stack.callback(dest.close)
        for src in opened:
            for chunk in _batches(src.rows(selection, with_blobs), batch):
                report.read += len(chunk)
                fresh = []
                for row in chunk:
                    meta = row[0]
                    gid = fleet_place_id(meta.robot_id, meta.session_id, meta.keyframe_index)
                    if gid in present:
                        report.skipped += 1
                        continue
                    present.add(gid)
                    fresh.append(row)
                    key = (meta.robot_id, meta.session_id)
                    report.sessions[key] = report.sessions.get(key, 0) + 1
                if fresh:
                    dest.add(np.stack([r[1] for r in fresh]), [r[0] for r in fresh],
                             features=[r[2] for r in fresh], thumbnails=[r[3] for r in fresh])  # fmt: skip
                    report.written += len(fresh)
        if not to_server:
            assert isinstance(dest, LocalPlaceStore)
            server_pca = next(
                (s.store.pca for s in opened if isinstance(s.store, PgPlaceStore) and s.store.pca), None
            )
            if server_pca is not None and dest.pca is None:
                dest.set_pca(server_pca)
            dest.save(destination)
    report.seconds = time.monotonic() - started
    _LOG.info("%s -> %s: %s", [str(s) for s in sources], destination, report.summary())
    return report


def push(local_map: str | os.PathLike, target: str, **kwargs) -> TransferReport:
    """Local map -> server (upsert). ``label`` names the map's unlabelled places (robot, session)."""
    return transfer([local_map], target, **kwargs)


def pull(target: str, local_map: str | os.PathLike, **kwargs) -> TransferReport:
    """Server -> local map (created if missing; places it already holds are skipped), for offline use."""
    return transfer([target], local_map, **kwargs)
