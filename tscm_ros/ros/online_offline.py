"""Online = offline: a bag replayed into place_recognition_node versus tscm_build_map on the same bag.

Both read the same params file and drive the same :class:`~tscm_ros.recognition.RecognitionSession`, so they
must give the same places and the same candidate pairs. Frames the node dropped (its one-frame slot was busy)
are listed and left out of the offline run too, so the comparison covers exactly the frames both processed.

    python -m tscm_ros.cli.online_offline BAG --params-file config/place_recognition.yaml --out DIR

Used by ``test/test_online_offline.py`` and for the figures in the README; needs rclpy.
"""

from __future__ import annotations

import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from sensor_msgs.msg import PointCloud2

from tscm_ros.bags import iter_frames
from tscm_ros.pipelines.build_map import BuildResult, build_map_from_bag
from tscm_ros.placemap import PlaceMap
from tscm_ros.recognition import RecognitionConfig, read_params_file
from tscm_ros.ros.messages import cloud_to_array, stamp_to_ns
from tscm_ros.ros.testing import NodeProcess, RosProbe, reliable_qos

NODE = "/place_recognition_node"
BAG_PLAYER_MODULE = "tscm_ros.cli.bag_player"  # run with python -m
Pair = tuple[
    int, int, int, int, int, int
]  # query stamp (us), match stamp (us), match id, verified, inliers, rank


@dataclass
class Comparison:
    """What the node and tscm_build_map did with the same bag and params file."""

    frames: int
    node_keyframes: list[int]
    dropped: list[int]  # image stamps without node output (dropped, or not a keyframe: left out offline)
    node_places: int
    offline_places: int
    node_pairs: set[Pair] = field(repr=False)
    offline_pairs: set[Pair] = field(repr=False)

    @property
    def same(self) -> bool:
        return self.node_places == self.offline_places and self.node_pairs == self.offline_pairs

    def summary(self) -> str:
        verified = sum(1 for pair in self.node_pairs if pair[3])
        return (
            f"{self.frames} frames, node output for {len(self.node_keyframes)} "
            f"({len(self.dropped)} left out); "
            f"places node {self.node_places} / offline {self.offline_places}; candidate pairs node "
            f"{len(self.node_pairs)} ({verified} verified) / offline {len(self.offline_pairs)}; "
            f"only node {len(self.node_pairs - self.offline_pairs)}, only offline "
            f"{len(self.offline_pairs - self.node_pairs)} -> {'SAME' if self.same else 'DIFFERENT'}"
        )


def _microseconds(stamp_ns: int) -> int:
    return round(stamp_ns / 1000)


def _replay_into_node(
    bag: Path,
    params_file: Path,
    node_parameters: dict,
    topics: dict[str, str],
    rate: float,
    timeout_s: float,
) -> dict[int, np.ndarray]:
    """Start the node, play ``bag`` into it with bag_player, stop it: ~/loop_candidates per image stamp."""
    outputs: dict[int, np.ndarray] = {}
    with RosProbe("online_offline_probe") as probe:
        candidates = probe.subscribe(PointCloud2, f"{NODE}/loop_candidates", reliable_qos(1000))
        with NodeProcess(parameters=node_parameters, remappings=topics, params_file=params_file) as node:
            if not node.wait_for_output("ready:", 300.0):
                raise RuntimeError(f"node did not start:\n{node.output()}")
            if not probe.wait_for_matched(candidates, 1, 30.0):
                raise RuntimeError("no ~/loop_candidates publisher")
            player = subprocess.run(
                [sys.executable, "-m", BAG_PLAYER_MODULE, str(bag), "--rate", str(rate),
                 "--start-delay", "2.0", "--no-progress", "--topics", *topics.values()],
                capture_output=True, text=True, timeout=timeout_s,
            )  # fmt: skip
            if player.returncode != 0:
                raise RuntimeError(f"bag_player failed: {player.stderr[-2000:]}")
            quiet_since, count = time.monotonic(), -1
            while time.monotonic() - quiet_since < 5.0:  # the node finishes its last frame
                if len(candidates.items) != count:
                    count, quiet_since = len(candidates.items), time.monotonic()
                time.sleep(0.2)
            code = node.stop(timeout=60.0)
            if code != 0:
                raise RuntimeError(f"node did not stop cleanly (exit {code}):\n{node.output()}")
        for message in candidates.messages:
            outputs[stamp_to_ns(message.header.stamp)] = cloud_to_array(message)
    return outputs


def _build_offline(
    bag: Path, out_dir: Path, options: dict, topics: dict[str, str], dropped: list[int]
) -> BuildResult:
    """tscm_build_map on ``bag`` with the node's ``options``, one frame at a time, without ``dropped``."""
    from tscm_ros.describer import create_describer

    describer = create_describer(
        options.get("model_path") or None, backend=options.get("backend", "torch"),
        precision=options.get("precision", "fp32"), batch_size=1,
    )  # fmt: skip
    return build_map_from_bag(
        bag, out_dir, image_topic=topics["image"], pose_topic=topics.get("odom", ""),
        depth_topic=topics.get("depth", ""), camera_info_topic=topics.get("camera_info", ""),
        describer=describer, index_spec=options.get("index_spec", "flat"),
        config=RecognitionConfig.from_options(options), batch_size=1, progress=False, skip_stamps=dropped,
    )  # fmt: skip


def compare_online_offline(
    bag: Path,
    params_file: Path,
    out_dir: Path,
    *,
    rate: float = 1.0,
    topics: dict[str, str] | None = None,
    parameters: dict | None = None,
    timeout_s: float = 600.0,
) -> Comparison:
    """Replay ``bag`` with bag_player into a node started with ``params_file``; then build offline.

    ``topics``: node input -> bag topic (default: the demo bag's ``image``, ``depth``, ``camera_info``,
    ``odom``). ``parameters`` override the params file for both runs (e.g. ``model_path``).
    """
    topics = topics or {
        "image": "/camera/image_raw",
        "depth": "/camera/depth/image_raw",
        "camera_info": "/camera/camera_info",
        "odom": "/odom",
    }
    parameters = dict(parameters or {})
    out_dir.mkdir(parents=True, exist_ok=True)
    stamps = [frame.stamp_ns for frame in iter_frames(bag, topics["image"], "")]
    node_map = out_dir / "node_map"
    node_parameters = {**parameters, "map_path": str(node_map), "save_on_shutdown": True, "mode": "mapping"}
    outputs = _replay_into_node(bag, params_file, node_parameters, topics, rate, timeout_s)
    node_pairs = {
        (_microseconds(stamp), round(float(row["match_stamp"]) * 1e6), int(row["match_id"]),
         int(row["verified"]), int(row["inliers"]), int(row["rank"]))
        for stamp, rows in outputs.items() for row in rows
    }  # fmt: skip
    with PlaceMap.load(node_map) as loaded:
        node_places = len(loaded)
    dropped = [stamp for stamp in stamps if stamp not in outputs]
    options = {**read_params_file(params_file), **parameters, "mode": "mapping"}
    result = _build_offline(bag, out_dir / "offline", options, topics, dropped)
    offline_pairs = {
        (_microseconds(c.query_stamp_ns), _microseconds(c.match_stamp_ns), c.match_id, int(c.verified),
         c.inliers, c.rank)
        for c in result.candidates
    }  # fmt: skip
    return Comparison(
        frames=len(stamps),
        node_keyframes=sorted(outputs),
        dropped=dropped,
        node_places=node_places,
        offline_places=len(result.keyframes),
        node_pairs=node_pairs,
        offline_pairs=offline_pairs,
    )
