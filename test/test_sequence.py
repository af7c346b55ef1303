"""Sequence matcher (tscm_ros.sequence): synthetic trajectories, edge cases, brute-force parity, Corridor."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from tscm_ros.cli.evaluate import main as evaluate_main
from tscm_ros.data.registry import load_dataset
from tscm_ros.evaluation.metrics import exact_search
from tscm_ros.evaluation.sequence_eval import sequence_recall_at_n
from tscm_ros.sequence import SequenceConfig, SequenceMatcher, SequenceScore

NS_PER_S = 1_000_000_000
DIM = 128


# ---------------------------------------------------------------------------- synthetic trajectories
def make_route(n: int, rng: np.random.Generator, smooth: float = 0.5) -> np.ndarray:
    """(n, DIM) unit descriptors along a route; neighbours are correlated (AR(1) with ``smooth``)."""
    route = rng.standard_normal((n, DIM))
    for i in range(1, n):
        route[i] = smooth * route[i - 1] + np.sqrt(1 - smooth**2) * route[i]
    return (route / np.linalg.norm(route, axis=1, keepdims=True)).astype(np.float32)


def positions(*segments: tuple[float, float, int]) -> np.ndarray:
    """Map positions of query keyframes: segments of (start, speed, count)."""
    return np.concatenate([start + speed * np.arange(count) for start, speed, count in segments])


def observe(route: np.ndarray, where: np.ndarray, noise: float, rng: np.random.Generator) -> np.ndarray:
    """Query descriptors at (fractional) map positions: interpolated route descriptor + Gaussian noise."""
    low = np.floor(where).astype(int)
    high = np.minimum(low + 1, len(route) - 1)
    frac = (where - low)[:, None]
    clean = (1 - frac) * route[low] + frac * route[high]
    clean /= np.linalg.norm(clean, axis=1, keepdims=True)
    noisy = clean + noise * rng.standard_normal(clean.shape) / np.sqrt(DIM)
    return (noisy / np.linalg.norm(noisy, axis=1, keepdims=True)).astype(np.float32)


def run(
    matcher: SequenceMatcher,
    route: np.ndarray,
    queries: np.ndarray,
    *,
    stamps_s: np.ndarray | None = None,
    keyframe_indices: np.ndarray | None = None,
    travel_m: np.ndarray | None = None,
) -> tuple[list[list[SequenceScore]], np.ndarray]:
    """Feed every query's top-K (exact search; map keyframe index = route index). Returns results, top-1."""
    sims, ids = exact_search(route, queries, matcher.config.candidates_per_keyframe)
    results = []
    for i in range(len(queries)):
        results.append(
            matcher.update(
                keyframe_index=int(i if keyframe_indices is None else keyframe_indices[i]),
                stamp_ns=int((i if stamps_s is None else stamps_s[i]) * NS_PER_S),
                place_ids=ids[i] + 1000,  # place ids differ from keyframe indices
                place_keyframes=ids[i],
                similarities=sims[i],
                travel_m=None if travel_m is None else float(travel_m[i]),
            )
        )
    return results, ids[:, 0]


def test_speed_changes_and_loop_found_where_single_frame_fails() -> None:
    rng = np.random.default_rng(0)
    route = make_route(400, rng)
    length = 10
    # revisit at 1x, 0.5x, 2x, 1x, then 10 unrelated keyframes, then a loop elsewhere at 1.6x
    segments = [(20, 1.0, 20), (40, 0.5, 30), (55, 2.0, 25), (105, 1.0, 20)]
    loop = (250, 1.6, 40)
    truth = np.concatenate([positions(*segments), np.full(10, np.nan), positions(loop)])
    queries = np.concatenate(
        [
            observe(route, positions(*segments), 4.0, rng),
            make_route(10, rng),
            observe(route, positions(loop), 4.0, rng),
        ]
    )
    results, top1 = run(SequenceMatcher(SequenceConfig(length=length)), route, queries)
    # keyframes whose whole window lies in one constant-speed segment
    starts = np.cumsum([0] + [s[2] for s in segments] + [10])
    inside = np.zeros(len(truth), bool)
    for start, count in zip(starts, [s[2] for s in segments] + [10, loop[2]], strict=True):
        inside[start + length - 1 : start + count] = True
    inside &= ~np.isnan(truth)
    best = np.array([r[0].keyframe_index for r in results])
    sequence_ok = np.abs(best - np.round(truth)) <= 1  # right place within +-1 keyframe
    single_ok = np.abs(top1 - np.round(truth)) <= 1
    assert all(r[0].full for r, i in zip(results, inside, strict=True) if i)
    # measured: sequence 0.94, single-frame 0.44 (the true place is not even in some queries' top-K)
    assert sequence_ok[inside].mean() >= 0.9, sequence_ok[inside].mean()
    assert single_ok[inside].mean() <= 0.55, single_ok[inside].mean()  # the matcher does the work
    # the end of every segment and of the loop: right place, right speed
    for end, speed in zip(starts[1:] - 1, [s[1] for s in segments] + [None], strict=True):
        if speed is not None:
            # speed resolution: tolerance / (L - 1) = 0.11, and the speed prior pulls towards 1
            assert sequence_ok[end] and results[end][0].speed == pytest.approx(speed, abs=0.15), end
    last = results[-1][0]
    assert sequence_ok[-1] and last.speed == pytest.approx(1.6, abs=0.1)
    assert last.full and last.length == length and last.hits >= length - 1


def test_first_half_match_is_not_accepted_at_the_end() -> None:
    rng = np.random.default_rng(1)
    route = make_route(300, rng)
    length, start = 10, 100
    config = SequenceConfig(length=length)
    # control: ten matching keyframes are accepted at the right place
    control, _ = run(
        SequenceMatcher(config), route, observe(route, positions((start, 1.0, length)), 2.0, rng)
    )
    assert control[-1][0].accepted and abs(control[-1][0].keyframe_index - (start + length - 1)) <= 1
    # five matching keyframes, then five unrelated ones; the route's continuation is offered at the end
    queries = np.concatenate(
        [observe(route, positions((start, 1.0, length // 2)), 2.0, rng), make_route(5, rng)]
    )
    matcher = SequenceMatcher(config)
    run(matcher, route, queries[:-1])
    sims, ids = exact_search(route, queries[-1:], config.candidates_per_keyframe)
    continuation = start + length - 1
    ids[0, -1] = continuation  # as if retrieved, with the K-th similarity
    final = matcher.update(
        keyframe_index=length - 1, stamp_ns=(length - 1) * NS_PER_S, place_ids=ids[0], place_keyframes=ids[0],
        similarities=sims[0],
    )  # fmt: skip
    assert all(r.full for r in final)
    assert not any(r.accepted for r in final), [r for r in final if r.accepted]
    offered = next(r for r in final if r.keyframe_index == continuation)
    assert offered.score < config.min_score and offered.score < control[-1][0].score / 2


# ---------------------------------------------------------------------------- edge cases
def feed(matcher: SequenceMatcher, keyframe_index: int, stamp_s: float, place_keyframes, sims=None) -> list:
    """One keyframe; default similarities: a clear first place (0.9), the others 0.5 down to 0.4."""
    place_keyframes = np.asarray(place_keyframes)
    if sims is None:
        sims = np.concatenate([[0.9], np.linspace(0.5, 0.4, len(place_keyframes) - 1)])
    return matcher.update(
        keyframe_index=keyframe_index, stamp_ns=int(stamp_s * NS_PER_S), place_ids=place_keyframes,
        place_keyframes=place_keyframes, similarities=sims,
    )  # fmt: skip


def diagonal_stream(matcher: SequenceMatcher, count: int, first: int = 0, offset: int = 500) -> list:
    """Query keyframe i retrieves map keyframe offset + i first, then 19 scattered decoys."""
    return [
        feed(matcher, i, float(i), [offset + i, *(40 + 7 * i + 50 * np.arange(19))])
        for i in range(first, first + count)
    ]


def test_partial_at_start_then_full() -> None:
    matcher = SequenceMatcher(SequenceConfig(length=5))
    results = diagonal_stream(matcher, 7)
    assert [r[0].length for r in results] == [1, 2, 3, 4, 5, 5, 5]
    assert [r[0].full for r in results] == [False] * 4 + [True] * 3
    assert all(not r[0].accepted for r in results[:4])  # partial sequences are never accepted
    assert all(r[0].keyframe_index == 500 + i for i, r in enumerate(results))
    assert results[-1][0].accepted and results[-1][0].speed == pytest.approx(1.0)
    assert matcher.history_length == 5  # only the window is kept


def test_time_jump_or_restart_resets_the_window() -> None:
    matcher = SequenceMatcher(SequenceConfig(length=4))
    diagonal_stream(matcher, 6)
    jumped = feed(matcher, 6, 2.0, [506, 47])  # stamp goes back (bag loop)
    assert matcher.last_break == "restart" and matcher.history_length == 1
    assert jumped[0].length == 1 and not jumped[0].full
    diagonal_stream(matcher, 3, first=7)
    again = feed(matcher, 3, 100.0, [503])  # keyframe index going back (node restart)
    assert matcher.last_break == "restart" and again[0].length == 1
    matcher.reset()
    assert matcher.history_length == 0 and matcher.last_break == ""


def test_gaps_break_the_sequence() -> None:
    config = SequenceConfig(length=4, max_keyframe_gap=3, max_gap_s=30.0)
    matcher = SequenceMatcher(config)
    diagonal_stream(matcher, 5)
    skipped = feed(matcher, 7, 7.0, [507, 11])  # 3 keyframe indices: allowed, the line spans the gap
    assert matcher.last_break == "" and skipped[0].length == 4 and skipped[0].keyframe_index == 507
    assert skipped[0].hits == 4 and skipped[0].speed == pytest.approx(1.0)
    far = feed(matcher, 11, 11.0, [511])  # index jump of 4 > max_keyframe_gap
    assert matcher.last_break == "keyframe_gap" and far[0].length == 1
    feed(matcher, 12, 12.0, [512])
    late = feed(matcher, 13, 12.0 + 31.0, [513])  # 31 s > max_gap_s
    assert matcher.last_break == "time_gap" and late[0].length == 1
    patient = SequenceMatcher(replace(config, max_gap_s=0.0))  # 0: no time rule
    feed(patient, 0, 0.0, [500])
    assert feed(patient, 1, 1000.0, [501])[0].length == 2


def test_padding_and_empty_top_k() -> None:
    matcher = SequenceMatcher(SequenceConfig(length=3, candidates_per_keyframe=2))
    out = matcher.update(
        keyframe_index=0, stamp_ns=0, place_ids=np.array([-1, 7, 8, 9]),
        place_keyframes=np.array([0, 7, 8, 9]), similarities=np.array([-np.inf, 0.5, 0.9, 0.7]),
    )  # fmt: skip
    assert [r.place_id for r in out] == [8, 9]  # padding dropped, the best K kept, best first
    assert matcher.update(
        keyframe_index=1, stamp_ns=1, place_ids=np.array([-1]), place_keyframes=np.array([0]),
        similarities=np.array([-np.inf]),
    ) == []  # fmt: skip
    assert matcher.history_length == 2  # an empty keyframe still takes its place in the window
    with pytest.raises(ValueError, match="differ in length"):
        matcher.update(
            keyframe_index=2, stamp_ns=2, place_ids=[1, 2], place_keyframes=[1], similarities=[0.1]
        )


def test_length_zero_is_the_single_frame_ranking() -> None:
    matcher = SequenceMatcher(SequenceConfig())
    for i in range(3):
        sims = np.array([0.2, 0.9, 0.5, 0.7])
        out = feed(matcher, i, float(i), [10, 20, 30, 40], sims)
        assert [r.keyframe_index for r in out] == [20, 40, 30, 10]
        assert all(r.full and r.length == 1 for r in out)


def test_reverse_traversal_only_with_reverse() -> None:
    rng = np.random.default_rng(2)
    route = make_route(300, rng)
    truth = positions((200, -1.0, 30))  # the map route driven backwards
    queries = observe(route, truth, 3.0, rng)
    forward, _ = run(SequenceMatcher(SequenceConfig(length=10)), route, queries)
    both, top1 = run(SequenceMatcher(SequenceConfig(length=10, reverse=True)), route, queries)
    found = np.array([abs(r[0].keyframe_index - t) <= 1 for r, t in zip(both, truth, strict=True)])[9:]
    assert found.mean() >= 0.95 and found.mean() > np.mean(np.abs(top1 - truth)[9:] <= 1) + 0.15
    assert all(r[0].speed == pytest.approx(-1.0, abs=0.15) for r in both[9:])
    assert all(r[0].accepted for r in both[-10:])
    assert not any(r[0].accepted for r in forward)


def test_odometry_straightens_irregular_keyframes() -> None:
    rng = np.random.default_rng(3)
    route = make_route(300, rng)  # map keyframes every 2 m
    travel = rng.uniform(0.6, 5.4, 60)  # time-gated query keyframes: 0.3x..2.7x the map spacing
    travel[0] = 0.0
    truth = 50 + np.cumsum(travel) / 2.0
    queries = observe(route, truth, 3.5, rng)
    plain, _ = run(SequenceMatcher(SequenceConfig(length=10)), route, queries, travel_m=travel)
    config = SequenceConfig(length=10, map_spacing_m=2.0)
    odometry, _ = run(SequenceMatcher(config), route, queries, travel_m=travel)

    def accuracy(results: list) -> float:
        return float(
            np.mean([abs(r[0].keyframe_index - t) <= 1 for r, t in zip(results[9:], truth[9:], strict=True)])
        )

    assert accuracy(odometry) >= 0.95 and accuracy(odometry) >= accuracy(plain) + 0.1, (
        accuracy(odometry),
        accuracy(plain),
    )
    assert odometry[-1][0].speed == pytest.approx(np.mean(travel[51:]) / 2.0, rel=0.3)
    # a keyframe without odometry in the window: back to the keyframe axis, no failure
    partial = travel.copy()
    partial[30] = np.nan
    fallback, _ = run(SequenceMatcher(config), route, queries, travel_m=partial)
    assert len(fallback) == len(queries) and fallback[35][0].full


# ---------------------------------------------------------------------------- parity with the rule
def brute_force(
    history: list[tuple[int, np.ndarray, np.ndarray]], config: SequenceConfig
) -> dict[int, float]:
    """The documented score without place contrast, line by line: {candidate map keyframe: score}."""
    zs = []
    for _, keyframes, sims in history:
        z = (sims - sims.mean()) / sims.std()
        zs.append((keyframes, z, z.min() - config.missing_penalty))
    current_index, current_keyframes, _ = history[-1]
    if len(history) == 1:  # no line yet: the keyframe's own values, no speed
        return {int(m): float(z) for m, z in zip(current_keyframes, zs[0][1], strict=True)}
    speeds = config.speeds()
    scores = {}
    for c, m in enumerate(current_keyframes):
        best = -np.inf
        for v in speeds:
            total = zs[-1][1][c]
            for (index, _, _), (keyframes, z, floor) in zip(history[:-1], zs[:-1], strict=True):
                expected = m - v * (current_index - index)
                on_line = [
                    zz
                    for k, zz in zip(keyframes, z, strict=True)
                    if abs(k - expected) <= config.tolerance_keyframes
                ]
                total += max(on_line) if on_line else floor
            best = max(best, total / len(history) - config.speed_penalty * abs(np.log2(abs(v))))
        scores[int(m)] = best
    return scores


@pytest.mark.parametrize(("reverse", "speed_steps"), [(False, 0), (True, 0), (False, 15), (True, 7)])
def test_vectorised_lookup_matches_brute_force(reverse: bool, speed_steps: int) -> None:
    rng = np.random.default_rng(4)
    config = SequenceConfig(
        length=6,
        candidates_per_keyframe=8,
        reverse=reverse,
        speed_steps=speed_steps,
        place_normalisation=False,
    )
    matcher = SequenceMatcher(config)
    history = []
    index = 0
    for step in range(12):
        index += int(rng.integers(1, 3))
        keyframes = rng.choice(np.arange(30 + 2 * step, 60 + 2 * step), 8, replace=False)
        sims = rng.uniform(0.1, 0.9, 8)
        out = feed(matcher, index, float(index), keyframes, sims)
        history = (history + [(index, keyframes, sims)])[-config.length :]
        expected = brute_force(history, config)
        assert {r.keyframe_index: r.score for r in out} == pytest.approx(expected, abs=1e-9)


# ---------------------------------------------------------------------------- config
@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("length", -1), ("length", 2.5), ("min_speed", 0.0), ("max_speed", 0.4),
        ("candidates_per_keyframe", 0), ("tolerance_keyframes", float("nan")), ("missing_penalty", -1.0),
        ("reverse", "yes"),
        ("max_keyframe_gap", 0), ("map_spacing_m", -2.0), ("place_normalisation", 1),
    ],
)  # fmt: skip
def test_config_rejects_bad_values(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=f"SequenceConfig.{field}"):
        SequenceConfig(**{field: value})


# ---------------------------------------------------------------------------- Corridor (real images)
@pytest.fixture(scope="module")
def corridor_descriptors(corridor_dir: Path) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    from tscm_ros.describer import create_describer, describe_files

    dataset = load_dataset(f"corridor:{corridor_dir}")
    describer = create_describer(None, device="cpu", seed=0)  # untrained student: single-frame R@1 ~0.37
    return (
        describe_files(describer, dataset.database),
        describe_files(describer, dataset.queries),
        dataset.positives["gt"],
    )


@pytest.mark.shared
def test_corridor_sequence_recall(corridor_descriptors) -> None:
    database, queries, positives = corridor_descriptors
    recall = {
        length: sequence_recall_at_n(database, queries, positives, length, ns=(1,)) for length in (1, 10, 20)
    }
    single = recall[10].single_frame_recall[1]
    assert recall[1].recall[1] >= single  # L = 1: the place (hub) contrast alone, measured 0.42 vs 0.37
    assert recall[10].recall[1] >= 0.70, recall[10].recall
    assert recall[20].recall[1] >= 0.95, recall[20].recall
    assert recall[10].recall[1] >= single + 0.25
    assert recall[20].partial_queries == 19


@pytest.mark.shared
def test_evaluate_cli_sequence_flag(corridor_dir: Path, corridor_descriptors, tmp_path: Path) -> None:
    database, queries, positives = corridor_descriptors
    np.save(tmp_path / "db.npy", database)
    np.save(tmp_path / "q.npy", queries)
    out = tmp_path / "eval"
    argv = [
        "--dataset",
        f"corridor:{corridor_dir}",
        "--descriptors",
        f"{tmp_path / 'db.npy'},{tmp_path / 'q.npy'}",
    ]
    assert evaluate_main([*argv, "--sequence", "5,10", "--ns", "1,5", "--out", str(out)]) == 0
    report = json.loads((out / "results.json").read_text())["protocols"]["gt"]
    assert set(report["sequence"]) == {"5", "10"}
    expected = sequence_recall_at_n(database, queries, positives, 10, ns=(1, 5))
    assert report["sequence"]["10"]["recall"] == {str(n): v for n, v in expected.recall.items()}
    assert report["sequence"]["10"]["single_frame_recall"]["1"] == pytest.approx(report["recall"]["1"])
