"""The node's place store: a PlaceMap + LoopClosureDetector pair behind one lock, with save/reset/reconfigure.

ROS-free glue so the node only deals with messages: it keeps track of unsaved changes (``dirty``), swaps in
an empty map on reset, applies new detector settings at runtime, and skips frames the keyframe interval would
reject *before* they are described (inference is the expensive step).
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from tscm_ros.loop_closure import KeyframeResult, LoopClosureConfig, LoopClosureDetector
from tscm_ros.placemap import MapError, PlaceMap, Pose

NS_PER_S = 1_000_000_000
TIME_JUMP_BACK_NS = NS_PER_S  # stamps this far behind the last keyframe reset the keyframe history


class PlaceDatabaseError(RuntimeError):
    """The map cannot be opened as configured (one clear message)."""


def detector_config(options: Mapping[str, Any]) -> LoopClosureConfig:
    """LoopClosureConfig from node parameters (names are the same; unknown keys are ignored)."""
    names = {field.name for field in dataclasses.fields(LoopClosureConfig)}
    return LoopClosureConfig(**{name: value for name, value in options.items() if name in names})


class PlaceDatabase:
    """Thread-safe owner of the map and the detector used by place_recognition_node."""

    def __init__(self, place_map: PlaceMap, config: LoopClosureConfig) -> None:
        self._lock = threading.RLock()
        self._map = place_map
        self._detector = LoopClosureDetector(place_map, config)
        self._changes = 0
        self._last_keyframe_ns: int | None = None
        self.time_jumps = 0

    @classmethod
    def open(
        cls,
        *,
        dim: int,
        model_fingerprint: str,
        map_path: str | None,
        load: bool,
        index_spec: str,
        detector_options: Mapping[str, Any],
    ) -> PlaceDatabase:
        """Load ``map_path`` (``load``) or create an empty map; PlaceDatabaseError has one clear line."""
        try:
            config = detector_config(detector_options)
        except ValueError as error:
            raise PlaceDatabaseError(str(error)) from error
        if load:
            if not map_path or not Path(map_path).exists():
                raise PlaceDatabaseError(
                    f"map_path {map_path!r} does not exist (set load_map:=false to start an empty map)"
                )
            try:
                place_map = PlaceMap.load(map_path, dim=dim, model_fingerprint=model_fingerprint)
            except MapError as error:
                raise PlaceDatabaseError(f"cannot load map: {error}") from error
        else:
            try:
                place_map = PlaceMap.create(dim, index_spec, model_fingerprint)
            except (MapError, ValueError) as error:
                raise PlaceDatabaseError(
                    f"cannot create a map with index_spec {index_spec!r}: {error}"
                ) from error
        return cls(place_map, config)

    # ------------------------------------------------------------------ state
    def __len__(self) -> int:
        with self._lock:
            return len(self._map)

    @property
    def dirty(self) -> bool:
        """True when places were added or the map was reset since the last save."""
        with self._lock:
            return self._changes > 0

    @property
    def config(self) -> LoopClosureConfig:
        return self._detector.config

    def configure(self, options: Mapping[str, Any]) -> None:
        """Apply new detector settings (keeps the keyframe/consistency history); ValueError when invalid."""
        config = detector_config(options)
        with self._lock:
            self._detector.config = config

    # ------------------------------------------------------------------ frames
    def wants(self, stamp_ns: int) -> bool:
        """False when ``min_interval_s`` would reject a frame stamped ``stamp_ns`` (so skip describing it)."""
        with self._lock:
            last = self._last_keyframe_ns
            if last is not None and stamp_ns < last - TIME_JUMP_BACK_NS:
                # time went backwards (bag restarted, simulation reset): start a fresh keyframe history
                self._detector.reset()
                self._last_keyframe_ns = None
                self.time_jumps += 1
                return True
            interval_ns = self._detector.config.min_interval_s * NS_PER_S
            return last is None or stamp_ns - last >= interval_ns

    def process(
        self, descriptor: np.ndarray, stamp_ns: int, *, frame_id: str, source: str, pose: Pose | None
    ) -> KeyframeResult:
        with self._lock:
            result = self._detector.process(descriptor, stamp_ns, frame_id=frame_id, source=source, pose=pose)
            if result.is_keyframe:
                self._last_keyframe_ns = int(stamp_ns)
                if result.place_id is not None:
                    self._changes += 1
            return result

    # ------------------------------------------------------------------ map management
    def save(self, path: str) -> int:
        """Atomically save the map to ``path``; returns the number of places saved."""
        with self._lock:
            self._map.save(path)
            self._changes = 0
            return len(self._map)

    def reset(self) -> None:
        """Replace the map by an empty one (same dimension, index spec and model fingerprint)."""
        with self._lock:
            old = self._map
            self._map = PlaceMap.create(old.dim, old.spec, old.model_fingerprint)
            self._detector = LoopClosureDetector(self._map, self._detector.config)
            self._last_keyframe_ns = None
            self._changes += 1
            old.close()

    def close(self) -> None:
        with self._lock:
            self._map.close()
