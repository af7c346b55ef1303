"""ROS-free place map: faiss index of L2-normalised descriptors + SQLite metadata, atomic persistence."""

from .errors import (
    IndexSpecError,
    MapConsistencyError,
    MapCorruptError,
    MapDimensionError,
    MapError,
    MapFingerprintError,
    MapFormatError,
    MapFullError,
    MapLockedError,
    MapNotFoundError,
)
from .map import FORMAT, FORMAT_VERSION, PlaceMap
from .records import FeatureStats, Match, PlaceMeta, Pose, Utm
from .spec import IndexSpec

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "FeatureStats",
    "IndexSpec",
    "IndexSpecError",
    "MapConsistencyError",
    "MapCorruptError",
    "MapDimensionError",
    "MapError",
    "MapFingerprintError",
    "MapFormatError",
    "MapFullError",
    "MapLockedError",
    "MapNotFoundError",
    "Match",
    "PlaceMap",
    "PlaceMeta",
    "Pose",
    "Utm",
]
