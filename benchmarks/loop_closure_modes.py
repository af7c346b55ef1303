"""Loop-closure quality of the recognition session in four modes, on Corridor and on the demo scene.

Modes: single frame (top-1 cosine at a threshold calibrated without ground truth), sequence matching alone,
geometric verification alone, sequence + verification. Every mode runs the same
:class:`~tscm_ros.recognition.RecognitionSession` over the same descriptors (described once), in stream order,
mapping mode, as ``tscm_build_map`` and the node do.

A keyframe *reports* its best candidate when the mode accepts it (threshold / accepted sequence / verified);
precision = correct reports / reports, recall = correct reports / revisits (keyframes with a true earlier
place outside the exclusion window). R@1 = the rank-0 candidate is correct, over the revisits.

    .venv/bin/python benchmarks/loop_closure_modes.py --corridor ../shared/data/corridor --sequence 10

Prints tables; not a test. Uses the seeded UNTRAINED student unless --model is given.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from tscm_ros.demo.scene import SceneConfig, generate_frames, scene_intrinsics
from tscm_ros.describer import Describer, create_describer
from tscm_ros.image_files import list_images, read_rgb
from tscm_ros.loop_closure import LoopClosureConfig
from tscm_ros.placemap import PlaceMap, PlaceMeta, Pose
from tscm_ros.poses import NS_PER_S
from tscm_ros.recognition import RecognitionConfig, RecognitionSession
from tscm_ros.sequence import SequenceConfig


@dataclasses.dataclass
class Stream:
    name: str
    stamps: list[int]
    images: list[np.ndarray]
    descriptors: np.ndarray
    is_match: Callable[[int, int], bool]
    exclusion_window_s: float
    depths: list[np.ndarray | None]
    poses: list[Pose | None]
    intrinsics: object = None


def corridor_stream(folder: Path, describer: Describer) -> Stream:
    refs, queries = list_images(folder / "ref"), list_images(folder / "query")
    files = refs + queries
    images = [read_rgb(path) for path in files]
    stamps = [1_700_000_000 * NS_PER_S + i * NS_PER_S // 5 for i in range(len(files))]
    label = {stamp: (i < len(refs), i if i < len(refs) else i - len(refs)) for i, stamp in enumerate(stamps)}

    def is_match(query: int, place: int) -> bool:
        (q_ref, q), (p_ref, p) = label[query], label[place]
        return not q_ref and p_ref and abs(q - p) <= 2

    descriptors = describer.describe(images)
    # the query traversal must not match itself: exclude ~ one traversal (refs are 22 s earlier)
    return Stream("corridor", stamps, images, descriptors, is_match, 0.9 * len(refs) / 5,
                  [None] * len(files), [None] * len(files))  # fmt: skip


def scene_stream(describer: Describer, radius_m: float = 3.0) -> Stream:
    scene = SceneConfig()
    frames = list(generate_frames(scene, depth=True))
    poses = [Pose(f.position, f.orientation, "map") for f in frames]
    by_stamp = {f.stamp_ns: pose for f, pose in zip(frames, poses, strict=True)}

    def is_match(query: int, place: int) -> bool:
        return by_stamp[query].distance_to(by_stamp[place]) <= radius_m

    images = [f.rgb for f in frames]
    descriptors = describer.describe(images)
    return Stream("demo scene", [f.stamp_ns for f in frames], images, descriptors, is_match,
                  scene.frames_per_lap / scene.rate_hz / 3, [f.depth for f in frames], poses,
                  scene_intrinsics(scene))  # fmt: skip


def calibrated_threshold(stream: Stream) -> float:
    """95th percentile of the first half's top-1 similarities (the demo's rule; no ground truth)."""
    place_map = PlaceMap.create(stream.descriptors.shape[1], "flat")
    top1 = []
    half = len(stream.stamps) // 2
    for vector, stamp in zip(stream.descriptors[:half], stream.stamps[:half], strict=True):
        matches = place_map.search(
            vector, 1, query_stamp_ns=stamp, exclusion_window_s=stream.exclusion_window_s
        )
        top1.extend(match.similarity for match in matches)
        place_map.add(vector[None], [PlaceMeta(stamp)])
    place_map.close()
    return float(np.quantile(top1, 0.95))


def run_mode(stream: Stream, *, verify: bool, sequence: int, threshold: float, confirm: int = 12) -> dict:
    detector = LoopClosureConfig(
        similarity_threshold=-1.0, exclusion_window_s=stream.exclusion_window_s, top_k=5
    )
    config = RecognitionConfig(
        detector=detector,
        verify=verify,
        sequence=SequenceConfig(length=sequence),
        sequence_confirm_inliers=confirm,
    )
    session = RecognitionSession(PlaceMap.create(stream.descriptors.shape[1], "flat"), config)
    revisits = reported = correct = top1_correct = 0
    seconds = []
    exclusion_ns = round(stream.exclusion_window_s * NS_PER_S)
    for index, stamp in enumerate(stream.stamps):
        started = time.perf_counter()
        result = session.process(
            stream.descriptors[index], stamp, image=stream.images[index] if verify else None,
            depth=stream.depths[index], intrinsics=stream.intrinsics, pose=stream.poses[index],
        )  # fmt: skip
        seconds.append(time.perf_counter() - started)
        is_revisit = any(stream.is_match(stamp, place) for place in stream.stamps[:index]
                         if place <= stamp - exclusion_ns)  # fmt: skip
        revisits += is_revisit
        ranked = result.candidates
        if ranked and is_revisit:
            top1_correct += stream.is_match(stamp, ranked[0].match_stamp_ns)
        if verify:
            best = result.closures[0] if result.closures else None
        elif sequence:
            best = ranked[0] if ranked and not result.sequence_partial else None
        else:
            best = ranked[0] if ranked and ranked[0].similarity >= threshold else None
        if best is not None:
            reported += 1
            correct += stream.is_match(stamp, best.match_stamp_ns)
    session.close()
    return {
        "R@1": top1_correct / max(revisits, 1),
        "reported": reported,
        "precision": correct / reported if reported else math.nan,
        "recall": correct / max(revisits, 1),
        "ms/keyframe": 1000 * float(np.median(seconds)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corridor", type=Path, default=Path("../shared/data/corridor"))
    parser.add_argument("--model", type=Path, help="model directory (default: the seeded untrained student)")
    parser.add_argument("--sequence", type=int, default=10, help="sequence length L of the sequence modes")
    parser.add_argument("--skip-scene", action="store_true")
    parser.add_argument(
        "--confirm-inliers",
        default="12",
        help="sequence_confirm_inliers values for the sequence + verification mode, e.g. 12,15,20,25",
    )
    args = parser.parse_args()
    describer = create_describer(args.model, batch_size=8)
    streams = [corridor_stream(args.corridor, describer)]
    if not args.skip_scene:
        streams.append(scene_stream(describer))
    print(f"model: {describer.label}; sequence length L = {args.sequence}; verification: defaults")
    print("| data | mode | R@1 | reports | precision | recall | session ms/keyframe (p50) |")
    print("|---|---|---|---|---|---|---|")
    for stream in streams:
        threshold = calibrated_threshold(stream)
        modes = {
            f"single frame (cos >= {threshold:.6f})": dict(verify=False, sequence=0),
            f"sequence L={args.sequence}": dict(verify=False, sequence=args.sequence),
            "verification": dict(verify=True, sequence=0),
        }
        for confirm in (int(value) for value in args.confirm_inliers.split(",")):
            name = f"sequence L={args.sequence} + verification (confirm {confirm})"
            modes[name] = dict(verify=True, sequence=args.sequence, confirm=confirm)
        for name, mode in modes.items():
            row = run_mode(stream, threshold=threshold, **mode)
            cells = (
                f"{row['R@1']:.3f}", str(row["reported"]), f"{row['precision']:.3f}",
                f"{row['recall']:.3f}", f"{row['ms/keyframe']:.1f}",
            )  # fmt: skip
            print(f"| {stream.name} | {name} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
