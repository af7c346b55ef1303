"""Sequence matching of loop closures along keyframe trajectories (SeqSLAM-style), ROS-free.

A :class:`SequenceMatcher` is fed, per query keyframe, that keyframe's top-K retrieval result (place ids,
the map keyframe index of each place, similarities), already filtered by the caller's exclusions. It keeps
the last ``length`` results and running statistics of the map keyframes they contained -- never the map
itself -- and scores every place of the current top-K as the end of a straight line through
(query keyframe, map keyframe index) space.

Scoring, per query keyframe ``j`` of the window and map keyframe ``k``:

1. **Query contrast** -- ``z = (s - mean) / std`` over the query's own top-K similarities. A map keyframe
   not in that top-K gets the query's **floor** ``min(z) - missing_penalty`` (below every retrieved entry,
   as its true similarity is; ``-missing_penalty`` when the query has fewer than 2 results).
2. **Place contrast** (``place_normalisation``) -- a map keyframe ``k`` that is retrieved by many queries
   (a "hub", similar to everything) would attract lines. Its values are re-standardised by its own
   statistics over every query keyframe seen so far (the current one included; a query that did not
   retrieve ``k`` counts with its floor; ``place_prior_count`` pseudo-queries with mean 0 / variance 1
   tame young statistics): ``mu_0 + (z - mu_k) * sd_0 / sd_k`` with standard deviations floored at 1,
   where ``(mu_0, sd_0)`` are the statistics of a never-retrieved map keyframe. A map keyframe retrieved
   no more than chance keeps its ``z`` (scores stay on the query-contrast scale); floors are unchanged.
3. **Lines** -- for a candidate at map keyframe ``m`` and a past query keyframe ``dq = q_t - q_j`` query
   keyframes ago, the line of speed ``v`` expects map keyframe ``m - v * dq``; the query contributes the
   best value of its top-K map keyframes within ``tolerance_keyframes`` of that, else its floor. Speeds
   (map keyframes per query keyframe) cover ``[min_speed, max_speed]`` on a grid through 1 (see
   ``speed_steps``); with ``reverse`` also their negatives: the map route traversed backwards.
4. **Score** -- ``mean over the window's n query keyframes (the current one included) - speed_penalty *
   |log2 |v||`` for the best ``v``; the penalty is a prior for equal speeds that keeps lines from
   drifting through ambiguous stretches. ``full`` when ``n == length``; ``accepted`` = ``full and
   score >= min_score``.

Odometry: with ``map_spacing_m > 0`` (the map's distance between consecutive keyframes) and ``travel_m``
given for every keyframe of the window but the oldest, the query axis becomes distance travelled in map
keyframes (``sum(travel_m) / map_spacing_m``) instead of keyframe count, and speeds only cover the
odometry scale error ``[1 / (1 + odometry_tolerance), 1 + odometry_tolerance]`` (``reverse`` adds the
negatives). Otherwise (no spacing, or a keyframe without ``travel_m``) the keyframe axis is used.

Exclusions: the caller filters each top-K as for single frames (e.g. :meth:`PlaceMap.search_arrays` with
the mapping-mode time / keyframe exclusions) before :meth:`SequenceMatcher.update`; excluded places
count as not retrieved. Places of another session are fine as long as their keyframe indices continue
along their own route (lines are straight in map keyframe index).

Breaks: the window is cleared (the current keyframe starts a new sequence; place statistics are kept)
when time goes backwards or the keyframe index does not increase (bag loop / restart), when the keyframe
index advances by more than ``max_keyframe_gap``, or when more than ``max_gap_s`` seconds passed since the
previous keyframe (0 disables that rule): across such a gap the map position cannot be extrapolated.

Cost per keyframe: ``O(K * K * (length - 1))`` for the speed cone of every stored entry plus one update
per (candidate, speed, entry) that lies on a line; independent of the map size. Place statistics hold
one row per map keyframe ever retrieved.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

import numpy as np

from .config_ranges import check_ranges, ranged
from .poses import NS_PER_S as _NS_PER_S

_MAX_AUTO_SPEED_STEPS = 64
_MIN_PLACE_STD = 1.0


@dataclass(frozen=True)
class SequenceConfig:
    """Sequence matching settings (see the module docstring). Invalid values raise ``ValueError``.

    ``length``: query keyframes per sequence (``L``); 0 = off: scores are the single-frame query-contrast
    ``z`` (the similarity ranking), ``full`` is always true.
    ``candidates_per_keyframe``: the top-K the caller retrieves per keyframe (longer inputs are cut).
    ``speed_steps``: 0 = a grid through speed 1 whose neighbouring lines' far ends are
    ``tolerance_keyframes`` apart, plus the range ends (at most 64 speeds); N = N speeds evenly spaced.
    """

    length: int = ranged(0, 0, 1000)
    min_speed: float = ranged(0.5, 0.05, 20.0)
    max_speed: float = ranged(2.0, 0.05, 20.0)
    speed_steps: int = 0
    reverse: bool = False
    candidates_per_keyframe: int = 50
    tolerance_keyframes: float = 1.0
    missing_penalty: float = 0.5
    speed_penalty: float = 0.3
    place_normalisation: bool = True
    place_prior_count: float = 5.0
    min_score: float = 1.0
    max_keyframe_gap: int = 3
    max_gap_s: float = 30.0
    map_spacing_m: float = 0.0
    odometry_tolerance: float = 0.25

    def __post_init__(self) -> None:
        for name in ("length", "speed_steps", "candidates_per_keyframe", "max_keyframe_gap"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"SequenceConfig.{name} must be an integer, got {value!r}")
            if value < (1 if name in ("candidates_per_keyframe", "max_keyframe_gap") else 0):
                raise ValueError(f"SequenceConfig.{name} is out of range, got {value}")
        numbers = (
            "min_speed", "max_speed", "tolerance_keyframes", "missing_penalty", "speed_penalty",
            "place_prior_count", "min_score", "max_gap_s", "map_spacing_m", "odometry_tolerance",
        )  # fmt: skip
        for name in numbers:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"SequenceConfig.{name} must be a finite number, got {value!r}")
            if name != "min_score" and value < 0:
                raise ValueError(f"SequenceConfig.{name} must be >= 0, got {value}")
        if self.min_speed <= 0:
            raise ValueError(f"SequenceConfig.min_speed must be > 0, got {self.min_speed}")
        if self.max_speed < self.min_speed:
            raise ValueError(
                f"SequenceConfig.max_speed must be >= min_speed ({self.min_speed}), got {self.max_speed}"
            )
        for name in ("reverse", "place_normalisation"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"SequenceConfig.{name} must be a bool, got {getattr(self, name)!r}")
        check_ranges(self)

    @property
    def window(self) -> int:
        """Query keyframes scored per sequence (``length``, or 1 when off)."""
        return max(self.length, 1)

    def speeds(self, odometry: bool = False) -> np.ndarray:
        """The slopes searched, ascending (with ``reverse``, the negated ones first)."""
        low, high = self.min_speed, self.max_speed
        if odometry:
            low, high = 1.0 / (1.0 + self.odometry_tolerance), 1.0 + self.odometry_tolerance
        if self.speed_steps:
            steps = self.speed_steps
            speeds = np.linspace(low, high, steps) if steps > 1 else np.array([math.sqrt(low * high)])
        else:  # a grid through speed 1 (when in range), plus both ends
            step = max(self.tolerance_keyframes, 0.25) / max(self.window - 1, 1)
            step = max(step, (high - low) / (_MAX_AUTO_SPEED_STEPS - 2))
            anchor = 1.0 if low <= 1.0 <= high else low
            first, last = math.ceil((low - anchor) / step - 1e-9), math.floor((high - anchor) / step + 1e-9)
            grid = np.clip(anchor + step * np.arange(first, last + 1), low, high)
            speeds = np.unique(np.round(np.concatenate([[low], grid, [high]]), 12))
        if self.reverse:
            speeds = np.concatenate([-speeds[::-1], speeds])
        return speeds


@dataclass(frozen=True)
class SequenceScore:
    """The sequence ending at ``place_id`` for the current query keyframe.

    ``keyframe_index``: the place's map keyframe index. ``score``: see the module docstring. ``length``:
    query keyframes used. ``speed``: the best line's slope in map keyframes per query keyframe (negative:
    reverse; 1.0 for a single keyframe). ``full``: ``length == config.length``. ``hits``: query keyframes
    whose top-K had a map keyframe on that line. ``similarity``: the place's single-frame similarity.
    ``accepted``: ``full`` and ``score >= config.min_score``.
    """

    place_id: int
    keyframe_index: int
    score: float
    length: int
    speed: float
    full: bool
    similarity: float
    hits: int
    accepted: bool


@dataclass
class _Entry:
    keyframe_index: int
    stamp_ns: int
    travel_m: float  # since the previous keyframe; NaN when unknown
    keys: np.ndarray  # sorted unique map keyframe indices of the top-K (int64)
    values: np.ndarray  # best query-contrast z per key
    slots: np.ndarray  # rows of the keys in the place statistics
    floor: float


class _PlaceStats:
    """Running per-map-keyframe sums of the query-contrast values (floors for queries that missed it)."""

    def __init__(self) -> None:
        self.slots: dict[int, int] = {}
        self.sums = np.zeros((0, 2))  # per slot: sum(z - floor), sum(z^2 - floor^2) over queries that hit
        self.queries = 0
        self.floor_sums = np.zeros(2)  # sum(floor), sum(floor^2) over all queries

    def slots_of(self, keys: np.ndarray) -> np.ndarray:
        slots = np.array([self.slots.setdefault(int(k), len(self.slots)) for k in keys], np.int64)
        if len(self.slots) > len(self.sums):
            grown = np.zeros((max(2 * len(self.sums), len(self.slots), 64), 2))
            grown[: len(self.sums)] = self.sums
            self.sums = grown
        return slots

    def add(self, slots: np.ndarray, values: np.ndarray, floor: float) -> None:
        np.add.at(self.sums, slots, np.stack([values - floor, values**2 - floor**2], axis=1))
        self.queries += 1
        self.floor_sums += (floor, floor**2)

    def moments(self, slots: np.ndarray | None, prior: float) -> tuple[np.ndarray, np.ndarray]:
        """(mean, std) of the given slots; ``None``: of a never-retrieved map keyframe."""
        extra = np.zeros((1, 2)) if slots is None else self.sums[slots]
        count = self.queries + prior
        mean = (self.floor_sums[0] + extra[:, 0]) / count
        square = (self.floor_sums[1] + extra[:, 1] + prior) / count
        return mean, np.maximum(np.sqrt(np.maximum(square - mean**2, 0.0)), _MIN_PLACE_STD)


class SequenceMatcher:
    """Scores loop-closure candidates over the last ``config.length`` query keyframes. Not thread-safe."""

    def __init__(self, config: SequenceConfig | None = None) -> None:
        self.config = config or SequenceConfig()
        self._history: deque[_Entry] = deque(maxlen=self.config.window)
        self._stats = _PlaceStats()
        self.last_break = ""  # why the window was last cleared: "restart", "keyframe_gap", "time_gap"

    @property
    def history_length(self) -> int:
        """Query keyframes in the window (the current one included after :meth:`update`)."""
        return len(self._history)

    def reset(self) -> None:
        """Forget every query keyframe and the place statistics (a new session)."""
        self._history.clear()
        self._stats = _PlaceStats()
        self.last_break = ""

    def update(
        self,
        *,
        keyframe_index: int,
        stamp_ns: int,
        place_ids: np.ndarray,
        place_keyframes: np.ndarray,
        similarities: np.ndarray,
        travel_m: float | None = None,
    ) -> list[SequenceScore]:
        """Add one query keyframe's top-K; score its places as sequence ends, best score first.

        ``place_ids`` / ``place_keyframes`` / ``similarities``: 1-D, one entry per retrieved place, the
        caller's exclusions already applied (entries with ``place_id < 0`` or a non-finite similarity are
        padding and ignored). ``travel_m``: distance travelled since the previous query keyframe.
        """
        cfg = self.config
        ids = np.asarray(place_ids, np.int64).reshape(-1)
        keyframes = np.asarray(place_keyframes, np.int64).reshape(-1)
        sims = np.asarray(similarities, np.float64).reshape(-1)
        if not len(ids) == len(keyframes) == len(sims):
            raise ValueError(
                "place_ids, place_keyframes and similarities differ in length: "
                f"{len(ids)}, {len(keyframes)}, {len(sims)}"
            )
        valid = (ids >= 0) & np.isfinite(sims)
        order = np.argsort(-sims[valid], kind="stable")[: cfg.candidates_per_keyframe]
        ids, keyframes, sims = ids[valid][order], keyframes[valid][order], sims[valid][order]
        z, floor = self._query_contrast(sims)
        keyframe_index, stamp_ns = int(keyframe_index), int(stamp_ns)
        self._check_continuity(keyframe_index, stamp_ns)
        keys, inverse = np.unique(keyframes, return_inverse=True)
        values = np.full(len(keys), -np.inf)
        np.maximum.at(values, inverse, z)
        slots = self._stats.slots_of(keys)
        self._stats.add(slots, values, floor)
        travel = math.nan if travel_m is None else float(travel_m)
        self._history.append(_Entry(keyframe_index, stamp_ns, travel, keys, values, slots, floor))
        if len(ids) == 0:
            return []
        if cfg.length == 0:  # off: the single-frame ranking
            return self._score(ids, keyframes, sims, z)
        return self._score(ids, keyframes, sims, self._place_contrast(z, slots[inverse]))

    # ------------------------------------------------------------------ steps
    def _query_contrast(self, sims: np.ndarray) -> tuple[np.ndarray, float]:
        penalty = self.config.missing_penalty
        std = float(sims.std()) if len(sims) > 1 else 0.0
        if std < 1e-12:
            return np.zeros(len(sims)), -penalty
        z = (sims - sims.mean()) / std
        return z, float(z.min()) - penalty

    def _place_contrast(self, values: np.ndarray, slots: np.ndarray) -> np.ndarray:
        """Map keyframes' values re-standardised by their own statistics, on the query-contrast scale."""
        if not self.config.place_normalisation:
            return values
        prior = self.config.place_prior_count
        mean, std = self._stats.moments(slots, prior)
        mean0, std0 = self._stats.moments(None, prior)
        return mean0 + (values - mean) * (std0 / std)

    def _check_continuity(self, keyframe_index: int, stamp_ns: int) -> None:
        if not self._history:
            return
        cfg, last = self.config, self._history[-1]
        reason = ""
        if keyframe_index <= last.keyframe_index or stamp_ns < last.stamp_ns:
            reason = "restart"
        elif keyframe_index - last.keyframe_index > cfg.max_keyframe_gap:
            reason = "keyframe_gap"
        elif cfg.max_gap_s > 0 and stamp_ns - last.stamp_ns > cfg.max_gap_s * _NS_PER_S:
            reason = "time_gap"
        if reason:
            self._history.clear()
            self.last_break = reason

    def _offsets(self, entries: list[_Entry]) -> tuple[np.ndarray, bool]:
        """Query-axis distance from every past entry (oldest first) to the current one; odometry or not."""
        cfg = self.config
        travel = np.array([e.travel_m for e in entries[1:]], np.float64)
        if cfg.map_spacing_m > 0 and np.all(np.isfinite(travel)) and np.all(travel >= 0):
            return np.cumsum(travel[::-1])[::-1] / cfg.map_spacing_m, True
        current = entries[-1].keyframe_index
        return np.array([current - e.keyframe_index for e in entries[:-1]], np.float64), False

    def _score(self, ids: np.ndarray, keyframes: np.ndarray, sims: np.ndarray, own: np.ndarray) -> list:
        cfg = self.config
        entries = list(self._history)
        n, past = len(entries), entries[:-1]
        totals, hits, best_speed = own, np.ones(len(ids), np.int64), np.ones(len(ids))
        if past:
            offsets, odometry = self._offsets(entries)
            speeds = cfg.speeds(odometry)
            value, found = self._lookup(past, offsets, keyframes, speeds)  # (C, S, H)
            sums = value.sum(axis=2) + own[:, None] - n * cfg.speed_penalty * np.abs(np.log2(np.abs(speeds)))
            prefer = np.argsort(np.abs(np.log(np.abs(speeds))), kind="stable")  # ties: speed closest to 1
            best = prefer[np.argmax(sums[:, prefer], axis=1)]
            rows = np.arange(len(ids))
            totals, hits, best_speed = sums[rows, best], found[rows, best].sum(axis=1) + 1, speeds[best]
            if odometry:  # report map keyframes per query keyframe
                best_speed = best_speed * offsets[0] / (entries[-1].keyframe_index - past[0].keyframe_index)
        scores = totals / n
        full = n == cfg.window
        return [
            SequenceScore(
                place_id=int(ids[i]),
                keyframe_index=int(keyframes[i]),
                score=float(scores[i]),
                length=n,
                speed=float(best_speed[i]),
                full=full,
                similarity=float(sims[i]),
                hits=int(hits[i]),
                accepted=bool(full and scores[i] >= cfg.min_score),
            )
            for i in np.argsort(-scores, kind="stable")
        ]

    def _lookup(
        self, past: list[_Entry], offsets: np.ndarray, keyframes: np.ndarray, speeds: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Per (candidate, speed, past entry): the best value of the entry's map keyframes on the line
        (within ``tolerance_keyframes``), else the entry's floor; and whether one was found.

        Instead of probing every line, each stored map keyframe ``k`` of entry ``h`` is mapped to the
        speeds whose line from candidate ``m`` passes within the tolerance of it: ``|m - v * dq_h - k| <=
        tol``, i.e. ``|v - (m - k) / dq_h| <= tol / dq_h``; only keyframes inside the speed cone are touched.
        """
        tol = self.config.tolerance_keyframes
        floors = np.array([e.floor for e in past])
        shape = (len(keyframes), len(speeds), len(past))
        sizes = [len(e.keys) for e in past]
        if not sum(sizes):
            return np.broadcast_to(floors, shape).copy(), np.zeros(shape, bool)
        owner = np.repeat(np.arange(len(past)), sizes)
        keys = np.concatenate([e.keys for e in past]).astype(np.float64)
        values = self._place_contrast(
            np.concatenate([e.values for e in past]), np.concatenate([e.slots for e in past])
        )
        dq = offsets[owner]
        gap = keyframes[:, None].astype(np.float64) - keys[None, :]  # (C, M): map keyframes back from m
        # the speed cone: speeds[0] * dq - tol <= gap <= speeds[-1] * dq + tol (dq == 0: |gap| <= tol)
        cand, item = np.nonzero((gap >= speeds[0] * dq - tol) & (gap <= speeds[-1] * dq + tol))
        gap, dq_item = gap[cand, item], dq[item]
        moving = dq_item > 1e-9
        safe = np.where(moving, dq_item, 1.0)
        low = np.where(moving, np.searchsorted(speeds, (gap - tol) / safe, side="left"), 0)
        high = np.where(moving, np.searchsorted(speeds, (gap + tol) / safe, side="right"), len(speeds))
        count = high - low
        within = np.arange(int(count.sum())) - np.repeat(np.cumsum(count) - count, count)  # 0.. per run
        speed_index = np.repeat(low, count) + within
        flat = (np.repeat(cand, count) * len(speeds) + speed_index) * len(past)
        flat += np.repeat(owner[item], count)
        best = np.full(math.prod(shape), -np.inf)
        np.maximum.at(best, flat, np.repeat(values[item], count))
        best = best.reshape(shape)
        found = np.isfinite(best)
        return np.where(found, best, floors), found
