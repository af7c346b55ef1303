"""``tscm_demo`` (:mod:`tscm_ros.cli.demo`): the end-to-end demo, with no data or weights to download.

Default (no arguments): render a deterministic two-lap drive through a procedural street loop (see
:mod:`tscm_ros.demo.scene`), write it as a rosbag2 (sqlite3) with camera images + odometry, build a place map
and loop-closure candidates from the bag with the same pipeline as ``tscm_build_map``, and score the
candidates against the known poses: a candidate is correct when the matched place lies within ``--radius``
metres of the query. Recall is over the keyframes that *have* an earlier place within the radius (outside
the exclusion window): every keyframe of lap 2, and the last metres of lap 1 where the loop closes.

``--corridor PATH`` does the same with real images (VPR-Bench Corridor: ``ref/`` then ``query/`` as one
5 Hz stream, no poses; a query matches ref images within +-2 indices, the dataset's own ground truth).

The model is ``models/`` of the installed package or of the repository checkout when it holds a
``model.json``; otherwise the seeded **untrained** student, which the output states clearly.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tscm_ros.bags import write_image_bag
from tscm_ros.demo.scene import SceneConfig, build_world, generate_frames, plan_trajectory, scene_intrinsics
from tscm_ros.evaluation import metrics
from tscm_ros.image_files import list_images
from tscm_ros.loop_closure import LoopClosureConfig, LoopClosureDetector
from tscm_ros.pipelines.build_map import BuildResult, build_map_from_bag, write_plots
from tscm_ros.placemap import PlaceMap, Pose
from tscm_ros.poses import NS_PER_S
from tscm_ros.recognition import RecognitionConfig, read_params_file, shipped_params_file

LOGGER = logging.getLogger(__name__)
DEFAULT_OUT = Path("tscm_demo_output")
BAG_DIR = "demo_bag"
SCENE_JSON = "scene.json"
SUMMARY_JSON = "demo_summary.json"
PR_PNG = "pr_curve.png"


# -------------------------------------------------------------------------------------------- model


def find_default_model() -> Path | None:
    """``models/`` with a ``model.json``: the installed share dir (ament_index) first, else the checkout."""
    folders = []
    try:
        from ament_index_python.packages import get_package_share_directory

        folders.append(Path(get_package_share_directory("tscm_ros")) / "models")
    except Exception:  # not installed with colcon / no AMENT_PREFIX_PATH: fall back to the checkout
        pass
    folders.append(Path(__file__).resolve().parents[2] / "models")
    for folder in folders:
        if (folder / "model.json").is_file():
            return folder
    return None


def make_describer(model: Path | None, *, untrained: bool, device: str, batch_size: int = 8):
    """The describer the demo uses and a sentence saying which model it is."""
    from tscm_ros.describer import create_describer

    if model is None and not untrained:
        model = find_default_model()
    if model is None:
        describer = create_describer(None, device=device, batch_size=batch_size)
        why = "requested with --untrained" if untrained else "no trained model found (models/model.json)"
        note = (
            f"model: {describer.label} -- {why}; descriptors come from random weights, so expect weak "
            "place recognition"
        )
    else:
        describer = create_describer(model, device=device, batch_size=batch_size)
        note = f"model: {describer.label}"
    return describer, note


# ------------------------------------------------------------------------------------------- scoring


@dataclass(frozen=True)
class Evaluation:
    threshold: float
    keyframes: int
    revisits: int  # keyframes with a true earlier match outside the exclusion window
    reported: int  # keyframes with a candidate at the threshold
    correct: int
    precision: float
    recall: float
    recall_at_1: float  # top-1 correct among revisits, no threshold
    average_precision: float  # area under the PR curve of the top-1 similarity sweep
    best_f1: float
    best_f1_threshold: float
    pr_curve: tuple[tuple[float, float, float], ...] = dataclasses.field(repr=False, default=())

    def lines(self) -> list[str]:
        return [
            f"keyframes: {self.keyframes}, revisits with a true match: {self.revisits}",
            f"at threshold {self.threshold:.6f}: {self.reported} candidates, {self.correct} correct -> "
            f"precision {self.precision:.3f}, recall {self.recall:.3f}",
            f"recall@1 over revisits (no threshold): {self.recall_at_1:.3f}",
            f"PR sweep of the top-1 similarity: average precision {self.average_precision:.3f}, "
            f"best F1 {self.best_f1:.3f} at threshold {self.best_f1_threshold:.6f} (oracle, for reference)",
        ]


def top1_per_keyframe(result: BuildResult, config: LoopClosureConfig) -> list[tuple[int, int, float]]:
    """Replay the described frames through a fresh detector with no threshold: (query, match stamp, sim).

    Keyframe selection does not depend on the threshold, so the keyframes equal those of ``result``; a
    thresholded top-1 run is exactly this list filtered by similarity.
    """
    replay_config = dataclasses.replace(config, similarity_threshold=-1.0, top_k=1, consistency_n=1)
    place_map = PlaceMap.create(result.descriptors.shape[1], "flat")
    detector = LoopClosureDetector(place_map, replay_config)
    top1: list[tuple[int, int, float]] = []
    for descriptor, stamp, pose in zip(
        result.descriptors, result.frame_stamps_ns, result.frame_poses, strict=True
    ):
        outcome = detector.process(descriptor, int(stamp), pose=pose)
        if outcome.is_keyframe:
            best = outcome.candidates[0] if outcome.candidates else None
            top1.append((int(stamp), best.match_stamp_ns, best.similarity) if best else (int(stamp), -1, -2))
    place_map.close()
    return top1


def evaluate(
    result: BuildResult,
    config: LoopClosureConfig,
    is_match: Callable[[int, int], bool],
    threshold: float,
) -> Evaluation:
    """Score top-1 loop-closure candidates of ``result`` against ground truth ``is_match(query, place)``.

    A keyframe's positives are the earlier keyframes outside the exclusion window (the detector's own
    cutoff) that ``is_match``; keyframes with any are the revisits (the recall denominator). Recall@1,
    the PR sweep and AP come from :mod:`tscm_ros.evaluation.metrics`.
    """
    top1 = top1_per_keyframe(result, config)
    stamps = [query for query, _, _ in top1]
    positives = positives_per_keyframe(stamps, config.exclusion_window_s, is_match)
    revisits = sum(len(p) > 0 for p in positives)
    matches = np.array([match for _, match, _ in top1], np.int64).reshape(-1, 1)
    has_match = matches[:, 0] >= 0
    # keyframes without a candidate make no decision: -inf scores are left out of the PR sweep
    similarity = np.where(has_match, [sim for _, _, sim in top1], -np.inf)
    correct = metrics.hits_matrix(matches, positives)[:, 0]
    reported_mask = has_match & (similarity >= threshold)
    reported = int(reported_mask.sum())
    n_correct = int((correct & reported_mask).sum())
    curve = metrics.precision_recall_curve(similarity, correct, revisits)
    if len(curve.thresholds):
        f1 = 2 * curve.precision * curve.recall / np.maximum(curve.precision + curve.recall, 1e-12)
        best = int(np.argmax(f1))
        best_f1, best_f1_threshold = float(f1[best]), float(curve.thresholds[best])
    else:  # no candidate at all: F1 0 at the highest (no-candidate) similarity, as before
        best_f1, best_f1_threshold = 0.0, float(max((sim for *_, sim in top1), default=float("nan")))
    return Evaluation(
        threshold=threshold,
        keyframes=len(top1),
        revisits=revisits,
        reported=reported,
        correct=n_correct,
        precision=n_correct / reported if reported else 0.0,
        recall=n_correct / revisits if revisits else 0.0,
        recall_at_1=metrics.recall_at_n(matches, positives, (1,))[1] if revisits else 0.0,
        average_precision=curve.average_precision if revisits else 0.0,
        best_f1=best_f1,
        best_f1_threshold=best_f1_threshold,
        pr_curve=tuple(
            (float(t), float(p), float(r))
            for t, p, r in zip(curve.thresholds, curve.precision, curve.recall, strict=True)
        ),
    )


def positives_per_keyframe(
    stamps: Sequence[int], exclusion_window_s: float, is_match: Callable[[int, int], bool]
) -> list[np.ndarray]:
    """Per keyframe stamp: the earlier keyframe stamps outside the exclusion window that ``is_match``."""
    exclusion_ns = round(exclusion_window_s * NS_PER_S)  # as PlaceMap.search cuts off
    return [
        np.array(
            [place for place in stamps if place <= query - exclusion_ns and is_match(query, place)], np.int64
        )
        for query in stamps
    ]


def evaluate_verified(
    result: BuildResult, config: LoopClosureConfig, is_match: Callable[[int, int], bool], min_inliers: int
) -> Evaluation:
    """Score the session's verified loop closures: a keyframe reports its best verified candidate.

    ``threshold`` is ``min_inliers``; the PR sweep varies the inlier count of each keyframe's best-verified
    candidate from there up; ``recall_at_1`` is R@1 after the verification re-rank (rank-0 candidate, verified
    or not, is correct), over the revisits.
    """
    stamps = [k.stamp_ns for k in result.keyframes]
    positives = positives_per_keyframe(stamps, config.exclusion_window_s, is_match)
    revisits = sum(len(p) > 0 for p in positives)
    by_query: dict[int, list] = {}
    for candidate in result.candidates:
        by_query.setdefault(candidate.query_stamp_ns, []).append(candidate)
    scores, correct, top1 = [], [], []
    for stamp in stamps:
        ranked = sorted(by_query.get(stamp, []), key=lambda c: c.rank)
        top1.append(ranked[0].match_stamp_ns if ranked else -1)
        verified = [c for c in ranked if c.verified]
        scores.append(float(verified[0].inliers) if verified else -np.inf)
        correct.append(bool(verified) and is_match(stamp, verified[0].match_stamp_ns))
    scores_array, correct_array = np.array(scores), np.array(correct, bool)
    reported_mask = scores_array >= min_inliers
    reported, n_correct = int(reported_mask.sum()), int((correct_array & reported_mask).sum())
    curve = metrics.precision_recall_curve(scores_array, correct_array, revisits)
    f1 = 2 * curve.precision * curve.recall / np.maximum(curve.precision + curve.recall, 1e-12)
    best = int(np.argmax(f1)) if len(curve.thresholds) else -1
    matches = np.array(top1, np.int64).reshape(-1, 1)
    return Evaluation(
        threshold=float(min_inliers),
        keyframes=len(stamps),
        revisits=revisits,
        reported=reported,
        correct=n_correct,
        precision=n_correct / reported if reported else 0.0,
        recall=n_correct / revisits if revisits else 0.0,
        recall_at_1=metrics.recall_at_n(matches, positives, (1,))[1] if revisits else 0.0,
        average_precision=curve.average_precision if revisits else 0.0,
        best_f1=float(f1[best]) if best >= 0 else 0.0,
        best_f1_threshold=float(curve.thresholds[best]) if best >= 0 else float(min_inliers),
        pr_curve=tuple(
            (float(t), float(p), float(r))
            for t, p, r in zip(curve.thresholds, curve.precision, curve.recall, strict=True)
        ),
    )


def write_match_pictures(result: BuildResult, is_match: Callable[[int, int], bool]) -> list[Path]:
    """``match_verified.png`` / ``match_rejected.png``: one correct verified closure and one rejected
    candidate, drawn from the thumbnails and features stored in the map."""
    from tscm_ros.features import LocalFeatures, decode_thumbnail
    from tscm_ros.verification import draw_matches

    correct = (c for c in result.candidates if c.verified and is_match(c.query_stamp_ns, c.match_stamp_ns))
    verified = next(correct, None)
    rejected = next(
        (c for c in result.candidates if c.verification is not None and not c.verified and c.inliers > 0),
        next((c for c in result.candidates if c.verification is not None and not c.verified), None),
    )
    written = []
    place_map = PlaceMap.load(result.map_dir)
    try:
        for name, candidate in (("match_verified.png", verified), ("match_rejected.png", rejected)):
            if candidate is None:
                continue
            ids = [candidate.query_id, candidate.match_id]
            blobs = place_map.get_features(ids)
            thumbnails = [place_map.get_thumbnail(i) for i in ids]
            if any(blobs.get(i) is None for i in ids) or any(t is None for t in thumbnails):
                continue
            picture = draw_matches(
                decode_thumbnail(thumbnails[0]), decode_thumbnail(thumbnails[1]),
                LocalFeatures.from_bytes(blobs[ids[0]]), LocalFeatures.from_bytes(blobs[ids[1]]),
                candidate.verification,
            )  # fmt: skip
            from PIL import Image

            Image.fromarray(picture).save(result.out_dir / name)
            written.append(result.out_dir / name)
    finally:
        place_map.close()
    return written


def write_pr_plot(path: Path, evaluation: Evaluation, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(5.5, 4.5), dpi=110)
    if evaluation.pr_curve:
        recall = [r for _, _, r in evaluation.pr_curve]
        precision = [p for _, p, _ in evaluation.pr_curve]
        axis.plot(recall, precision, "-", color="tab:blue", label=f"AP {evaluation.average_precision:.3f}")
    axis.plot(evaluation.recall, evaluation.precision, "o", color="tab:red",
              label=f"threshold {evaluation.threshold:.6f}")  # fmt: skip
    axis.set_xlim(0, 1.02)
    axis.set_ylim(0, 1.02)
    axis.set_xlabel("recall (revisits)")
    axis.set_ylabel("precision")
    axis.set_title(title, fontsize=9)
    axis.legend(loc="lower left", fontsize=8)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
    return path


def calibrate_threshold(top1: Sequence[tuple[int, int, float]], quantile: float = 0.95) -> float | None:
    """A threshold from the data, without ground truth: the first traversal sees (mostly) new places.

    Takes the ``quantile`` of the top-1 similarities of the first half of the keyframes (by time) -- in a
    two-traversal recording that half is the first traversal, whose best matches are mostly not revisits --
    so that only matches more similar than ~95 % of those count as loop closures. None when the first half
    has no candidate at all.
    """
    first_half = [similarity for _, match, similarity in top1[: len(top1) // 2] if match >= 0]
    if not first_half:
        return None
    return float(np.quantile(first_half, quantile))


@dataclass
class DemoResult:
    build: BuildResult
    evaluation: Evaluation
    model_note: str
    plots: list[Path]
    bag: Path
    seconds: float
    output: list[str]


def _prepare_bag_dir(out_dir: Path, identity: dict, overwrite: bool) -> tuple[Path, bool]:
    """(bag path, reuse?) -- reuse a bag this demo wrote with identical settings, refuse foreign ones."""
    bag = out_dir / BAG_DIR
    marker = out_dir / SCENE_JSON
    identity = json.loads(json.dumps(identity))  # tuples -> lists, as read back from the file
    if bag.exists():
        same = marker.is_file() and json.loads(marker.read_text()) == identity
        if same and not overwrite:
            return bag, True
        if not marker.is_file() and not overwrite:
            raise FileExistsError(f"{bag} exists and was not written by tscm_demo; use another --out")
        shutil.rmtree(bag)
    out_dir.mkdir(parents=True, exist_ok=True)
    return bag, False


def _emit(lines: list[str], text: str) -> None:
    lines.append(text)
    print(text, flush=True)


def _demo_config(
    params_file: Path | None,
    verify: bool,
    threshold: float | None,
    exclusion_window_s: float | None,
    sequence_length: int | None,
) -> tuple[RecognitionConfig, Path]:
    """The session settings of a demo run: the params file (the shipped one by default) in mapping mode,
    with the given overrides; and the params file used."""
    params_file = params_file or shipped_params_file()
    options = {**read_params_file(params_file), "mode": "mapping", "verify": verify}
    if threshold is not None:
        options["similarity_threshold"] = threshold
    if exclusion_window_s is not None:
        options["exclusion_window_s"] = exclusion_window_s
    if sequence_length is not None:
        options["sequence_length"] = sequence_length
    return RecognitionConfig.from_options(options), params_file


def _score(
    build: BuildResult,
    config: RecognitionConfig,
    is_match: Callable[[int, int], bool],
    threshold: float | None,
    verify: bool,
    output: list[str],
) -> tuple[float, Evaluation, Evaluation | None]:
    """Score retrieval alone at ``threshold`` (calibrated without ground truth when None or "auto") and,
    with ``verify``, the verified closures. Returns (threshold, retrieval, verified or None)."""
    detector = config.detector
    if threshold is None or threshold == "auto":
        calibrated = calibrate_threshold(top1_per_keyframe(build, detector))
        threshold = calibrated if calibrated is not None else 1.0
        how = (
            "95th percentile of the first half's top-1 similarities, no ground truth used"
            if calibrated is not None
            else "the first half had no candidates: nothing is reported"
        )
        _emit(output, f"similarity threshold {threshold:.6f} (auto: {how})")
    retrieval = evaluate(build, detector, is_match, threshold)
    verified = None
    if verify:
        verified = evaluate_verified(build, detector, is_match, config.verifier.min_inliers)
    return threshold, retrieval, verified


def _report_scores(
    output: list[str], truth_text: str, retrieval: Evaluation, verified: Evaluation | None, min_inliers: int
) -> None:
    _emit(output, f"ground truth: {truth_text}")
    _emit(output, "-- retrieval alone (top-1 cosine similarity at the threshold):")
    for line in retrieval.lines():
        _emit(output, "   " + line)
    if verified is not None:
        _emit(output, f"-- with geometric verification (best verified candidate, min_inliers {min_inliers}):")
        _emit(
            output,
            f"   {verified.reported} closures, {verified.correct} correct -> "
            f"precision {verified.precision:.3f}, recall {verified.recall:.3f}; "
            f"R@1 after re-rank {verified.recall_at_1:.3f}; "
            f"AP over min_inliers {verified.average_precision:.3f}",
        )


def _write_demo_plots(
    build: BuildResult,
    out_dir: Path,
    is_match: Callable[[int, int], bool],
    threshold: float,
    evaluation: Evaluation,
    title: str,
    verify: bool,
) -> list[Path]:
    """Map plot of what the console scores (each keyframe's best verified candidate, or its top-1 at the
    threshold), precision-recall plot and, with ``verify``, the match pictures."""
    shown = (
        [c for c in build.closures if c.rank == 0]
        if verify
        else [c for c in build.candidates if c.rank == 0 and c.similarity >= threshold]
    )
    correct = [is_match(c.query_stamp_ns, c.match_stamp_ns) for c in shown]
    plots = write_plots(out_dir, build.keyframes, shown, title=title, correct=correct, truth_band=is_match)
    plots.append(write_pr_plot(out_dir / PR_PNG, evaluation, title))
    if verify:
        plots.extend(write_match_pictures(build, is_match))
    return plots


def _detect_and_score(
    bag: Path,
    out_dir: Path,
    *,
    describer,
    note: str,
    threshold: float | None,
    exclusion_window_s: float | None,
    make_truth: Callable[[BuildResult], Callable[[int, int], bool]],
    truth_text: str,
    title: str,
    extra: dict,
    output: list[str],
    progress: bool,
    started: float,
    verify: bool = True,
    sequence_length: int | None = None,
    params_file: Path | None = None,
) -> tuple[BuildResult, Evaluation, list[Path]]:
    """Build the map from ``bag`` through the recognition session with the node's params file (the shipped
    ``config/place_recognition.yaml`` unless ``params_file``; ``threshold``, ``exclusion_window_s`` and
    ``sequence_length`` override it when given), score retrieval alone (top-1 similarity at a threshold
    calibrated without ground truth) and, with ``verify``, the verified loop closures; write
    csv/plots/pictures/summary."""
    _emit(output, note)
    config, params_file = _demo_config(params_file, verify, threshold, exclusion_window_s, sequence_length)
    override = f" (exclusion_window_s {exclusion_window_s:g} s for this data)" if exclusion_window_s else ""
    _emit(output, f"settings: {params_file}{override}")
    build = build_map_from_bag(bag, out_dir, describer=describer, config=config, progress=progress)
    _emit(output, build.summary())
    is_match = make_truth(build)
    threshold, retrieval, verified = _score(build, config, is_match, threshold, verify, output)
    _report_scores(output, truth_text, retrieval, verified, config.verifier.min_inliers)
    evaluation = verified if verified is not None else retrieval
    plots = _write_demo_plots(build, out_dir, is_match, threshold, evaluation, title, verify)
    for plot in plots:
        _emit(output, f"plot: {plot}")
    seconds = time.perf_counter() - started
    _emit(output, f"finished in {seconds:.1f} s")

    def scores(result: Evaluation) -> dict:
        return {k: v for k, v in dataclasses.asdict(result).items() if k != "pr_curve"}

    summary = {
        "model": note,
        **scores(evaluation),
        "retrieval": scores(retrieval),
        "verified": scores(verified) if verified else None,
        "sequence_length": config.sequence.length,
        "params_file": str(params_file),
        "frames": build.frames,
        "candidates": len(build.candidates),
        "closures": len(build.closures),
        "describe_ms_per_frame": 1000 * build.describe_seconds / max(build.frames, 1),
        "seconds": seconds,
        **extra,
    }
    (out_dir / SUMMARY_JSON).write_text(json.dumps(summary, indent=2, default=str))
    return build, evaluation, plots


def run_demo(
    out_dir: str | Path = DEFAULT_OUT,
    *,
    scene: SceneConfig | None = None,
    model: Path | None = None,
    untrained: bool = False,
    device: str = "auto",
    threshold: float | None = None,
    radius_m: float = 3.0,
    exclusion_window_s: float | None = None,
    overwrite: bool = False,
    progress: bool = True,
    describer=None,
    verify: bool = True,
    sequence_length: int | None = None,
    params_file: Path | None = None,
) -> DemoResult:
    """Procedural two-lap scene -> rosbag2 -> map + loop closures -> precision/recall against the poses.

    ``threshold`` None: calibrated from the first lap without ground truth (:func:`calibrate_threshold`).
    ``exclusion_window_s`` None: the params file's (shipped: 10 s, plus 10 m of odometry travel).
    """
    started = time.perf_counter()
    out_dir = Path(out_dir)
    scene = scene or SceneConfig()
    output: list[str] = []
    identity = {"scene": dataclasses.asdict(scene), "format": 2}  # 2: camera_info + depth topics
    bag, reuse = _prepare_bag_dir(out_dir, identity, overwrite)
    if reuse:
        _emit(output, f"reusing the demo bag {bag} (same scene settings)")
    else:
        size = f"{scene.width}x{scene.height}"
        _emit(
            output, f"rendering {scene.laps} laps x {scene.frames_per_lap} frames ({size}) -> rosbag2 {bag}"
        )
        world = build_world(scene)
        poses = [
            (sample.stamp_ns, Pose(sample.position, sample.orientation, "map"))
            for sample in plan_trajectory(scene, world)
        ]
        images = (
            (frame.stamp_ns, frame.rgb, frame.depth) for frame in generate_frames(scene, world, depth=True)
        )
        write_image_bag(
            bag,
            images,
            poses=poses,
            pose_topic="/odom",
            frame_id="camera",
            camera_info=scene_intrinsics(scene),
        )
        (out_dir / SCENE_JSON).write_text(json.dumps(identity, indent=2))
    if describer is None:
        describer, note = make_describer(model, untrained=untrained, device=device)
    else:
        note = f"model: {describer.label}"

    def make_truth(build: BuildResult) -> Callable[[int, int], bool]:
        poses = {int(s): p for s, p in zip(build.frame_stamps_ns, build.frame_poses, strict=True) if p}

        def is_match(query_ns: int, place_ns: int) -> bool:
            query, place = poses.get(query_ns), poses.get(place_ns)
            return query is not None and place is not None and query.distance_to(place) <= radius_m

        return is_match

    build, evaluation, plots = _detect_and_score(
        bag, out_dir, describer=describer, note=note, threshold=threshold,
        exclusion_window_s=exclusion_window_s,
        make_truth=make_truth,
        truth_text=f"a candidate is correct when the matched place is within {radius_m:g} m of the query",
        title=f"demo scene, {describer.label}, R={radius_m:g} m",
        extra={"radius_m": radius_m, "scene": identity}, output=output, progress=progress, started=started,
        verify=verify, sequence_length=sequence_length, params_file=params_file,
    )  # fmt: skip
    return DemoResult(build, evaluation, note, plots, bag, time.perf_counter() - started, output)


def run_corridor(
    corridor: str | Path,
    out_dir: str | Path = DEFAULT_OUT / "corridor",
    *,
    model: Path | None = None,
    untrained: bool = False,
    device: str = "auto",
    threshold: float | None = None,
    tolerance: int = 2,
    exclusion_window_s: float | None = None,
    overwrite: bool = False,
    progress: bool = True,
    describer=None,
    verify: bool = True,
    sequence_length: int | None = None,
    params_file: Path | None = None,
    limit: int | None = None,
) -> DemoResult:
    """Real images: ``ref/`` then ``query/`` of a VPR-Bench style folder as one 5 Hz stream, no poses.

    Ground truth: query i matches ref j when ``|i - j| <= tolerance``. ``exclusion_window_s`` None: 90 % of
    the reference traversal, so the query traversal does not match its own past (only the references).
    """
    from tscm_ros.images import decode_image_bytes

    started = time.perf_counter()
    corridor, out_dir = Path(corridor), Path(out_dir)
    refs, queries = list_images(corridor / "ref"), list_images(corridor / "query")
    if limit:
        refs, queries = refs[:limit], queries[:limit]
    output: list[str] = []
    period = NS_PER_S // 5
    start = 1_700_000_000 * NS_PER_S
    labels: dict[int, tuple[str, int]] = {}
    stream = []
    for group, files in (("ref", refs), ("query", queries)):
        for index, path in enumerate(files):
            stamp = start + len(stream) * period
            labels[stamp] = (group, index)
            stream.append((stamp, path))
    identity = {"corridor": str(corridor.resolve()), "files": len(stream), "format": 1}
    bag, reuse = _prepare_bag_dir(out_dir, identity, overwrite)
    if reuse:
        _emit(output, f"reusing the corridor bag {bag}")
    else:
        _emit(output, f"writing {len(refs)} ref + {len(queries)} query images as a 5 Hz rosbag2 {bag}")
        write_image_bag(bag, ((stamp, decode_image_bytes(path.read_bytes())) for stamp, path in stream))
        (out_dir / SCENE_JSON).write_text(json.dumps(identity, indent=2))
    if describer is None:
        describer, note = make_describer(model, untrained=untrained, device=device)
    else:
        note = f"model: {describer.label}"

    def make_truth(build: BuildResult) -> Callable[[int, int], bool]:
        def is_match(query_ns: int, place_ns: int) -> bool:
            query, place = labels.get(query_ns), labels.get(place_ns)
            if query is None or place is None:
                return False
            return query[0] == "query" and place[0] == "ref" and abs(query[1] - place[1]) <= tolerance

        return is_match

    build, evaluation, plots = _detect_and_score(
        bag, out_dir, describer=describer, note=note, threshold=threshold,
        exclusion_window_s=exclusion_window_s if exclusion_window_s is not None else 0.9 * len(refs) / 5,
        make_truth=make_truth,
        truth_text=f"query i matches ref j when |i - j| <= {tolerance} (the dataset's convention)",
        title=f"corridor, {describer.label}, |i-j|<={tolerance}",
        extra={"tolerance": tolerance, "source": identity}, output=output, progress=progress, started=started,
        verify=verify, sequence_length=sequence_length, params_file=params_file,
    )  # fmt: skip
    return DemoResult(build, evaluation, note, plots, bag, time.perf_counter() - started, output)
