"""Loop-closure verification benchmark: speed, storage, Corridor and demo-scene re-ranking (prints tables).

Sections (all by default, or pick with ``--only``):

* ``speed``    -- feature extraction ms per keyframe at 640x480 (RootSIFT, ORB), verification ms per
  candidate from stored features (``from_bytes`` + ``verify``), bytes per keyframe and per thumbnail.
* ``corridor`` -- VPR-Bench Corridor (../shared): seeded untrained student top-10 by cosine, re-ranked by
  verification (fundamental matrix: no intrinsics); R@N before/after, precision/recall over min_inliers
  and with the default acceptance rule.
* ``demo``     -- the procedural demo scene (SceneConfig defaults, two laps, frames rendered directly):
  each frame queries the earlier frames outside the last third of a lap (as the demo does), top-10 by
  the seeded student's cosine, re-ranked; truth = within 3 m. With depth on the stored keyframes (PnP)
  and without (essential matrix).
* ``calibrate`` -- the data behind :class:`~tscm_ros.verification.VerifierConfig`'s default acceptance
  rule, WITHOUT Corridor: inlier counts / ratios of true and wrong pairs on vpr_triplets (all 435 pairs,
  fundamental matrix) and the demo scene (every 3rd lap-2 frame x every lap-1 frame, E and PnP).

``--figures DIR`` writes :func:`~tscm_ros.verification.draw_matches` figures (verified and rejected
candidates on Corridor, the demo scene and vpr_triplets).

    PYTHONPATH=. python benchmarks/verification.py
    PYTHONPATH=. python benchmarks/verification.py --only calibrate
    PYTHONPATH=. python benchmarks/verification.py --only speed,demo --figures /tmp/verify_figures
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import itertools
import os
import sys
import time
from pathlib import Path

import cv2
import numpy as np

from tscm_ros.demo.scene import SceneConfig, build_world, plan_trajectory, render_with_depth, scene_intrinsics
from tscm_ros.evaluation import metrics
from tscm_ros.features import FeatureConfig, FeatureExtractor, LocalFeatures, make_thumbnail
from tscm_ros.image_files import read_rgb
from tscm_ros.pipelines.rerank import (
    accepted_precision_recall,
    inlier_sweep,
    rerank_features,
    rerank_with_verification,
)
from tscm_ros.verification import Verifier, VerifierConfig, draw_matches

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("TSCM_SHARED_DIR", REPO.parent / "shared"))
SWEEP = (10, 12, 15, 20, 25, 30, 40, 50)
RADIUS_M = 3.0
CALIBRATION_STEPS = (15, 20, 25, 30)
LOOSE = Verifier(VerifierConfig(min_inliers=1, min_inlier_ratio=0.0))  # model inliers, no acceptance rule


def table(header: list[str], rows: list[list]) -> str:
    def cell(v) -> str:
        return f"{v:.3f}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def timed(function, repeats: int) -> tuple[float, float]:
    """(median, min) milliseconds of ``function()`` over ``repeats`` calls."""
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        times.append(1000 * (time.perf_counter() - started))
    return float(np.median(times)), float(np.min(times))


def sweep_rows(best_inliers, correct, n_positive) -> list[list]:
    return [
        [r["min_inliers"], r["accepted"], r["precision"], r["recall"]]
        for r in inlier_sweep(best_inliers, correct, n_positive, SWEEP)
    ]


# --------------------------------------------------------------------------------------------- speed


def speed(repeats: int) -> None:
    config = SceneConfig(width=640, height=480)
    world = build_world(config)
    intrinsics = scene_intrinsics(config)
    position, yaw = world.route_pose(20.0)
    query_rgb, _ = render_with_depth(world, position, yaw)
    position, yaw = world.route_pose(21.5)
    match_rgb, match_depth = render_with_depth(world, position + [0.0, 0.3], yaw + 0.05)
    images = [("demo scene 640x480", query_rgb, match_rgb, match_depth)]
    triplet = SHARED / "data" / "vpr_triplets" / "p4"
    if triplet.is_dir():
        files = sorted(triplet.rglob("*.jpg"))[:2]
        real = [cv2.resize(read_rgb(f), (640, 480), interpolation=cv2.INTER_AREA) for f in files]
        images.append(("vpr_triplets p4 640x480", real[0], real[1], None))
    rows = []
    for (label, query_rgb, match_rgb, depth), method in itertools.product(images, ("sift", "orb")):
        extractor = FeatureExtractor(FeatureConfig(method=method))
        extract_ms, extract_min = timed(lambda: extractor.extract(query_rgb), repeats)  # noqa: B023
        query = extractor.extract(query_rgb)
        k = intrinsics if depth is not None else None
        match = extractor.extract(match_rgb, depth=depth, intrinsics=k)
        blob = match.to_bytes()
        verifier = Verifier()
        result = verifier.verify(query, match, intrinsics=k)

        def stored(blob=blob, query=query, k=k, verifier=verifier):
            return verifier.verify(query, LocalFeatures.from_bytes(blob), intrinsics=k)

        verify_ms, verify_min = timed(stored, repeats * 3)
        thumbnail = len(make_thumbnail(match_rgb))
        rows.append([
            label, method, len(query), f"{extract_ms:.1f} ({extract_min:.1f})",
            f"{verify_ms:.2f} ({verify_min:.2f})", f"{result.model} {result.inliers}/{result.matches}",
            len(blob), thumbnail,
        ])  # fmt: skip
    print("\n## Speed and size (median (min) ms; 1 process, machine shared with other jobs)\n")
    print(
        table(
            [
                "image",
                "method",
                "keypoints",
                "extract ms",
                "verify ms (stored)",
                "result",
                "feature bytes",
                "thumbnail bytes",
            ],
            rows,
        )  # fmt: skip
    )
    print("\nfeature bytes: 24 header + N x (8 keypoint + 128 RootSIFT | 32 ORB + 12 if 3-D points) + 4 CRC")


# ------------------------------------------------------------------------------------------ corridor


def corridor(top_k: int, figures: Path | None) -> None:
    from tscm_ros.data.registry import load_dataset
    from tscm_ros.describer import create_describer, describe_files

    folder = SHARED / "data" / "corridor"
    if not folder.is_dir():
        print(f"\n## Corridor: skipped ({folder} missing)")
        return
    dataset = load_dataset(f"corridor:{folder}")
    positives = dataset.positives["gt"]
    describer = create_describer(None, device="cpu")
    database = describe_files(describer, dataset.database)
    queries = describe_files(describer, dataset.queries)
    _, ranked = metrics.exact_search(database, queries, top_k)
    print(f"\n## Corridor ({len(dataset.queries)} queries, {describer.label}, top-{top_k} re-ranked)\n")
    rows = []
    for method in ("sift", "orb"):
        result = rerank_with_verification(
            dataset.database, dataset.queries, ranked, feature_config=FeatureConfig(method=method)
        )
        before = metrics.recall_at_n(ranked, positives, (1, 5, 10))
        after = metrics.recall_at_n(result.ranked, positives, (1, 5, 10))
        correct = metrics.hits_matrix(result.ranked, positives)[:, 0]
        default = accepted_precision_recall(result.best_verified, correct, len(positives))
        rows.append([
            method, before[1], after[1], after[5], default["precision"], default["recall"],
            f"{result.ms_per_extraction:.1f}", f"{result.ms_per_verification:.2f}",
        ])  # fmt: skip
        print(f"### {method}: precision / recall of the re-ranked top-1 over min_inliers\n")
        print(
            table(
                ["min_inliers", "accepted", "precision", "recall"],
                sweep_rows(result.best_inliers, correct, len(positives)),
            )
        )
        print()
        if figures is not None and method == "sift":
            corridor_figures(dataset, result, positives, figures)
    print(
        table(
            [
                "method",
                "R@1 cosine",
                "R@1 re-ranked",
                "R@5 re-ranked",
                "P default rule",
                "R default rule",
                "extract ms",
                "verify ms",
            ],
            rows,
        )  # fmt: skip
    )


def corridor_figures(dataset, result, positives, out: Path) -> None:
    """A verified correct top-1, the strongest rejected wrong candidate and a verified wrong top-1."""
    hits = metrics.hits_matrix(result.ranked, positives)
    picks = []
    right = np.flatnonzero(result.verified[:, 0] & hits[:, 0])
    if right.size:
        picks.append(("corridor_verified", int(right[len(right) // 2]), 0))
    rejected_wrong = np.where(~result.verified & ~hits & (result.ranked >= 0), result.inliers, -1)
    q, column = np.unravel_index(int(np.argmax(rejected_wrong)), rejected_wrong.shape)
    picks.append(("corridor_rejected_wrong", int(q), int(column)))
    false_positive = np.flatnonzero(result.verified[:, 0] & ~hits[:, 0])
    if false_positive.size:
        picks.append(("corridor_false_positive", int(false_positive[0]), 0))
    save_figures(picks, lambda q, c: (dataset.queries[q], dataset.database[result.ranked[q, c]]), out)


def figure(query_rgb, match_rgb, query: LocalFeatures, match: LocalFeatures, intrinsics=None) -> np.ndarray:
    """draw_matches with the default decision; a rejected pair shows the model's inliers without the
    acceptance rule (what the rule turned down) and the default rule's reason."""
    decision = Verifier().verify(query, match, intrinsics=intrinsics)
    if not decision.verified:
        loose = LOOSE.verify(query, match, intrinsics=intrinsics)
        decision = dataclasses.replace(loose, verified=False, reason=decision.reason)
    return cv2.cvtColor(draw_matches(query_rgb, match_rgb, query, match, decision), cv2.COLOR_RGB2BGR)


def save_figures(picks, paths, out: Path) -> None:
    extractor = FeatureExtractor()
    for name, q, column in picks:
        query_path, match_path = paths(q, column)
        query_rgb, match_rgb = read_rgb(query_path), read_rgb(match_path)
        query, match = extractor.extract(query_rgb), extractor.extract(match_rgb)
        cv2.imwrite(str(out / f"{name}.png"), figure(query_rgb, match_rgb, query, match))
        print(f"figure {out / name}.png: query {Path(query_path).name} vs {Path(match_path).name}")


# ---------------------------------------------------------------------------------------------- demo


def demo_scene():
    """Render SceneConfig() (both laps, lap-2 lighting and noise as in generate_frames) with depth."""
    config = SceneConfig()
    world = build_world(config)
    noise = np.random.default_rng(config.seed + 2)  # the same noise stream as generate_frames
    frames, depths, positions = [], [], []
    for sample in plan_trajectory(config, world):
        changed = sample.lap >= 1
        brightness = config.brightness if changed else 1.0
        rgb, depth = render_with_depth(
            world, np.array(sample.position[:2]), sample.yaw, brightness=brightness
        )
        if changed and config.noise_sigma > 0:
            rgb = np.clip(rgb + noise.normal(0.0, config.noise_sigma, size=rgb.shape), 0, 255)
            rgb = rgb.astype(np.uint8)
        frames.append(rgb)
        depths.append(depth)
        positions.append(sample.position[:2])
    return config, scene_intrinsics(config), frames, depths, np.array(positions)


def scene_features(frames, depths, intrinsics, method: str = "sift"):
    """Features with 3-D points (stored keyframes with depth) and the same without them."""
    extractor = FeatureExtractor(FeatureConfig(method=method))
    with_points = [
        extractor.extract(rgb, depth=d, intrinsics=intrinsics) for rgb, d in zip(frames, depths, strict=True)
    ]
    plain = [LocalFeatures(f.keypoints, f.descriptors, f.image_size, f.method) for f in with_points]
    return with_points, plain


def demo(top_k: int, figures: Path | None) -> None:
    from scipy.spatial import cKDTree

    from tscm_ros.describer import create_describer

    config, intrinsics, frames, depths, positions = demo_scene()
    with_points, plain = scene_features(frames, depths, intrinsics)
    describer = create_describer(None, device="cpu")
    descriptors = describer.describe(frames)
    exclusion = config.frames_per_lap // 3
    n = len(frames)
    similarity = descriptors @ descriptors.T
    ranked = np.full((n, top_k), -1, np.int64)
    top_similarity = np.full(n, -np.inf)
    for q in range(exclusion + 1, n):
        candidates = np.arange(q - exclusion)
        order = candidates[np.argsort(-similarity[q, candidates], kind="stable")[:top_k]]
        ranked[q, : len(order)] = order
        top_similarity[q] = similarity[q, order[0]]
    tree = cKDTree(positions)
    has_loop = np.array(
        [any(j < i - exclusion for j in tree.query_ball_point(positions[i], RADIUS_M)) for i in range(n)]
    )
    queries = np.flatnonzero(ranked[:, 0] >= 0)
    n_positive = int(has_loop.sum())

    def correct_of(rows: np.ndarray) -> np.ndarray:
        return np.linalg.norm(positions[queries] - positions[rows[:, 0]], axis=1) <= RADIUS_M

    before = correct_of(ranked[queries])
    cosine = metrics.precision_recall_curve(top_similarity[queries], before, n_positive)
    high = cosine.recall[cosine.precision >= 0.95]
    print(
        f"\n## Demo scene ({n} frames, {len(queries)} queries, {n_positive} with a true loop within "
        f"{RADIUS_M:g} m; {describer.label}; top-{top_k}; exclusion {exclusion} frames)\n"
    )
    print(f"cosine top-1 alone: R@1 {before.sum() / n_positive:.3f}, max recall at precision >= 0.95: "
          f"{float(high.max()) if high.size else 0.0:.3f}\n")  # fmt: skip
    rows = []
    orb_points, orb_plain = scene_features(frames, depths, intrinsics, "orb")
    for label, query_features, stored, k in (
        ("sift PnP (keyframes with depth)", plain, with_points, intrinsics),
        ("sift essential (no depth)", plain, plain, intrinsics),
        ("sift fundamental (no intrinsics)", plain, plain, None),
        ("orb PnP (keyframes with depth)", orb_plain, orb_points, intrinsics),
        ("orb essential (no depth)", orb_plain, orb_plain, intrinsics),
    ):
        result = rerank_features([query_features[q] for q in queries], stored, ranked[queries], intrinsics=k)
        after = correct_of(result.ranked)
        default = accepted_precision_recall(result.best_verified, after, n_positive)
        sweep = sweep_rows(result.best_inliers, after, n_positive)
        rows.append([label, before.sum() / n_positive, after.sum() / n_positive, default["precision"],
                     default["recall"], f"{result.ms_per_verification:.2f}"])  # fmt: skip
        print(f"### {label}: precision / recall over min_inliers\n")
        print(table(["min_inliers", "accepted", "precision", "recall"], sweep))
        print()
    print(
        table(["model", "R@1 cosine", "R@1 re-ranked", "P default rule", "R default rule", "verify ms"], rows)
    )
    if figures is not None:
        q = config.frames_per_lap + 10  # a lap-2 frame
        nearest = int(np.argmin(np.linalg.norm(positions[: config.frames_per_lap] - positions[q], axis=1)))
        far = np.linalg.norm(positions[: q - exclusion] - positions[q], axis=1) > 10
        # the far frame (> 10 m) this query shares most inliers with: the hardest wrong candidate
        scores = [LOOSE.verify(plain[q], with_points[m], intrinsics=intrinsics).inliers if far[m] else -1
                  for m in range(q - exclusion)]  # fmt: skip
        for name, m in (("demo_pnp_verified", nearest), ("demo_rejected_wrong", int(np.argmax(scores)))):
            image = figure(frames[q], frames[m], plain[q], with_points[m], intrinsics)
            cv2.imwrite(str(figures / f"{name}.png"), image)
            metres = np.linalg.norm(positions[q] - positions[m])
            print(f"figure {figures / name}.png: frame {q} vs {m} ({metres:.1f} m apart)")


# ----------------------------------------------------------------------------------------- calibrate


def describe_distribution(
    label: str, inliers: np.ndarray, ratios: np.ndarray, groups: dict[str, np.ndarray]
) -> list:
    rows = []
    for name, mask in groups.items():
        if not mask.any():
            continue
        values, r = inliers[mask], ratios[mask]
        accepted = values >= 20
        ratio_cells = (
            [f"{np.median(r[accepted]):.2f}", f"{r[accepted].min():.2f}"] if accepted.any() else ["-", "-"]
        )
        rows.append([
            label, name, int(mask.sum()), int(np.median(values)), int(np.percentile(values, 99)),
            int(values.max()), *(f"{(values >= t).mean():.4f}" for t in CALIBRATION_STEPS), *ratio_cells,
        ])  # fmt: skip
    return rows


def calibrate() -> None:
    verifier = LOOSE
    rows = []
    triplets = SHARED / "data" / "vpr_triplets"
    if triplets.is_dir():
        with open(triplets / "ground_truth.csv", newline="") as stream:
            entries = list(csv.DictReader(stream))
        extractor = FeatureExtractor()
        features = [extractor.extract(read_rgb(triplets / e["file"])) for e in entries]
        pairs = list(itertools.combinations(range(len(entries)), 2))
        results = [verifier.verify(features[i], features[j]) for i, j in pairs]
        same = np.array([entries[i]["place_id"] == entries[j]["place_id"] for i, j in pairs])
        inliers = np.array([r.inliers for r in results])
        ratios = np.array([r.inlier_ratio for r in results])
        rows += describe_distribution(
            "vpr_triplets F", inliers, ratios, {"same place": same, "other place": ~same}
        )
    config, intrinsics, frames, depths, positions = demo_scene()
    with_points, plain = scene_features(frames, depths, intrinsics)
    lap = config.frames_per_lap
    pairs = [(q, m) for q in range(lap, 2 * lap, 3) for m in range(lap)]
    distance = np.array([np.linalg.norm(positions[q] - positions[m]) for q, m in pairs])
    groups = {"<= 3 m": distance <= 3, "3-10 m": (distance > 3) & (distance <= 10), "> 10 m": distance > 10}
    for label, stored in (("demo PnP", with_points), ("demo E", plain)):
        results = [verifier.verify(plain[q], stored[m], intrinsics=intrinsics) for q, m in pairs]
        inliers = np.array([r.inliers for r in results])
        ratios = np.array([r.inlier_ratio for r in results])
        rows += describe_distribution(label, inliers, ratios, groups)
    print("\n## Calibration data for the default acceptance rule (no Corridor)\n")
    print(
        table(
            [
                "data",
                "pairs",
                "n",
                "median inliers",
                "p99",
                "max",
                *(f">= {t}" for t in CALIBRATION_STEPS),
                "median ratio (>= 20)",
                "min ratio (>= 20)",
            ],
            rows,
        )  # fmt: skip
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--only", default="speed,corridor,demo", help="comma list of speed,corridor,demo,calibrate"
    )
    parser.add_argument("--top-k", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--figures", type=Path, help="write draw_matches figures (PNG) into this folder")
    args = parser.parse_args(argv)
    sections = {s.strip() for s in args.only.split(",") if s.strip()}
    unknown = sections - {"speed", "corridor", "demo", "calibrate"}
    if unknown:
        parser.error(f"unknown sections {sorted(unknown)}")
    if args.figures:
        args.figures.mkdir(parents=True, exist_ok=True)
    print(f"# Verification benchmark (OpenCV {cv2.__version__}, {os.cpu_count()} CPUs)")
    if "speed" in sections:
        speed(args.repeats)
    if "calibrate" in sections:
        calibrate()
    if "corridor" in sections:
        corridor(args.top_k, args.figures)
    if "demo" in sections:
        demo(args.top_k, args.figures)
    return 0


if __name__ == "__main__":
    sys.exit(main())
