"""RecognitionSession: verified loop closures with relative poses on the demo scene, and every bad input.

The scene is rendered from known poses with known intrinsics and depth, so the relative pose of each verified
closure can be checked against the truth. Descriptors come from a fast deterministic stand-in (a grey
thumbnail), so retrieval proposes both right and wrong places and verification has to tell them apart.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from tscm_ros.demo.scene import SceneConfig, build_world, plan_trajectory, render_with_depth, scene_intrinsics
from tscm_ros.loop_closure import LoopClosureConfig
from tscm_ros.placemap import PlaceMap, Pose
from tscm_ros.recognition import RecognitionConfig, RecognitionSession, read_params_file
from tscm_ros.sequence import SequenceConfig

SCENE = SceneConfig(width=320, height=240, frames_per_lap=40)
LAP_S = SCENE.frames_per_lap / SCENE.rate_hz
NS = 1_000_000_000


def thumbnail_descriptor(rgb: np.ndarray) -> np.ndarray:
    grey = rgb.astype(np.float64).mean(axis=2)
    h, w = grey.shape
    small = grey[: h - h % 12, : w - w % 16].reshape(12, h // 12, 16, w // 16).mean(axis=(1, 3))
    vector = small.ravel() - small.mean()
    return (vector / np.linalg.norm(vector)).astype(np.float32)


@dataclasses.dataclass
class Frame:
    stamp_ns: int
    rgb: np.ndarray
    depth: np.ndarray
    pose: Pose
    yaw: float


@pytest.fixture(scope="module")
def frames() -> list[Frame]:
    world = build_world(SCENE)
    rng = np.random.default_rng(3)
    out = []
    for sample in plan_trajectory(SCENE, world):
        rgb, depth = render_with_depth(
            world, np.array(sample.position[:2]), sample.yaw, brightness=0.95 if sample.lap else 1.0
        )
        if sample.lap:
            rgb = np.clip(rgb + rng.normal(0, 4, rgb.shape), 0, 255).astype(np.uint8)
        out.append(
            Frame(sample.stamp_ns, rgb, depth, Pose(sample.position, sample.orientation, "map"), sample.yaw)
        )
    return out


def session_for(config: RecognitionConfig) -> RecognitionSession:
    return RecognitionSession(PlaceMap.create(192, "flat"), config)


def default_config(**changes) -> RecognitionConfig:
    detector = LoopClosureConfig(similarity_threshold=-1.0, exclusion_window_s=LAP_S / 3, top_k=3)
    return dataclasses.replace(RecognitionConfig(detector=detector), **changes)


def camera_from_body(frame: Frame) -> np.ndarray:
    """4x4 world-from-optical: body x forward, y left, z up -> optical x right, y down, z forward."""
    body_to_optical = np.array(
        [[0, 0, 1], [-1, 0, 0], [0, -1, 0]], np.float64
    )  # columns: optical axes in body
    transform = np.eye(4)
    transform[:3, :3] = Rotation.from_euler("z", frame.yaw).as_matrix() @ body_to_optical
    transform[:3, 3] = [frame.pose.position[0], frame.pose.position[1], SCENE.wall_height / 2]
    return transform


def run(session: RecognitionSession, frames: list[Frame], *, depth: bool = True):
    intrinsics = scene_intrinsics(SCENE)
    results = []
    for frame in frames:
        results.append(
            session.process(
                thumbnail_descriptor(frame.rgb),
                frame.stamp_ns,
                image=frame.rgb,
                depth=frame.depth if depth else None,
                intrinsics=intrinsics,
                pose=frame.pose,
            )  # fmt: skip
        )
    return results


def test_revisits_are_verified_with_the_true_metric_relative_pose(frames):
    session = session_for(default_config())
    results = run(session, frames)
    by_stamp = {f.stamp_ns: f for f in frames}
    lap2 = results[SCENE.frames_per_lap :]
    closures = [r.closures[0] for r in lap2 if r.closures]
    assert len(closures) >= 0.5 * len(lap2), f"only {len(closures)} of {len(lap2)} revisits verified"
    assert all(len(c.verification.inlier_pairs) == c.verification.inliers for c in closures)
    history = list(session.closures)  # the session's closure history keeps no inlier pairs (memory)
    assert len(history) == sum(len(r.closures) for r in results)
    assert all(len(c.verification.inlier_pairs) == 0 and c.verification.inliers > 0 for c in history)
    wrong = [c for c in closures if math.dist(c.query_pose.position, c.match_pose.position) > 3.0]
    assert len(wrong) <= 0.05 * len(closures)
    rotation_errors, translation_errors = [], []
    for closure in closures:
        verification = closure.verification
        assert verification.model == "pnp" and verification.scale_known
        query, match = by_stamp[closure.query_stamp_ns], by_stamp[closure.match_stamp_ns]
        truth = np.linalg.inv(camera_from_body(query)) @ camera_from_body(
            match
        )  # match camera in query frame
        estimated = Rotation.from_quat(verification.rotation_xyzw)
        rotation_errors.append(
            np.degrees((estimated.inv() * Rotation.from_matrix(truth[:3, :3])).magnitude())
        )
        translation_errors.append(np.linalg.norm(np.array(verification.translation) - truth[:3, 3]))
    assert np.median(rotation_errors) < 2.0
    assert np.median(translation_errors) < 0.15  # metres; true offsets are 0.3-1 m
    # candidates come verified first, ranked by inliers; unverified ones keep a reason
    for result in lap2:
        flags = [c.verified for c in result.candidates]
        assert flags == sorted(flags, reverse=True)
        inliers = [c.inliers for c in result.candidates if c.verified]
        assert inliers == sorted(inliers, reverse=True)
        assert all(c.verification.reason for c in result.candidates if not c.verified)
    assert len(session) == len(frames) and session.place_map.feature_stats().places_with_features == len(
        frames
    )


def test_without_intrinsics_fundamental_matrix_verifies_without_pose(frames):
    session = session_for(default_config())
    intrinsics_free = []
    for frame in frames:
        intrinsics_free.append(
            session.process(thumbnail_descriptor(frame.rgb), frame.stamp_ns, image=frame.rgb)
        )
    closures = [r.closures[0] for r in intrinsics_free[SCENE.frames_per_lap :] if r.closures]
    assert closures
    assert all(c.verification.model == "fundamental" and c.verification.translation is None for c in closures)
    assert all(not c.verification.scale_known for c in closures)


def test_same_inputs_same_decisions(frames):
    subset = frames[:6] + frames[SCENE.frames_per_lap : SCENE.frames_per_lap + 6]
    first = [
        [(c.match_id, c.verified, c.inliers) for c in r.candidates]
        for r in run(session_for(default_config()), subset)
    ]
    second = [
        [(c.match_id, c.verified, c.inliers) for c in r.candidates]
        for r in run(session_for(default_config()), subset)
    ]
    assert first == second


def test_bad_inputs_leave_candidates_unverified_with_a_reason(frames):
    session = session_for(default_config())
    lap1 = frames[: SCENE.frames_per_lap]
    run(session, lap1)
    revisit = frames[SCENE.frames_per_lap + 2]
    descriptor = thumbnail_descriptor(revisit.rgb)
    # damaged stored features of every place: unverified, "corrupt_match_features", no exception
    for place_id in session.place_map.place_ids:
        session.place_map.set_features(int(place_id), b"not a feature blob", None)
    result = session.process(descriptor, revisit.stamp_ns, image=revisit.rgb)
    assert result.candidates and not result.closures
    assert {c.verification.reason for c in result.candidates} == {"corrupt_match_features"}
    # a blank image has no keypoints; the keyframe is still added and reported
    blank = np.full_like(revisit.rgb, 128)
    result = session.process(descriptor, revisit.stamp_ns + NS, image=blank)
    assert result.is_keyframe and result.candidates
    assert {c.verification.reason for c in result.candidates} <= {"no_keypoints", "corrupt_match_features"}
    # depth of the wrong size: 2-D features instead, reason counted
    before = session.reasons["bad_depth"]
    result = session.process(
        descriptor, revisit.stamp_ns + 2 * NS, image=revisit.rgb, depth=revisit.depth[:100],
        intrinsics=scene_intrinsics(SCENE),
    )  # fmt: skip
    assert result.is_keyframe and session.reasons["bad_depth"] == before + 1
    # depth without intrinsics cannot be back-projected: counted, no exception
    result = session.process(descriptor, revisit.stamp_ns + 3 * NS, image=revisit.rgb, depth=revisit.depth)
    assert result.is_keyframe and session.reasons["depth_without_intrinsics"] == 1
    # depth full of zeros / NaN: no 3-D points, falls back to the essential matrix
    holes = np.where(np.arange(revisit.depth.size).reshape(revisit.depth.shape) % 2 == 0, 0.0, np.nan)
    result = session.process(
        descriptor, revisit.stamp_ns + 4 * NS, image=revisit.rgb, depth=holes.astype(np.float32),
        intrinsics=scene_intrinsics(SCENE),
    )  # fmt: skip
    assert result.is_keyframe
    assert all(c.verification.model != "pnp" for c in result.candidates if c.verification is not None)


def test_localization_against_a_saved_map_adds_nothing(frames, tmp_path):
    mapping = session_for(default_config())
    run(mapping, frames[: SCENE.frames_per_lap])
    mapping.save(str(tmp_path / "map"))
    mapping.close()
    config = default_config()
    config = dataclasses.replace(config, detector=dataclasses.replace(config.detector, mode="localization"))
    localization = RecognitionSession(PlaceMap.load(tmp_path / "map"), config)
    results = run(localization, frames[SCENE.frames_per_lap :])
    assert len(localization) == SCENE.frames_per_lap and not localization.dirty
    verified = [r.closures[0] for r in results if r.closures]
    assert len(verified) >= 0.5 * len(results)
    assert all(r.place_id is None for r in results)


def test_time_jump_resets_keyframe_and_sequence_history(frames):
    config = default_config(sequence=SequenceConfig(length=4), verify=False)
    session = session_for(config)
    results = [session.process(thumbnail_descriptor(f.rgb), f.stamp_ns, pose=f.pose) for f in frames[:8]]
    assert results[0].sequence_partial
    restart = frames[0]
    assert session.wants(restart.stamp_ns)  # 1.6 s back: a restarted bag
    assert session.time_jumps == 1
    again = session.process(thumbnail_descriptor(restart.rgb), restart.stamp_ns, pose=restart.pose)
    assert again.is_keyframe and again.sequence_partial


def test_options_and_params_file(tmp_path):
    config = RecognitionConfig.from_options(
        {"top_k": 4, "verify": False, "min_inliers": 33, "sequence_length": 7, "feature_method": "orb",
         "unknown_name": 1}
    )  # fmt: skip
    assert (config.detector.top_k, config.verify, config.verifier.min_inliers) == (4, False, 33)
    assert config.sequence.length == 7 and config.features.method == "orb"
    with pytest.raises(ValueError, match="min_inliers"):
        RecognitionConfig.from_options({"min_inliers": -1})
    path = tmp_path / "params.yaml"
    path.write_text("/**/place_recognition_node:\n  ros__parameters:\n    top_k: 9\n    verify: false\n")
    assert read_params_file(path) == {"top_k": 9, "verify": False}
    path.write_text("other_node:\n  ros__parameters:\n    top_k: 9\n")
    with pytest.raises(ValueError, match="no ros__parameters for place_recognition_node"):
        read_params_file(path)


def test_sequence_best_is_confirmed_with_fewer_inliers(frames):
    # an impossible min_inliers: only the best full sequence's match (confirmed with 12) can be verified
    from tscm_ros.verification import VerifierConfig

    config = default_config(
        sequence=SequenceConfig(length=4),
        verifier=VerifierConfig(min_inliers=100_000),
        sequence_confirm_inliers=12,
    )
    results = run(session_for(config), frames)
    closures = [c for r in results for c in r.closures]
    assert len(closures) >= SCENE.frames_per_lap // 3  # lap 2 revisits confirmed
    assert all(c.sequence_length == 4 and 12 <= c.inliers < 100_000 for c in closures)
    assert all(len(r.closures) <= 1 for r in results)  # one confirmed candidate per keyframe at most
    wrong = [c for c in closures if math.dist(c.query_pose.position, c.match_pose.position) > 3.0]
    assert len(wrong) <= 0.05 * len(closures)
    with pytest.raises(ValueError, match="sequence_confirm_inliers"):
        default_config(sequence_confirm_inliers=2)


def test_only_places_of_this_run_count_as_this_run(frames, tmp_path):
    # LIO-SAM looks both stamps up among its own keyframes: a loaded map's places never qualify
    first = session_for(default_config(verify=False))
    run(first, frames[: SCENE.frames_per_lap], depth=False)
    first.save(str(tmp_path / "map"))
    first.close()
    second = RecognitionSession(PlaceMap.load(tmp_path / "map"), default_config(verify=False))
    results = run(second, frames[SCENE.frames_per_lap :], depth=False)
    candidates = [c for r in results for c in r.candidates]
    loaded = [c for c in candidates if c.match_id < SCENE.frames_per_lap]
    assert loaded and not any(second.from_this_run(c) for c in loaded)
    assert all(second.from_this_run(c) for c in candidates if c.match_id >= SCENE.frames_per_lap)
    second.reset()  # after a reset, only places added after it belong to the run
    result = second.process(thumbnail_descriptor(frames[0].rgb), frames[-1].stamp_ns + NS)
    assert result.place_id is not None
