"""Plain records stored with each place: pose, UTM position, metadata and search matches."""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Pose:
    """A 6-DoF pose: position (x, y, z) in metres, orientation quaternion (x, y, z, w), frame id."""

    position: tuple[float, float, float]
    orientation: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 1.0)
    frame_id: str = ""

    def __post_init__(self) -> None:
        position = tuple(float(v) for v in self.position)
        orientation = tuple(float(v) for v in self.orientation)
        if len(position) != 3 or len(orientation) != 4:
            raise ValueError("Pose needs a 3-element position and a 4-element (x, y, z, w) quaternion")
        if not all(math.isfinite(v) for v in position + orientation):
            raise ValueError(f"Pose values must be finite, got {position} {orientation}")
        object.__setattr__(self, "position", position)
        object.__setattr__(self, "orientation", orientation)

    def distance_to(self, other: Pose) -> float:
        """Euclidean distance between the two positions (metres; frames are not checked)."""
        return math.dist(self.position, other.position)


@dataclass(frozen=True)
class Utm:
    """A GNSS fix projected to UTM: easting/northing in metres and the zone label (e.g. ``"32U"``)."""

    easting: float
    northing: float
    zone: str = ""


@dataclass(frozen=True)
class PlaceMeta:
    """Metadata of one place (keyframe). ``place_id`` is filled in by the map."""

    stamp_ns: int
    frame_id: str = ""
    source: str = ""  # "bag.mcap:/camera/image_raw" or a live topic name
    keyframe_index: int | None = None  # None: the map assigns the next index
    pose: Pose | None = None
    utm: Utm | None = None
    place_id: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "stamp_ns", int(self.stamp_ns))
        if self.keyframe_index is not None:
            object.__setattr__(self, "keyframe_index", int(self.keyframe_index))


@dataclass(frozen=True)
class Match:
    """One search result: the place, its inner-product similarity, its 0-based rank and its metadata."""

    place_id: int
    similarity: float
    rank: int
    meta: PlaceMeta


@dataclass(frozen=True)
class FeatureStats:
    """What the map stores besides descriptors: local-feature blobs and thumbnails (bytes are payload)."""

    places_with_features: int
    feature_bytes: int
    thumbnail_bytes: int
    places_with_thumbnails: int = 0

    @property
    def feature_bytes_per_place(self) -> float:
        """Mean feature blob size over the places that have features (0.0 when none do)."""
        return self.feature_bytes / self.places_with_features if self.places_with_features else 0.0
