"""place_recognition_node over real Fast DDS with verification on: camera_info + depth topics give verified
loop closures with a metric relative pose on ~/loop_closures, ~/match_image while subscribed, LIO-SAM only
for verified closures, and sequence matching switched on at runtime."""

from __future__ import annotations

import time

import numpy as np
import pytest
from rcl_interfaces.msg import Parameter as ParameterMsg
from rcl_interfaces.msg import ParameterType, ParameterValue
from rcl_interfaces.srv import SetParameters
from scipy.spatial.transform import Rotation
from sensor_msgs.msg import CameraInfo, Image, PointCloud2
from std_msgs.msg import Float64MultiArray, Header

from tscm_ros.demo.scene import SceneConfig, build_world, plan_trajectory, render_with_depth, scene_intrinsics
from tscm_ros.images import rgb_to_image_fields
from tscm_ros.ros.messages import byte_array, cloud_to_array, diagnostic_values, ns_to_stamp, stamp_to_ns
from tscm_ros.ros.testing import NodeProcess, RosProbe, reliable_qos

pytestmark = pytest.mark.ros

NODE = "/place_recognition_node"
SCENE = SceneConfig()  # 320x240, 120 frames per lap (about 1 m apart), 5 Hz
STRETCH = range(20, 34)  # the same street section in both laps
STARTUP_TIMEOUT_S = 180.0
FRAME_TIMEOUT_S = 60.0
PARAMETERS = {
    "reliable_qos": True,
    "verify": True,
    "top_k": 5,
    "similarity_threshold": -1.0,
    "exclusion_window_s": 10.0,  # hides the current lap's stretch, not lap 1 (24 s earlier)
}


def optical_pose(sample) -> np.ndarray:
    """4x4 world-from-optical camera pose of a scene sample (body x forward, y left, z up; camera at half
    the wall height; optical x right, y down, z forward)."""
    body_to_optical = np.array([[0, 0, 1], [-1, 0, 0], [0, -1, 0]], np.float64)
    pose = np.eye(4)
    pose[:3, :3] = Rotation.from_euler("z", sample.yaw).as_matrix() @ body_to_optical
    pose[:3, 3] = [sample.position[0], sample.position[1], SCENE.wall_height / 2]
    return pose


def image_msg(rgb: np.ndarray, stamp_ns: int) -> Image:
    fields = rgb_to_image_fields(rgb, "rgb8")
    msg = Image(header=Header(stamp=ns_to_stamp(stamp_ns), frame_id="camera"))
    msg.height, msg.width, msg.encoding = fields["height"], fields["width"], fields["encoding"]
    msg.is_bigendian, msg.step, msg.data = fields["is_bigendian"], fields["step"], byte_array(fields["data"])
    return msg


def depth_msg(depth_m: np.ndarray, stamp_ns: int) -> Image:
    millimetres = np.clip(np.round(np.nan_to_num(depth_m) * 1000.0), 0, 65535).astype("<u2")
    msg = Image(header=Header(stamp=ns_to_stamp(stamp_ns), frame_id="camera"), encoding="16UC1")
    msg.height, msg.width, msg.is_bigendian, msg.step = *millimetres.shape, 0, millimetres.shape[1] * 2
    msg.data = byte_array(millimetres.tobytes())
    return msg


def camera_info_msg(stamp_ns: int) -> CameraInfo:
    k = scene_intrinsics(SCENE)
    msg = CameraInfo(header=Header(stamp=ns_to_stamp(stamp_ns), frame_id="camera"))
    msg.width, msg.height = k.width, k.height
    msg.k = [k.fx, 0.0, k.cx, 0.0, k.fy, k.cy, 0.0, 0.0, 1.0]
    return msg


@pytest.fixture(scope="module")
def scene_frames():
    world = build_world(SCENE)
    rng = np.random.default_rng(5)
    samples = plan_trajectory(SCENE, world)
    frames = []
    for lap in (0, 1):
        for index in STRETCH:
            sample = samples[lap * SCENE.frames_per_lap + index]
            rgb, depth = render_with_depth(world, np.array(sample.position[:2]), sample.yaw,
                                           brightness=0.95 if lap else 1.0)  # fmt: skip
            if lap:
                rgb = np.clip(rgb + rng.normal(0, 4, rgb.shape), 0, 255).astype(np.uint8)
            frames.append((sample, rgb, depth))
    return frames


def test_verified_closures_over_dds_with_camera_info_and_depth(scene_frames, tmp_path):
    with RosProbe("verification_probe") as probe:
        candidates = probe.subscribe(PointCloud2, f"{NODE}/loop_candidates", reliable_qos(100))
        closures = probe.subscribe(PointCloud2, f"{NODE}/loop_closures", reliable_qos(100))
        match_images = probe.subscribe(Image, f"{NODE}/match_image", reliable_qos(10))
        lio_sam = probe.subscribe(Float64MultiArray, "/lio_loop/loop_closure_detection", reliable_qos(100))
        from diagnostic_msgs.msg import DiagnosticArray

        diagnostics = probe.subscribe(DiagnosticArray, "/diagnostics", reliable_qos(20))
        images = probe.publisher(Image, "/image", reliable_qos(5))
        depths = probe.publisher(Image, "/depth", reliable_qos(5))
        infos = probe.publisher(CameraInfo, "/camera_info", reliable_qos(5))
        with NodeProcess(parameters=PARAMETERS) as node:
            assert node.wait_for_output("ready:", STARTUP_TIMEOUT_S), node.output()
            assert probe.wait_for_subscribers(images, 1, 20.0)
            assert probe.wait_for_subscribers(depths, 1, 20.0) and probe.wait_for_subscribers(infos, 1, 20.0)
            for collector in (candidates, closures, match_images):
                assert probe.wait_for_matched(collector, 1, 20.0)
            poses = {}
            for sample, rgb, depth in scene_frames:
                poses[sample.stamp_ns] = sample
                infos.publish(camera_info_msg(sample.stamp_ns))
                depths.publish(depth_msg(depth, sample.stamp_ns))
                time.sleep(0.05)  # depth and camera_info reach the node before the image
                start = len(candidates.items)
                images.publish(image_msg(rgb, sample.stamp_ns))
                assert candidates.wait_for(
                    lambda items, s=sample.stamp_ns, n=start: any(
                        stamp_to_ns(m.header.stamp) == s for m in items[n:]
                    ),
                    FRAME_TIMEOUT_S,
                ), node.output()
            time.sleep(1.0)
            verified = [row for msg in closures.messages for row in cloud_to_array(msg)]
            lap2 = len(STRETCH)
            assert len({int(r["query_id"]) for r in verified}) >= lap2 // 2, node.output()
            stamps = sorted(poses)
            by_millisecond = {round(stamp / 1e6): sample for stamp, sample in poses.items()}
            for row in verified:
                query = poses[stamps[int(row["query_id"])]]
                match = by_millisecond[round(float(row["match_stamp"]) * 1e3)]
                assert row["verified"] == 1 and row["scale_known"] == 1 and row["inliers"] >= 25
                # the edge a back end gets is right: the metric relative pose equals the true one
                truth = np.linalg.inv(optical_pose(query)) @ optical_pose(match)
                translation = np.array([row["tx"], row["ty"], row["tz"]], np.float64)
                rotation = Rotation.from_quat([row["qx"], row["qy"], row["qz"], row["qw"]])
                assert np.linalg.norm(translation - truth[:3, 3]) < 0.3, (translation, truth[:3, 3])
                assert np.degrees((rotation.inv() * Rotation.from_matrix(truth[:3, :3])).magnitude()) < 3.0
            # every candidate message carries the verification fields; unverified rows have no pose
            rows = [row for msg in candidates.messages for row in cloud_to_array(msg)]
            assert all(np.isnan(r["tx"]) for r in rows if r["verified"] == 0)
            # LIO-SAM only gets verified closures: one per keyframe whose best candidate was verified
            verified_queries = {int(r["query_id"]) for r in verified}
            assert len(lio_sam.messages) == len(verified_queries)
            assert match_images.messages, "no ~/match_image although subscribed"
            picture = match_images.messages[-1]
            assert picture.encoding == "rgb8" and picture.width > picture.height
            values = {}

            def has_stages(items):
                for msg in items:
                    for status in msg.status:
                        if status.name.startswith("place_recognition_node"):
                            values.update(diagnostic_values(status))
                return "stage_verify_ms_p50" in values

            assert diagnostics.wait_for(has_stages, 10.0)
            assert values["verification"] == "on" and int(values["closures_published"]) == len(verified)

            # sequence matching switched on at runtime: sequence fields on the candidates of lap 2 again
            request = SetParameters.Request()
            value = ParameterValue(type=ParameterType.PARAMETER_INTEGER, integer_value=3)
            request.parameters = [ParameterMsg(name="sequence_length", value=value)]
            response = probe.call(SetParameters, f"{NODE}/set_parameters", request)
            assert response.results[0].successful, response.results[0].reason
            offset = 60 * 1_000_000_000  # a later pass over lap 2's stretch
            seen = []
            for sample, rgb, _depth in scene_frames[lap2:]:
                stamp = sample.stamp_ns + offset
                start = len(candidates.items)
                images.publish(image_msg(rgb, stamp))
                assert candidates.wait_for(
                    lambda items, s=stamp, n=start: any(stamp_to_ns(m.header.stamp) == s for m in items[n:]),
                    FRAME_TIMEOUT_S,
                )
                message = next(m for m in candidates.messages[start:] if stamp_to_ns(m.header.stamp) == stamp)
                seen.append(cloud_to_array(message))
            full = [rows for rows in seen[3:] if len(rows)]
            assert full and all(
                int(r["sequence_length"]) == 3 and np.isfinite(r["sequence_score"])
                for rows in full
                for r in rows
            )
            assert node.stop() == 0
