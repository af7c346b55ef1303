"""Loop-closure plots of a built map: the query/match timeline and the trajectory with loop edges.

The figure builders return matplotlib figures (inspectable in tests); :func:`tscm_ros.pipelines.build_map.
write_plots` saves them. Ground truth, when known, enters two ways:

* ``correct`` -- one flag per plotted candidate: candidates are drawn green (correct) / red (wrong) with a
  legend entry each, instead of coloured by similarity (colour bar);
* ``truth_band`` -- where the true matches are, drawn as a light band behind the candidates: either a
  predicate ``is_match(query_stamp_ns, place_stamp_ns) -> bool`` (evaluated on keyframe stamps, see
  :func:`truth_spans`) or precomputed spans ``(query_stamp_ns, match_start_ns, match_end_ns)``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from tscm_ros.poses import NS_PER_S

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from tscm_ros.loop_closure import LoopCandidate

MAX_TRUTH_QUERIES = 2000  # a predicate is evaluated on at most this many query keyframes (evenly spread)
CORRECT_COLOUR, WRONG_COLOUR, BAND_COLOUR = "tab:green", "tab:red", "#f2c14e"

TruthSpan = tuple[int, int, int]  # (query_stamp_ns, first matching place stamp_ns, last matching stamp_ns)
TruthBand = Callable[[int, int], bool] | Sequence[TruthSpan]


def truth_spans(
    keyframe_stamps_ns: Sequence[int],
    is_match: Callable[[int, int], bool],
    *,
    earlier_only: bool = True,
    max_queries: int = MAX_TRUTH_QUERIES,
) -> list[TruthSpan]:
    """The runs of consecutive keyframes that truly match each query keyframe, as stamp spans.

    ``is_match(query_ns, place_ns)`` is called for every (query, place) keyframe pair with the place earlier
    than the query (``earlier_only``; loop closures look back), i.e. O(N^2) calls; above ``max_queries``
    query keyframes only an evenly spread subset of them is evaluated.
    """
    stamps = sorted(int(s) for s in keyframe_stamps_ns)
    query_indices = range(len(stamps))
    if len(stamps) > max_queries:
        query_indices = np.unique(np.linspace(0, len(stamps) - 1, max_queries).astype(int)).tolist()
    spans: list[TruthSpan] = []
    for q in query_indices:
        places = range(q) if earlier_only else (p for p in range(len(stamps)) if p != q)
        run_start = previous = None
        for p in places:
            if is_match(stamps[q], stamps[p]):
                if run_start is None or p != previous + 1:
                    if run_start is not None:
                        spans.append((stamps[q], stamps[run_start], stamps[previous]))
                    run_start = p
                previous = p
        if run_start is not None:
            spans.append((stamps[q], stamps[run_start], stamps[previous]))
    return spans


def _keyframe_spacing_s(stamps_s: np.ndarray) -> float:
    steps = np.diff(np.sort(stamps_s))
    steps = steps[steps > 0]
    return float(np.median(steps)) if steps.size else 1.0


def timeline_figure(
    keyframe_stamps_ns: Sequence[int],
    candidates: Sequence[LoopCandidate],
    *,
    title: str = "",
    correct: Sequence[bool] | None = None,
    truth_band: TruthBand | None = None,
) -> Figure:
    """Query time vs. matched-place time of every candidate (one point each), with a legend.

    The title's count is ``len(candidates)``: exactly the points drawn.
    """
    from matplotlib.figure import Figure

    if correct is not None and len(correct) != len(candidates):
        raise ValueError(f"correct has {len(correct)} flags for {len(candidates)} candidates")
    stamps = np.asarray([int(s) for s in keyframe_stamps_ns], dtype=np.int64)
    all_stamps = np.concatenate(
        [stamps, [c.query_stamp_ns for c in candidates], [c.match_stamp_ns for c in candidates]]
    ).astype(np.int64)
    start_ns = int(all_stamps.min()) if all_stamps.size else 0
    end_s = float((all_stamps.max() - start_ns) / NS_PER_S) if all_stamps.size else 0.0
    end_s = end_s or 1.0

    def seconds(values: Sequence[int]) -> np.ndarray:
        return (np.asarray(values, dtype=np.int64) - start_ns) / NS_PER_S

    figure = Figure(figsize=(6, 5.5), dpi=110)
    axis = figure.add_subplot()
    axis.plot([0, end_s], [0, end_s], color="0.8", linewidth=1, label="query = match", zorder=1)
    if truth_band is not None:
        spans = truth_spans(stamps, truth_band) if callable(truth_band) else list(truth_band)
        if spans:
            width = _keyframe_spacing_s(seconds(stamps)) if len(stamps) > 1 else end_s / 100
            query_s, first_s, last_s = (seconds([s[i] for s in spans]) for i in range(3))
            axis.bar(
                query_s, last_s - first_s + width, bottom=first_s - width / 2, width=width,
                color=BAND_COLOUR, alpha=0.35, linewidth=0, label="true match (ground truth)", zorder=0,
            )  # fmt: skip
    query_s = seconds([c.query_stamp_ns for c in candidates])
    match_s = seconds([c.match_stamp_ns for c in candidates])
    if correct is not None:
        ok = np.asarray(correct, dtype=bool)
        for mask, colour, label in ((ok, CORRECT_COLOUR, "correct"), (~ok, WRONG_COLOUR, "wrong")):
            axis.scatter(query_s[mask], match_s[mask], s=14, c=colour, label=f"{label} ({int(mask.sum())})",
                         zorder=3)  # fmt: skip
        summary = f" ({int(ok.sum())} correct)"
    else:
        summary = ""
        if len(candidates):
            points = axis.scatter(
                query_s, match_s, s=14, c=[c.similarity for c in candidates], cmap="viridis",
                label="candidate (colour: similarity)", zorder=3,
            )  # fmt: skip
            figure.colorbar(points, ax=axis, label="cosine similarity")
    axis.set_xlabel("query time (s)")
    axis.set_ylabel("matched place time (s)")
    axis.set_xlim(0, end_s * 1.02)
    axis.set_ylim(0, end_s * 1.02)
    axis.set_title(f"{len(candidates)} loop-closure candidates{summary}\n{title}", fontsize=9)
    axis.legend(loc="upper left", fontsize=8)
    figure.tight_layout()
    return figure


def trajectory_figure(
    keyframes: Sequence[Any],
    candidates: Sequence[LoopCandidate],
    *,
    title: str = "",
    correct: Sequence[bool] | None = None,
) -> Figure | None:
    """Keyframe trajectory (x/y) with one edge per candidate; None when no keyframe has a pose."""
    from matplotlib import colormaps
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    posed = [k for k in keyframes if k.pose is not None]
    if not posed:
        return None
    if correct is not None and len(correct) != len(candidates):
        raise ValueError(f"correct has {len(correct)} flags for {len(candidates)} candidates")
    figure = Figure(figsize=(7, 6), dpi=110)
    axis = figure.add_subplot()
    xy = np.array([k.pose.position[:2] for k in posed])
    axis.plot(xy[:, 0], xy[:, 1], "-", color="0.35", linewidth=1, label="keyframes")
    axis.plot(xy[0, 0], xy[0, 1], "o", color="black", label="start")
    cmap = colormaps["viridis"]
    drawn, drawn_ok = 0, 0
    for index, c in enumerate(candidates):
        if c.query_pose is None or c.match_pose is None:
            continue
        if correct is not None:
            colour = CORRECT_COLOUR if correct[index] else WRONG_COLOUR
            drawn_ok += bool(correct[index])
        else:
            colour = cmap(float(np.clip((c.similarity - 0.5) * 2, 0, 1)))
        axis.plot(
            [c.query_pose.position[0], c.match_pose.position[0]],
            [c.query_pose.position[1], c.match_pose.position[1]],
            "-", color=colour, linewidth=0.8, alpha=0.8,
        )  # fmt: skip
        drawn += 1
    handles, _ = axis.get_legend_handles_labels()
    if correct is not None:
        handles += [
            Line2D([], [], color=CORRECT_COLOUR, label=f"correct edge ({drawn_ok})"),
            Line2D([], [], color=WRONG_COLOUR, label=f"wrong edge ({drawn - drawn_ok})"),
        ]
    elif drawn:
        handles.append(Line2D([], [], color=cmap(0.75), label="loop edge (colour: similarity)"))
    axis.set_aspect("equal", adjustable="datalim")
    axis.set_xlabel("x (m)")
    axis.set_ylabel("y (m)")
    axis.set_title(f"trajectory with {drawn} loop edges\n{title}", fontsize=9)
    axis.legend(handles=handles, loc="best", fontsize=8)
    figure.tight_layout()
    return figure
