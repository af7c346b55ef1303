"""Errors raised by the place map. All derive from :class:`MapError`."""

from __future__ import annotations


class MapError(Exception):
    """Base class of every place-map error."""


class IndexSpecError(MapError, ValueError):
    """An index spec string or :class:`IndexSpec` is invalid."""


class MapNotFoundError(MapError, FileNotFoundError):
    """The map directory or one of its files is missing."""


class MapFormatError(MapError):
    """map.json is not a tscm_ros place map or has an unknown format version."""


class MapCorruptError(MapError):
    """A file is truncated, garbage or does not match its recorded sha256."""


class MapConsistencyError(MapError):
    """The faiss index, the metadata database and map.json disagree (e.g. place counts)."""


class MapDimensionError(MapError, ValueError):
    """A descriptor or map dimension does not match what was expected."""


class MapFingerprintError(MapError):
    """The map was built with another model (descriptor fingerprint mismatch)."""


class MapLockedError(MapError):
    """Another live place map (this process or another) is the writer of the map directory."""


class MapFullError(MapError):
    """An add() would take the map past its ``max_places`` budget; nothing was added."""

    def __init__(self, message: str, *, max_places: int, places: int) -> None:
        super().__init__(message)
        self.max_places = max_places
        self.places = places


def one_line(exc: BaseException, limit: int = 300) -> str:
    """``exc`` as one short line (faiss and SQLite messages can span several lines)."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."
