"""Acceptance test: loop closure on a Corridor bag agrees with plain retrieval and with ``tscm_evaluate``.

The Corridor set (VPR-Bench copy in ../shared/data/corridor) is written as one rosbag2: the 111 ``ref/``
images as lap 1, then the 111 ``query/`` images as lap 2, 5 Hz header stamps within a lap. Lap 2 starts
``LAP_GAP_S`` after lap 1 ends (the robot comes back a minute later), so an exclusion window longer than
lap 2 (22.2 s) but shorter than the gap keeps every lap-2 frame from matching lap-2 frames while every
lap-1 frame stays searchable: a query keyframe then searches exactly the ref images, which is what plain
retrieval does. The frames are read back with ``iter_frames`` and described ONCE per session by the model
the demo uses (the seeded untrained student).

Expected values come from the dataset's ``ground_truth.csv`` and numpy brute force, never from the
detector.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from tscm_ros.bags import BagReadStats, iter_frames, write_image_bag
from tscm_ros.cli import evaluate as evaluate_cli
from tscm_ros.describer import create_describer
from tscm_ros.evaluation.metrics import exact_search, loop_closure_pr_curve, precision_recall_curve
from tscm_ros.image_files import read_rgb
from tscm_ros.loop_closure import LoopClosureConfig, LoopClosureDetector
from tscm_ros.placemap import PlaceMap

pytestmark = pytest.mark.shared

NS_PER_S = 1_000_000_000
PERIOD_NS = NS_PER_S // 5  # 5 Hz
START_NS = 1_700_000_000 * NS_PER_S
LAP_GAP_S = 60.0  # from the last ref frame to the first query frame
EXCLUSION_WINDOW_S = 30.0  # > lap 2's 22.2 s, < LAP_GAP_S
# float32 (faiss) vs float64 (numpy) inner products of these 2048-d unit vectors differ by <= ~5e-7; the
# untrained student's similarities all lie in ~[0.9995, 1], so near-ties at that scale do happen.
TIE_TOLERANCE = 1e-6


@dataclass(frozen=True)
class CorridorStream:
    """What came back out of the bag: one entry per frame in bag order."""

    stamps_ns: np.ndarray  # (222,) int64
    laps: np.ndarray  # (222,) 0 = ref lap, 1 = query lap
    indices: np.ndarray  # (222,) image index within its lap (file order)
    descriptors: np.ndarray  # (222, D) float32, L2-normalised
    n_ref: int
    n_query: int

    @property
    def ref(self) -> np.ndarray:
        return self.descriptors[self.laps == 0]

    @property
    def query(self) -> np.ndarray:
        return self.descriptors[self.laps == 1]


def _images(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.jpg"))


@pytest.fixture(scope="session")
def corridor_stream(corridor_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> CorridorStream:
    refs, queries = _images(corridor_dir / "ref"), _images(corridor_dir / "query")
    assert len(refs) == len(queries) == 111
    schedule: list[tuple[int, int, int, Path]] = []  # (stamp, lap, index, file)
    for index, path in enumerate(refs):
        schedule.append((START_NS + index * PERIOD_NS, 0, index, path))
    query_start = schedule[-1][0] + int(LAP_GAP_S * NS_PER_S)
    for index, path in enumerate(queries):
        schedule.append((query_start + index * PERIOD_NS, 1, index, path))
    images = {stamp: read_rgb(path) for stamp, _, _, path in schedule}

    bag = write_image_bag(
        tmp_path_factory.mktemp("corridor_bag") / "corridor", ((s, images[s]) for s, *_ in schedule)
    )
    stats = BagReadStats()
    frames = list(iter_frames(bag, stats=stats))
    assert stats.decoded == len(schedule) and stats.skipped == 0
    by_stamp = {stamp: (lap, index) for stamp, lap, index, _ in schedule}
    assert [f.stamp_ns for f in frames] == [s for s, *_ in schedule]  # header stamps, bag order
    for frame in frames:
        np.testing.assert_array_equal(frame.rgb, images[frame.stamp_ns])  # rgb8: lossless

    describer = create_describer(None, device="cpu", seed=0)  # the demo's default model: untrained student
    descriptors = describer.describe([frame.rgb for frame in frames])
    assert descriptors.shape == (len(frames), describer.dim) and np.all(np.isfinite(descriptors))
    return CorridorStream(
        stamps_ns=np.array([f.stamp_ns for f in frames], np.int64),
        laps=np.array([by_stamp[f.stamp_ns][0] for f in frames]),
        indices=np.array([by_stamp[f.stamp_ns][1] for f in frames]),
        descriptors=descriptors,
        n_ref=len(refs),
        n_query=len(queries),
    )


@pytest.fixture(scope="session")
def ground_truth_pairs(corridor_dir: Path) -> set[tuple[int, int]]:
    """(query index, ref index) pairs from the dataset's own CSV."""
    pairs = set()
    with open(corridor_dir / "ground_truth.csv", newline="") as stream:
        for row in csv.DictReader(stream):
            query = int(row["query_index"])
            pairs |= {(query, int(ref)) for ref in row["positive_ref_indices"].split(";")}
    # SOURCE.md: query i matches ref j iff |i - j| <= 2
    assert pairs == {(i, j) for i in range(111) for j in range(111) if abs(i - j) <= 2}
    return pairs


def run_detector(stream: CorridorStream, threshold: float) -> dict[int, tuple[int, float]]:
    """Feed every frame (mapping mode, all keyframes, no consistency); query index -> (ref index, sim)."""
    config = LoopClosureConfig(
        min_interval_s=0.0, min_descriptor_change=0.0, min_travel_m=0.0,
        exclusion_window_s=EXCLUSION_WINDOW_S, top_k=1, similarity_threshold=threshold, consistency_n=1,
        mode="mapping",
    )  # fmt: skip
    place_map = PlaceMap.create(stream.descriptors.shape[1], "flat")
    frame_of_stamp = {int(s): i for i, s in enumerate(stream.stamps_ns)}
    top1: dict[int, tuple[int, float]] = {}
    try:
        detector = LoopClosureDetector(place_map, config)
        for frame, (descriptor, stamp) in enumerate(zip(stream.descriptors, stream.stamps_ns, strict=True)):
            result = detector.process(descriptor, int(stamp))
            assert result.is_keyframe, f"frame {frame} was dropped ({result.skipped_reason})"
            if stream.laps[frame] == 0:
                # lap 1 is shorter than the exclusion window: nothing earlier can be a loop
                assert result.candidates == [], f"ref frame {frame} got a candidate"
                continue
            assert len(result.candidates) <= 1
            if result.candidates:
                best = result.candidates[0]
                matched = frame_of_stamp[best.match_stamp_ns]
                assert stream.laps[matched] == 0, "a query matched another query frame"
                top1[int(stream.indices[frame])] = (int(stream.indices[matched]), best.similarity)
    finally:
        place_map.close()
    return top1


@pytest.fixture(scope="session")
def brute_force(corridor_stream: CorridorStream) -> tuple[np.ndarray, np.ndarray]:
    """(query x ref similarity matrix in float64, top-1 ref index per query) by numpy."""
    sims = corridor_stream.query.astype(np.float64) @ corridor_stream.ref.astype(np.float64).T
    return sims, sims.argmax(axis=1)


@pytest.fixture(scope="session")
def detector_at_zero(corridor_stream: CorridorStream) -> dict[int, tuple[int, float]]:
    return run_detector(corridor_stream, threshold=0.0)


def _same_top1(sims_row: np.ndarray, expected: int, got: int) -> bool:
    """``got`` is the top-1, allowing for exact/near ties with ``expected`` (float rounding)."""
    return got == expected or sims_row[got] >= sims_row[expected] - TIE_TOLERANCE


def test_detector_top1_is_plain_retrieval_top1(corridor_stream, brute_force, detector_at_zero):
    sims, expected = brute_force
    best = sims.max(axis=1)
    # threshold 0 keeps exactly the queries whose best ref similarity is >= 0
    assert set(detector_at_zero) == {q for q in range(corridor_stream.n_query) if best[q] >= 0}
    _, faiss_top1 = exact_search(corridor_stream.ref, corridor_stream.query, 1)
    for query, (ref, similarity) in detector_at_zero.items():
        assert _same_top1(sims[query], expected[query], ref), (
            f"query {query}: detector {ref} vs {expected[query]}"
        )
        assert _same_top1(sims[query], expected[query], int(faiss_top1[query, 0]))
        assert similarity == pytest.approx(best[query], abs=TIE_TOLERANCE)


def test_loop_precision_recall_equal_tscm_evaluate_recall_at_1(
    corridor_dir, corridor_stream, brute_force, detector_at_zero, ground_truth_pairs, tmp_path
):
    sims, expected = brute_force
    n_query = corridor_stream.n_query
    # threshold 0 is "no threshold" here only because every top-1 similarity is non-negative
    assert sims.max(axis=1).min() >= 0, "a top-1 similarity is negative: threshold 0 would drop it"
    assert len(detector_at_zero) == n_query

    # loop precision / recall of the detector against the +-2 ground truth (every query has a true loop)
    correct = sum((query, ref) in ground_truth_pairs for query, (ref, _) in detector_at_zero.items())
    precision = correct / len(detector_at_zero)
    recall = correct / len({query for query, _ in ground_truth_pairs})

    # tscm_evaluate's R@1 on the same descriptors (the real CLI, reading .npy files)
    database, queries = tmp_path / "db.npy", tmp_path / "q.npy"
    np.save(database, corridor_stream.ref)
    np.save(queries, corridor_stream.query)
    out = tmp_path / "eval"
    code = evaluate_cli.main(
        ["--dataset", f"corridor:{corridor_dir}", "--descriptors", f"{database},{queries}", "--out", str(out),
         "--ns", "1,5,10"]
    )  # fmt: skip
    assert code == 0
    report = json.loads((out / "results.json").read_text())
    recall_at_1 = report["protocols"]["gt"]["recall"]["1"]

    # numpy's R@1; a query whose near-tied best refs (within TIE_TOLERANCE) disagree on correctness may
    # go either way under float32 rounding
    numpy_hits = sum((q, int(expected[q])) in ground_truth_pairs for q in range(n_query))
    ambiguous = 0
    for q in range(n_query):
        tied = np.flatnonzero(sims[q] >= sims[q].max() - TIE_TOLERANCE)
        ambiguous += len({(q, int(r)) in ground_truth_pairs for r in tied}) > 1
    assert abs(recall_at_1 * n_query - numpy_hits) <= ambiguous + 1e-9
    assert precision == pytest.approx(recall_at_1, abs=1e-12)
    assert recall == pytest.approx(recall_at_1, abs=1e-12)

    # the shared loop-closure PR curve (stream frame indices) agrees at its loosest threshold
    n_ref = corridor_stream.n_ref
    queries_in_stream = sorted(detector_at_zero)
    curve = loop_closure_pr_curve(
        [n_ref + q for q in queries_in_stream],
        [detector_at_zero[q][0] for q in queries_in_stream],
        [detector_at_zero[q][1] for q in queries_in_stream],
        gt_pairs=[(n_ref + q, r) for q, r in ground_truth_pairs],
    )
    assert curve.n_positive == n_query
    assert curve.precision[-1] == pytest.approx(precision, abs=1e-12)
    assert curve.recall[-1] == pytest.approx(recall, abs=1e-12)


def test_raising_the_threshold_trades_recall_for_precision(
    corridor_stream, brute_force, detector_at_zero, ground_truth_pairs
):
    """Raising the threshold only ever removes candidates, never adds or changes one, so accepted, true
    positives, false positives and recall are all non-increasing -- that is the trade. Precision
    TP/(TP+FP) itself is NOT monotone in general: dropping a correct high-similarity candidate lowers it.
    So precision is checked against the shared PR curve at each threshold rather than for monotonicity.
    """
    sims, _ = brute_force
    n_query = corridor_stream.n_query
    assert len(detector_at_zero) == n_query  # every top-1 similarity is >= 0 (checked above)
    levels = np.unique(sims.max(axis=1))
    # thresholds half-way between top-1 similarities that are > 2 * TIE_TOLERANCE apart, so float32 vs
    # float64 rounding cannot put a candidate on the other side of a threshold; then one above them all
    wide = np.diff(levels) > 2 * TIE_TOLERANCE
    midpoints = ((levels[1:] + levels[:-1]) / 2)[wide]
    picks = midpoints[np.linspace(0, len(midpoints) - 1, 6)[1:-1].round().astype(int)]
    top = float(levels[-1] + (1.0 - levels[-1]) / 2)
    thresholds = [0.0, *sorted({float(p) for p in picks if p > 0}), top]

    scores = np.array([detector_at_zero[q][1] for q in range(n_query)])
    is_correct = np.array([(q, detector_at_zero[q][0]) in ground_truth_pairs for q in range(n_query)])
    shared = precision_recall_curve(scores, is_correct, n_positive=n_query)

    previous: dict[int, tuple[int, float]] | None = None
    rows = []
    for threshold in thresholds:
        accepted = detector_at_zero if threshold == 0.0 else run_detector(corridor_stream, threshold)
        expected_queries = {q for q in range(n_query) if sims[q].max() >= threshold}
        assert set(accepted) == expected_queries, f"threshold {threshold}"
        if previous is not None:  # nested: same matches, fewer of them
            assert set(accepted) <= set(previous)
            assert all(accepted[q][0] == previous[q][0] for q in accepted)
        true_pos = sum((q, r) in ground_truth_pairs for q, (r, _) in accepted.items())
        false_pos = len(accepted) - true_pos
        precision = true_pos / len(accepted) if accepted else 1.0
        recall = true_pos / n_query
        rows.append((threshold, len(accepted), true_pos, false_pos, precision, recall))
        if accepted:  # the shared PR curve's point for "accept if score >= threshold"
            point = np.flatnonzero(shared.thresholds >= threshold)[-1]
            assert shared.precision[point] == pytest.approx(precision, abs=1e-12)
            assert shared.recall[point] == pytest.approx(recall, abs=1e-12)
        previous = accepted

    counts = np.array([r[1:4] for r in rows])  # accepted, TP, FP
    recalls = np.array([r[5] for r in rows])
    assert np.all(np.diff(counts, axis=0) <= 0), rows
    assert np.all(np.diff(recalls) <= 0), rows
    assert rows[0][1] == n_query and rows[-1][1] == 0 and rows[-1][5] == 0.0
    assert rows[1][1] < rows[0][1], "the sweep must actually remove candidates"
