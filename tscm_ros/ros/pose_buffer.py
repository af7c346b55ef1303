"""A short buffer of odometry poses, looked up at an image stamp (interpolated, or nearest within an age)."""

from __future__ import annotations

import bisect
import threading
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class StampedPose:
    stamp_ns: int
    position: np.ndarray  # (3,) float64
    orientation_xyzw: np.ndarray  # (4,) float64, unit quaternion
    frame_id: str = ""


def slerp(q0: np.ndarray, q1: np.ndarray, fraction: float) -> np.ndarray:
    """Spherical linear interpolation of unit quaternions (x, y, z, w), shortest path."""
    dot = float(np.dot(q0, q1))
    if dot < 0.0:
        q1, dot = -q1, -dot
    if dot > 0.9995:
        result = q0 + fraction * (q1 - q0)
        return result / np.linalg.norm(result)
    theta = np.arccos(np.clip(dot, -1.0, 1.0))
    return (np.sin((1.0 - fraction) * theta) * q0 + np.sin(fraction * theta) * q1) / np.sin(theta)


class PoseBuffer:
    """Time-ordered poses of the last ``horizon_ns``; thread-safe."""

    def __init__(self, horizon_ns: int = 10_000_000_000) -> None:
        self._horizon_ns = horizon_ns
        self._stamps: list[int] = []
        self._poses: list[StampedPose] = []
        self._lock = threading.Lock()

    def add(self, stamp_ns: int, position, orientation_xyzw, frame_id: str = "") -> None:
        quaternion = np.asarray(orientation_xyzw, dtype=np.float64)
        norm = np.linalg.norm(quaternion)
        quaternion = quaternion / norm if norm > 0 else np.array([0.0, 0.0, 0.0, 1.0])
        pose = StampedPose(int(stamp_ns), np.asarray(position, dtype=np.float64), quaternion, frame_id)
        with self._lock:
            index = bisect.bisect_right(self._stamps, pose.stamp_ns)
            self._stamps.insert(index, pose.stamp_ns)
            self._poses.insert(index, pose)
            cutoff = self._stamps[-1] - self._horizon_ns
            drop = bisect.bisect_left(self._stamps, cutoff)
            if drop:
                del self._stamps[:drop]
                del self._poses[:drop]

    def clear(self) -> None:
        with self._lock:
            self._stamps.clear()
            self._poses.clear()

    def lookup(self, stamp_ns: int, max_age_ns: int) -> StampedPose | None:
        """Pose at ``stamp_ns``: interpolated between neighbours, else the nearest within ``max_age_ns``."""
        with self._lock:
            if not self._stamps:
                return None
            index = bisect.bisect_left(self._stamps, stamp_ns)
            if index < len(self._stamps) and self._stamps[index] == stamp_ns:
                return self._poses[index]
            if 0 < index < len(self._stamps):
                before, after = self._poses[index - 1], self._poses[index]
                if after.stamp_ns - before.stamp_ns <= 2 * max(max_age_ns, 1):
                    fraction = (stamp_ns - before.stamp_ns) / (after.stamp_ns - before.stamp_ns)
                    position = before.position + fraction * (after.position - before.position)
                    orientation = slerp(before.orientation_xyzw, after.orientation_xyzw, fraction)
                    return StampedPose(int(stamp_ns), position, orientation, before.frame_id)
            candidates = [self._poses[i] for i in (index - 1, index) if 0 <= i < len(self._poses)]
            nearest = min(candidates, key=lambda pose: abs(pose.stamp_ns - stamp_ns))
            return nearest if abs(nearest.stamp_ns - stamp_ns) <= max_age_ns else None
