"""The place-store interface the recognition session uses, and the fleet extension of it.

:class:`PlaceStore` is exactly what the session needs from a map; :class:`tscm_ros.placemap.PlaceMap`
satisfies it (once it stores features). :class:`FleetStore` adds robot/session filters on search and
the connection diagnostics; :class:`LocalPlaceStore`, :class:`PgPlaceStore` and
:class:`FleetPlaceStore` satisfy both (see :func:`tscm_ros.fleet.open_place_store`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from ..placemap.records import Match, PlaceMeta
from .records import FleetMatch, FleetPlaceMeta


@runtime_checkable
class PlaceStore(Protocol):
    """A map of places (keyframes), searched by descriptor inner product."""

    @property
    def dim(self) -> int: ...

    @property
    def model_fingerprint(self) -> str | None: ...

    @property
    def next_keyframe_index(self) -> int: ...

    def __len__(self) -> int: ...

    def add(
        self,
        descriptors: np.ndarray,
        metas: Sequence[PlaceMeta] | PlaceMeta,
        *,
        features: Sequence[bytes | None] | bytes | None = None,
        thumbnails: Sequence[bytes | None] | bytes | None = None,
    ) -> np.ndarray: ...

    def search(
        self,
        query: np.ndarray,
        k: int = 10,
        *,
        query_stamp_ns: int | None = None,
        exclusion_window_s: float = 0.0,
        query_keyframe_index: int | None = None,
        exclusion_keyframes: int | None = None,
        exclude_ids: Iterable[int] | None = None,
    ) -> list[Match] | list[list[Match]]: ...

    def get_metas(self, place_ids: Iterable[int]) -> dict[int, PlaceMeta]: ...

    def get_features(self, place_ids: Iterable[int]) -> dict[int, bytes | None]: ...

    def get_thumbnail(self, place_id: int) -> bytes | None: ...

    def normalize(self, descriptor: np.ndarray) -> np.ndarray:
        """One ``(dim,)`` descriptor checked and L2-normalised as stored (the detector's query vector)."""
        ...

    def save(self, path: str | Path | None = None) -> object: ...

    def close(self) -> None: ...


@runtime_checkable
class FleetStore(PlaceStore, Protocol):
    """A :class:`PlaceStore` whose places belong to robots and sessions, possibly on a server."""

    robot_id: str
    session_id: str

    @property
    def connection_state(self) -> str:
        """``local`` | ``connected`` | ``disconnected`` (server away, answering locally) | ``refused``."""
        ...

    @property
    def outbox_depth(self) -> int:
        """Keyframes written but not yet confirmed by the server (0 for local and online-only stores)."""
        ...

    def search(
        self,
        query: np.ndarray,
        k: int = 10,
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
    ) -> list[FleetMatch] | list[list[FleetMatch]]: ...

    def get_metas(self, place_ids: Iterable[int]) -> dict[int, FleetPlaceMeta]: ...

    def diagnostics(self) -> dict[str, str]: ...
