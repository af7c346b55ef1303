"""Geometric verification: relative pose vs known scene poses, rejections with reasons, determinism,
drawing, and Corridor re-ranking with the seeded student."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import cv2
import numpy as np
import pytest

from tscm_ros.demo.scene import SceneConfig, build_world, render_with_depth, scene_intrinsics
from tscm_ros.features import FeatureConfig, FeatureExtractor, LocalFeatures, decode_thumbnail, make_thumbnail
from tscm_ros.verification import (
    REJECT_REASONS,
    Verification,
    Verifier,
    VerifierConfig,
    draw_matches,
    match_descriptors,
    matrix_to_quaternion,
    quaternion_to_matrix,
)

SCENE = SceneConfig(width=640, height=480)
CAMERA_HEIGHT = SCENE.wall_height / 2


def optical_to_world(yaw: float) -> np.ndarray:
    """Columns: the optical axes (x right, y down, z forward) in the world of a camera heading ``yaw``."""
    forward = np.array([math.cos(yaw), math.sin(yaw), 0.0])
    left = np.array([-math.sin(yaw), math.cos(yaw), 0.0])
    return np.stack([-left, [0.0, 0.0, -1.0], forward], axis=1)


def true_relative_pose(query_pose, match_pose) -> tuple[np.ndarray, np.ndarray]:
    """T_query_match from two (x, y, yaw) camera poses: X_query = R @ X_match + t."""
    (xq, yq, yaw_q), (xm, ym, yaw_m) = query_pose, match_pose
    r_wq, r_wm = optical_to_world(yaw_q), optical_to_world(yaw_m)
    c_q, c_m = np.array([xq, yq, CAMERA_HEIGHT]), np.array([xm, ym, CAMERA_HEIGHT])
    return r_wq.T @ r_wm, r_wq.T @ (c_m - c_q)


def angle_deg(a: np.ndarray, b: np.ndarray) -> float:
    return math.degrees(math.acos(np.clip(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)), -1.0, 1.0)))


def rotation_error_deg(r: np.ndarray, r_true: np.ndarray) -> float:
    return math.degrees(math.acos(np.clip((np.trace(r.T @ r_true) - 1) / 2, -1.0, 1.0)))


@pytest.fixture(scope="module")
def scene():
    world = build_world(SCENE)
    return world, scene_intrinsics(SCENE), FeatureExtractor()


def scene_pair(scene, s: float, *, ahead: float = 1.5, lateral: float = 0.4, yaw_deg: float = 5.0):
    """Query at route position ``s``; match ``ahead`` m further, ``lateral`` m to the left, yawed."""
    world, intrinsics, extractor = scene
    position, yaw = world.route_pose(s)
    match_position, match_yaw = world.route_pose(s + ahead)
    match_position = match_position + lateral * np.array([-math.sin(match_yaw), math.cos(match_yaw)])
    match_yaw += math.radians(yaw_deg)
    query_rgb, _ = render_with_depth(world, position, yaw)
    match_rgb, match_depth = render_with_depth(world, match_position, match_yaw)
    query = extractor.extract(query_rgb)
    match_plain = extractor.extract(match_rgb)
    match_3d = extractor.extract(match_rgb, depth=match_depth, intrinsics=intrinsics)
    truth = true_relative_pose((*position, yaw), (*match_position, match_yaw))
    return query, match_plain, match_3d, truth, (query_rgb, match_rgb)


# ------------------------------------------------------------------------------------------- geometry


@pytest.mark.parametrize("s", [20.0, 30.0, 90.0])
def test_essential_and_pnp_recover_the_known_relative_pose(scene, s):
    _, intrinsics, _ = scene
    query, match_plain, match_3d, (r_true, t_true), _ = scene_pair(scene, s)
    verifier = Verifier()

    essential = verifier.verify(query, match_plain, intrinsics=intrinsics)
    assert essential.verified and essential.model == "essential" and not essential.scale_known
    assert rotation_error_deg(essential.rotation_matrix, r_true) < 2.0
    t = np.array(essential.translation)
    assert np.linalg.norm(t) == pytest.approx(1.0)
    assert angle_deg(t, t_true) < 5.0

    pnp = verifier.verify(query, match_3d, intrinsics=intrinsics)
    assert pnp.verified and pnp.model == "pnp" and pnp.scale_known
    assert rotation_error_deg(pnp.rotation_matrix, r_true) < 2.0
    t = np.array(pnp.translation)
    assert abs(np.linalg.norm(t) - np.linalg.norm(t_true)) < 0.05 * np.linalg.norm(t_true)
    assert angle_deg(t, t_true) < 5.0

    fundamental = verifier.verify(query, match_plain, intrinsics=None)
    assert fundamental.verified and fundamental.model == "fundamental"
    assert (
        fundamental.rotation_xyzw is None and fundamental.translation is None and not fundamental.scale_known
    )


def test_pose_convention_is_match_camera_in_query_frame(scene):
    """The match camera 1.5 m straight ahead: its centre is at +z (forward) of the query optical frame."""
    _, intrinsics, _ = scene
    query, _, match_3d, (_, t_true), _ = scene_pair(scene, 30.0, lateral=0.0, yaw_deg=0.0)
    result = Verifier().verify(query, match_3d, intrinsics=intrinsics)
    assert result.model == "pnp"
    np.testing.assert_allclose(result.translation, [0.0, 0.0, 1.5], atol=0.08)
    np.testing.assert_allclose(t_true, [0.0, 0.0, 1.5], atol=1e-9)


def test_quaternion_round_trip():
    rng = np.random.default_rng(0)
    for _ in range(20):
        rotation, _ = cv2.Rodrigues(rng.normal(size=3))
        q = matrix_to_quaternion(rotation)
        assert q[3] >= 0 and np.linalg.norm(q) == pytest.approx(1.0)
        np.testing.assert_allclose(quaternion_to_matrix(q), rotation, atol=1e-9)


# ------------------------------------------------------------------------------------------- rejections


def _pair(scene):
    query, match_plain, match_3d, _, _ = scene_pair(scene, 30.0)
    return query, match_plain, match_3d


def test_bad_inputs_are_rejected_with_a_reason_never_raised(scene):
    _, intrinsics, _ = scene
    query, match, match_3d = _pair(scene)
    verifier = Verifier()
    empty = LocalFeatures(np.zeros((0, 2)), np.zeros((0, 128), np.uint8), (640, 480), "sift")
    orb = FeatureExtractor(FeatureConfig(method="orb")).extract(
        render_with_depth(scene[0], *scene[0].route_pose(30))[0]
    )
    few = LocalFeatures(query.keypoints[:12], query.descriptors[:12], query.image_size, "sift")
    one_point = dataclasses.replace(match, keypoints=np.full_like(match.keypoints, 100.0))
    on_a_line = match.keypoints.copy()
    on_a_line[:, 1] = 200.0
    rng = np.random.default_rng(0)
    scrambled = dataclasses.replace(match, keypoints=rng.permutation(match.keypoints))
    cases = {
        "no_keypoints": [(empty, match, intrinsics), (query, empty, None)],
        "method_mismatch": [(query, orb, intrinsics), (orb, match, None)],
        "few_matches": [(few, match, intrinsics), (few, match, None)],
        "degenerate": [
            (query, one_point, intrinsics), (query, one_point, None),
            (query, dataclasses.replace(match, keypoints=on_a_line), intrinsics),
        ],
        "few_inliers": [(query, scrambled, intrinsics)],
    }  # fmt: skip
    for reason, pairs in cases.items():
        assert reason in REJECT_REASONS
        for q, m, k in pairs:
            result = verifier.verify(q, m, intrinsics=k)
            assert isinstance(result, Verification)
            assert not result.verified and result.reason == reason, (reason, result)
            assert result.rotation_xyzw is None or reason == "few_inliers"
    # random geometry fits a fundamental matrix with ~25 % inliers: the ratio rule rejects it
    result = verifier.verify(query, scrambled, intrinsics=None)
    assert not result.verified and result.reason in ("few_inliers", "low_inlier_ratio")


def test_low_inlier_ratio(scene):
    _, intrinsics, _ = scene
    query, match, _ = _pair(scene)
    keypoints = match.keypoints.copy()
    rng = np.random.default_rng(1)
    moved = rng.permutation(len(keypoints))[: int(0.6 * len(keypoints))]
    keypoints[moved] = keypoints[rng.permutation(moved)]
    partly_scrambled = dataclasses.replace(match, keypoints=keypoints)
    result = Verifier(VerifierConfig(min_inliers=10, min_inlier_ratio=0.6)).verify(
        query, partly_scrambled, intrinsics=intrinsics
    )
    assert not result.verified and result.reason == "low_inlier_ratio"
    assert result.inliers >= 10 and result.inlier_ratio < 0.6
    assert len(result.inlier_pairs) == result.inliers


def test_invalid_depth_falls_back_to_the_essential_matrix(scene):
    _, intrinsics, _ = scene
    query, _, match_3d = _pair(scene)
    verifier = Verifier()
    all_nan = dataclasses.replace(match_3d, points=np.full_like(match_3d.points, np.nan))
    result = verifier.verify(query, all_nan, intrinsics=intrinsics)
    assert result.verified and result.model == "essential" and not result.scale_known
    half = match_3d.points.copy()
    half[::2] = np.nan
    result = verifier.verify(query, dataclasses.replace(match_3d, points=half), intrinsics=intrinsics)
    assert result.verified and result.model == "pnp" and result.scale_known
    # 3-D points but no intrinsics: nothing to project with -> fundamental matrix
    assert verifier.verify(query, match_3d, intrinsics=None).model == "fundamental"
    # negative depth is as invalid as NaN
    behind = dataclasses.replace(match_3d, points=match_3d.points * np.float32(-1.0))
    assert verifier.verify(query, behind, intrinsics=intrinsics).model == "essential"


def test_verifier_config_validation():
    for field, value in (
        ("min_inliers", 0), ("min_inlier_ratio", 1.5), ("ratio_test", 0.0), ("mutual", 1),
        ("ransac_threshold_px", 0.0), ("pnp_threshold_px", math.nan), ("fundamental_threshold_px", -1.0),
        ("confidence", 1.0), ("max_iterations", 0), ("seed", -1), ("pnp_min_points", 5), ("min_inliers", 2.5),
    ):  # fmt: skip
        with pytest.raises(ValueError, match=field):
            VerifierConfig(**{field: value})


# ---------------------------------------------------------------------------------------- determinism


def test_same_inputs_give_the_same_decision_and_pose(scene):
    _, intrinsics, _ = scene
    query, match, match_3d = _pair(scene)
    # blobs: what a keyframe store hands back
    stored = LocalFeatures.from_bytes(match.to_bytes()), LocalFeatures.from_bytes(match_3d.to_bytes())
    for m, k in ((stored[0], intrinsics), (stored[1], intrinsics), (stored[0], None)):
        results = []
        for attempt in range(5):
            cv2.setRNGSeed(1000 + attempt)  # whatever the global RNG state was before
            np.random.seed(attempt)
            results.append(Verifier().verify(query, m, intrinsics=k))
            Verifier(VerifierConfig(seed=attempt + 1)).verify(query, m, intrinsics=k)  # disturb in between
        first = results[0]
        assert first.verified
        for other in results[1:]:
            assert (other.verified, other.inliers, other.matches, other.model, other.reason) == (
                first.verified, first.inliers, first.matches, first.model, first.reason,
            )  # fmt: skip
            assert other.rotation_xyzw == first.rotation_xyzw and other.translation == first.translation
            assert np.array_equal(other.inlier_pairs, first.inlier_pairs)


def test_mutual_ratio_matching_against_brute_force():
    rng = np.random.default_rng(2)
    for method, dim in (("orb", 32), ("sift", 128)):
        a = rng.integers(0, 256 if method == "orb" else 60, (300, dim), dtype=np.uint8)
        b = rng.integers(0, 256 if method == "orb" else 60, (280, dim), dtype=np.uint8)
        b[:100] = a[:100]
        query = LocalFeatures(rng.random((300, 2)) * 100, a, (100, 100), method)
        match = LocalFeatures(rng.random((280, 2)) * 100, b, (100, 100), method)
        if method == "orb":
            distance = np.unpackbits(a[:, None, :] ^ b[None, :, :], axis=2).sum(axis=2).astype(float)
        else:
            fa, fb = (
                a / np.linalg.norm(a, axis=1, keepdims=True),
                b / np.linalg.norm(b, axis=1, keepdims=True),
            )
            distance = np.linalg.norm(fa[:, None] - fb[None], axis=2)
        expected = set()
        for i, row in enumerate(distance):
            first, second = np.argsort(row, kind="stable")[:2]
            if row[first] < 0.8 * row[second] and np.argmin(distance[:, first]) == i:
                expected.add((i, int(first)))
        got = {tuple(p) for p in match_descriptors(query, match, ratio_test=0.8, mutual=True).tolist()}
        assert got == expected and len(got) >= 100


# -------------------------------------------------------------------------------------------- drawing


def test_draw_matches_on_full_images_and_thumbnails(scene):
    _, intrinsics, _ = scene
    query, match, _, _, (query_rgb, match_rgb) = scene_pair(scene, 30.0)
    result = Verifier().verify(query, match, intrinsics=intrinsics)
    full = draw_matches(query_rgb, match_rgb, query, match, result)
    assert full.shape == (480 + 22, 1280, 3) and full.dtype == np.uint8
    green = np.all(full == [0, 220, 0], axis=2)
    assert green.sum() > result.inliers  # lines and dots
    thumbs = [decode_thumbnail(make_thumbnail(image, max_side=160)) for image in (query_rgb, match_rgb)]
    small = draw_matches(thumbs[0], thumbs[1], query, match, result)
    assert small.shape == (240 + 22, 640, 3)
    # the inlier dots land where the keypoints are, scaled to the thumbnail
    qi = result.inlier_pairs[0, 0]
    x, y = (query.keypoints[qi] + 0.5) * (320 / 640) - 0.5
    patch = small[22 + round(y) - 1 : 22 + round(y) + 2, round(x) - 1 : round(x) + 2]
    assert np.any(np.all(patch == [0, 220, 0], axis=2))
    rejected = Verifier().verify(
        query, LocalFeatures(np.zeros((0, 2)), np.zeros((0, 128), np.uint8), (640, 480), "sift")
    )
    assert draw_matches(query_rgb, match_rgb, query, match, rejected).shape == full.shape


# ----------------------------------------------------------------------------------------- Corridor


@pytest.mark.shared
def test_corridor_rerank_improves_recall(corridor_dir: Path):
    from tscm_ros.data.registry import load_dataset
    from tscm_ros.describer import create_describer, describe_files
    from tscm_ros.evaluation import metrics
    from tscm_ros.pipelines.rerank import accepted_precision_recall, rerank_with_verification

    dataset = load_dataset(f"corridor:{corridor_dir}")
    positives = dataset.positives["gt"]
    describer = create_describer(None, device="cpu")
    _, ranked = metrics.exact_search(
        describe_files(describer, dataset.database), describe_files(describer, dataset.queries), 10
    )
    before = metrics.recall_at_n(ranked, positives, (1,))[1]
    result = rerank_with_verification(dataset.database, dataset.queries, ranked)
    after = metrics.recall_at_n(result.ranked, positives, (1, 10))
    assert sorted(result.ranked[0].tolist()) == sorted(ranked[0].tolist())  # a permutation of the top-10
    assert after[10] == pytest.approx(metrics.recall_at_n(ranked, positives, (10,))[10])
    assert after[1] >= 0.60 and after[1] >= before + 0.15, (before, after)
    correct = metrics.hits_matrix(result.ranked, positives)[:, 0]
    default = accepted_precision_recall(result.best_verified, correct, len(positives))
    assert default["precision"] >= 0.75 and default["recall"] >= 0.25, default


def test_evaluate_cli_verify_flag(tmp_path: Path, scene):
    """``tscm_evaluate --verify`` on a tiny folder-per-place dataset of demo-scene renders."""
    import json

    from tscm_ros.cli import evaluate as cli
    from tscm_ros.data.registry import load_dataset

    world = build_world(SceneConfig())
    for place, s in enumerate((10.0, 40.0, 70.0)):
        for k, ahead in enumerate((0.0, 0.4, 0.8)):
            position, yaw = world.route_pose(s + ahead)
            folder = tmp_path / "data" / f"p{place}"
            folder.mkdir(parents=True, exist_ok=True)
            rgb, _ = render_with_depth(world, position, yaw)
            cv2.imwrite(str(folder / f"i{k}.png"), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    dataset = load_dataset(f"folders:{tmp_path / 'data'}")
    # descriptors that rank a wrong place first for every query; verification must fix that
    place_of = {p: int(p.parent.name[1:]) for p in dataset.database + dataset.queries}
    wrong = np.eye(3, dtype=np.float32)[[(place_of[p] + 1) % 3 for p in dataset.queries]]
    database = np.eye(3, dtype=np.float32)[[place_of[p] for p in dataset.database]] + 0.5
    queries = wrong + 0.1 * np.eye(3, dtype=np.float32)[[place_of[p] for p in dataset.queries]]
    np.save(tmp_path / "db.npy", database)
    np.save(tmp_path / "q.npy", queries)
    out = tmp_path / "out"
    descriptors = f"{tmp_path / 'db.npy'},{tmp_path / 'q.npy'}"
    code = cli.main(
        ["--dataset", f"folders:{tmp_path / 'data'}", "--descriptors", descriptors, "--verify",
         "--verify-top-k", "4", "--ns", "1,2,5", "--out", str(out)]
    )  # fmt: skip
    assert code == 0
    report = json.loads((out / "results.json").read_text())["verification"]
    protocol = next(iter(report["protocols"].values()))
    assert protocol["recall_before"]["1"] == 0.0 and protocol["recall"]["1"] == 1.0
    assert set(protocol["recall"]) == {"1", "2"}  # n <= top-k only
    assert protocol["default_rule"]["precision"] == 1.0 and protocol["default_rule"]["recall"] == 1.0
    assert report["rule"] == {"min_inliers": 25, "min_inlier_ratio": 0.3}
