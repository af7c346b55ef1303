"""write_plots / the loop-closure figures: legends, the ground-truth band, titles that count what is drawn."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tscm_ros.loop_closure import LoopCandidate
from tscm_ros.pipelines.build_map import TIMELINE_PNG, TRAJECTORY_PNG, Keyframe, write_plots
from tscm_ros.pipelines.plots import timeline_figure, trajectory_figure, truth_spans
from tscm_ros.placemap import Pose

START, PERIOD, LAP = 1_700_000_000_000_000_000, 500_000_000, 10


def circle_keyframes(posed: bool = True) -> list[Keyframe]:
    """Two laps of 10 keyframes on a circle: keyframe i + 10 revisits keyframe i."""
    keyframes = []
    for i in range(2 * LAP):
        angle = 2 * math.pi * (i % LAP) / LAP
        pose = Pose((10 * math.cos(angle), 10 * math.sin(angle), 0.0), frame_id="map") if posed else None
        keyframes.append(Keyframe(i, START + i * PERIOD, pose))
    return keyframes


def candidates_for(keyframes: list[Keyframe], offsets: list[int]) -> list[LoopCandidate]:
    """One candidate per lap-2 keyframe, matched ``offset`` keyframes away from its true place."""
    found = []
    for i, offset in zip(range(LAP, 2 * LAP), offsets, strict=False):
        query, match = keyframes[i], keyframes[i - LAP + offset]
        found.append(
            LoopCandidate(i, query.stamp_ns, match.place_id, match.stamp_ns, 0.9 - 0.01 * abs(offset), 0,
                          match.pose, query.pose)
        )  # fmt: skip
    return found


def is_match(keyframes: list[Keyframe]):
    by_stamp = {k.stamp_ns: k for k in keyframes}

    def match(query_ns: int, place_ns: int) -> bool:
        q, p = by_stamp[query_ns].pose, by_stamp[place_ns].pose
        return q.distance_to(p) <= 4.0  # neighbours on the circle are 6.2 m apart

    return match


def legend_labels(figure) -> list[str]:
    return [text.get_text() for text in figure.axes[0].get_legend().get_texts()]


def scattered_points(figure) -> int:
    return sum(len(c.get_offsets()) for c in figure.axes[0].collections)


def test_truth_spans_group_consecutive_matches():
    keyframes = circle_keyframes()
    spans = truth_spans([k.stamp_ns for k in keyframes], is_match(keyframes))
    # every lap-2 keyframe truly matches exactly its lap-1 place (earlier places only)
    assert spans == [(START + i * PERIOD, START + (i - LAP) * PERIOD, START + (i - LAP) * PERIOD) for i in
                     range(LAP, 2 * LAP)]  # fmt: skip
    runs = truth_spans([0, 1, 2, 3, 4, 5], lambda q, p: q == 5 and p in (0, 1, 3))
    assert runs == [(5, 0, 1), (5, 3, 3)]
    subset = truth_spans(range(100), lambda q, p: True, max_queries=10)
    assert len({q for q, _, _ in subset}) == 9  # query 0 has no earlier place
    assert all(first == 0 and last == q - 1 for q, first, last in subset)


def test_timeline_with_ground_truth_has_correct_wrong_legend_and_band():
    keyframes = circle_keyframes()
    candidates = candidates_for(keyframes, [0, 0, 0, 3, 0, 0, -4, 0])  # 8 candidates, 2 wrong
    correct = [c.match_stamp_ns == c.query_stamp_ns - LAP * PERIOD for c in candidates]
    figure = timeline_figure(
        [k.stamp_ns for k in keyframes],
        candidates,
        title="t",
        correct=correct,
        truth_band=is_match(keyframes),
    )
    labels = legend_labels(figure)
    assert sorted(labels) == ["correct (6)", "query = match", "true match (ground truth)", "wrong (2)"]
    assert figure.axes[0].get_title().startswith("8 loop-closure candidates (6 correct)")
    assert scattered_points(figure) == 8
    band = [p for p in figure.axes[0].patches]
    assert len(band) == LAP  # one bar per lap-2 query keyframe
    assert len(figure.axes) == 1  # no colour bar when correctness colours the points


def test_timeline_without_ground_truth_has_a_similarity_colourbar():
    keyframes = circle_keyframes()
    candidates = candidates_for(keyframes, [0, 1, 0])
    figure = timeline_figure([k.stamp_ns for k in keyframes], candidates, title="t")
    assert legend_labels(figure) == ["query = match", "candidate (colour: similarity)"]
    assert len(figure.axes) == 2 and figure.axes[1].get_ylabel() == "cosine similarity"
    assert figure.axes[0].get_title().startswith("3 loop-closure candidates\n")
    assert scattered_points(figure) == 3
    spans = [(candidates[0].query_stamp_ns, START, START + PERIOD)]
    figure = timeline_figure([k.stamp_ns for k in keyframes], candidates, truth_band=spans)
    assert "true match (ground truth)" in legend_labels(figure)


def test_empty_candidates_and_mismatched_flags():
    keyframes = circle_keyframes()
    figure = timeline_figure([k.stamp_ns for k in keyframes], [], correct=[], truth_band=is_match(keyframes))
    assert figure.axes[0].get_title().startswith("0 loop-closure candidates (0 correct)")
    assert scattered_points(figure) == 0
    figure = timeline_figure([], [])  # nothing at all: still a figure
    assert figure.axes[0].get_title().startswith("0 loop-closure candidates")
    with pytest.raises(ValueError, match="2 flags for 1 candidates"):
        timeline_figure(
            [k.stamp_ns for k in keyframes], candidates_for(keyframes, [0]), correct=[True, False]
        )
    assert trajectory_figure(circle_keyframes(posed=False), []) is None


def test_trajectory_legend_counts_drawn_edges():
    keyframes = circle_keyframes()
    candidates = candidates_for(keyframes, [0, 2, 0])
    figure = trajectory_figure(keyframes, candidates, correct=[True, False, True])
    assert legend_labels(figure) == ["keyframes", "start", "correct edge (2)", "wrong edge (1)"]
    assert figure.axes[0].get_title().startswith("trajectory with 3 loop edges")
    figure = trajectory_figure(keyframes, [])
    assert legend_labels(figure) == ["keyframes", "start"]


@pytest.mark.parametrize("posed", [True, False])
def test_write_plots_writes_pngs_also_without_candidates(tmp_path: Path, posed: bool):
    keyframes = circle_keyframes(posed)
    for candidates in ([], candidates_for(keyframes, [0, 1])):
        correct = [True] * len(candidates) if posed else None
        band = is_match(keyframes) if posed else None
        plots = write_plots(tmp_path, keyframes, candidates, title="x", correct=correct, truth_band=band)
        expected = [TIMELINE_PNG, TRAJECTORY_PNG] if posed else [TIMELINE_PNG]
        assert [p.name for p in plots] == expected
        for path in plots:
            with Image.open(path) as image:
                assert image.format == "PNG" and image.size[0] > 300
                assert np.asarray(image).std() > 0  # not blank
