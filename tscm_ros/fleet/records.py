"""Fleet records: place metadata and matches that carry the robot and session they come from."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from ..placemap.records import Match, PlaceMeta

_ID_MASK = (1 << 63) - 1


@dataclass(frozen=True)
class FleetPlaceMeta(PlaceMeta):
    """:class:`PlaceMeta` plus the robot and session that recorded the place ("" when unknown)."""

    robot_id: str = ""
    session_id: str = ""


@dataclass(frozen=True)
class FleetMatch(Match):
    """:class:`Match` plus the matched place's robot and session (``meta`` is a :class:`FleetPlaceMeta`)."""

    robot_id: str = ""
    session_id: str = ""


def fleet_place_id(robot_id: str, session_id: str, keyframe_index: int) -> int:
    """The fleet-wide id of a place: a 63-bit BLAKE2b hash of (robot, session, keyframe index).

    Deterministic, so a robot knows the id of a keyframe before (or without) reaching the server, and a
    re-sent keyframe lands on the same row. Two different keyframes sharing an id would need ~3e9 places
    for a 50 % chance; the server refuses such a collision (primary key) instead of merging the rows.
    """
    key = f"{robot_id}\x1f{session_id}\x1f{int(keyframe_index)}".encode()
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "big") & _ID_MASK


def with_identity(
    meta: PlaceMeta, robot_id: str, session_id: str, place_id: int | None = None
) -> FleetPlaceMeta:
    """``meta`` as a :class:`FleetPlaceMeta` with the given identity (and place id when given)."""
    return FleetPlaceMeta(
        stamp_ns=meta.stamp_ns, frame_id=meta.frame_id, source=meta.source,
        keyframe_index=meta.keyframe_index,
        pose=meta.pose, utm=meta.utm, place_id=meta.place_id if place_id is None else int(place_id),
        robot_id=robot_id, session_id=session_id,
    )  # fmt: skip


def identity_of(meta: PlaceMeta, default_robot: str, default_session: str) -> tuple[str, str]:
    """(robot_id, session_id) of ``meta``: its own when it is a FleetPlaceMeta with one, else the defaults."""
    if isinstance(meta, FleetPlaceMeta) and (meta.robot_id or meta.session_id):
        return meta.robot_id, meta.session_id
    return default_robot, default_session
