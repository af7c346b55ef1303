"""Geometric verification of loop-closure candidates from stored local features (ROS-free).

Pipeline: mutual nearest neighbours + Lowe ratio test on the descriptors, then a robust two-view model
(OpenCV USAC MAGSAC++ with a fixed seed, so the same inputs always give the same decision and pose):

* match keyframe with 3-D points (depth)  -> PnP (``cv2.solvePnPRansac``): metric pose, ``scale_known``;
* intrinsics known                       -> essential matrix + ``cv2.recoverPose``: rotation and a
  unit-norm translation direction;
* no intrinsics                          -> fundamental matrix: inlier count only, no pose.

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

from tscm_ros.features import CameraIntrinsics, LocalFeatures

__all__ = [
    "MODELS",
    "REJECT_REASONS",
    "Verification",
    "Verifier",
    "VerifierConfig",
    "draw_matches",
    "match_descriptors",
]

MODELS = ("essential", "fundamental", "pnp", "")
REFERENCE_SIDE = 640
REJECT_REASONS: tuple[str, ...] = (
    "no_keypoints",  # one of the two feature sets is empty
    "method_mismatch",  # sift vs orb features
    "few_matches",  # fewer tentative matches than min_inliers (or than the model needs)
    "degenerate",  # the robust estimator found no model (degenerate geometry / configuration)
    "few_inliers",  # inliers < min_inliers
    "low_inlier_ratio",  # inliers / matches < min_inlier_ratio
)


@dataclass(frozen=True)
class VerifierConfig:
    """Matching and acceptance parameters.

    ``min_inliers`` / ``min_inlier_ratio`` -- the acceptance rule -- were chosen WITHOUT the Corridor ground
    truth (Corridor is the held-out test): see ``benchmarks/verification.py --calibrate`` and the module
    docs of that script. On ``vpr_triplets`` (real, cross-condition; fundamental matrix) and the demo
    scene (essential / PnP) no wrong pair reached 15 inliers while most true pairs had well above 20;
    ``min_inliers=20`` leaves a margin for harder data, ``min_inlier_ratio=0.25`` rejects the many-match,
    few-inlier pairs of repetitive texture.

    ``ransac_threshold_px``: inlier threshold (F: epipolar distance, E: the same in normalised coordinates
    times the focal length, PnP: reprojection error) in pixels of an image whose longer side is
    ``REFERENCE_SIDE`` (640) px, the default extraction resolution; for other sizes it scales with the
    query image's longer side (a 160x120 image uses a quarter of it). ``pnp_min_points``: matches with a
    valid 3-D point needed before PnP is tried.
    """

    min_inliers: int = 20
    min_inlier_ratio: float = 0.25
    ratio_test: float = 0.8
    mutual: bool = True
    ransac_threshold_px: float = 2.0
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
        if self.min_inliers < 1:
            raise bad("min_inliers", ">= 1")
        if self.max_iterations < 1:
            raise bad("max_iterations", ">= 1")
        if self.seed < 0:
            raise bad("seed", ">= 0")
        if self.pnp_min_points < 6:
            raise bad("pnp_min_points", ">= 6 (PnP RANSAC needs at least 6 points)")
        if not (0.0 <= self.min_inlier_ratio <= 1.0):
            raise bad("min_inlier_ratio", "in [0, 1]")
        if not (0.0 < self.ratio_test <= 1.0):
            raise bad("ratio_test", "in (0, 1]")
        if not (math.isfinite(self.ransac_threshold_px) and self.ransac_threshold_px > 0):
            raise bad("ransac_threshold_px", "> 0")
        if not (0.0 < self.confidence < 1.0):
            raise bad("confidence", "in (0, 1)")
        if not isinstance(self.mutual, bool):
            raise bad("mutual", "a bool")


@dataclass(frozen=True, eq=False)
class Verification:
    """The outcome of verifying one (query, match) pair; see the module docstring for the pose convention."""

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
    """(Nq, Nm) float32 scores ordered like the descriptor distances (higher = closer) from one BLAS
    product, and whether they are binary: RootSIFT rows are made unit-L2, so s = cos and d^2 = 2 - 2 s;
    for ORB s = -Hamming / 2 (Hamming = |a| + |b| - 2 a.b on the unpacked bits)."""
    if query.method == "orb":
        a = np.unpackbits(query.descriptors, axis=1).astype(np.float32)
        b = np.unpackbits(match.descriptors, axis=1).astype(np.float32)
        scores = a @ b.T
        scores -= 0.5 * a.sum(axis=1)[:, None]
        scores -= 0.5 * b.sum(axis=1)[None, :]  # = -Hamming / 2
        return scores, True
    a, b = query.float_descriptors(), match.float_descriptors()
    a /= np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
    b /= np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-12)
    return a @ b.T, False


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
        [(points[:, 0] - intrinsics.cx) / intrinsics.fx, (points[:, 1] - intrinsics.cy) / intrinsics.fy], axis=1
    )


def _intrinsics_for(features: LocalFeatures, intrinsics: CameraIntrinsics) -> CameraIntrinsics:
    if intrinsics.size == features.image_size:
        return intrinsics
    return intrinsics.scaled_to(*features.image_size)


class Verifier:
    """Verifies loop-closure candidates: ``Verifier(config).verify(query, match, intrinsics=K)``."""

    def __init__(self, config: VerifierConfig | None = None) -> None:
        self.config = config or VerifierConfig()

    def _usac(self, threshold: float) -> cv2.UsacParams:
        params = cv2.UsacParams()
        params.sampler = cv2.SAMPLING_UNIFORM
        params.score = cv2.SCORE_METHOD_MAGSAC
        params.loMethod = cv2.LOCAL_OPTIM_SIGMA
        params.loIterations = 10
        params.loSampleSize = 14
        params.final_polisher = cv2.MAGSAC
        params.final_polisher_iterations = 20
        params.confidence = self.config.confidence
        params.maxIterations = self.config.max_iterations
        params.threshold = threshold
        params.isParallel = False
        params.randomGeneratorState = self.config.seed
        return params

    def _reject(self, reason: str, matches: int = 0, inliers: int = 0, model: str = "") -> Verification:
        ratio = inliers / matches if matches else 0.0
        return Verification(False, inliers, matches, ratio, model, reason=reason)

    def verify(
        self, query: LocalFeatures, match: LocalFeatures, *, intrinsics: CameraIntrinsics | None = None
    ) -> Verification:
        """Verify ``match`` as a revisit of ``query``. Never raises on bad data: returns ``verified=False``
        with a ``reason`` from :data:`REJECT_REASONS` instead."""
        config = self.config
        if query.method != match.method:
            return self._reject("method_mismatch")
        if len(query) == 0 or len(match) == 0:
            return self._reject("no_keypoints")
        pairs = match_descriptors(query, match, ratio_test=config.ratio_test, mutual=config.mutual)
        n = len(pairs)
        threshold = config.ransac_threshold_px * max(query.image_size) / REFERENCE_SIDE
        query_xy = query.keypoints[pairs[:, 0]].astype(np.float64)
        match_xy = match.keypoints[pairs[:, 1]].astype(np.float64)
        model, mask, rotation, translation = "", None, None, None
        if intrinsics is not None and match.points is not None and n >= config.pnp_min_points:
            valid = match.valid_points[pairs[:, 1]]
            if int(valid.sum()) >= max(config.pnp_min_points, min(config.min_inliers, n)):
                model = "pnp"
                mask, rotation, translation = self._pnp(
                    query_xy[valid], match.points[pairs[valid, 1]], _intrinsics_for(query, intrinsics), threshold
                )
                if mask is not None:
                    full = np.zeros(n, bool)
                    full[np.flatnonzero(valid)[mask]] = True
                    mask = full
        if not model:
            model = "essential" if intrinsics is not None else "fundamental"
            minimal = 5 if model == "essential" else 8
            if n < max(minimal + 1, min(config.min_inliers, 8)) or n < config.min_inliers:
                return self._reject("few_matches", n, model=model)
            if model == "essential":
                mask, rotation, translation = self._essential(
                    query_xy, match_xy, _intrinsics_for(query, intrinsics), _intrinsics_for(match, intrinsics),
                    threshold,
                )
            else:
                mask = self._fundamental(query_xy, match_xy, threshold)
        if mask is None:
            return self._reject("degenerate", n, model=model)
        inliers = int(mask.sum())
        ratio = inliers / n if n else 0.0
        reason = ""
        if inliers < config.min_inliers:
            reason = "few_inliers"
        elif ratio < config.min_inlier_ratio:
            reason = "low_inlier_ratio"
        return Verification(
            verified=not reason, inliers=inliers, matches=n, inlier_ratio=ratio, model=model,
            rotation_xyzw=None if rotation is None else matrix_to_quaternion(rotation),
            translation=None if translation is None else tuple(float(v) for v in translation),
            scale_known=model == "pnp" and rotation is not None, reason=reason,
            inlier_pairs=np.ascontiguousarray(pairs[mask], dtype=np.int32),
        )  # fmt: skip

    # -- models: each returns the inlier mask (None = no model) and, where it has one, R and t

    def _fundamental(self, query_xy: np.ndarray, match_xy: np.ndarray, threshold: float) -> np.ndarray | None:
        cv2.setRNGSeed(self.config.seed)
        try:
            fundamental, mask = cv2.findFundamentalMat(match_xy, query_xy, self._usac(threshold))
        except cv2.error:
            return None
        if fundamental is None or mask is None or fundamental.shape != (3, 3) or not np.isfinite(fundamental).all():
            return None
        return mask.reshape(-1).astype(bool)

    def _essential(
        self,
        query_xy: np.ndarray,
        match_xy: np.ndarray,
        query_k: CameraIntrinsics,
        match_k: CameraIntrinsics,
        threshold: float,
    ) -> tuple[np.ndarray | None, np.ndarray | None, np.ndarray | None]:
        # normalised image coordinates: the two keyframes may have been extracted at different resolutions
        q, m = _normalised(query_xy, query_k), _normalised(match_xy, match_k)
        focal = 0.5 * (query_k.fx + query_k.fy)
        params = self._usac(threshold / focal)
        cv2.setRNGSeed(self.config.seed)
        try:
            eye, no_distortion = np.eye(3), np.zeros(5)
            essential, mask = cv2.findEssentialMat(m, q, eye, eye, no_distortion, no_distortion, params)
        except cv2.error:
            return None, None, None
        if essential is None or mask is None or essential.shape != (3, 3) or not np.isfinite(essential).all():
            return None, None, None
        mask = mask.reshape(-1).astype(bool)
        try:
            _, rotation, translation, pose_mask = cv2.recoverPose(
                essential, m, q, np.eye(3), mask=mask.astype(np.uint8).reshape(-1, 1).copy()
            )
        except cv2.error:
            return mask, None, None
        if pose_mask is not None and int((pose_mask.reshape(-1) > 0).sum()) > 0:
            mask = mask & (pose_mask.reshape(-1) > 0)
        translation = translation.reshape(3)
        norm = float(np.linalg.norm(translation))
        return mask, rotation, (translation / norm if norm > 0 else translation)

    def _pnp(
        self, query_xy: np.ndarray, object_points: np.ndarray, query_k: CameraIntrinsics, threshold: float
    ) -> tuple[np.ndarray | None, np.ndarray | None, np.ndarray | None]:
        cv2.setRNGSeed(self.config.seed)
        params = self._usac(threshold)
        params.loMethod = cv2.LOCAL_OPTIM_INNER_LO  # SIGMA local optimisation is not implemented for PnP
        try:
            ok, _, rvec, tvec, inliers = cv2.solvePnPRansac(
                np.ascontiguousarray(object_points, np.float64).reshape(-1, 1, 3),
                np.ascontiguousarray(query_xy, np.float64).reshape(-1, 1, 2),
                query_k.K, None, params=params,
            )  # fmt: skip
        except cv2.error:
            return None, None, None
        if not ok or inliers is None or len(inliers) == 0 or not np.isfinite(tvec).all():
            return None, None, None
        mask = np.zeros(len(query_xy), bool)
        mask[inliers.reshape(-1)] = True
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
            raise ValueError(f"draw_matches: expected HxWx3 uint8 RGB images, got {getattr(rgb, 'shape', rgb)}")
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
        p2 = (round((mx + 0.5) * scales[1][0] - 0.5) + offset, round((my + 0.5) * scales[1][1] - 0.5) + banner)
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
