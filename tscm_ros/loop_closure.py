"""Loop-closure candidates from a stream of keyframe descriptors and a :class:`PlaceMap`.

Per incoming frame, :class:`LoopClosureDetector`:

1. **Keyframe policy** -- the frame is a keyframe when it is the first one (or the first after time went
   back more than ``TIME_JUMP_BACK_S``: a restarted bag), or when every enabled gate passes: at least
   ``min_interval_s`` since the last keyframe, descriptor change (1 - cosine to the
   last keyframe) at least ``min_descriptor_change``, and travel at least ``min_travel_m`` (only checked
   when both this frame and the last keyframe have a pose). Other frames are dropped.
2. **Query** -- top-``top_k`` places with similarity >= ``similarity_threshold`` (``"auto"``: see
   :attr:`LoopClosureDetector.threshold`). In mapping mode places stamped after
   ``stamp - exclusion_window_s``, places within ``exclusion_keyframes`` keyframes of this one and places
   of this run added less than ``exclusion_travel_m`` of odometry travel ago are excluded (they are "now",
   not revisits). Localisation mode queries a
   loaded map as is (its stamps belong to another session), without exclusions.
3. **NMS** -- within one query, a candidate is dropped when a better one matches a place within
   ``nms_window_keyframes`` keyframe indices (or ``nms_window_s`` seconds) of it.
4. **Consistency** -- two candidates of consecutive keyframes *agree* when their matched places are
   within ``consistency_tolerance_keyframes`` keyframe indices (or ``consistency_tolerance_s`` seconds)
   of each other. A candidate is emitted when it ends a chain of ``consistency_n`` agreeing candidates
   in ``consistency_n`` consecutive keyframes (``consistency_n=1``: every candidate is emitted).
   On fleet maps (places of several robots and sessions) NMS and consistency only compare places of the
   same robot and session: keyframe indices and stamps of different sessions are unrelated.
5. **Mapping mode** adds the keyframe to the map afterwards; localisation mode never adds.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from .config_ranges import check_ranges, ranged
from .placemap import MapFullError, Match, PlaceMap, PlaceMeta, Pose, Utm
from .poses import NS_PER_S

if TYPE_CHECKING:
    from .verification import Verification

TIME_JUMP_BACK_S = 1.0  # a stamp this far behind the last keyframe resets the history
AUTO = "auto"  # similarity_threshold calibrated from the data (see LoopClosureDetector.threshold)
AUTO_CALIBRATION_KEYFRAMES = 50  # top-1 similarities collected before an automatic threshold exists
AUTO_QUANTILE = 0.95


@dataclass(frozen=True)
class LoopClosureConfig:
    """Keyframe, query and filtering settings. Invalid values raise ``ValueError`` naming the field.

    The ranges of the numeric fields (``ranged``) are also those of the node's ROS parameters.
    """

    min_interval_s: float = ranged(0.15, 0.0, 3600.0)
    min_descriptor_change: float = ranged(0.0, 0.0, 2.0)
    min_travel_m: float = ranged(0.2, 0.0, 1.0e4)
    exclusion_window_s: float = ranged(10.0, 0.0, 1.0e6)
    exclusion_travel_m: float = ranged(10.0, 0.0, 1.0e6)
    exclusion_keyframes: int = ranged(0, 0, 1_000_000)
    top_k: int = ranged(5, 1, 100)
    similarity_threshold: float | str = "auto"
    consistency_n: int = ranged(1, 1, 100)
    consistency_tolerance_keyframes: int = ranged(3, 0, 1_000_000)
    consistency_tolerance_s: float = ranged(0.0, 0.0, 1.0e6)
    nms_window_keyframes: int = ranged(0, 0, 1_000_000)
    nms_window_s: float = ranged(0.0, 0.0, 1.0e6)
    mode: Literal["mapping", "localization"] = "mapping"

    def __post_init__(self) -> None:
        non_negative = (
            "min_interval_s", "min_descriptor_change", "min_travel_m", "exclusion_window_s",
            "exclusion_travel_m", "exclusion_keyframes", "consistency_tolerance_keyframes",
            "consistency_tolerance_s", "nms_window_keyframes", "nms_window_s",
        )  # fmt: skip
        for name in non_negative:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"LoopClosureConfig.{name} must be a finite number, got {value!r}")
            if value < 0:
                raise ValueError(f"LoopClosureConfig.{name} must be >= 0, got {value}")
        if self.min_descriptor_change > 2:
            raise ValueError(
                "LoopClosureConfig.min_descriptor_change is 1 - cosine, in [0, 2]; "
                f"got {self.min_descriptor_change}"
            )
        for name in ("top_k", "consistency_n"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"LoopClosureConfig.{name} must be an integer >= 1, got {value!r}")
        for name in ("exclusion_keyframes", "consistency_tolerance_keyframes", "nms_window_keyframes"):
            if not isinstance(getattr(self, name), int):
                raise ValueError(f"LoopClosureConfig.{name} must be an integer, got {getattr(self, name)!r}")
        threshold = self.similarity_threshold
        numeric = isinstance(threshold, (int, float)) and not isinstance(threshold, bool)
        if threshold != AUTO and not (numeric and -1.0 <= threshold <= 1.0):
            raise ValueError(
                "LoopClosureConfig.similarity_threshold is a cosine in [-1, 1] or "
                f"'{AUTO}', got {threshold!r}"
            )
        if self.mode not in ("mapping", "localization"):
            raise ValueError(f"LoopClosureConfig.mode must be 'mapping' or 'localization', got {self.mode!r}")
        check_ranges(self)


@dataclass(frozen=True)
class LoopCandidate:
    """A loop closure between the query keyframe and a map place.

    ``query_id``: the query's place id in mapping mode; in localisation mode (nothing is added) the
    detector's keyframe counter.
    """

    query_id: int
    query_stamp_ns: int
    match_id: int
    match_stamp_ns: int
    similarity: float
    rank: int
    match_pose: Pose | None
    query_pose: Pose | None
    query_keyframe_index: int = -1
    match_keyframe_index: int = -1
    match_frame_id: str = ""
    match_utm: Utm | None = None
    sequence_score: float = math.nan  # NaN: no sequence matching for this candidate
    sequence_length: int = 0  # query keyframes the sequence score used (0: single frame)
    verification: Verification | None = None  # None: not verified (verification off or beyond verify_top_k)
    match_robot_id: str = ""  # robot and session that recorded the matched place (fleet maps; "" otherwise)
    match_session_id: str = ""

    @property
    def verified(self) -> bool:
        return self.verification is not None and self.verification.verified

    @property
    def inliers(self) -> int:
        return self.verification.inliers if self.verification is not None else 0


@dataclass(frozen=True)
class KeyframeResult:
    """What :meth:`LoopClosureDetector.process` did with one frame."""

    is_keyframe: bool
    place_id: int | None
    candidates: list[LoopCandidate] = field(default_factory=list)
    skipped_reason: str = ""  # why the frame is not a keyframe ("min_interval_s", ...)


@dataclass
class _ChainEntry:
    keyframe_index: int
    stamp_ns: int
    length: int
    identity: tuple[str, str] = ("", "")


def _identity(match: Match) -> tuple[str, str]:
    """(robot, session) of a match: set by fleet stores (FleetMatch), ("", "") for a plain PlaceMap."""
    return getattr(match, "robot_id", ""), getattr(match, "session_id", "")


class LoopClosureDetector:
    """Keyframe selection + loop-closure queries against ``place_map``. Thread-safe (one lock).

    :meth:`process` runs every step for one frame. The recognition session calls the steps one by one
    (:meth:`keyframe_gate`, :meth:`retrieve`, :meth:`select`, :meth:`commit`) so that it can verify and
    sequence-match between them.
    """

    def __init__(self, place_map: PlaceMap, config: LoopClosureConfig | None = None) -> None:
        self.place_map = place_map
        self.config = config or LoopClosureConfig()
        self._lock = threading.RLock()
        self._last_descriptor: np.ndarray | None = None
        self._last_stamp_ns: int | None = None
        self._last_pose: Pose | None = None
        self._keyframe_count = 0
        self._previous_chain: list[_ChainEntry] = []
        self.time_jumps = 0
        self.refused_full = 0  # keyframes not added because the map is at its max_places budget
        self.verification_gates = False  # set by the session: an automatic threshold then filters nothing
        self._travel_m = 0.0  # odometry travel of this run, summed over keyframes
        self._run_place_ids: list[int] = []  # places added in this run with a pose ...
        self._run_travel_m: list[float] = []  # ... and the travel at which they were added
        self._calibration: list[float] = []  # top-1 similarities for the automatic threshold
        self._auto_threshold: float | None = None

    @property
    def keyframe_count(self) -> int:
        return self._keyframe_count

    @property
    def threshold(self) -> float:
        """The similarity threshold in force. A number when configured; with ``"auto"``: -1 (no filter)
        when verification is the gate, else +inf until ``AUTO_CALIBRATION_KEYFRAMES`` keyframes had a
        candidate, then the ``AUTO_QUANTILE`` of their top-1 similarities -- early keyframes mostly see new
        places, so only matches more similar than ~95 % of those count (no ground truth needed)."""
        configured = self.config.similarity_threshold
        if configured != AUTO:
            return float(configured)
        if self.verification_gates:
            return -1.0
        return self._auto_threshold if self._auto_threshold is not None else math.inf

    def reset(self) -> None:
        """Forget the keyframe and consistency history (the map is untouched)."""
        with self._lock:
            self._last_descriptor = self._last_stamp_ns = self._last_pose = None
            self._previous_chain = []

    def process(
        self,
        descriptor: np.ndarray,
        stamp_ns: int,
        *,
        frame_id: str = "",
        source: str = "",
        pose: Pose | None = None,
        utm: Utm | None = None,
    ) -> KeyframeResult:
        """Handle one frame's descriptor (``(D,)``) stamped ``stamp_ns`` (int ns): every step in order."""
        vector = self.place_map.normalize(descriptor)
        stamp_ns = int(stamp_ns)
        with self._lock:
            reason = self.keyframe_gate(vector, stamp_ns, pose)
            if reason:
                return KeyframeResult(is_keyframe=False, place_id=None, skipped_reason=reason)
            keyframe_index, matches = self.retrieve(vector, stamp_ns, self.config.top_k, pose)
            matches = self.select(matches)
            place_id = self.commit(
                vector, stamp_ns, keyframe_index, frame_id=frame_id, source=source, pose=pose, utm=utm
            )
            candidates = self.candidates(matches, place_id, keyframe_index, stamp_ns, pose)
            return KeyframeResult(is_keyframe=True, place_id=place_id, candidates=candidates)

    # ------------------------------------------------------------------ steps
    def interval_gate(self, stamp_ns: int) -> str:
        """'' when ``min_interval_s`` lets a frame stamped ``stamp_ns`` through, else ``"min_interval_s"``.

        The one place that handles time going backwards: a stamp more than ``TIME_JUMP_BACK_S`` before the
        last keyframe (a bag restarted, a simulation reset) resets the keyframe and consistency history and
        counts a time jump; smaller steps back are let through without a reset.
        """
        with self._lock:
            last = self._last_stamp_ns
            if last is None:
                return ""
            elapsed_ns = stamp_ns - last
            if elapsed_ns < -TIME_JUMP_BACK_S * NS_PER_S:
                self.reset()
                self.time_jumps += 1
                return ""
            if 0 <= elapsed_ns < self.config.min_interval_s * NS_PER_S:
                return "min_interval_s"
            return ""

    def keyframe_gate(self, vector: np.ndarray, stamp_ns: int, pose: Pose | None) -> str:
        """'' when the frame is a keyframe, else the name of the gate that rejected it."""
        cfg = self.config
        with self._lock:
            reason = self.interval_gate(stamp_ns)
            if reason or self._last_descriptor is None:
                return reason
            if cfg.min_descriptor_change > 0:
                change = 1.0 - float(np.dot(vector, self._last_descriptor))
                if change < cfg.min_descriptor_change:
                    return "min_descriptor_change"
            if (
                cfg.min_travel_m > 0
                and pose is not None
                and self._last_pose is not None
                and pose.distance_to(self._last_pose) < cfg.min_travel_m
            ):
                return "min_travel_m"
            return ""

    def retrieve(
        self,
        vector: np.ndarray,
        stamp_ns: int,
        k: int,
        pose: Pose | None = None,
        filters: Mapping[str, Any] | None = None,
    ) -> tuple[int, list[Match]]:
        """(keyframe index of this frame, its top-``k`` places) -- mapping-mode exclusions, no threshold.

        Mapping mode excludes places stamped within ``exclusion_window_s`` before the query, the last
        ``exclusion_keyframes`` keyframes and, when this keyframe has a pose, the places of this run added
        less than ``exclusion_travel_m`` of odometry travel ago (a robot standing still never closes a loop
        with itself, however long it waits). ``filters``: extra keyword arguments of the store's search
        (robot/session filters of a fleet store).
        """
        cfg = self.config
        with self._lock:
            mapping = cfg.mode == "mapping"
            keyframe_index = self.place_map.next_keyframe_index if mapping else self._keyframe_count
            matches = self.place_map.search(
                vector, k,
                query_stamp_ns=stamp_ns if mapping else None,
                exclusion_window_s=cfg.exclusion_window_s,
                query_keyframe_index=keyframe_index if mapping else None,
                exclusion_keyframes=cfg.exclusion_keyframes if mapping else None,
                exclude_ids=self._recent_travel(pose) if mapping else None,
                **(filters or {}),
            )  # fmt: skip
            if matches and cfg.similarity_threshold == AUTO and self._auto_threshold is None:
                self._calibration.append(matches[0].similarity)
                if len(self._calibration) >= AUTO_CALIBRATION_KEYFRAMES:
                    self._auto_threshold = float(np.quantile(self._calibration, AUTO_QUANTILE))
            return keyframe_index, matches

    def _travel_to(self, pose: Pose | None) -> float:
        """This run's odometry travel if the next keyframe is at ``pose``."""
        if pose is None or self._last_pose is None:
            return self._travel_m
        return self._travel_m + pose.distance_to(self._last_pose)

    def _recent_travel(self, pose: Pose | None) -> list[int] | None:
        if pose is None or not self._run_place_ids or self.config.exclusion_travel_m <= 0:
            return None
        travel = np.asarray(self._run_travel_m)
        first = int(np.searchsorted(travel, self._travel_to(pose) - self.config.exclusion_travel_m, "right"))
        return self._run_place_ids[first:] or None

    def select(self, matches: list[Match]) -> list[Match]:
        """The single-frame rule: similarity threshold, NMS, consistency over consecutive keyframes."""
        with self._lock:
            threshold = self.threshold
            kept = [m for m in matches[: self.config.top_k] if m.similarity >= threshold]
            return self._consistent(self._non_maximum_suppression(kept))

    def commit(
        self,
        vector: np.ndarray,
        stamp_ns: int,
        keyframe_index: int,
        *,
        frame_id: str = "",
        source: str = "",
        pose: Pose | None = None,
        utm: Utm | None = None,
        features: bytes | None = None,
        thumbnail: bytes | None = None,
    ) -> int | None:
        """End the keyframe: add it to the map in mapping mode (returns its place id) and remember it.

        A map at its ``max_places`` budget refuses the add (None, counted in :attr:`refused_full`)."""
        with self._lock:
            place_id = None
            if self.config.mode == "mapping":
                meta = PlaceMeta(stamp_ns=stamp_ns, frame_id=frame_id, source=source,
                                 keyframe_index=keyframe_index, pose=pose, utm=utm)  # fmt: skip
                extra = {}
                if features is not None or thumbnail is not None:
                    extra = {"features": [features], "thumbnails": [thumbnail]}
                try:
                    place_id = int(self.place_map.add(vector[None, :], [meta], **extra)[0])
                except MapFullError:  # at the budget: the keyframe is still matched, just not added
                    self.refused_full += 1
            self._travel_m = self._travel_to(pose)
            if place_id is not None and pose is not None:
                self._run_place_ids.append(place_id)
                self._run_travel_m.append(self._travel_m)
            self._last_descriptor, self._last_stamp_ns = vector, stamp_ns
            self._last_pose = pose or self._last_pose
            self._keyframe_count += 1
            return place_id

    @staticmethod
    def candidates(
        matches: list[Match], place_id: int | None, keyframe_index: int, stamp_ns: int, pose: Pose | None
    ) -> list[LoopCandidate]:
        """LoopCandidate records of ``matches`` (ranked in the given order) for the query keyframe."""
        query_id = place_id if place_id is not None else keyframe_index
        return [
            LoopCandidate(
                query_id=query_id,
                query_stamp_ns=stamp_ns,
                match_id=m.place_id,
                match_stamp_ns=m.meta.stamp_ns,
                similarity=m.similarity,
                rank=rank,
                match_pose=m.meta.pose,
                query_pose=pose,
                query_keyframe_index=keyframe_index,
                match_keyframe_index=m.meta.keyframe_index,
                match_frame_id=m.meta.frame_id,
                match_utm=m.meta.utm,
                match_robot_id=getattr(m, "robot_id", ""),
                match_session_id=getattr(m, "session_id", ""),
            )  # fmt: skip
            for rank, m in enumerate(matches)
        ]

    def _close(self, a_kf: int, a_ns: int, b_kf: int, b_ns: int, window_kf: int, window_s: float) -> bool:
        if abs(a_kf - b_kf) <= window_kf:
            return True
        return window_s > 0 and abs(a_ns - b_ns) <= window_s * NS_PER_S

    def _non_maximum_suppression(self, matches: list) -> list:
        cfg = self.config
        if cfg.nms_window_keyframes == 0 and cfg.nms_window_s == 0:
            return matches
        kept: list = []
        for match in matches:  # best first
            meta = match.meta
            if not any(
                _identity(k) == _identity(match)
                and self._close(meta.keyframe_index, meta.stamp_ns, k.meta.keyframe_index, k.meta.stamp_ns,
                                cfg.nms_window_keyframes, cfg.nms_window_s)
                for k in kept
            ):  # fmt: skip
                kept.append(match)
        return kept

    def _consistent(self, matches: list) -> list:
        """Extend agreement chains with this keyframe's matches; return those with a long enough chain."""
        cfg = self.config
        chain = []
        for match in matches:
            meta = match.meta
            identity = _identity(match)
            length = 1 + max(
                (
                    prev.length
                    for prev in self._previous_chain
                    if prev.identity == identity
                    and self._close(meta.keyframe_index, meta.stamp_ns, prev.keyframe_index, prev.stamp_ns,
                                    cfg.consistency_tolerance_keyframes, cfg.consistency_tolerance_s)
                ),
                default=0,
            )  # fmt: skip
            chain.append(_ChainEntry(meta.keyframe_index, meta.stamp_ns, length, identity))
        self._previous_chain = chain
        return [m for m, entry in zip(matches, chain, strict=True) if entry.length >= cfg.consistency_n]
