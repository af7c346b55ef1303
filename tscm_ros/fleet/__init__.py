"""Fleet place maps: one shared PostgreSQL + pgvector map for many robots and sessions.

The local faiss :class:`~tscm_ros.placemap.PlaceMap` stays the default; :func:`open_place_store` picks
the store from the target (a ``postgresql://`` URI / libpq conninfo, or a local map path). See
docs/FLEET.md.
"""

from .conninfo import is_server_target, redact
from .errors import ReadOnlyStoreError, SchemaError, StoreUnavailableError
from .factory import open_place_store
from .local import LocalPlaceStore, sidecar_dir
from .pca import PcaProjection
from .postgres import PgPlaceStore, SearchSettings
from .protocol import FleetStore, PlaceStore
from .records import FleetMatch, FleetPlaceMeta, fleet_place_id
from .robot import FleetPlaceStore

__all__ = [
    "FleetMatch",
    "FleetPlaceMeta",
    "FleetPlaceStore",
    "FleetStore",
    "LocalPlaceStore",
    "PcaProjection",
    "PgPlaceStore",
    "PlaceStore",
    "ReadOnlyStoreError",
    "SchemaError",
    "SearchSettings",
    "StoreUnavailableError",
    "fleet_place_id",
    "is_server_target",
    "open_place_store",
    "redact",
    "sidecar_dir",
]
