"""Local features: config validation, deterministic extraction, depth back-projection, the binary format."""

from __future__ import annotations

import math
import struct
import zlib

import cv2
import numpy as np
import pytest

from tscm_ros.demo.scene import SceneConfig, build_world, render, render_with_depth, scene_intrinsics
from tscm_ros.features import (
    CameraIntrinsics,
    FeatureConfig,
    FeatureExtractor,
    FeatureFormatError,
    LocalFeatures,
    decode_thumbnail,
    make_thumbnail,
)

SCENE = SceneConfig()


@pytest.fixture(scope="module")
def world():
    return build_world(SCENE)


@pytest.fixture(scope="module")
def view(world):
    """A frame of the demo scene with its depth, on the first straight of the route."""
    position, yaw = world.route_pose(20.0)
    rgb, depth = render_with_depth(world, position, yaw)
    return position, yaw, rgb, depth


def textured_image(width: int = 320, height: int = 240, seed: int = 0) -> np.ndarray:
    """Smooth random blobs: plenty of corners and blobs for SIFT and ORB."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, size=(height // 8, width // 8, 3), dtype=np.uint8)
    return cv2.GaussianBlur(cv2.resize(small, (width, height), interpolation=cv2.INTER_CUBIC), (3, 3), 0)


# ------------------------------------------------------------------------------------------ configs


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"method": "surf"}, "method"),
        ({"max_keypoints": 0}, "max_keypoints"),
        ({"max_keypoints": 10.5}, "max_keypoints"),
        ({"max_image_side": 16}, "max_image_side"),
        ({"max_image_side": -1}, "max_image_side"),
        ({"min_image_side": 800}, "min_image_side"),
        ({"contrast_threshold": 0.0}, "contrast_threshold"),
    ],
)
def test_feature_config_rejects_bad_values_naming_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        FeatureConfig(**kwargs)


def test_intrinsics_validation_scaling_and_camera_info():
    k = CameraIntrinsics(500.0, 505.0, 319.5, 239.5, 640, 480)
    np.testing.assert_allclose(k.K, [[500, 0, 319.5], [0, 505, 239.5], [0, 0, 1]])
    half = k.scaled_to(320, 240)
    assert (half.fx, half.fy, half.cx, half.cy) == (250.0, 252.5, 159.5, 119.5)
    assert half.scaled_to(640, 480) == k
    info = CameraIntrinsics.from_camera_info_k([500, 0, 319.5, 0, 505, 239.5, 0, 0, 1], 640, 480)
    assert info == k
    for bad in ({"fx": 0.0}, {"fy": -1.0}, {"cx": math.nan}, {"cy": math.inf}, {"width": 0}, {"height": 2.5}):
        values = {"fx": 500.0, "fy": 500.0, "cx": 1.0, "cy": 1.0, "width": 4, "height": 4} | bad
        with pytest.raises(ValueError, match=next(iter(bad))):
            CameraIntrinsics(**values)
    with pytest.raises(ValueError, match="9 numbers"):
        CameraIntrinsics.from_camera_info_k([1, 2, 3], 640, 480)


def test_scene_intrinsics_follow_the_renderer(world, view):
    """Wall points back-projected with scene_intrinsics land on wall faces of the grid world."""
    k = scene_intrinsics(SCENE)
    assert (k.width, k.height) == (SCENE.width, SCENE.height)
    assert k.cx == (SCENE.width - 1) / 2 and k.cy == (SCENE.height - 1) / 2
    assert k.fy == pytest.approx((SCENE.width / 2) / math.tan(math.radians(SCENE.fov_deg) / 2))
    position, yaw, rgb, depth = view
    features = FeatureExtractor().extract(rgb, depth=depth, intrinsics=k)
    valid = features.valid_points
    assert valid.sum() >= 30
    # optical frame -> world: x_opt = right = -left, y_opt = down, z_opt = forward; camera at half wall height
    forward = np.array([math.cos(yaw), math.sin(yaw), 0.0])
    left = np.array([-math.sin(yaw), math.cos(yaw), 0.0])
    rotation = np.stack([-left, [0.0, 0.0, -1.0], forward], axis=1)
    centre = np.array([position[0], position[1], SCENE.wall_height / 2])
    world_points = features.points[valid] @ rotation.T + centre
    assert np.all((world_points[:, 2] > -0.05) & (world_points[:, 2] < SCENE.wall_height + 0.05))
    # every point lies on a cell face (x or y on the integer grid) next to a wall cell
    off_grid = np.minimum(*(np.abs(world_points[:, i] - np.round(world_points[:, i])) for i in (0, 1)))
    assert np.median(off_grid) < 0.01 and np.mean(off_grid < 0.05) > 0.9


def test_render_with_depth_keeps_the_rgb_and_marks_sky_and_ground_invalid(world, view):
    position, yaw, rgb, depth = view
    assert np.array_equal(rgb, render(world, position, yaw))
    assert depth.dtype == np.float32 and depth.shape == rgb.shape[:2]
    assert np.all(depth[0] == 0) and np.all(depth[-1] == 0)  # sky row, ground row
    centre = depth[SCENE.height // 2]
    assert np.all(centre > 0) and np.all(centre < 60)


# --------------------------------------------------------------------------------------- extraction


@pytest.mark.parametrize(("method", "dim"), [("sift", 128), ("orb", 32)])
def test_extraction_is_deterministic_and_well_formed(method, dim):
    rgb = textured_image(640, 480)
    extractor = FeatureExtractor(FeatureConfig(method=method, max_keypoints=300))
    first, second = extractor.extract(rgb), FeatureExtractor(extractor.config).extract(rgb.copy())
    assert 100 <= len(first) <= 300
    assert first.descriptors.shape == (len(first), dim) and first.descriptors.dtype == np.uint8
    assert first.keypoints.dtype == np.float32 and first.points is None
    assert np.array_equal(first.keypoints, second.keypoints)
    assert np.array_equal(first.descriptors, second.descriptors)
    assert np.all(first.keypoints >= -0.5) and np.all(first.keypoints <= [640 - 0.5, 480 - 0.5])
    if method == "sift":  # RootSIFT: unit L2 norm after de-quantisation
        norms = np.linalg.norm(first.float_descriptors(), axis=1)
        np.testing.assert_allclose(norms, 1.0, atol=0.02)


def test_keypoints_are_in_original_image_pixels():
    """A 2x nearest-neighbour enlargement resized back to 640 px gives the same working image, so its
    keypoints must be exactly the small image's, mapped through the pixel-centre convention."""
    small = textured_image(640, 480, seed=3)
    big = cv2.resize(small, (1280, 960), interpolation=cv2.INTER_NEAREST)
    extractor = FeatureExtractor(FeatureConfig(max_image_side=640))
    a, b = extractor.extract(small), extractor.extract(big)
    assert b.image_size == (1280, 960) and len(a) == len(b)
    np.testing.assert_allclose(b.keypoints, (a.keypoints + 0.5) * 2 - 0.5, atol=1e-3)
    assert np.array_equal(a.descriptors, b.descriptors)


def test_small_images_are_enlarged_when_asked():
    """A tiny, fine-grained, dull image (like 160x120 Corridor): enlarging it finds many more keypoints."""
    noise = np.random.default_rng(4).integers(0, 32, size=(120, 160, 3))
    rgb = cv2.GaussianBlur((120 + noise).astype(np.uint8), (3, 3), 0.8)
    native = FeatureExtractor(FeatureConfig(min_image_side=0)).extract(rgb)
    enlarged = FeatureExtractor(FeatureConfig(min_image_side=480)).extract(rgb)
    assert enlarged.image_size == (160, 120) and len(enlarged) > 1.5 * len(native) > 0
    assert enlarged.keypoints[:, 0].max() < 160 and enlarged.keypoints[:, 1].max() < 120


def test_bad_images_raise_value_error():
    extractor = FeatureExtractor()
    for bad in (
        np.zeros((10, 10), np.uint8),
        np.zeros((10, 10, 3), np.float32),
        np.zeros((0, 5, 3), np.uint8),
    ):
        with pytest.raises(ValueError):
            extractor.extract(bad)


# -------------------------------------------------------------------------------------------- depth


def test_depth_back_projection_from_16uc1_and_32fc1():
    rgb = textured_image(320, 240, seed=5)
    k = CameraIntrinsics(300.0, 310.0, 159.5, 119.5, 320, 240)
    depth_m = np.full((240, 320), 2.5, np.float32)
    depth_m[:, :100] = 0.0  # invalid strip
    depth_m[:, 100:110] = np.nan
    depth_mm = np.nan_to_num(depth_m * 1000).astype(np.uint16)
    extractor = FeatureExtractor(FeatureConfig(max_keypoints=400))
    from_float = extractor.extract(rgb, depth=depth_m, intrinsics=k)
    from_mm = extractor.extract(rgb, depth=depth_mm, intrinsics=k)
    np.testing.assert_allclose(from_float.points, from_mm.points, rtol=1e-6, equal_nan=True)
    points, kp = from_float.points, from_float.keypoints
    inside = kp[:, 0] >= 110  # all 4 neighbouring depth pixels (floor(x), floor(x) + 1) valid
    assert inside.sum() > 50
    assert np.array_equal(from_float.valid_points, inside)
    np.testing.assert_allclose(points[inside, 2], 2.5)
    np.testing.assert_allclose(points[inside, 0], (kp[inside, 0] - 159.5) / 300.0 * 2.5, rtol=1e-5)
    np.testing.assert_allclose(points[inside, 1], (kp[inside, 1] - 119.5) / 310.0 * 2.5, rtol=1e-5)
    assert np.isnan(points[~inside]).all()


def test_depth_must_match_the_image_and_come_with_intrinsics():
    rgb = textured_image(320, 240)
    k = CameraIntrinsics(300.0, 300.0, 159.5, 119.5, 320, 240)
    extractor = FeatureExtractor()
    with pytest.raises(ValueError, match=r"160x120.*320x240"):
        extractor.extract(rgb, depth=np.ones((120, 160), np.float32), intrinsics=k)
    with pytest.raises(ValueError, match="intrinsics"):
        extractor.extract(rgb, depth=np.ones((240, 320), np.float32))
    with pytest.raises(ValueError, match="scaled_to"):
        extractor.extract(rgb, depth=np.ones((240, 320), np.float32), intrinsics=k.scaled_to(640, 480))
    with pytest.raises(ValueError, match="uint16"):
        extractor.extract(rgb, depth=np.ones((240, 320), np.int32), intrinsics=k)


# ------------------------------------------------------------------------------------ binary format


def _features(method: str, with_points: bool) -> LocalFeatures:
    rgb = textured_image(320, 240, seed=6)
    k = CameraIntrinsics(300.0, 300.0, 159.5, 119.5, 320, 240)
    depth = np.full((240, 320), 3.0, np.float32)
    depth[:120] = 0
    extractor = FeatureExtractor(FeatureConfig(method=method, max_keypoints=200))
    return extractor.extract(rgb, depth=depth if with_points else None, intrinsics=k)


@pytest.mark.parametrize("method", ["sift", "orb"])
@pytest.mark.parametrize("with_points", [False, True])
def test_bytes_round_trip(method, with_points):
    features = _features(method, with_points)
    blob = features.to_bytes()
    back = LocalFeatures.from_bytes(blob)
    assert back.method == method and back.image_size == features.image_size
    assert np.array_equal(back.keypoints, features.keypoints)
    assert np.array_equal(back.descriptors, features.descriptors)
    if with_points:
        np.testing.assert_array_equal(back.points, features.points)  # NaNs included
        assert np.isnan(back.points).any()
    else:
        assert back.points is None
    per_keypoint = 8 + {"sift": 128, "orb": 32}[method] + (12 if with_points else 0)
    assert len(blob) == 24 + len(features) * per_keypoint + 4
    empty = LocalFeatures(np.zeros((0, 2)), np.zeros((0, 32), np.uint8), (10, 10), "orb")
    assert len(LocalFeatures.from_bytes(empty.to_bytes())) == 0


def _with_crc(body: bytes) -> bytes:
    return body + struct.pack("<I", zlib.crc32(body))


def test_every_kind_of_damaged_blob_raises_feature_format_error():
    blob = _features("sift", True).to_bytes()
    body = blob[:-4]
    header = bytearray(body[:24])
    damaged = {
        "empty": b"",
        "header only": blob[:20],
        "truncated": blob[: len(blob) // 2],
        "one byte short": blob[:-1],
        "trailing byte": blob + b"\x00",
        "flipped bit": blob[:100] + bytes([blob[100] ^ 0x01]) + blob[101:],
        "bad crc": body + b"\x00\x00\x00\x00",
        "foreign": b"\x89PNG\r\n\x1a\n" + bytes(200),
        "not bytes": "TSCMLF",
    }
    # well-formed CRC over a lying header: wrong magic / version / method / flags / count / size
    for name, offset, fmt, value in (
        ("magic", 0, "<6s", b"TSCMXX"),
        ("version", 6, "<H", 99),
        ("method", 8, "<B", 7),
        ("flags", 9, "<B", 4),
        ("count", 10, "<I", 5),
        ("descriptor bytes", 14, "<H", 64),
        ("width", 16, "<I", 0),
    ):
        forged = bytearray(header)
        struct.pack_into(fmt, forged, offset, value)
        damaged[f"header {name}"] = _with_crc(bytes(forged) + body[24:])
    nan_keypoints = bytearray(body)
    struct.pack_into("<f", nan_keypoints, 24, math.nan)
    damaged["nan keypoint"] = _with_crc(bytes(nan_keypoints))
    for name, bad in damaged.items():
        with pytest.raises(FeatureFormatError) as info:
            LocalFeatures.from_bytes(bad)
        message = str(info.value)
        assert "\n" not in message and message.startswith("local features:"), name
    assert issubclass(FeatureFormatError, ValueError)


def test_local_features_validate_their_arrays():
    with pytest.raises(ValueError, match="descriptors"):
        LocalFeatures(np.zeros((3, 2)), np.zeros((3, 32), np.uint8), (10, 10), "sift")
    with pytest.raises(ValueError, match="uint8"):
        LocalFeatures(np.zeros((3, 2)), np.zeros((3, 32), np.float32), (10, 10), "orb")
    with pytest.raises(ValueError, match="points"):
        LocalFeatures(np.zeros((3, 2)), np.zeros((3, 32), np.uint8), (10, 10), "orb", np.zeros((2, 3)))
    with pytest.raises(ValueError, match="method"):
        LocalFeatures(np.zeros((3, 2)), np.zeros((3, 32), np.uint8), (10, 10), "akaze")
    features = _features("orb", False)
    with pytest.raises(ValueError):
        features.keypoints[0, 0] = 1.0  # read-only


# --------------------------------------------------------------------------------------- thumbnails


def test_thumbnail_round_trip_and_errors():
    rgb = textured_image(640, 480, seed=7)
    blob = make_thumbnail(rgb, max_side=160, quality=80)
    assert blob[:2] == b"\xff\xd8" and len(blob) < 15_000
    small = decode_thumbnail(blob)
    assert small.shape == (120, 160, 3) and small.dtype == np.uint8
    halves = np.zeros((480, 640, 3), np.uint8)
    halves[:, :320, 0] = 200  # red left, blue right: the channel order survives the JPEG round trip
    halves[:, 320:, 2] = 200
    colours = decode_thumbnail(make_thumbnail(halves)).astype(int)
    np.testing.assert_allclose(colours[:, :70].mean(axis=(0, 1)), [200, 0, 0], atol=6)
    np.testing.assert_allclose(colours[:, 90:].mean(axis=(0, 1)), [0, 0, 200], atol=6)
    assert decode_thumbnail(make_thumbnail(rgb[:100, :80], max_side=160)).shape == (100, 80, 3)
    with pytest.raises(ValueError):
        decode_thumbnail(b"not a jpeg")
    with pytest.raises(ValueError):
        decode_thumbnail(b"")
    with pytest.raises(ValueError, match="quality"):
        make_thumbnail(rgb, quality=0)
