"""Helpers shared by the fleet stores: descriptor/blob validation, search filters, time parsing."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone

import numpy as np

from ..descriptors import normalize_rows
from ..placemap.errors import MapDimensionError
from ..placemap.records import PlaceMeta
from ..poses import NS_PER_S

EXCLUSION_SCOPES = ("session", "all")


def prepare_descriptors(descriptors: np.ndarray, dim: int) -> np.ndarray:
    """(N, dim) float32, L2-normalised; MapDimensionError / ValueError like :class:`PlaceMap`."""
    array = np.asarray(descriptors, dtype=np.float32)
    if array.ndim == 1:
        array = array[None, :]
    if array.ndim != 2 or array.shape[1] != dim:
        raise MapDimensionError(f"expected descriptors of shape (N, {dim}), got {np.shape(descriptors)}")
    return normalize_rows(array)


def normalize_one(descriptor: np.ndarray, dim: int) -> np.ndarray:
    """One ``(dim,)`` descriptor checked and L2-normalised, as :meth:`PlaceMap.normalize` does."""
    return prepare_descriptors(np.asarray(descriptor).reshape(1, -1), dim)[0]


def prepare_metas(metas: Sequence[PlaceMeta] | PlaceMeta, count: int) -> list[PlaceMeta]:
    metas = [metas] if isinstance(metas, PlaceMeta) else list(metas)
    if len(metas) != count:
        raise ValueError(f"got {count} descriptors but {len(metas)} PlaceMeta records")
    if not all(isinstance(m, PlaceMeta) for m in metas):
        raise TypeError("metas must be PlaceMeta records")
    return metas


def prepare_blobs(values: object, count: int, what: str) -> list[bytes | None]:
    """One ``bytes | None`` per place from None, a single bytes-like (one place) or a sequence."""
    if values is None:
        return [None] * count
    if isinstance(values, (bytes, bytearray, memoryview)):
        values = [values]
    values = list(values)  # type: ignore[arg-type]
    if len(values) != count:
        raise ValueError(f"got {count} descriptors but {len(values)} {what}")
    out: list[bytes | None] = []
    for value in values:
        if value is None:
            out.append(None)
        elif isinstance(value, (bytes, bytearray, memoryview)):
            out.append(bytes(value))
        else:
            raise TypeError(f"{what} must be bytes (or None), got {type(value).__name__}")
    return out


@dataclass(frozen=True)
class SearchFilter:
    """Which places a query may return (None: no restriction)."""

    query_stamp_ns: int | None = None
    exclusion_window_s: float = 0.0
    query_keyframe_index: int | None = None
    exclusion_keyframes: int | None = None
    exclude_ids: tuple[int, ...] = ()
    robots: tuple[str, ...] | None = None
    exclude_robots: tuple[str, ...] = ()
    sessions: tuple[str, ...] | None = None
    exclude_sessions: tuple[str, ...] = ()

    @classmethod
    def build(
        cls,
        *,
        query_stamp_ns: int | None = None,
        exclusion_window_s: float = 0.0,
        query_keyframe_index: int | None = None,
        exclusion_keyframes: int | None = None,
        exclude_ids: Iterable[int] | None = None,
        robots: Iterable[str] | str | None = None,
        exclude_robots: Iterable[str] | str | None = None,
        sessions: Iterable[str] | str | None = None,
        exclude_sessions: Iterable[str] | str | None = None,
    ) -> SearchFilter:
        if query_stamp_ns is not None and (not math.isfinite(exclusion_window_s) or exclusion_window_s < 0):
            raise ValueError(f"exclusion_window_s must be finite and >= 0, got {exclusion_window_s}")
        return cls(
            query_stamp_ns=None if query_stamp_ns is None else int(query_stamp_ns),
            exclusion_window_s=float(exclusion_window_s),
            query_keyframe_index=None if query_keyframe_index is None else int(query_keyframe_index),
            exclusion_keyframes=None if exclusion_keyframes is None else int(exclusion_keyframes),
            exclude_ids=tuple(int(i) for i in exclude_ids) if exclude_ids is not None else (),
            robots=_names(robots),
            exclude_robots=_names(exclude_robots) or (),
            sessions=_names(sessions),
            exclude_sessions=_names(exclude_sessions) or (),
        )

    @property
    def stamp_cutoff_ns(self) -> int | None:
        """Places stamped after this are excluded (None: no time window)."""
        if self.query_stamp_ns is None:
            return None
        return self.query_stamp_ns - round(self.exclusion_window_s * NS_PER_S)

    @property
    def keyframe_window(self) -> tuple[int, int] | None:
        if self.query_keyframe_index is None or self.exclusion_keyframes is None:
            return None
        return (
            self.query_keyframe_index - self.exclusion_keyframes,
            self.query_keyframe_index + self.exclusion_keyframes,
        )

    @property
    def restricts_identity(self) -> bool:
        return bool(
            self.robots is not None
            or self.exclude_robots
            or self.sessions is not None
            or self.exclude_sessions
        )

    @property
    def is_empty(self) -> bool:
        return not (self.restricts_identity or self.exclude_ids or self.stamp_cutoff_ns is not None
                    or self.keyframe_window is not None)  # fmt: skip


def _names(values: Iterable[str] | str | None) -> tuple[str, ...] | None:
    if values is None:
        return None
    if isinstance(values, str):
        return (values,)
    return tuple(str(v) for v in values)


def parse_time_ns(text: str | int | None) -> int | None:
    """Nanoseconds since the epoch from an integer (ns) or an ISO 8601 time (UTC when no zone)."""
    if text is None or text == "":
        return None
    if isinstance(text, int):
        return text
    try:
        return int(text)
    except ValueError:
        pass
    moment = datetime.fromisoformat(str(text))
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return int(round(moment.timestamp() * NS_PER_S))
