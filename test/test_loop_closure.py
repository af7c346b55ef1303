"""LoopClosureDetector: keyframe policy, exclusions, threshold, consistency, NMS, modes, candidate fields."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from tscm_ros.loop_closure import LoopCandidate, LoopClosureConfig, LoopClosureDetector
from tscm_ros.placemap import PlaceMap, PlaceMeta, Pose

DIM = 64
S = 1_000_000_000  # ns per second


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def places() -> np.ndarray:
    """40 well separated place descriptors."""
    return unit(np.random.default_rng(0).standard_normal((40, DIM)))


def with_cosine(vector: np.ndarray, cosine: float, seed: int) -> np.ndarray:
    """A unit vector whose cosine with ``vector`` (unit) is exactly ``cosine``."""
    r = np.random.default_rng(seed).standard_normal(vector.shape)
    r = unit(r - (r @ vector) * vector)
    return unit(cosine * vector + np.sqrt(1 - cosine**2) * r)


def noisy(vector: np.ndarray, change: float, seed: int) -> np.ndarray:
    """A revisit-like copy of ``vector`` at cosine ``1 - change``."""
    return with_cosine(vector, 1.0 - change, seed)


# The mechanism tests start from no keyframe gates, a fixed threshold and a time-only exclusion; the
# shipped defaults (gates, "auto", travel exclusion) have tests of their own below.
MECHANISM = {
    "min_interval_s": 0.0, "min_travel_m": 0.0, "exclusion_window_s": 30.0, "exclusion_travel_m": 0.0,
    "similarity_threshold": 0.8,
}  # fmt: skip


def detector(**config) -> LoopClosureDetector:
    return LoopClosureDetector(PlaceMap.create(DIM), LoopClosureConfig(**{**MECHANISM, **config}))


def test_config_validation() -> None:
    for bad in (
        {"min_interval_s": -1.0},
        {"min_travel_m": float("nan")},
        {"top_k": 0},
        {"consistency_n": 1.5},
        {"similarity_threshold": 1.5},
        {"mode": "slam"},
        {"exclusion_keyframes": 2.5},
        {"min_descriptor_change": 3.0},
    ):
        field = next(iter(bad))
        with pytest.raises(ValueError, match=field if field != "mode" else "mode"):
            LoopClosureConfig(**bad)


def test_first_frame_is_a_keyframe_and_all_frames_without_gates(places: np.ndarray) -> None:
    lcd = detector()
    results = [lcd.process(places[i], i * S // 10) for i in range(5)]
    assert all(r.is_keyframe for r in results)
    assert [r.place_id for r in results] == [0, 1, 2, 3, 4]
    assert len(lcd.place_map) == 5


def test_min_interval(places: np.ndarray) -> None:
    lcd = detector(min_interval_s=1.0)
    stamps = [0.0, 0.5, 1.0, 1.6, 2.2]
    flags = [lcd.process(places[i], int(t * S)).is_keyframe for i, t in enumerate(stamps)]
    assert flags == [True, False, True, False, True]
    assert lcd.process(places[9], int(2.3 * S)).skipped_reason == "min_interval_s"


def test_min_descriptor_change(places: np.ndarray) -> None:
    lcd = detector(min_descriptor_change=0.2)
    a, b = places[0], places[1]
    assert lcd.process(a, 0).is_keyframe
    result = lcd.process(noisy(a, 0.05, 1), S)  # 1 - cos is about 0.03
    assert not result.is_keyframe and result.skipped_reason == "min_descriptor_change"
    assert lcd.process(b, 2 * S).is_keyframe  # random unit vectors: 1 - cos is about 1


def test_min_travel_needs_poses(places: np.ndarray) -> None:
    lcd = detector(min_travel_m=1.0)
    flags = [lcd.process(places[i], i * S, pose=Pose((0.3 * i, 0.0, 0.0))).is_keyframe for i in range(9)]
    # positions 0, .3, .6, .9, 1.2, 1.5, 1.8, 2.1, 2.4 -> keyframes at 0, 1.2 and 2.4 m
    assert flags == [True, False, False, False, True, False, False, False, True]
    # without a pose the travel gate cannot be evaluated and does not block
    assert lcd.process(places[20], 20 * S).is_keyframe


def revisit_run(lcd: LoopClosureDetector, places: np.ndarray, revisit_start_s: float) -> list:
    """Visit places 0..19 at 1 Hz, then revisit 5..14 (noisy) starting at ``revisit_start_s``."""
    for i in range(20):
        lcd.process(places[i], i * S, pose=Pose((float(i), 0.0, 0.0)))
    return [
        lcd.process(
            noisy(places[5 + j], 0.1, 100 + j), int((revisit_start_s + j) * S), pose=Pose((5.0 + j, 0.5, 0.0))
        )
        for j in range(10)
    ]


def test_revisits_give_candidates_with_all_fields(places: np.ndarray) -> None:
    lcd = detector(similarity_threshold=0.8, exclusion_window_s=30.0, top_k=3)
    results = revisit_run(lcd, places, revisit_start_s=100.0)
    for j, result in enumerate(results):
        assert result.is_keyframe and result.place_id == 20 + j
        assert result.candidates, f"revisit {j} found nothing"
        best = result.candidates[0]
        assert isinstance(best, LoopCandidate)
        assert best.rank == 0 and best.match_id == 5 + j
        assert best.query_id == result.place_id and best.query_keyframe_index == 20 + j
        assert best.query_stamp_ns == int((100 + j) * S) and best.match_stamp_ns == (5 + j) * S
        assert best.match_keyframe_index == 5 + j
        assert best.match_pose == Pose((5.0 + j, 0.0, 0.0)) and best.query_pose == Pose((5.0 + j, 0.5, 0.0))
        assert 0.8 <= best.similarity <= 1.0
        assert [c.rank for c in result.candidates] == list(range(len(result.candidates)))


def test_exclusion_window_blocks_recent_places(places: np.ndarray) -> None:
    # revisits start at t=20 s, only 1..15 s after the original visits: a 30 s window hides them all
    lcd = detector(similarity_threshold=0.8, exclusion_window_s=30.0)
    assert all(not r.candidates for r in revisit_run(lcd, places, revisit_start_s=20.0))
    # a 10 s window: place 5+j (stamp 5+j s) is visible from query time 20+j s (15 s gap)
    lcd = detector(similarity_threshold=0.8, exclusion_window_s=10.0)
    assert all(
        r.candidates and r.candidates[0].match_id == 5 + j
        for j, r in enumerate(revisit_run(lcd, places, 20.0))
    )


def test_exclusion_keyframes(places: np.ndarray) -> None:
    lcd = detector(similarity_threshold=0.5, exclusion_window_s=0.0, exclusion_keyframes=3)
    for i in range(6):
        lcd.process(places[i], i * S)
    # keyframe 6 looks like keyframe 4 (2 back: excluded) -> nothing; keyframe 7 like keyframe 1 -> found
    assert not lcd.process(noisy(places[4], 0.05, 1), 6 * S).candidates
    assert lcd.process(noisy(places[1], 0.05, 2), 7 * S).candidates[0].match_id == 1


def test_threshold_trades_recall_for_precision(places: np.ndarray) -> None:
    """Candidate sets shrink as the threshold grows; true revisits outlast chance matches."""
    # 20 original places; 10 true revisits (noisy copies of 0..9); 10 new places that half-resemble an old one
    queries = [with_cosine(places[i], 0.95 - 0.04 * i, 200 + i) for i in range(10)]  # 0.95 .. 0.59
    queries += [with_cosine(places[i], 0.5, 300 + i) for i in range(10, 20)]
    truth = list(range(10)) + [None] * 10
    detections = {}
    for threshold in (0.2, 0.4, 0.6, 0.8):
        lcd = detector(similarity_threshold=threshold, exclusion_window_s=0.0, top_k=1)
        for i in range(20):
            lcd.process(places[i], i * S)
        found = set()
        for q, query in enumerate(queries):
            result = lcd.process(query, (100 + q) * S)
            found |= {(q, c.match_id) for c in result.candidates}
        detections[threshold] = found
    thresholds = sorted(detections)
    for low, high in zip(thresholds, thresholds[1:], strict=False):
        assert detections[high] <= detections[low]

    def precision_recall(found: set) -> tuple[float, float]:
        tp = sum(truth[q] == m for q, m in found)
        return (tp / len(found) if found else 1.0), tp / 10

    p_low, r_low = precision_recall(detections[0.2])
    p_high, r_high = precision_recall(detections[0.8])
    assert r_low == 1.0 and p_low <= 0.6  # everything found, many false alarms
    assert p_high == 1.0 and 0 < r_high < 0.8  # only true revisits, fewer of them


def test_consistency_requires_agreeing_consecutive_keyframes(places: np.ndarray) -> None:
    lcd = detector(similarity_threshold=0.8, exclusion_window_s=30.0, consistency_n=3)
    results = revisit_run(lcd, places, revisit_start_s=100.0)
    assert [bool(r.candidates) for r in results] == [False, False] + [True] * 8
    assert [r.candidates[0].match_id for r in results[2:]] == list(range(7, 15))
    # an isolated match (previous keyframe matched something far away) is suppressed
    lcd.process(places[30], 200 * S)  # new place, no candidate: chain broken
    lone = lcd.process(noisy(places[2], 0.1, 7), 201 * S)
    assert not lone.candidates
    # agreement is about matched places: jumping 10 keyframes breaks the chain
    lcd.process(noisy(places[3], 0.1, 8), 202 * S)
    assert not lcd.process(noisy(places[15], 0.1, 9), 203 * S).candidates


def test_nms_keeps_best_per_window(places: np.ndarray) -> None:
    lcd = detector(similarity_threshold=0.5, exclusion_window_s=0.0, top_k=10, nms_window_keyframes=3)
    base = places[0]
    cluster = [with_cosine(base, 0.8 + 0.03 * s, s) for s in range(4)]  # keyframes 0..3, best is 3
    stored = cluster + [places[i] for i in range(1, 8)] + [with_cosine(base, 0.7, 9)]  # and keyframe 11
    for i, vector in enumerate(stored):  # keyframes 0..3 and 11 all look like `base`
        lcd.process(vector, i * S)
    result = lcd.process(base, 100 * S)
    matches = [c.match_id for c in result.candidates]
    sims = {c.match_id: c.similarity for c in result.candidates}
    assert len([m for m in matches if m <= 3]) == 1 and 11 in matches
    best_cluster = 3
    assert best_cluster in matches and sims[best_cluster] == pytest.approx(
        float(stored[best_cluster] @ base), abs=1e-5
    )
    # without NMS all five near-duplicates come back
    plain = detector(similarity_threshold=0.5, exclusion_window_s=0.0, top_k=10)
    for i, vector in enumerate(stored):
        plain.process(vector, i * S)
    assert {c.match_id for c in plain.process(base, 100 * S).candidates} >= {0, 1, 2, 3, 11}


def test_localization_mode_never_adds(tmp_path, places: np.ndarray) -> None:
    built = PlaceMap.create(DIM, model_fingerprint="fp")
    built.add(places[:20], [PlaceMeta(stamp_ns=(1000 + i) * S, keyframe_index=i) for i in range(20)])
    built.save(tmp_path / "m")
    loaded = PlaceMap.load(tmp_path / "m")
    lcd = LoopClosureDetector(loaded, LoopClosureConfig(**{**MECHANISM, "mode": "localization"}))
    # query stamps are *earlier* than the map's: in localisation mode there is no exclusion
    results = [lcd.process(noisy(places[i], 0.1, i), i * S) for i in range(5, 10)]
    assert len(loaded) == 20 and all(r.place_id is None for r in results)
    assert [r.candidates[0].match_id for r in results] == [5, 6, 7, 8, 9]
    assert [r.candidates[0].query_id for r in results] == [0, 1, 2, 3, 4]  # detector keyframe counter
    assert len(PlaceMap.load(tmp_path / "m")) == 20


def test_thread_safe_processing(places: np.ndarray) -> None:
    lcd = detector(similarity_threshold=0.9)
    errors = []

    def worker(offset: int) -> None:
        try:
            for i in range(25):
                lcd.process(noisy(places[i % 40], 0.2, offset * 100 + i), (offset * 100 + i) * S)
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert len(lcd.place_map) == 100 and sorted(lcd.place_map.place_ids) == list(range(100))
    assert lcd.keyframe_count == 100


def test_standing_still_adds_no_places_and_travel_exclusion_hides_the_recent_path(places: np.ndarray) -> None:
    lcd = LoopClosureDetector(PlaceMap.create(DIM), LoopClosureConfig(similarity_threshold=-1.0))  # defaults
    still = Pose((0.0, 0.0, 0.0))
    results = [lcd.process(places[0], i * S, pose=still) for i in range(20)]  # 20 s without moving
    assert sum(r.is_keyframe for r in results) == 1 and len(lcd.place_map) == 1
    # drive 1 m per keyframe, 1 s apart: the time window (10 s) has passed for the first places, but the
    # places within exclusion_travel_m (10 m) of travel are still hidden
    stamp = 20 * S
    for step in range(1, 16):
        stamp += S
        result = lcd.process(places[step], stamp, pose=Pose((float(step), 0.0, 0.0)))
        assert result.is_keyframe
        for candidate in result.candidates:
            assert step - candidate.match_pose.position[0] >= 10.0  # only places >= 10 m of travel back
    assert any(r.candidates for r in [lcd.process(places[20], stamp + S, pose=Pose((16.0, 0.0, 0.0)))])


def test_auto_threshold_calibrates_from_the_first_keyframes(places: np.ndarray) -> None:
    from tscm_ros.loop_closure import AUTO_CALIBRATION_KEYFRAMES, AUTO_QUANTILE

    config = LoopClosureConfig(min_interval_s=0.0, exclusion_window_s=0.5, top_k=1)
    assert config.similarity_threshold == "auto"
    lcd = LoopClosureDetector(PlaceMap.create(DIM), config)
    top1 = []
    rng = np.random.default_rng(4)
    for i in range(AUTO_CALIBRATION_KEYFRAMES + 1):
        vector = rng.normal(size=DIM).astype(np.float32)
        before = lcd.threshold
        result = lcd.process(vector, i * S)
        assert not result.candidates or before != float("inf")  # nothing passes before calibration
        if len(lcd.place_map) > 1 and len(top1) < AUTO_CALIBRATION_KEYFRAMES:
            best = lcd.place_map.search(vector, 2, exclude_ids=[result.place_id])
            top1.append(best[0].similarity)
    assert lcd.threshold == pytest.approx(float(np.quantile(top1, AUTO_QUANTILE)), abs=1e-6)
    lcd.verification_gates = True  # with verification the automatic threshold filters nothing
    assert lcd.threshold == -1.0
    with pytest.raises(ValueError, match="similarity_threshold"):
        LoopClosureConfig(similarity_threshold="sometimes")
