"""One place-recognition session: keyframe gate, place map, detector, sequence matcher, verifier, closures.

The ROS node, ``tscm_build_map``, the demo and the evaluation all drive this one object, so a bag replayed
into the node and the same bag mapped offline go through the same steps. Per keyframe
(:meth:`RecognitionSession.process`):

1. **Keyframe gate** (:class:`LoopClosureDetector`): interval, descriptor change, travel; a time jump back
   (restarted bag) resets the keyframe, consistency and sequence history.
2. **Local features** of the keyframe image (when verification is on and an image is given), outside the lock.
3. **Retrieval**: top-K places with the mapping-mode exclusions.
4. **Ranking**: with ``sequence.length > 0`` the sequence matcher ranks the candidates by their score along
   the trajectory (:mod:`tscm_ros.sequence`); without verification only sequences it accepts
   (``min_score``) are candidates, with verification the best-scored ones are verified and verification is
   the gate. Until it has a full sequence of history the single-frame rule applies (similarity threshold,
   NMS, consistency) and the result says so (``sequence_partial``).
5. **Verification** of the first ``verify_top_k`` candidates against the features stored with each place:
   accepted candidates get inliers and a relative pose and are ranked first, by inliers.
6. **Commit**: in mapping mode the keyframe becomes a place, with its features and thumbnail.

**Locking.** Everything that changes state holds one lock, for short sections only: the keyframe gate, then
retrieval + ranking + commit, then recording the verified closures. Feature extraction and the verification
of the candidates run outside it. Control requests from other threads (:meth:`request_configure`,
:meth:`request_reset`) never wait for a frame: they are applied at once when the lock is free within
``CONTROL_WAIT_S``, else at the next frame boundary (the start of the next :meth:`process` / :meth:`wants`,
or :meth:`apply_pending`), in the order they were made. :meth:`save` holds the lock only to apply those
requests; the map's own save holds the map's lock only for its snapshot (:meth:`PlaceMap.save`).
:attr:`counters` is a lock-free snapshot for diagnostics.

**Place stores.** The map is a :class:`~tscm_ros.placemap.PlaceMap` (the default: a local faiss map) or, when
:meth:`RecognitionSession.open` gets a PostgreSQL ``map_uri``, a fleet store
(:func:`tscm_ros.fleet.open_place_store`: the shared server map, with the local map at ``map_path`` as the
robot's outbox-backed copy and fallback). On a fleet store candidates carry the robot and session of the
matched place, the ``query_*`` filters of :class:`RecognitionConfig` apply, and the exclusion windows cover
only this robot's own session (another robot's place seen a second ago is a genuine inter-robot loop).
"""

from __future__ import annotations

import dataclasses
import socket
import sqlite3
import threading
import time
from collections import Counter, deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from tscm_ros.config_ranges import check_ranges, ranged
from tscm_ros.features import (
    CameraIntrinsics,
    FeatureConfig,
    FeatureExtractor,
    FeatureFormatError,
    LocalFeatures,
    make_thumbnail,
)
from tscm_ros.loop_closure import LoopCandidate, LoopClosureConfig, LoopClosureDetector
from tscm_ros.placemap import MapError, Match, PlaceMap, Pose, Utm
from tscm_ros.placemap.errors import one_line
from tscm_ros.sequence import SequenceConfig, SequenceMatcher, SequenceScore
from tscm_ros.verification import Verification, Verifier, VerifierConfig

MAX_CLOSURES = 2000  # accepted loop closures kept in memory (markers, statistics), without inlier pairs
CONTROL_WAIT_S = 0.02  # a control request waits this long for the lock, then takes effect at the next frame
DEFAULT_MAP_SCHEMA = "tscm"
SESSION_AXIS_STRIDE = 1 << 32  # sequence axis: distance between fleet sessions (exact in float64)
QUERY_FILTERS = {  # RecognitionConfig field -> keyword of FleetStore.search
    "query_robots": "robots",
    "query_exclude_robots": "exclude_robots",
    "query_sessions": "sessions",
    "query_exclude_sessions": "exclude_sessions",
}


SEARCH_OPTIONS = {  # node parameter -> tscm_ros.fleet.SearchSettings field (fleet maps only)
    "map_search_mode": "mode",
    "map_ef_search": "ef_search",
    "map_rerank_candidates": "rerank_candidates",
    "map_max_ef_search": "max_ef_search",
}


class RecognitionError(RuntimeError):
    """The session cannot be opened as configured (one clear message)."""


@dataclass(frozen=True)
class RecognitionConfig:
    """Every setting of a session. :meth:`from_options` reads the flat node-parameter names."""

    detector: LoopClosureConfig = field(default_factory=LoopClosureConfig)
    verify: bool = True
    verify_top_k: int = ranged(5, 1, 100)  # at most top_k candidates exist to verify
    # with sequence matching: the best full sequence's match needs only this many inliers (the sequence is
    # the first, independent cue; the verifier's ratio rule still applies); every other candidate needs
    # verifier.min_inliers
    sequence_confirm_inliers: int = ranged(12, 5, 100_000)
    features: FeatureConfig = field(default_factory=FeatureConfig)
    verifier: VerifierConfig = field(default_factory=VerifierConfig)
    sequence: SequenceConfig = field(default_factory=SequenceConfig)
    thumbnails: bool = True
    # fleet maps only (ignored on a local PlaceMap): candidates only of / never of these robots and sessions
    query_robots: tuple[str, ...] = ()
    query_exclude_robots: tuple[str, ...] = ()
    query_sessions: tuple[str, ...] = ()
    query_exclude_sessions: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for name in ("verify_top_k", "sequence_confirm_inliers"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"{name} must be an integer, got {value!r}")
        check_ranges(self)
        for name in QUERY_FILTERS:
            value = getattr(self, name)
            if isinstance(value, str) or not all(isinstance(item, str) for item in value):
                raise ValueError(f"{name} must be a list of strings, got {value!r}")
            object.__setattr__(self, name, tuple(value))

    def search_filters(self) -> dict[str, list[str]]:
        """The configured ``query_*`` filters as FleetStore.search keywords (empty ones left out)."""
        return {
            keyword: list(getattr(self, name))
            for name, keyword in QUERY_FILTERS.items()
            if getattr(self, name)
        }

    # flat option name -> (section, field)
    OPTION_FIELDS = {
        "feature_method": ("features", "method"),
        "max_keypoints": ("features", "max_keypoints"),
        "feature_max_side": ("features", "max_image_side"),
        "min_inliers": ("verifier", "min_inliers"),
        "min_inlier_ratio": ("verifier", "min_inlier_ratio"),
        "sequence_length": ("sequence", "length"),
        "sequence_min_speed": ("sequence", "min_speed"),
        "sequence_max_speed": ("sequence", "max_speed"),
    }

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> RecognitionConfig:
        """A config from flat names (node parameters, CLI options); unknown names are ignored.

        ``LoopClosureConfig`` fields keep their names; ``verify``, ``verify_top_k``, ``thumbnails`` and the
        ``query_*`` filters are top-level; the rest are listed in :attr:`OPTION_FIELDS`. Raises
        ``ValueError`` naming the field.
        """
        detector_names = {f.name for f in dataclasses.fields(LoopClosureConfig)}
        detector = LoopClosureConfig(**{k: v for k, v in options.items() if k in detector_names})
        sections: dict[str, dict[str, Any]] = {"features": {}, "verifier": {}, "sequence": {}}
        for name, (section, field_name) in cls.OPTION_FIELDS.items():
            if name in options:
                sections[section][field_name] = options[name]
        top = {
            k: options[k] for k in ("verify", "verify_top_k", "thumbnails", *QUERY_FILTERS) if k in options
        }
        return cls(
            detector=detector,
            features=FeatureConfig(**sections["features"]),
            verifier=VerifierConfig(**sections["verifier"]),
            sequence=SequenceConfig(**sections["sequence"]),
            **top,
        )


@dataclass(frozen=True)
class SessionCounters:
    """A consistent snapshot of the session's counters, read without its lock (diagnostics)."""

    places: int = 0
    max_places: int | None = None  # the map's budget (None = unlimited)
    refused_full: int = 0  # keyframes not added because the map was at max_places
    reasons: Mapping[str, int] = field(default_factory=dict)  # why candidates stayed unverified
    time_jumps: int = 0
    pending_requests: int = 0  # control requests waiting for the next frame boundary

    @property
    def utilisation(self) -> float | None:
        """``places / max_places`` (None when unlimited)."""
        return None if not self.max_places else self.places / self.max_places


@dataclass(frozen=True)
class RecognitionResult:
    """What the session did with one frame. ``candidates``: verified first (by inliers), then the rest."""

    is_keyframe: bool
    place_id: int | None = None
    keyframe_index: int = -1
    candidates: list[LoopCandidate] = field(default_factory=list)
    skipped_reason: str = ""
    sequence_partial: bool = False  # sequence matching on, but not yet a full sequence of history
    query_features: LocalFeatures | None = field(default=None, repr=False)
    timings_ms: dict[str, float] = field(default_factory=dict)

    @property
    def closures(self) -> list[LoopCandidate]:
        """The verified candidates: loop closures a back end can take."""
        return [c for c in self.candidates if c.verified]


class RecognitionSession:
    """Thread-safe owner of the place map, detector, sequence matcher, verifier and accepted closures.

    ``place_map``: a :class:`PlaceMap` or any :class:`tscm_ros.fleet.PlaceStore` (a fleet store when it has
    ``connection_state``/``diagnostics()``: candidates then carry robot and session, filters apply).
    """

    def __init__(self, place_map: PlaceMap, config: RecognitionConfig | None = None) -> None:
        self._lock = threading.RLock()
        self._map = place_map
        self._fleet = place_map if _is_fleet_store(place_map) else None
        self._run_start = self._run_marker()
        self._config = config or RecognitionConfig()
        self._detector = self._new_detector(place_map)
        self._sequence = SequenceMatcher(self._config.sequence)
        self._extractor = FeatureExtractor(self._config.features)
        self._verifier = Verifier(self._config.verifier)
        self._confirmer = _confirming_verifier(self._config)
        self._changes = 0
        self._time_jumps_seen = 0
        self.closures: deque[LoopCandidate] = deque(maxlen=MAX_CLOSURES)  # the last verified, slimmed
        self.reasons: Counter[str] = Counter()  # why candidates stayed unverified, and feature problems
        self.last_feature_error = ""
        self._session_codes: dict[tuple[str, str], int] = {}  # fleet identities on the sequence axis
        self._control_lock = threading.Lock()  # guards _control only (never held while waiting)
        self._control: list[tuple[str, Any]] = []  # requests for the next frame boundary, in order
        self._save_mutex = threading.RLock()  # one save at a time; retired maps close under it
        self._retired: list[PlaceMap] = []  # maps replaced by a reset, closed once no save uses them
        self._spare: PlaceMap | None = None  # an empty map made ahead for request_reset (prepare_reset)
        self._closed = False
        self._counters = SessionCounters()
        self._publish_counters()

    @classmethod
    def open(
        cls,
        *,
        dim: int,
        model_fingerprint: str,
        map_path: str | None,
        load: bool,
        index_spec: str,
        options: Mapping[str, Any],
        map_uri: str = "",
        map_schema: str = DEFAULT_MAP_SCHEMA,
        robot_id: str = "",
        session_id: str = "",
        max_places: int | None = None,
    ) -> RecognitionSession:
        """Load ``map_path`` (``load``) or create an empty map; RecognitionError has one clear line.

        ``max_places``: growth budget of a local map (None = unlimited; not used with ``map_uri``): at the
        budget keyframes are still matched but no longer added (:attr:`SessionCounters.refused_full`).

        ``map_uri``: '' (default) = the local faiss map at ``map_path``, exactly as without it. A
        ``postgresql://`` / ``postgres://`` URI or libpq conninfo (``service=fleet``) = the fleet map in
        ``map_schema`` on that server, with ``map_path`` (required) as this robot's local copy: outbox and
        fallback, opened when present, created when missing (``load`` is not used). ``robot_id`` /
        ``session_id`` label the places this session adds ('' = :func:`default_robot_id` /
        :func:`default_session_id`).
        An unreachable server is not an error (the store answers locally and reconnects in the background);
        a malformed URI, a missing schema or another model's map is.
        """
        try:
            config = RecognitionConfig.from_options(options)
        except (TypeError, ValueError) as error:
            raise RecognitionError(str(error)) from error
        if map_uri and map_uri.strip():
            store = _open_fleet_store(
                map_uri.strip(), dim=dim, model_fingerprint=model_fingerprint, map_path=map_path,
                index_spec=index_spec, schema=map_schema or DEFAULT_MAP_SCHEMA,
                robot_id=robot_id or default_robot_id(), session_id=session_id or default_session_id(),
                search={SEARCH_OPTIONS[k]: v for k, v in options.items() if k in SEARCH_OPTIONS},
            )  # fmt: skip
            return cls(store, config)
        if load:
            if not map_path or not Path(map_path).exists():
                raise RecognitionError(
                    f"map_path {map_path!r} does not exist (set load_map:=false to start an empty map)"
                )
            try:
                place_map = PlaceMap.load(
                    map_path, dim=dim, model_fingerprint=model_fingerprint, max_places=max_places
                )
            except MapError as error:
                raise RecognitionError(f"cannot load map: {error}") from error
        else:
            try:
                place_map = PlaceMap.create(dim, index_spec, model_fingerprint, max_places=max_places)
            except (MapError, ValueError) as error:
                raise RecognitionError(
                    f"cannot create a map with index_spec {index_spec!r}: {error}"
                ) from error
        return cls(place_map, config)

    def _new_detector(self, place_map: PlaceMap) -> LoopClosureDetector:
        detector = LoopClosureDetector(place_map, self._config.detector)
        detector.verification_gates = self._config.verify  # "auto" threshold: verification decides
        return detector

    @property
    def similarity_threshold(self) -> float:
        """The similarity threshold in force (resolved when configured as ``"auto"``)."""
        return self._detector.threshold

    # ------------------------------------------------------------------ state
    def __len__(self) -> int:
        with self._lock:
            return len(self._map)

    @property
    def place_map(self) -> PlaceMap:
        return self._map

    @property
    def is_fleet(self) -> bool:
        """True when the map is a fleet store (places labelled with robot and session)."""
        return self._fleet is not None

    @property
    def robot_id(self) -> str:
        """The robot this session's places belong to ('' on a local PlaceMap)."""
        return self._fleet.robot_id if self._fleet is not None else ""

    @property
    def session_id(self) -> str:
        return self._fleet.session_id if self._fleet is not None else ""

    def map_diagnostics(self) -> dict[str, str]:
        """The fleet store's ``diagnostics()`` (connection state, outbox depth, ...; no password) plus
        ``mapping_refused`` (true: mapping is configured but the role is read-only); {} for a local map."""
        if self._fleet is None:
            return {}
        return {**self._fleet.diagnostics(), "mapping_refused": str(bool(self.mapping_refused)).lower()}

    @property
    def mapping_refused(self) -> str:
        """One line when ``mode`` is mapping but the fleet map refuses this robot's writes (a read-only
        role): the session then only localises -- keyframes are searched, never added; '' otherwise."""
        fleet = self._fleet
        if fleet is None or self._config.detector.mode != "mapping" or not getattr(fleet, "read_only", False):
            return ""
        return (
            f"fleet map {fleet.target_description} schema {fleet.schema!r} is read-only for this role: mode "
            "is mapping but no keyframes are added (localisation only); map with a role in tscm_writer, or "
            "set mode: localization"
        )

    def _sync_mapping(self) -> None:
        """The detector maps only when the configuration says so and the map accepts this robot's writes."""
        wanted = self._config.detector
        if self.mapping_refused:
            wanted = dataclasses.replace(wanted, mode="localization")
        if self._detector.config != wanted:
            self._detector.config = wanted

    def _run_marker(self) -> int:
        if self._fleet is not None:  # fleet ids are hashes: this run = own session, from this keyframe on
            return int(self._map.next_keyframe_index)
        return int(getattr(self._map, "next_place_id", 0))

    def from_this_run(self, candidate: LoopCandidate) -> bool:
        """True when the matched place was added since the session opened (or the map was reset)."""
        if self._fleet is not None:
            own = (candidate.match_robot_id, candidate.match_session_id) == (self.robot_id, self.session_id)
            return own and candidate.match_keyframe_index >= self._run_start
        return candidate.match_id >= self._run_start

    @property
    def config(self) -> RecognitionConfig:
        return self._config

    @property
    def dirty(self) -> bool:
        """True when places were added or the map was reset since the last save (lock-free read)."""
        return self._changes > 0 or any(kind == "reset" for kind, _ in list(self._control))

    @property
    def counters(self) -> SessionCounters:
        """The latest counter snapshot (lock-free: never waits for a frame)."""
        return self._counters

    def _publish_counters(self) -> None:
        """Refresh :attr:`counters` (called with the lock held, after every change)."""
        self._counters = SessionCounters(
            places=len(self._map),
            max_places=getattr(self._map, "max_places", None),
            refused_full=self._refused_full_total(),
            reasons=dict(self.reasons),
            time_jumps=self._detector.time_jumps,
            pending_requests=len(self._control),
        )

    def _refused_full_total(self) -> int:
        return getattr(self, "_refused_before_reset", 0) + self._detector.refused_full

    @property
    def time_jumps(self) -> int:
        return self._detector.time_jumps

    def configure(self, options: Mapping[str, Any]) -> None:
        """Apply new settings (keeps the map and the histories unless the sequence settings change)."""
        config = RecognitionConfig.from_options(options)
        with self._lock:
            self._apply_pending()
            self._apply(config)
            self._publish_counters()

    def request_configure(self, config: RecognitionConfig | Mapping[str, Any]) -> bool:
        """Hand new settings over without waiting for a frame (see the module docstring, Locking).

        ``config``: a validated :class:`RecognitionConfig` or flat options (ValueError at once when bad).
        True when applied already, False when it takes effect at the next frame boundary."""
        if not isinstance(config, RecognitionConfig):
            config = RecognitionConfig.from_options(config)
        return self._request("configure", config)

    def request_reset(self) -> bool:
        """:meth:`reset` without waiting for a frame: True when done, False when it takes effect at the next
        frame boundary (the frame in flight still goes to the old map, which is discarded).
        RecognitionError at once on a fleet store."""
        self._check_resettable()
        with self._control_lock:
            fresh, self._spare = self._spare, None
        if fresh is None:
            fresh = self._empty_map()  # built here, outside every lock
        return self._request("reset", fresh)  # the next spare is made after the old map is closed

    def prepare_reset(self) -> None:
        """Build the empty map of the next :meth:`request_reset` in the background (creating one costs
        tens of ms of disk work: the working database), so the request itself only swaps maps."""
        if self._fleet is None:
            threading.Thread(target=self._make_spare, name="placemap-spare", daemon=True).start()

    def _make_spare(self) -> None:
        fresh = self._empty_map()
        with self._control_lock:
            if self._spare is None and not self._closed:
                self._spare, fresh = fresh, None
        if fresh is not None:
            fresh.close()

    def _empty_map(self) -> PlaceMap:
        """A new empty map like the current one (dimension, spec, fingerprint, budget never change)."""
        old = self._map
        return PlaceMap.create(old.dim, old.spec, old.model_fingerprint, max_places=old.max_places)

    def _request(self, kind: str, argument: Any) -> bool:
        with self._control_lock:
            self._control.append((kind, argument))
        self._counters = dataclasses.replace(self._counters, pending_requests=len(self._control))
        if not self._lock.acquire(timeout=CONTROL_WAIT_S):
            return False
        try:
            self._apply_pending()
            self._publish_counters()
        finally:
            self._lock.release()
        return True

    def apply_pending(self) -> None:
        """Apply the waiting control requests now (a frame boundary; e.g. from an idle inference loop)."""
        if self._control:
            with self._lock:
                self._apply_pending()
                self._publish_counters()

    def _apply_pending(self) -> None:
        """Apply the queued requests in order; the caller holds the lock."""
        while True:
            with self._control_lock:
                if not self._control:
                    return
                kind, argument = self._control.pop(0)
            if kind == "configure":
                self._apply(argument)
            else:
                self._reset_locked(argument)

    def _apply(self, config: RecognitionConfig) -> None:
        if config.sequence != self._config.sequence:
            self._sequence = SequenceMatcher(config.sequence)
        if config.features != self._config.features:
            self._extractor = FeatureExtractor(config.features)
        if config.verifier != self._config.verifier:
            self._verifier = Verifier(config.verifier)
        if (config.verifier, config.sequence_confirm_inliers) != (
            self._config.verifier,
            self._config.sequence_confirm_inliers,
        ):
            self._confirmer = _confirming_verifier(config)
        self._detector.config = config.detector
        self._detector.verification_gates = config.verify
        self._config = config

    # ------------------------------------------------------------------ frames
    def wants(self, stamp_ns: int) -> bool:
        """False when ``min_interval_s`` would reject a frame stamped ``stamp_ns`` (skip describing it)."""
        with self._lock:
            self._apply_pending()
            wanted = not self._detector.interval_gate(int(stamp_ns))
            self._follow_time_jumps()
            return wanted

    def _follow_time_jumps(self) -> None:
        if self._detector.time_jumps != self._time_jumps_seen:
            self._time_jumps_seen = self._detector.time_jumps
            self._sequence.reset()

    def process(
        self,
        descriptor: np.ndarray,
        stamp_ns: int,
        *,
        image: np.ndarray | None = None,
        depth: np.ndarray | None = None,
        intrinsics: CameraIntrinsics | None = None,
        frame_id: str = "",
        source: str = "",
        pose: Pose | None = None,
        utm: Utm | None = None,
        travel_m: float | None = None,
    ) -> RecognitionResult:
        """Handle one frame: its descriptor (D,), header stamp (ns) and, for verification, its RGB image
        (with an aligned depth image and the camera intrinsics when known)."""
        stamp_ns = int(stamp_ns)
        vector = self._map.normalize(descriptor)
        timings: dict[str, float] = {}
        with self._lock:
            self._apply_pending()
            self._sync_mapping()
            reason = self._detector.keyframe_gate(vector, stamp_ns, pose)
            self._follow_time_jumps()
            if reason:
                return RecognitionResult(is_keyframe=False, skipped_reason=reason)
            config = self._config
            extractor = self._extractor
        features, blob, thumbnail = None, None, None
        if config.verify and image is not None:
            started = time.perf_counter()
            features, blob, thumbnail = self._describe_locally(extractor, image, depth, intrinsics, config)
            timings["features"] = _ms_since(started)
        with self._lock:
            started = time.perf_counter()
            retrieve_k = config.detector.top_k
            if config.sequence.length:
                retrieve_k = max(retrieve_k, config.sequence.candidates_per_keyframe)
            filters = config.search_filters() if self._fleet is not None else None
            keyframe_index, matches = self._detector.retrieve(vector, stamp_ns, retrieve_k, pose, filters)
            timings["retrieve"] = _ms_since(started)
            started = time.perf_counter()
            ranked, sequence_scores, partial = self._rank(matches, keyframe_index, stamp_ns, travel_m)
            timings["sequence" if config.sequence.length else "select"] = _ms_since(started)
            place_id = self._detector.commit(
                vector, stamp_ns, keyframe_index, frame_id=frame_id, source=source, pose=pose, utm=utm,
                features=blob, thumbnail=thumbnail,
            )  # fmt: skip
            if place_id is not None:
                self._changes += 1
            candidates = self._detector.candidates(ranked, place_id, keyframe_index, stamp_ns, pose)
            candidates = [
                dataclasses.replace(c, sequence_score=s.score, sequence_length=s.length) if s else c
                for c, s in zip(candidates, sequence_scores, strict=True)
            ]
            verifiers = (self._map, self._verifier, self._confirmer)
            self._publish_counters()
        if config.verify:  # outside the lock: control requests and saves never wait for it
            started = time.perf_counter()
            reasons: Counter[str] = Counter()
            candidates = self._verify(candidates, features, intrinsics, config, verifiers, reasons)
            timings["verify"] = _ms_since(started)
            with self._lock:
                self.reasons.update(reasons)
                self.closures.extend(_without_inlier_pairs(c) for c in candidates if c.verified)
                self._publish_counters()
        return RecognitionResult(
            is_keyframe=True, place_id=place_id, keyframe_index=keyframe_index, candidates=candidates,
            sequence_partial=partial, query_features=features, timings_ms=timings,
        )  # fmt: skip

    def _describe_locally(
        self,
        extractor: FeatureExtractor,
        image: np.ndarray,
        depth: np.ndarray | None,
        intrinsics: CameraIntrinsics | None,
        config: RecognitionConfig,
    ) -> tuple[LocalFeatures | None, bytes | None, bytes | None]:
        if depth is not None and intrinsics is None:
            self.reasons["depth_without_intrinsics"] += 1  # no back-projection possible: 2-D features only
            depth = None
        try:
            features = extractor.extract(image, depth=depth, intrinsics=intrinsics)
        except ValueError as error:  # e.g. depth of another size: keep the keyframe, count the reason
            self.reasons["bad_depth" if depth is not None else "bad_image"] += 1
            self.last_feature_error = str(error)
            try:
                features = extractor.extract(image) if depth is not None else None
            except ValueError:
                features = None
            if features is None:
                return None, None, None
        thumbnail = make_thumbnail(image) if config.thumbnails else None
        return features, features.to_bytes(), thumbnail

    def _rank(
        self, matches: list[Match], keyframe_index: int, stamp_ns: int, travel_m: float | None
    ) -> tuple[list[Match], list[SequenceScore | None], bool]:
        """(ranked matches, their sequence scores, partial?) -- the sequence rule or the single-frame rule."""
        sequence = self._config.sequence
        if not sequence.length:
            selected = self._detector.select(matches)
            return selected, [None] * len(selected), False
        scores = self._sequence.update(
            keyframe_index=keyframe_index,
            stamp_ns=stamp_ns,
            place_ids=np.array([m.place_id for m in matches], np.int64),
            place_keyframes=np.array([self._sequence_axis(m) for m in matches], np.int64),
            similarities=np.array([m.similarity for m in matches], np.float32),
            travel_m=travel_m,
        )
        by_id = {m.place_id: m for m in matches}
        full = [s for s in scores if s.full and s.place_id in by_id]
        if not full:  # not enough history yet: the single-frame rule, flagged
            selected = self._detector.select(matches)
            partial_scores = {s.place_id: s for s in scores}
            return selected, [partial_scores.get(m.place_id) for m in selected], True
        # best sequence score first; without verification only accepted sequences are candidates, with it
        # verification is the gate and the sequence ranking decides which candidates it checks
        kept = full if self._config.verify else [s for s in full if s.accepted]
        kept = kept[: self._config.detector.top_k]
        return [by_id[s.place_id] for s in kept], list(kept), False

    def _sequence_axis(self, match: Match) -> int:
        """The match's position on the sequence matcher's map-keyframe axis: its keyframe index, moved by
        ``SESSION_AXIS_STRIDE`` per (robot, session) of a fleet map so that lines never join places of
        different sessions (their indices are unrelated). Unlabelled places (a local PlaceMap) stay at 0."""
        identity = (getattr(match, "robot_id", ""), getattr(match, "session_id", ""))
        if identity == ("", ""):
            return int(match.meta.keyframe_index)
        code = self._session_codes.setdefault(identity, len(self._session_codes) + 1)
        return code * SESSION_AXIS_STRIDE + int(match.meta.keyframe_index)

    def _verify(
        self,
        candidates: list[LoopCandidate],
        features: LocalFeatures | None,
        intrinsics: CameraIntrinsics | None,
        config: RecognitionConfig,
        verifiers: tuple[PlaceMap, Verifier, Verifier],
        reasons: Counter[str],
    ) -> list[LoopCandidate]:
        """Verify the first ``verify_top_k`` candidates; verified ones first (the confirmed best sequence,
        then by inliers), then the rest. ``verifiers``: (map, verifier, confirmer) as of the retrieval;
        rejection reasons are counted into ``reasons``."""
        place_map, plain, confirming = verifiers
        head, tail = candidates[: config.verify_top_k], candidates[config.verify_top_k :]
        if not head:
            return candidates
        try:
            stored = place_map.get_features([c.match_id for c in head]) if features is not None else {}
        except sqlite3.Error:  # the map was reset and closed while this frame was in flight
            stored = {}
        checked, confirmed = [], set()
        length = config.sequence.length
        for candidate in head:
            confirm = length and candidate.rank == 0 and candidate.sequence_length >= length
            verifier = confirming if confirm else plain
            verification = self._verify_one(verifier, features, stored, candidate.match_id, intrinsics)
            if not verification.verified:
                reasons[verification.reason] += 1
            elif confirm:
                confirmed.add(candidate.match_id)  # the best sequence, confirmed: it stays the best closure
            checked.append(dataclasses.replace(candidate, verification=verification))
        checked.sort(
            key=lambda c: (not c.verified, c.match_id not in confirmed, -c.inliers if c.verified else 0)
        )
        return [dataclasses.replace(c, rank=rank) for rank, c in enumerate(checked + tail)]

    def _verify_one(
        self,
        verifier: Verifier,
        features: LocalFeatures | None,
        stored: Mapping[int, bytes | None],
        match_id: int,
        intrinsics: CameraIntrinsics | None,
    ) -> Verification:
        if features is None:
            return _rejected("no_query_features")
        if match_id not in stored:
            return _rejected("no_match_features")
        blob = stored[match_id]
        if blob is None:
            return _rejected("corrupt_match_features")
        try:
            match_features = LocalFeatures.from_bytes(blob)
        except FeatureFormatError:
            return _rejected("corrupt_match_features")
        return verifier.verify(features, match_features, intrinsics=intrinsics)

    # ------------------------------------------------------------------ map management
    def save(self, path: str) -> int:
        """Atomically save the map to ``path``; returns the number of places saved.

        Applies the waiting control requests first (a save after a reset request saves the reset map),
        then saves without the session lock: frames go on while it writes (see :meth:`PlaceMap.save`).
        Saves run one at a time. On a fleet store: the robot's local copy (the outbox is always durable,
        the server commits every flush)."""
        with self._save_mutex:
            with self._lock:
                self._apply_pending()
                self._publish_counters()
                place_map, changes = self._map, self._changes
            # maps retired before this one may hold the directory's writer lock; a reset requested from now
            # on retires place_map itself, which is then closed after this save
            self._close_retired(keep=place_map)
            try:
                place_map.save(path)
            finally:
                self._close_retired()
            with self._lock:
                if self._map is place_map:  # changes made during the write stay dirty
                    self._changes = max(0, self._changes - changes)
            local = getattr(place_map, "local", place_map)
            saved = getattr(local, "last_saved_places", None)
            return int(saved) if saved is not None else len(local)

    def _check_resettable(self) -> None:
        if self._fleet is not None:
            raise RecognitionError(
                "reset is not available on a fleet map (map_uri): the server keeps every robot's places; "
                "use query_exclude_sessions to ignore sessions, or restart with an empty map_uri"
            )

    def reset(self) -> None:
        """Replace the map by an empty one (same dimension, index spec, model fingerprint and budget).

        Not on a fleet store (RecognitionError): robots cannot delete the fleet's places. The old map is
        closed once no save is writing it (in the background)."""
        self._check_resettable()
        with self._lock:
            self._apply_pending()
            self._reset_locked(self._empty_map())
            self._publish_counters()

    def _reset_locked(self, fresh: PlaceMap) -> None:
        old = self._map
        self._refused_before_reset = self._refused_full_total()
        self._map = fresh
        self._detector = self._new_detector(self._map)
        self._sequence.reset()
        self.closures.clear()
        self._changes += 1
        self._run_start = self._run_marker()
        with self._control_lock:
            self._retired.append(old)
        threading.Thread(target=self._after_reset, name="placemap-retire", daemon=True).start()

    def _after_reset(self) -> None:
        self._close_retired()
        self._make_spare()

    def _close_retired(self, keep: PlaceMap | None = None) -> None:
        """Close maps replaced by a reset (but ``keep``); under the save mutex, so never while a save
        writes one. A frame in flight may still verify against one: that frame's candidates then stay
        unverified (``no_match_features``)."""
        with self._save_mutex:
            while True:
                with self._control_lock:
                    closable = [m for m in self._retired if m is not keep]
                    if not closable:
                        return
                    old = closable[0]
                    self._retired.remove(old)
                old.close()

    def close(self) -> None:
        self._close_retired()
        with self._save_mutex, self._lock:
            with self._control_lock:
                unused = [argument for kind, argument in self._control if kind == "reset"]
                if self._spare is not None:
                    unused.append(self._spare)
                self._control.clear()
                self._spare, self._closed = None, True
            for place_map in (*unused, self._map):
                place_map.close()


def default_robot_id() -> str:
    """The robot id used when none is configured: the host name."""
    return socket.gethostname() or "robot"


def default_session_id(now: datetime | None = None) -> str:
    """The session id used when none is configured: the UTC start time, e.g. ``2024-06-01T12:00:00Z``."""
    return (now or datetime.now(timezone.utc)).strftime("%Y-%m-%dT%H:%M:%SZ")


def _is_fleet_store(store: object) -> bool:
    return hasattr(store, "connection_state") and hasattr(store, "diagnostics") and hasattr(store, "robot_id")


def _open_fleet_store(
    map_uri: str,
    *,
    dim: int,
    model_fingerprint: str,
    map_path: str | None,
    index_spec: str,
    schema: str,
    robot_id: str,
    session_id: str,
    search: Mapping[str, Any] | None = None,
):
    """The robot's FleetPlaceStore for ``map_uri``; configuration problems as one RecognitionError line.

    ``search``: :class:`tscm_ros.fleet.SearchSettings` fields (from the ``map_*`` search options)."""
    try:  # psycopg is only needed for fleet maps
        import psycopg

        from tscm_ros.fleet import SearchSettings, is_server_target, open_place_store, redact
        from tscm_ros.fleet.conninfo import scrub
    except ImportError as error:
        raise RecognitionError(
            f"map_uri needs the fleet dependencies (psycopg, pgvector): {error}"
        ) from error
    option_of = {field_name: option for option, field_name in SEARCH_OPTIONS.items()}
    for field_name, value in (search or {}).items():  # one field at a time: the error names its option
        try:
            SearchSettings(**{field_name: value})
        except (TypeError, ValueError) as error:
            raise RecognitionError(f"{option_of[field_name]}: {error}") from None
    try:
        settings = SearchSettings(**dict(search or {}))
    except (TypeError, ValueError) as error:
        raise RecognitionError(f"fleet map search options: {error}") from None
    if not is_server_target(map_uri):
        raise RecognitionError(
            f"map_uri {scrub(map_uri)!r} is not a PostgreSQL target: use postgresql://..., postgres://... "
            "or a libpq conninfo such as service=fleet (empty map_uri: the local map at map_path only)"
        )
    if not map_path:
        raise RecognitionError(
            "map_uri needs map_path: the robot's local copy of the fleet map (outbox and fallback while the "
            "server is away)"
        )
    try:
        return open_place_store(
            map_uri, dim=dim, model_fingerprint=model_fingerprint, robot_id=robot_id, session_id=session_id,
            local_map=map_path, schema=schema, index_spec=index_spec, search=settings,
        )  # fmt: skip
    except psycopg.Error as error:  # libpq could not parse the URI / conninfo
        raise RecognitionError(
            f"map_uri is malformed: {' '.join(scrub(str(error), map_uri).split())}"
        ) from None
    except MapError as error:  # other model, dimension, schema missing or at another version
        message = " ".join(scrub(one_line(error), map_uri).split())
        raise RecognitionError(f"cannot open the fleet map {redact(map_uri)}: {message}") from None
    except (OSError, ValueError) as error:
        raise RecognitionError(f"cannot open the local copy {map_path} of the fleet map: {error}") from None


NODE_NAME = "place_recognition_node"


def shipped_params_file() -> Path:
    """``config/place_recognition.yaml``: the installed share directory (colcon / ament index) when there is
    one, else the repository checkout -- the defaults the node, ``tscm_build_map`` and the demo share."""
    try:
        from ament_index_python.packages import get_package_share_directory

        installed = Path(get_package_share_directory("tscm_ros")) / "config" / "place_recognition.yaml"
        if installed.is_file():
            return installed
    except Exception:  # not installed with colcon / no AMENT_PREFIX_PATH
        pass
    return Path(__file__).resolve().parents[1] / "config" / "place_recognition.yaml"


def read_params_file(path: str | Path, node_name: str = NODE_NAME) -> dict[str, Any]:
    """The ``ros__parameters`` of ``node_name`` in a ROS 2 params YAML (``/**/name``, ``/name``, ``name``
    or ``/**``), so offline tools read the node's own file. ValueError with one line when it has none."""
    import yaml

    path = Path(path)
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
        raise ValueError(f"cannot read params file {path}: {error}") from error
    if not isinstance(document, dict):
        raise ValueError(f"{path} is not a ROS 2 params file (no mapping at the top)")
    options: dict[str, Any] = {}
    for key in ("/**", f"/**/{node_name}", f"/{node_name}", node_name):
        section = document.get(key)
        if isinstance(section, dict) and isinstance(section.get("ros__parameters"), dict):
            options.update(section["ros__parameters"])
    if not options:
        raise ValueError(f"{path} has no ros__parameters for {node_name}")
    return options


def _confirming_verifier(config: RecognitionConfig) -> Verifier:
    """The verifier for the best full sequence's match: ``sequence_confirm_inliers`` inliers suffice."""
    inliers = min(config.sequence_confirm_inliers, config.verifier.min_inliers)
    return Verifier(dataclasses.replace(config.verifier, min_inliers=inliers))


def _rejected(reason: str) -> Verification:
    return Verification(verified=False, inliers=0, matches=0, inlier_ratio=0.0, reason=reason)


def _without_inlier_pairs(candidate: LoopCandidate) -> LoopCandidate:
    """``candidate`` for the closure history: its verification without the per-inlier feature index pairs
    (the result of the keyframe carries them). Kept, they grew the history by up to 8 KB per closure as
    later laps matched more features: ~8 MB over 2000 closures in the soak."""
    slim = dataclasses.replace(candidate.verification, inlier_pairs=np.zeros((0, 2), np.int32))
    return dataclasses.replace(candidate, verification=slim)


def _ms_since(started: float) -> float:
    return (time.perf_counter() - started) * 1000.0


__all__ = [
    "MAX_CLOSURES",
    "QUERY_FILTERS",
    "RecognitionConfig",
    "RecognitionError",
    "RecognitionResult",
    "RecognitionSession",
    "SessionCounters",
    "default_robot_id",
    "default_session_id",
    "read_params_file",
    "shipped_params_file",
]
