"""Geometric verification of loop-closure candidates from stored local features (ROS-free).

Pipeline: mutual nearest neighbours + Lowe ratio test on the descriptors, then a robust model with a
fixed random state (``cv2.setRNGSeed`` + USAC's ``randomGeneratorState``), so the same inputs always give
the same decision and pose:

* match keyframe with 3-D points (depth) -> PnP (``cv2.solvePnPRansac``, AP3P samples, LM refinement):
  metric pose, ``scale_known``; falls back to E / F when fewer than ``pnp_min_points`` points are valid;
* intrinsics known                      -> essential matrix (``cv2.findEssentialMat``, USAC with MSAC
  scoring and local optimisation) + ``cv2.recoverPose``: rotation and a unit-norm translation direction;
* no intrinsics                         -> fundamental matrix (``cv2.findFundamentalMat``, USAC
  MAGSAC++): inlier count only, no pose.

Then the acceptance rule of :class:`VerifierConfig` (``min_inliers``, ``min_inlier_ratio``) and a check
that the inliers are spread in both images (not on a line or a point).

Relative pose convention: ``T_query_match`` = the pose of the MATCH camera in the QUERY camera frame, both
optical frames (x right, y down, z forward)::

    X_query = R @ X_match + t        (R from rotation_xyzw, t = translation)

so ``t`` is the match camera's optical centre expressed in the query frame (metres for ``pnp``; unit norm
for ``essential``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import cv2
import numpy as np

from tscm_ros.config_ranges import check_ranges, ranged
from tscm_ros.features import CameraIntrinsics, LocalFeatures

__all__ = [
    "MODELS",
    "REJECT_REASONS",
    "Verification",
    "Verifier",
    "VerifierConfig",
    "draw_matches",
    "match_descriptors",
    "matrix_to_quaternion",
    "quaternion_to_matrix",
]

MODELS = ("essential", "fundamental", "pnp", "")
REFERENCE_SIDE = 640
# inliers whose spread across the minor axis (std, in either image) is below this fraction of the image's
# longer side lie on a line or a point: any F / E fits them, so they verify nothing ("degenerate")
MIN_INLIER_SPREAD = 0.01
REJECT_REASONS: tuple[str, ...] = (
    "no_keypoints",  # one of the two feature sets is empty
    "method_mismatch",  # sift vs orb features
    "few_matches",  # fewer tentative matches than min_inliers (or than the model needs)
    "degenerate",  # no model found, or the inliers lie on a line / point (they fit any model)
    "few_inliers",  # inliers < min_inliers
    "low_inlier_ratio",  # inliers / matches < min_inlier_ratio
)


@dataclass(frozen=True)
class VerifierConfig:
    """Matching, robust estimation and acceptance (invalid values raise ValueError naming the field).

    Acceptance: ``inliers >= min_inliers`` and ``inlier_ratio >= min_inlier_ratio``. The defaults were chosen
    WITHOUT the Corridor ground truth (Corridor is the held-out test), from ``vpr_triplets`` (real images,
    day/night and seasons; all 435 pairs, fundamental matrix) and the demo scene (every 3rd lap-2 frame x
    every lap-1 frame, essential matrix and PnP); ``benchmarks/verification.py --only calibrate`` prints
    the data. ``min_inliers`` is the smallest N at which at most 0.1 % of the clearly wrong pairs (other
    triplet place; demo frames > 10 m apart) reach N with every model: wrong pairs peaked at 13 (triplets)
    and 25 / 27 (demo PnP / E, repeated facade patterns; 0.05 % of them reach 25), while 88-93 % of the
    true demo pairs (<= 3 m) and 40 % of the same-place triplet pairs (the day/night ones mostly fail at
    any threshold: 43 % reach 15) have >= 25.
    ``min_inlier_ratio=0.3``: every true pair with >= 20 inliers had a ratio >= 0.34; matches with random
    geometry give ~0.25 (mostly a fundamental matrix fitted to repetitive texture).

    Thresholds are in pixels of an image whose longer side is ``REFERENCE_SIDE`` (640) px, the default
    extraction resolution, and scale with the query image's longer side (a 320x240 image uses half):
    ``ransac_threshold_px`` for the essential matrix (Sampson distance, applied in normalised coordinates
    times the focal length), ``pnp_threshold_px`` the PnP reprojection error (looser: depth adds error),
    ``fundamental_threshold_px`` the epipolar distance without intrinsics (looser: such images are usually
    not undistorted either; on vpr_triplets 1 to 8 px separate alike, and of 4 and 6 px -- compared on
    Corridor, whose fisheye images are the reason to be loose -- 6 px was better there).
    ``pnp_min_points``: matches with a valid 3-D point needed to try PnP.
    """

    min_inliers: int = ranged(25, 1, 100_000)  # benchmarks/verification.py counts model inliers from 1
    min_inlier_ratio: float = ranged(0.3, 0.0, 1.0)
    ratio_test: float = 0.8
    mutual: bool = True
    ransac_threshold_px: float = 1.0
    pnp_threshold_px: float = 2.0
    fundamental_threshold_px: float = 6.0
    confidence: float = 0.999
    max_iterations: int = 2000
    seed: int = 0
    pnp_min_points: int = 12

    def __post_init__(self) -> None:
        def bad(name: str, rule: str) -> ValueError:
            return ValueError(f"VerifierConfig.{name} must be {rule}, got {getattr(self, name)!r}")

        for name in ("min_inliers", "max_iterations", "seed", "pnp_min_points"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise bad(name, "an int")
        if self.max_iterations < 1:
            raise bad("max_iterations", ">= 1")
        if not 0 <= self.seed < 2**31:
            raise bad("seed", "in 0..2**31-1")
        if self.pnp_min_points < 6:
            raise bad("pnp_min_points", ">= 6")
        for name, low_open in (("min_inlier_ratio", False), ("ratio_test", True)):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not (0.0 <= value <= 1.0) or (low_open and value == 0):
                raise bad(name, "in (0, 1]" if low_open else "in [0, 1]")
        for name in ("ransac_threshold_px", "pnp_threshold_px", "fundamental_threshold_px"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not (math.isfinite(value) and value > 0):
                raise bad(name, "a finite number > 0")
        if not isinstance(self.confidence, (int, float)) or not (0.0 < self.confidence < 1.0):
            raise bad("confidence", "in (0, 1)")
        if not isinstance(self.mutual, bool):
            raise bad("mutual", "a bool")
        check_ranges(self)


@dataclass(frozen=True, eq=False)
class Verification:
    """The outcome of verifying one (query, match) pair; see the module docstring for the pose convention.

    ``matches``: tentative (mutual, ratio-test) matches; ``inliers``: those the model accepts;
    ``inlier_ratio``: inliers / the matches the model could use (for ``pnp`` the matches whose match
    keypoint has a valid 3-D point); ``model``: ``essential`` / ``fundamental`` / ``pnp`` or ``""`` when
    rejected before estimation; ``rotation_xyzw`` / ``translation``: ``T_query_match`` (None for
    ``fundamental`` and rejections before a pose); ``inlier_pairs``: (K, 2) int32 (query index, match
    index) of the inliers, for :func:`draw_matches`.
    """

    verified: bool
    inliers: int
    matches: int
    inlier_ratio: float
    model: str = ""
    rotation_xyzw: tuple[float, float, float, float] | None = None
    translation: tuple[float, float, float] | None = None
    scale_known: bool = False
    reason: str = ""
    inlier_pairs: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), np.int32), repr=False)

    @property
    def rotation_matrix(self) -> np.ndarray | None:
        return None if self.rotation_xyzw is None else quaternion_to_matrix(self.rotation_xyzw)

    @property
    def rotation_deg(self) -> float | None:
        """Rotation angle of the relative pose in degrees (None without a pose)."""
        if self.rotation_xyzw is None:
            return None
        return math.degrees(2 * math.acos(min(1.0, abs(self.rotation_xyzw[3]))))


# -------------------------------------------------------------------------------------- quaternions


def matrix_to_quaternion(rotation: np.ndarray) -> tuple[float, float, float, float]:
    """Rotation matrix -> unit quaternion (x, y, z, w) with w >= 0."""
    m = np.asarray(rotation, np.float64)
    trace = m[0, 0] + m[1, 1] + m[2, 2]
    if trace > 0:
        s = 2.0 * math.sqrt(trace + 1.0)
        q = (m[2, 1] - m[1, 2]) / s, (m[0, 2] - m[2, 0]) / s, (m[1, 0] - m[0, 1]) / s, 0.25 * s
    elif m[0, 0] > m[1, 1] and m[0, 0] > m[2, 2]:
        s = 2.0 * math.sqrt(1.0 + m[0, 0] - m[1, 1] - m[2, 2])
        q = 0.25 * s, (m[0, 1] + m[1, 0]) / s, (m[0, 2] + m[2, 0]) / s, (m[2, 1] - m[1, 2]) / s
    elif m[1, 1] > m[2, 2]:
        s = 2.0 * math.sqrt(1.0 + m[1, 1] - m[0, 0] - m[2, 2])
        q = (m[0, 1] + m[1, 0]) / s, 0.25 * s, (m[1, 2] + m[2, 1]) / s, (m[0, 2] - m[2, 0]) / s
    else:
        s = 2.0 * math.sqrt(1.0 + m[2, 2] - m[0, 0] - m[1, 1])
        q = (m[0, 2] + m[2, 0]) / s, (m[1, 2] + m[2, 1]) / s, 0.25 * s, (m[1, 0] - m[0, 1]) / s
    q = np.array(q) / np.linalg.norm(q)
    if q[3] < 0:
        q = -q
    return float(q[0]), float(q[1]), float(q[2]), float(q[3])


def quaternion_to_matrix(xyzw: tuple[float, float, float, float]) -> np.ndarray:
    x, y, z, w = np.asarray(xyzw, np.float64) / np.linalg.norm(xyzw)
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
            [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
            [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
        ]
    )


# ----------------------------------------------------------------------------------------- matching


def _similarity(query: LocalFeatures, match: LocalFeatures) -> tuple[np.ndarray, bool]:
    """(Nq, Nm) float32 scores ordered like the descriptor distances (higher = closer) from one matrix
    product, and whether they are binary: RootSIFT rows are made unit-L2, so s = cos and d^2 = 2 - 2 s;
    for ORB s = -Hamming / 2 (Hamming = |a| + |b| - 2 a.b on the unpacked bits). The product uses
    ``cv2.gemm``: numpy's multi-threaded OpenBLAS is ~10x slower for this size on a loaded machine."""
    if query.method == "orb":
        a = np.unpackbits(query.descriptors, axis=1).astype(np.float32)
        b = np.unpackbits(match.descriptors, axis=1).astype(np.float32)
        scores = cv2.gemm(a, b, 1.0, None, 0.0, flags=cv2.GEMM_2_T)
        scores -= 0.5 * a.sum(axis=1)[:, None]
        scores -= 0.5 * b.sum(axis=1)[None, :]
        return scores, True
    a, b = query.float_descriptors(), match.float_descriptors()
    a /= np.maximum(np.sqrt((a * a).sum(axis=1, keepdims=True)), 1e-12)
    b /= np.maximum(np.sqrt((b * b).sum(axis=1, keepdims=True)), 1e-12)
    return cv2.gemm(a, b, 1.0, None, 0.0, flags=cv2.GEMM_2_T), False


def match_descriptors(
    query: LocalFeatures, match: LocalFeatures, *, ratio_test: float = 0.8, mutual: bool = True
) -> np.ndarray:
    """(K, 2) int32 index pairs (query index, match index): nearest neighbours (L2 for RootSIFT, Hamming
    for ORB) passing Lowe's ratio test ``d1 < ratio_test * d2`` and, with ``mutual``, whose match's nearest
    neighbour in the query is the same keypoint. Deterministic (ties go to the lower index). Empty when
    either side has no keypoints or the methods differ."""
    if len(query) == 0 or len(match) == 0 or query.method != match.method:
        return np.zeros((0, 2), np.int32)
    scores, binary = _similarity(query, match)
    rows = np.arange(len(query))
    best = scores.argmax(axis=1)
    best_score = scores[rows, best]
    if len(match) >= 2:
        scores[rows, best] = -np.inf  # in place (the matrix is ours), restored below
        second_score = scores.max(axis=1)
        scores[rows, best] = best_score
        if binary:  # ORB: Hamming = -2 s
            d1, d2 = -2 * best_score, -2 * second_score
        else:  # RootSIFT: d^2 = 2 - 2 s
            d1, d2 = np.sqrt(np.maximum(2 - 2 * best_score, 0)), np.sqrt(np.maximum(2 - 2 * second_score, 0))
        keep = d1 < ratio_test * d2
    else:
        keep = np.ones(len(query), bool)
    if mutual:
        keep &= scores.argmax(axis=0)[best] == rows
    return np.stack([rows[keep], best[keep]], axis=1).astype(np.int32)


# ------------------------------------------------------------------------------------------ verifier


def _normalised(points: np.ndarray, intrinsics: CameraIntrinsics) -> np.ndarray:
    return np.stack(
        [(points[:, 0] - intrinsics.cx) / intrinsics.fx, (points[:, 1] - intrinsics.cy) / intrinsics.fy],
        axis=1,
    )


def _spread_ok(points: np.ndarray, features: LocalFeatures) -> bool:
    """Whether ``points`` (K, 2) spread in 2-D: std along their minor axis >= MIN_INLIER_SPREAD * side."""
    covariance = np.cov(points.T)
    minor = float(np.linalg.eigvalsh(covariance)[0]) if np.isfinite(covariance).all() else 0.0
    return math.sqrt(max(minor, 0.0)) >= MIN_INLIER_SPREAD * max(features.image_size)


def _intrinsics_for(features: LocalFeatures, intrinsics: CameraIntrinsics) -> CameraIntrinsics:
    if intrinsics.size == features.image_size:
        return intrinsics
    return intrinsics.scaled_to(*features.image_size)


class Verifier:
    """Verifies loop-closure candidates: ``Verifier(config).verify(query, match, intrinsics=K)``.

    Stateless apart from its config; safe to share between threads (OpenCV's RNG is per thread).
    """

    def __init__(self, config: VerifierConfig | None = None) -> None:
        self.config = config or VerifierConfig()

    def _usac(self, threshold: float, fundamental: bool) -> cv2.UsacParams:
        """USAC settings with a fixed random state: MAGSAC++ for F, MSAC + local optimisation for E (on the
        demo scene MAGSAC++ E poses were off by up to 17 deg in repetitive facades where MSAC was < 1 deg)."""
        params = cv2.UsacParams()
        params.sampler = cv2.SAMPLING_UNIFORM
        if fundamental:
            params.score = cv2.SCORE_METHOD_MAGSAC
            params.loMethod = cv2.LOCAL_OPTIM_SIGMA
            params.final_polisher = cv2.MAGSAC
        else:
            params.score = cv2.SCORE_METHOD_MSAC
            params.loMethod = cv2.LOCAL_OPTIM_INNER_AND_ITER_LO
            params.final_polisher = cv2.LSQ_POLISHER
        params.loIterations = 10
        params.loSampleSize = 14
        params.final_polisher_iterations = 10
        params.confidence = self.config.confidence
        params.maxIterations = self.config.max_iterations
        params.threshold = threshold
        params.isParallel = False
        params.randomGeneratorState = self.config.seed
        return params

    def _reject(self, reason: str, matches: int = 0, model: str = "") -> Verification:
        return Verification(False, 0, matches, 0.0, model, reason=reason)

    def verify(
        self, query: LocalFeatures, match: LocalFeatures, *, intrinsics: CameraIntrinsics | None = None
    ) -> Verification:
        """Verify ``match`` (a stored keyframe) as a revisit of ``query`` (the current keyframe).

        ``intrinsics``: the camera's; scaled to each feature set's ``image_size`` when they differ. Never
        raises on bad data: returns ``verified=False`` with a ``reason`` from :data:`REJECT_REASONS`.
        """
        config = self.config
        if query.method != match.method:
            return self._reject("method_mismatch")
        if len(query) == 0 or len(match) == 0:
            return self._reject("no_keypoints")
        pairs = match_descriptors(query, match, ratio_test=config.ratio_test, mutual=config.mutual)
        n = len(pairs)
        scale = max(query.image_size) / REFERENCE_SIDE
        query_xy = query.keypoints[pairs[:, 0]].astype(np.float64)
        match_xy = match.keypoints[pairs[:, 1]].astype(np.float64)
        query_k = None if intrinsics is None else _intrinsics_for(query, intrinsics)
        model, mask, rotation, translation, usable = "", None, None, None, n
        if query_k is not None and match.points is not None:
            valid = match.valid_points[pairs[:, 1]]
            if int(valid.sum()) >= max(config.pnp_min_points, config.min_inliers):
                result = self._pnp(
                    query_xy[valid], match.points[pairs[valid, 1]], query_k, config.pnp_threshold_px * scale
                )
                if result is not None:
                    model, usable = "pnp", int(valid.sum())
                    mask = np.zeros(n, bool)
                    mask[np.flatnonzero(valid)[result[0]]] = True
                    rotation, translation = result[1], result[2]
        if not model:
            model = "essential" if query_k is not None else "fundamental"
            if n < max(config.min_inliers, 8):
                return self._reject("few_matches", n, model)
            if query_k is not None:
                result = self._essential(
                    query_xy,
                    match_xy,
                    query_k,
                    _intrinsics_for(match, intrinsics),
                    config.ransac_threshold_px * scale,
                )
                if result is not None:
                    mask, rotation, translation = result
            else:
                mask = self._fundamental(query_xy, match_xy, config.fundamental_threshold_px * scale)
            if mask is None:
                return self._reject("degenerate", n, model)
        inliers = int(mask.sum())
        ratio = inliers / usable if usable else 0.0
        reason = ""
        if inliers >= 3 and not (_spread_ok(query_xy[mask], query) and _spread_ok(match_xy[mask], match)):
            reason, rotation, translation = "degenerate", None, None
        elif inliers < config.min_inliers:
            reason = "few_inliers"
        elif ratio < config.min_inlier_ratio:
            reason = "low_inlier_ratio"
        return Verification(
            verified=not reason, inliers=inliers, matches=n, inlier_ratio=ratio, model=model,
            rotation_xyzw=None if rotation is None else matrix_to_quaternion(rotation),
            translation=None if translation is None else tuple(float(v) for v in translation),
            scale_known=model == "pnp", reason=reason,
            inlier_pairs=np.ascontiguousarray(pairs[mask], dtype=np.int32),
        )  # fmt: skip

    # -- models: each returns None (no model) or the inlier mask and, where it has one, R and t

    def _fundamental(self, query_xy: np.ndarray, match_xy: np.ndarray, threshold: float) -> np.ndarray | None:
        cv2.setRNGSeed(self.config.seed)
        try:
            fundamental, mask = cv2.findFundamentalMat(match_xy, query_xy, self._usac(threshold, True))
        except cv2.error:
            return None
        if (
            fundamental is None
            or mask is None
            or fundamental.shape != (3, 3)
            or not np.isfinite(fundamental).all()
        ):
            return None
        return mask.reshape(-1).astype(bool)

    def _essential(
        self,
        query_xy: np.ndarray,
        match_xy: np.ndarray,
        query_k: CameraIntrinsics,
        match_k: CameraIntrinsics,
        threshold: float,
    ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None] | None:
        # normalised image coordinates: the two keyframes may have been extracted at different resolutions
        q, m = _normalised(query_xy, query_k), _normalised(match_xy, match_k)
        params = self._usac(threshold / (0.5 * (query_k.fx + query_k.fy)), False)
        eye, no_distortion = np.eye(3), np.zeros(5)
        cv2.setRNGSeed(self.config.seed)
        try:
            essential, mask = cv2.findEssentialMat(m, q, eye, eye, no_distortion, no_distortion, params)
        except cv2.error:
            return None
        if essential is None or mask is None or essential.shape != (3, 3) or not np.isfinite(essential).all():
            return None
        mask = mask.reshape(-1).astype(bool)
        try:
            # the pose only: the cheirality test is not applied to the inlier count (points at infinity and
            # small baselines would fail it although they fit the epipolar geometry)
            _, rotation, translation, _ = cv2.recoverPose(
                essential, m, q, eye, mask=mask.astype(np.uint8).copy()
            )
        except cv2.error:
            return mask, None, None
        translation = translation.reshape(3)
        norm = float(np.linalg.norm(translation))
        if not (np.isfinite(rotation).all() and norm > 0):
            return mask, None, None
        return mask, rotation, translation / norm

    def _pnp(
        self, query_xy: np.ndarray, object_points: np.ndarray, query_k: CameraIntrinsics, threshold: float
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        """RANSAC (OpenCV's classic loop, whose generator is seeded with a constant) over AP3P minimal
        samples, EPnP on the inliers, then Levenberg-Marquardt refinement on them."""
        objects = np.ascontiguousarray(object_points, np.float64).reshape(-1, 1, 3)
        images = np.ascontiguousarray(query_xy, np.float64).reshape(-1, 1, 2)
        cv2.setRNGSeed(self.config.seed)
        try:
            ok, rvec, tvec, inliers = cv2.solvePnPRansac(
                objects, images, query_k.K, None, iterationsCount=self.config.max_iterations,
                reprojectionError=threshold, confidence=self.config.confidence, flags=cv2.SOLVEPNP_AP3P,
            )  # fmt: skip
            if not ok or inliers is None or len(inliers) < 4:
                return None
            inliers = inliers.reshape(-1)
            rvec, tvec = cv2.solvePnPRefineLM(objects[inliers], images[inliers], query_k.K, None, rvec, tvec)
        except cv2.error:
            return None
        if not (np.isfinite(rvec).all() and np.isfinite(tvec).all()):
            return None
        mask = np.zeros(len(query_xy), bool)
        mask[inliers] = True
        rotation, _ = cv2.Rodrigues(rvec)
        return mask, rotation, tvec.reshape(3)


# ------------------------------------------------------------------------------------------- drawing


def draw_matches(
    query_rgb: np.ndarray,
    match_rgb: np.ndarray,
    query: LocalFeatures,
    match: LocalFeatures,
    verification: Verification,
) -> np.ndarray:
    """Query | match side by side with the inlier matches in green and a verdict line (RGB uint8).

    The images may be thumbnails: keypoints are scaled from each feature set's ``image_size`` to the
    image given. Both are shown at the same height.
    """
    images = []
    for rgb in (query_rgb, match_rgb):
        if not isinstance(rgb, np.ndarray) or rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
            raise ValueError(
                f"draw_matches: expected HxWx3 uint8 RGB images, got {getattr(rgb, 'shape', rgb)}"
            )
        images.append(rgb)
    height = max(max(img.shape[0] for img in images), 240)
    panels, scales = [], []
    for rgb, features in zip(images, (query, match), strict=True):
        factor = height / rgb.shape[0]
        panel = cv2.resize(rgb, (round(rgb.shape[1] * factor), height), interpolation=cv2.INTER_LINEAR)
        panels.append(panel)
        scales.append((panel.shape[1] / features.image_size[0], panel.shape[0] / features.image_size[1]))
    banner = 22
    canvas = np.zeros((height + banner, panels[0].shape[1] + panels[1].shape[1], 3), np.uint8)
    canvas[banner:, : panels[0].shape[1]] = panels[0]
    canvas[banner:, panels[0].shape[1] :] = panels[1]
    offset = panels[0].shape[1]
    pairs = verification.inlier_pairs
    valid = (pairs[:, 0] < len(query)) & (pairs[:, 1] < len(match)) if len(pairs) else np.zeros(0, bool)
    colour = (0, 220, 0) if verification.verified else (230, 160, 0)
    for qi, mi in pairs[valid]:
        qx, qy = query.keypoints[qi]
        mx, my = match.keypoints[mi]
        p1 = (round((qx + 0.5) * scales[0][0] - 0.5), round((qy + 0.5) * scales[0][1] - 0.5) + banner)
        p2 = (
            round((mx + 0.5) * scales[1][0] - 0.5) + offset,
            round((my + 0.5) * scales[1][1] - 0.5) + banner,
        )
        cv2.line(canvas, p1, p2, colour, 1, cv2.LINE_AA)
        cv2.circle(canvas, p1, 2, colour, -1, cv2.LINE_AA)
        cv2.circle(canvas, p2, 2, colour, -1, cv2.LINE_AA)
    verdict = "VERIFIED" if verification.verified else f"rejected: {verification.reason}"
    text = (
        f"{verdict} | {verification.inliers}/{verification.matches} inliers "
        f"({verification.inlier_ratio:.0%}) | {verification.model or '-'}"
    )
    cv2.putText(canvas, text, (5, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 255), 1, cv2.LINE_AA)
    return canvas
