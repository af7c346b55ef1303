"""Fleet store errors. All derive from :class:`tscm_ros.placemap.MapError`."""

from __future__ import annotations

from ..placemap.errors import MapError


class StoreUnavailableError(MapError, ConnectionError):
    """The map server cannot be reached (the message names the target without its password)."""


class ReadOnlyStoreError(MapError, PermissionError):
    """The store was opened with a role that may only read (a localisation-only robot)."""


class SchemaError(MapError):
    """The server holds no fleet map in this schema, or one at another migration version."""
