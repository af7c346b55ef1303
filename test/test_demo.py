"""The procedural demo scene and the tscm_demo pipeline (tscm_ros.demo)."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest

from tscm_ros.bags import BagReadStats, iter_frames
from tscm_ros.cli.demo import main
from tscm_ros.demo.main import run_corridor, run_demo
from tscm_ros.demo.scene import SceneConfig, build_world, generate_frames, plan_trajectory

SMALL = SceneConfig(width=96, height=72, frames_per_lap=16)


class ThumbnailDescriber:
    """Fast deterministic stand-in for the network: mean-removed 12x16 grey thumbnail, L2-normalised."""

    label = "thumbnail (test stub)"
    fingerprint = "1" * 64

    def describe(self, images) -> np.ndarray:
        out = []
        for image in images:
            grey = image.astype(np.float64).mean(axis=2)
            h, w = grey.shape
            small = grey[: h - h % 12, : w - w % 16].reshape(12, h // 12, 16, w // 16).mean(axis=(1, 3))
            vector = small.ravel() - small.mean()
            out.append(vector / np.linalg.norm(vector))
        return np.asarray(out, dtype=np.float32)


def test_scene_is_deterministic():
    first = list(generate_frames(SMALL))
    second = list(generate_frames(SMALL))
    assert len(first) == 32
    for a, b in zip(first, second, strict=True):
        assert a.stamp_ns == b.stamp_ns and a.position == b.position
        np.testing.assert_array_equal(a.rgb, b.rgb)
    other = list(generate_frames(dataclasses.replace(SMALL, seed=8)))
    assert not np.array_equal(first[0].rgb, other[0].rgb)
    # poses planned without rendering are the rendered frames' poses
    planned = plan_trajectory(SMALL)
    assert [p.position for p in planned] == [f.position for f in first]


def test_scene_timing_and_laps():
    frames = plan_trajectory(SMALL)
    stamps = np.array([f.stamp_ns for f in frames])
    assert np.all(np.diff(stamps) == 200_000_000)  # 5 Hz
    assert [f.lap for f in frames] == [0] * 16 + [1] * 16
    world = build_world(SMALL)
    for lap1, lap2 in zip(frames[:16], frames[16:], strict=True):
        # lap 2 passes the same place, offset by the phase and the lateral offset, but not identical
        gap = math.dist(lap1.position, lap2.position)
        assert 0.1 < gap < 1.0
    # the camera stays on the street, never inside a building
    for f in frames:
        assert not world.walls[int(f.position[0]), int(f.position[1])]


def test_revisit_looks_alike_and_far_places_differ():
    frames = list(generate_frames(SMALL))
    lap1, lap2 = frames[:16], frames[16:]
    assert not any(np.array_equal(a.rgb, b.rgb) for a, b in zip(lap1, lap2, strict=True))
    assert np.mean([f.rgb.mean() for f in lap2]) < np.mean([f.rgb.mean() for f in lap1])  # darker lap 2

    def standardised(frame) -> np.ndarray:  # brightness-invariant grey image
        grey = frame.rgb.astype(np.float64).mean(axis=2).ravel()
        grey -= grey.mean()
        return grey / np.linalg.norm(grey)

    correlation = np.array([standardised(f) for f in lap2]) @ np.array([standardised(f) for f in lap1]).T
    # the same place (7 m apart between frames here) is the best match for most lap-2 frames
    assert (correlation.argmax(axis=1) == np.arange(16)).sum() >= 12
    off_diagonal = correlation[~np.eye(16, dtype=bool)]
    assert np.diag(correlation).mean() > np.median(off_diagonal) + 0.1


def test_short_demo_run(tmp_path: Path, capsys):
    # a lap of this tiny scene lasts 3.2 s: shorter than the shipped exclusion_window_s
    result = run_demo(
        tmp_path / "demo", scene=SMALL, describer=ThumbnailDescriber(), progress=False, exclusion_window_s=1.0
    )
    printed = capsys.readouterr().out
    assert "precision" in printed and "recall" in printed and "model: thumbnail (test stub)" in printed
    names = {path.name for path in result.plots}
    assert {"loop_timeline.png", "trajectory.png", "pr_curve.png"} <= names
    assert names - {"loop_timeline.png", "trajectory.png", "pr_curve.png"} <= {
        "match_verified.png",
        "match_rejected.png",
    }
    assert all(path.is_file() for path in result.plots)
    evaluation = result.evaluation
    assert evaluation.keyframes == 32
    # every lap-2 keyframe has lap-1 places within 3 m; lap-1 keyframes only near the loop closure
    assert 16 <= evaluation.revisits <= 20
    # the scores are the counts the console shows (verified mode: each keyframe's best verified closure)
    assert evaluation.reported == sum(1 for c in result.build.closures if c.rank == 0)
    assert evaluation.precision == (evaluation.correct / evaluation.reported if evaluation.reported else 0.0)
    assert evaluation.recall == evaluation.correct / evaluation.revisits
    assert f"{evaluation.reported} closures, {evaluation.correct} correct" in printed
    assert evaluation.correct <= min(evaluation.reported, evaluation.revisits)
    summary = json.loads((tmp_path / "demo" / "demo_summary.json").read_text())
    assert summary["precision"] == evaluation.precision and summary["frames"] == 32
    # the bag is a real rosbag2 with images and odometry
    stats = BagReadStats()
    frames = list(iter_frames(result.bag, stats=stats))
    assert len(frames) == 32 and stats.pose_topic == "/odom" and stats.frames_with_pose == 32
    # a second run reuses the bag written with the same settings
    again = run_demo(
        tmp_path / "demo", scene=SMALL, describer=ThumbnailDescriber(), progress=False, exclusion_window_s=1.0
    )
    assert "reusing the demo bag" in again.output[0]
    assert again.evaluation == evaluation


def test_demo_cli_with_the_untrained_student(tmp_path: Path, capsys):
    code = main(["--out", str(tmp_path / "cli"), "--frames-per-lap", "5", "--width", "64", "--height", "48",
                 "--no-progress", "--device", "cpu", "--untrained"])  # fmt: skip
    assert code == 0
    printed = capsys.readouterr().out
    assert "UNTRAINED student" in printed and "requested with --untrained" in printed
    assert "precision" in printed and "recall@1" in printed
    assert (tmp_path / "cli" / "pr_curve.png").is_file()


def test_demo_cli_rejects_bad_arguments(tmp_path: Path, capsys):
    assert main(["--out", str(tmp_path / "x"), "--frames-per-lap", "3"]) == 2
    assert "frames-per-lap" in capsys.readouterr().err
    assert main(["--corridor", str(tmp_path / "no_such_dataset"), "--out", str(tmp_path / "c")]) == 2


@pytest.mark.shared
def test_corridor_mode(corridor_dir: Path, tmp_path: Path, capsys):
    result = run_corridor(corridor_dir, tmp_path / "corridor", describer=ThumbnailDescriber(), progress=False,
                          limit=30)  # fmt: skip
    printed = capsys.readouterr().out
    assert "|i - j| <= 2" in printed and "precision" in printed
    evaluation = result.evaluation
    assert evaluation.keyframes == 60
    # every query image has refs within +-2 indices, no ref image has a true match
    assert evaluation.revisits == 30
    names = [path.name for path in result.plots]
    assert names[:2] == ["loop_timeline.png", "pr_curve.png"]  # no poses: no trajectory plot
    assert set(names[2:]) <= {"match_verified.png", "match_rejected.png"}


def test_evaluate_counts_precision_and_recall_by_hand():
    from types import SimpleNamespace

    from tscm_ros.demo.main import calibrate_threshold, evaluate, top1_per_keyframe
    from tscm_ros.loop_closure import LoopClosureConfig
    from tscm_ros.placemap import Pose

    e = np.eye(4, dtype=np.float32)
    descriptors = np.stack([e[0], e[1], e[2], e[0], e[1], e[0]])  # frame 5 looks like place 0, is at place 2
    xs = [0.0, 10.0, 20.0, 0.0, 10.0, 20.0]
    stamps = np.arange(6, dtype=np.int64) * 1_000_000_000
    poses = [Pose((x, 0.0, 0.0)) for x in xs]
    result = SimpleNamespace(descriptors=descriptors, frame_stamps_ns=stamps, frame_poses=poses)
    config = LoopClosureConfig(exclusion_window_s=0.5, top_k=1)
    by_stamp = dict(zip(stamps.tolist(), poses, strict=True))

    def is_match(query, place):
        return by_stamp[query].distance_to(by_stamp[place]) <= 3.0

    evaluation = evaluate(result, config, is_match, threshold=0.5)
    assert evaluation.keyframes == 6 and evaluation.revisits == 3  # frames 3, 4, 5
    assert evaluation.reported == 3 and evaluation.correct == 2  # frame 5 matches place 0: wrong
    assert evaluation.precision == pytest.approx(2 / 3) and evaluation.recall == pytest.approx(2 / 3)
    assert evaluation.recall_at_1 == pytest.approx(2 / 3)
    top1 = top1_per_keyframe(result, config)
    assert top1[0][1] == -1 and top1[3][1] == 0 and top1[4][1] == 1_000_000_000
    # calibration looks at the first half only: frames 1 and 2 have similarity 0 -> threshold 0
    assert calibrate_threshold(top1) == pytest.approx(0.0)
    assert calibrate_threshold(top1[:1]) is None
