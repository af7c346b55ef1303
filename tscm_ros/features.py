"""Local features for loop-closure verification: RootSIFT / ORB keypoints, 3-D points, a binary format.

ROS-free (OpenCV + numpy). A keyframe's :class:`LocalFeatures` are extracted once, stored with
:meth:`LocalFeatures.to_bytes` and verified later against other keyframes (:mod:`tscm_ros.verification`).

Conventions:

* Pixel coordinates are OpenCV's: the centre of the top-left pixel is (0, 0), x to the right, y down.
  Keypoints are always given in the ORIGINAL image, whatever working resolution extraction used.
* 3-D points are in the camera *optical* frame (x right, y down, z forward), metres, from an aligned depth
  image and :class:`CameraIntrinsics`; NaN where the depth is invalid.
* ``sift`` means RootSIFT (Arandjelovic & Zisserman 2012: L1-normalise, element-wise sqrt), stored
  quantised as ``uint8 = round(512 * rootsift)``; ``orb`` is OpenCV ORB (256-bit binary, 32 bytes).
"""

from __future__ import annotations

import math
import struct
import zlib
from dataclasses import dataclass
from typing import Literal

import cv2
import numpy as np

from .config_ranges import check_ranges, ranged

__all__ = [
    "METHODS",
    "CameraIntrinsics",
    "FeatureConfig",
    "FeatureExtractor",
    "FeatureFormatError",
    "LocalFeatures",
    "decode_thumbnail",
    "make_thumbnail",
]

FeatureMethod = Literal["sift", "orb"]
METHODS: tuple[str, ...] = ("sift", "orb")
DESCRIPTOR_BYTES = {"sift": 128, "orb": 32}
ROOTSIFT_SCALE = 512.0  # RootSIFT components are <= sqrt(0.2) (SIFT clips at 0.2), so 512 * x fits uint8


# ----------------------------------------------------------------------------------------- intrinsics


@dataclass(frozen=True)
class CameraIntrinsics:
    """Pinhole intrinsics of an undistorted (rectified) image of ``width`` x ``height`` pixels."""

    fx: float
    fy: float
    cx: float
    cy: float
    width: int
    height: int

    def __post_init__(self) -> None:
        for name in ("fx", "fy", "cx", "cy"):
            value = getattr(self, name)
            if not isinstance(value, (int, float, np.floating, np.integer)) or not math.isfinite(value):
                raise ValueError(f"CameraIntrinsics.{name} must be a finite number, got {value!r}")
            object.__setattr__(self, name, float(value))
        for name in ("fx", "fy"):
            if getattr(self, name) <= 0:
                raise ValueError(f"CameraIntrinsics.{name} must be > 0, got {getattr(self, name)}")
        for name in ("width", "height"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
                raise ValueError(f"CameraIntrinsics.{name} must be a positive integer, got {value!r}")
            object.__setattr__(self, name, int(value))

    @property
    def K(self) -> np.ndarray:  # noqa: N802 (the usual name of the camera matrix)
        """The 3x3 camera matrix (float64)."""
        return np.array([[self.fx, 0.0, self.cx], [0.0, self.fy, self.cy], [0.0, 0.0, 1.0]])

    @property
    def size(self) -> tuple[int, int]:
        return self.width, self.height

    def scaled_to(self, width: int, height: int) -> CameraIntrinsics:
        """The same camera at another resolution (resizing the whole image; pixel-centre convention)."""
        if int(width) <= 0 or int(height) <= 0:
            raise ValueError(f"scaled_to: size must be positive, got {width}x{height}")
        sx, sy = width / self.width, height / self.height
        return CameraIntrinsics(
            self.fx * sx, self.fy * sy, (self.cx + 0.5) * sx - 0.5, (self.cy + 0.5) * sy - 0.5,
            int(width), int(height),
        )  # fmt: skip

    @classmethod
    def from_camera_info_k(cls, k: object, width: int, height: int) -> CameraIntrinsics:
        """From sensor_msgs/CameraInfo: ``k`` = the row-major 3x3 K (9 numbers), ``width``, ``height``."""
        values = np.asarray(k, dtype=np.float64).reshape(-1)
        if values.size != 9:
            raise ValueError(f"CameraInfo.k must hold 9 numbers (row-major 3x3), got {values.size}")
        return cls(float(values[0]), float(values[4]), float(values[2]), float(values[5]), width, height)


# -------------------------------------------------------------------------------------------- config


@dataclass(frozen=True)
class FeatureConfig:
    """``method``: ``sift`` (RootSIFT, accurate) or ``orb`` (fast); ``max_keypoints`` kept per image
    (strongest first); ``max_image_side``: extraction resolution (longer side resized down to it; 0 = native);
    ``min_image_side``: smaller images are enlarged to this longer side first (0 = never), which finds many
    more keypoints in tiny images (160x120 Corridor: ~90 -> ~850 SIFT keypoints; the 320x240 demo scene:
    ~220 -> ~700, at ~3x the extraction time). ``contrast_threshold``: SIFT's detection threshold (OpenCV's
    default is 0.04; 0.01 also finds the weak corners of dull images, and only the strongest
    ``max_keypoints`` are kept anyway). Both were compared on Corridor as well as on the demo scene.
    """

    method: FeatureMethod = "sift"
    max_keypoints: int = ranged(1000, 16, 20_000)
    max_image_side: int = ranged(640, 0, 8192)
    min_image_side: int = 480
    contrast_threshold: float = 0.01

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"FeatureConfig.method must be one of {METHODS}, got {self.method!r}")
        if isinstance(self.max_keypoints, bool) or not isinstance(self.max_keypoints, int):
            raise ValueError(f"FeatureConfig.max_keypoints must be an int, got {self.max_keypoints!r}")
        if isinstance(self.max_image_side, bool) or not isinstance(self.max_image_side, int):
            raise ValueError(f"FeatureConfig.max_image_side must be an int, got {self.max_image_side!r}")
        check_ranges(self)
        if self.max_image_side != 0 and self.max_image_side < 32:
            raise ValueError(
                f"FeatureConfig.max_image_side must be 0 (native) or >= 32, got {self.max_image_side}"
            )
        if isinstance(self.min_image_side, bool) or not isinstance(self.min_image_side, int):
            raise ValueError(f"FeatureConfig.min_image_side must be an int, got {self.min_image_side!r}")
        if not 0 <= self.min_image_side <= 4096 or (
            self.max_image_side and self.min_image_side > self.max_image_side
        ):
            raise ValueError(
                "FeatureConfig.min_image_side must be in 0..4096 and <= max_image_side, "
                f"got {self.min_image_side}"
            )
        if not (isinstance(self.contrast_threshold, (int, float)) and 0 < self.contrast_threshold < 1):
            raise ValueError(
                f"FeatureConfig.contrast_threshold must be in (0, 1), got {self.contrast_threshold!r}"
            )


# ------------------------------------------------------------------------------------------ features


class FeatureFormatError(ValueError):
    """A serialised :class:`LocalFeatures` blob is damaged, truncated or not ours."""


_MAGIC = b"TSCMLF"
_VERSION = 1
# magic, version, method code, flags (bit 0: has points), count, descriptor bytes, width, height
_HEADER = struct.Struct("<6sHBBIHII")
_CRC = struct.Struct("<I")
_METHOD_CODES = {"sift": 1, "orb": 2}
_CODE_METHODS = {v: k for k, v in _METHOD_CODES.items()}


@dataclass(frozen=True, eq=False)
class LocalFeatures:
    """Keypoints + descriptors of one image (and optional 3-D points of the keypoints).

    ``keypoints`` (N, 2) float32 pixel coordinates in the original image; ``descriptors`` (N, 128) uint8
    quantised RootSIFT or (N, 32) uint8 ORB; ``image_size`` (width, height) of the original image;
    ``points`` (N, 3) float32 optical-frame metres, NaN where unknown, or None.
    """

    keypoints: np.ndarray
    descriptors: np.ndarray
    image_size: tuple[int, int]
    method: str
    points: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"LocalFeatures.method must be one of {METHODS}, got {self.method!r}")
        keypoints = np.ascontiguousarray(self.keypoints, dtype=np.float32).reshape(-1, 2)
        n = len(keypoints)
        descriptors = np.ascontiguousarray(self.descriptors)
        if descriptors.dtype != np.uint8:
            raise ValueError(f"LocalFeatures.descriptors must be uint8, got {descriptors.dtype}")
        descriptors = (
            descriptors.reshape(n, DESCRIPTOR_BYTES[self.method]) if descriptors.size == 0 else descriptors
        )
        if descriptors.shape != (n, DESCRIPTOR_BYTES[self.method]):
            raise ValueError(
                f"LocalFeatures.descriptors must be ({n}, {DESCRIPTOR_BYTES[self.method]}) for "
                f"{self.method}, got {descriptors.shape}"
            )
        if not np.isfinite(keypoints).all():
            raise ValueError("LocalFeatures.keypoints must be finite")
        width, height = (int(v) for v in self.image_size)
        if width <= 0 or height <= 0:
            raise ValueError(
                f"LocalFeatures.image_size must be positive (width, height), got {self.image_size}"
            )
        points = self.points
        if points is not None:
            points = (
                np.ascontiguousarray(points, dtype=np.float32).reshape(-1, 3)
                if np.size(points)
                else (np.zeros((0, 3), np.float32))
            )
            if len(points) != n:
                raise ValueError(f"LocalFeatures.points must be ({n}, 3), got {points.shape}")
        for name, value in (("keypoints", keypoints), ("descriptors", descriptors), ("points", points)):
            if value is not None:
                value.setflags(write=False)
            object.__setattr__(self, name, value)
        object.__setattr__(self, "image_size", (width, height))

    def __len__(self) -> int:
        return len(self.keypoints)

    @property
    def valid_points(self) -> np.ndarray:
        """(N,) bool: keypoints with a finite 3-D point (all False without points)."""
        if self.points is None:
            return np.zeros(len(self), bool)
        return np.isfinite(self.points).all(axis=1) & (self.points[:, 2] > 0)

    def float_descriptors(self) -> np.ndarray:
        """Descriptors as float32 for L2 matching (RootSIFT, unit L2 norm up to quantisation)."""
        return self.descriptors.astype(np.float32) / np.float32(ROOTSIFT_SCALE)

    def to_bytes(self) -> bytes:
        """Versioned little-endian binary: header, keypoints f32, descriptors u8, [points f32], CRC32."""
        has_points = self.points is not None
        header = _HEADER.pack(
            _MAGIC, _VERSION, _METHOD_CODES[self.method], int(has_points), len(self),
            DESCRIPTOR_BYTES[self.method], self.image_size[0], self.image_size[1],
        )  # fmt: skip
        parts = [header, self.keypoints.astype("<f4").tobytes(), self.descriptors.tobytes()]
        if has_points:
            parts.append(self.points.astype("<f4").tobytes())
        body = b"".join(parts)
        return body + _CRC.pack(zlib.crc32(body))

    @classmethod
    def from_bytes(cls, blob: bytes | bytearray | memoryview) -> LocalFeatures:
        """Parse :meth:`to_bytes` output; :class:`FeatureFormatError` on anything damaged or foreign."""
        try:
            blob = bytes(blob)
        except TypeError:
            raise FeatureFormatError(f"local features: expected bytes, got {type(blob).__name__}") from None
        if len(blob) < _HEADER.size + _CRC.size:
            raise FeatureFormatError(
                f"local features: truncated blob ({len(blob)} bytes, header needs {_HEADER.size})"
            )
        magic, version, code, flags, n, dim, width, height = _HEADER.unpack_from(blob)
        if magic != _MAGIC:
            raise FeatureFormatError(f"local features: bad magic {magic!r} (not a tscm_ros feature blob)")
        if version != _VERSION:
            raise FeatureFormatError(
                f"local features: unsupported format version {version} (expected {_VERSION})"
            )
        if code not in _CODE_METHODS:
            raise FeatureFormatError(f"local features: unknown method code {code}")
        method = _CODE_METHODS[code]
        if dim != DESCRIPTOR_BYTES[method] or flags not in (0, 1) or width == 0 or height == 0:
            raise FeatureFormatError(
                f"local features: inconsistent header (method {method}, descriptor bytes {dim}, "
                f"flags {flags}, size {width}x{height})"
            )
        expected = _HEADER.size + n * (8 + dim + (12 if flags else 0)) + _CRC.size
        if len(blob) != expected:
            raise FeatureFormatError(
                f"local features: blob is {len(blob)} bytes, header says {expected} ({n} keypoints); "
                "truncated?"
            )
        (crc,) = _CRC.unpack_from(blob, len(blob) - _CRC.size)
        if zlib.crc32(memoryview(blob)[: -_CRC.size]) != crc:
            raise FeatureFormatError("local features: checksum mismatch (damaged blob)")
        offset = _HEADER.size
        keypoints = np.frombuffer(blob, "<f4", n * 2, offset).reshape(n, 2).astype(np.float32)
        offset += n * 8
        descriptors = np.frombuffer(blob, np.uint8, n * dim, offset).reshape(n, dim).copy()
        offset += n * dim
        points = np.frombuffer(blob, "<f4", n * 3, offset).reshape(n, 3).astype(np.float32) if flags else None
        try:
            return cls(keypoints, descriptors, (width, height), method, points)
        except ValueError as exc:
            raise FeatureFormatError(f"local features: invalid content ({exc})") from None


# ----------------------------------------------------------------------------------------- extractor


def _check_rgb(rgb: np.ndarray) -> None:
    if not isinstance(rgb, np.ndarray) or rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        shape = getattr(rgb, "shape", None)
        raise ValueError(f"expected an HxWx3 uint8 RGB image, got {type(rgb).__name__} {shape} "
                         f"{getattr(rgb, 'dtype', '')}")  # fmt: skip
    if rgb.shape[0] == 0 or rgb.shape[1] == 0:
        raise ValueError(f"empty image of shape {rgb.shape}")


def depth_to_metres(depth: np.ndarray) -> np.ndarray:
    """16UC1 millimetres or 32FC1/64F metres -> float32 metres with NaN where invalid (0, NaN, inf, < 0)."""
    depth = np.asarray(depth)
    if depth.ndim == 3 and depth.shape[2] == 1:
        depth = depth[:, :, 0]
    if depth.ndim != 2:
        raise ValueError(f"depth must be an HxW image, got shape {depth.shape}")
    if depth.dtype == np.uint16:
        metres = depth.astype(np.float32) * np.float32(0.001)
    elif depth.dtype in (np.float32, np.float64):
        metres = depth.astype(np.float32)
    else:
        raise ValueError(
            f"depth must be uint16 millimetres (16UC1) or float32 metres (32FC1), got {depth.dtype}"
        )
    return np.where(np.isfinite(metres) & (metres > 0), metres, np.float32(np.nan))


def back_project(
    keypoints: np.ndarray, depth_m: np.ndarray, intrinsics: CameraIntrinsics, max_step: float = 0.05
) -> np.ndarray:
    """(N, 3) optical-frame points of ``keypoints`` from a float32 metre depth image (NaN = invalid).

    Depth is interpolated bilinearly from the 4 pixels around each keypoint when all 4 are valid and agree
    within ``max_step`` (relative); across a depth edge or next to invalid pixels the point is NaN, since
    either side of an occlusion boundary would give a wrong 3-D point.
    """
    height, width = depth_m.shape
    kp = np.asarray(keypoints, np.float64).reshape(-1, 2)
    x0 = np.clip(np.floor(kp[:, 0]).astype(np.int64), 0, width - 1)
    y0 = np.clip(np.floor(kp[:, 1]).astype(np.int64), 0, height - 1)
    x1, y1 = np.minimum(x0 + 1, width - 1), np.minimum(y0 + 1, height - 1)
    ax = np.clip(kp[:, 0] - x0, 0.0, 1.0)
    ay = np.clip(kp[:, 1] - y0, 0.0, 1.0)
    corners = np.stack([depth_m[y0, x0], depth_m[y0, x1], depth_m[y1, x0], depth_m[y1, x1]], axis=1)
    weights = np.stack([(1 - ax) * (1 - ay), ax * (1 - ay), (1 - ax) * ay, ax * ay], axis=1)
    with np.errstate(invalid="ignore"):
        valid = np.isfinite(corners).all(axis=1)
        spread = np.nanmax(np.where(np.isfinite(corners), corners, -np.inf), axis=1) - np.nanmin(
            np.where(np.isfinite(corners), corners, np.inf), axis=1
        )
        z = (corners * weights).sum(axis=1)
        valid &= spread <= max_step * z
    z = np.where(valid, z, np.nan)
    x = (kp[:, 0] - intrinsics.cx) / intrinsics.fx * z
    y = (kp[:, 1] - intrinsics.cy) / intrinsics.fy * z
    return np.stack([x, y, z], axis=1).astype(np.float32)


class FeatureExtractor:
    """Deterministic RootSIFT / ORB extraction (keypoints ordered by response, then position).

    Holds one OpenCV detector: use one extractor per thread.
    """

    def __init__(self, config: FeatureConfig | None = None) -> None:
        self.config = config or FeatureConfig()
        if self.config.method == "sift":
            self._detector = cv2.SIFT_create(
                nfeatures=self.config.max_keypoints, contrastThreshold=self.config.contrast_threshold
            )
        else:
            self._detector = cv2.ORB_create(
                nfeatures=self.config.max_keypoints, scoreType=cv2.ORB_HARRIS_SCORE
            )

    def extract(
        self,
        rgb: np.ndarray,
        *,
        depth: np.ndarray | None = None,
        intrinsics: CameraIntrinsics | None = None,
    ) -> LocalFeatures:
        """Features of one HxWx3 uint8 RGB image; with ``depth`` + ``intrinsics`` also their 3-D points."""
        _check_rgb(rgb)
        height, width = rgb.shape[:2]
        depth_m = None
        if depth is not None:
            depth_m = depth_to_metres(depth)
            if depth_m.shape != (height, width):
                raise ValueError(
                    f"depth image is {depth_m.shape[1]}x{depth_m.shape[0]} but the RGB image is "
                    f"{width}x{height}; they must be aligned and equal in size"
                )
            if intrinsics is None:
                raise ValueError("depth given without intrinsics: cannot back-project keypoints")
            if intrinsics.size != (width, height):
                raise ValueError(
                    f"intrinsics are for {intrinsics.width}x{intrinsics.height} but the image is "
                    f"{width}x{height}; use intrinsics.scaled_to({width}, {height})"
                )
        gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
        longer, scale = max(width, height), 1.0
        if self.config.max_image_side and longer > self.config.max_image_side:
            scale = self.config.max_image_side / longer
        elif longer < self.config.min_image_side:
            scale = self.config.min_image_side / longer
        if scale != 1.0:
            size = (max(1, round(width * scale)), max(1, round(height * scale)))
            gray = cv2.resize(gray, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC)
        keypoints, descriptors = self._detector.detectAndCompute(gray, None)
        dim = DESCRIPTOR_BYTES[self.config.method]
        if descriptors is None or not keypoints:
            kp = np.zeros((0, 2), np.float32)
            desc = np.zeros((0, dim), np.uint8)
        else:
            attrs = np.array([(k.pt[0], k.pt[1], k.response, k.size, k.angle) for k in keypoints], np.float64)
            # canonical order: strongest first, ties by position/size/angle -> independent of OpenCV threading
            order = np.lexsort((attrs[:, 4], attrs[:, 3], attrs[:, 1], attrs[:, 0], -attrs[:, 2]))
            order = order[: self.config.max_keypoints]
            small_h, small_w = gray.shape
            kp = attrs[order, :2].copy()
            kp[:, 0] = (kp[:, 0] + 0.5) * (width / small_w) - 0.5
            kp[:, 1] = (kp[:, 1] + 0.5) * (height / small_h) - 0.5
            kp = kp.astype(np.float32)
            desc = descriptors[order]
            if self.config.method == "sift":
                desc = desc.astype(np.float32)
                desc /= np.maximum(desc.sum(axis=1, keepdims=True), 1e-12)
                desc = np.clip(np.rint(np.sqrt(desc) * ROOTSIFT_SCALE), 0, 255).astype(np.uint8)
        points = back_project(kp, depth_m, intrinsics) if depth_m is not None else None
        return LocalFeatures(kp, desc, (width, height), self.config.method, points)


# ---------------------------------------------------------------------------------------- thumbnails


def make_thumbnail(rgb: np.ndarray, max_side: int = 160, quality: int = 80) -> bytes:
    """A small JPEG of ``rgb`` (longer side ``max_side``, never enlarged) for storage next to features."""
    _check_rgb(rgb)
    if max_side < 8:
        raise ValueError(f"max_side must be >= 8, got {max_side}")
    if not 1 <= quality <= 100:
        raise ValueError(f"quality must be in 1..100, got {quality}")
    height, width = rgb.shape[:2]
    scale = min(1.0, max_side / max(width, height))
    small = rgb
    if scale < 1.0:
        small = cv2.resize(
            rgb, (max(1, round(width * scale)), max(1, round(height * scale))), interpolation=cv2.INTER_AREA
        )
    ok, encoded = cv2.imencode(
        ".jpg", cv2.cvtColor(small, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, int(quality)]
    )
    if not ok:
        raise ValueError("JPEG encoding failed")
    return encoded.tobytes()


def decode_thumbnail(blob: bytes) -> np.ndarray:
    """Decode :func:`make_thumbnail` output to HxWx3 uint8 RGB; ValueError when it is not an image."""
    data = np.frombuffer(bytes(blob), np.uint8)
    image = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if image is None:
        raise ValueError(f"thumbnail: not a decodable image ({len(data)} bytes)")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
