"""Time and pose helpers shared by bags, the node and the recognition session (ROS-free).

One nanosecond constant, one interpolation rule (linear position, scipy ``Slerp`` orientation between the two
neighbouring samples) and two containers that use it: :class:`PoseTrack` (all poses of a bag topic, immutable)
and :class:`PoseBuffer` (a rolling, thread-safe window of live odometry).
"""

from __future__ import annotations

import bisect
import threading
from dataclasses import dataclass

import numpy as np
from scipy.spatial.transform import Rotation, Slerp

NS_PER_S = 1_000_000_000
IDENTITY_XYZW = (0.0, 0.0, 0.0, 1.0)


def seconds_to_ns(seconds: float) -> int:
    return round(float(seconds) * NS_PER_S)


def unit_quaternions(quaternions: np.ndarray) -> np.ndarray:
    """Normalise (N, 4) or (4,) xyzw quaternions; zero-length ones become the identity."""
    array = np.asarray(quaternions, dtype=np.float64)
    norms = np.linalg.norm(array, axis=-1, keepdims=True)
    safe = np.where(norms > 0, norms, 1.0)
    return np.where(norms > 0, array / safe, np.asarray(IDENTITY_XYZW))


@dataclass(frozen=True)
class StampedPose:
    """A pose at a stamp: position (3,) float64, unit quaternion xyzw (4,), frame id."""

    stamp_ns: int
    position: np.ndarray
    orientation_xyzw: np.ndarray
    frame_id: str = ""


def interpolate(before: StampedPose, after: StampedPose, stamp_ns: int) -> StampedPose:
    """Pose at ``stamp_ns`` between two samples: linear position, spherical orientation (scipy Slerp)."""
    span = after.stamp_ns - before.stamp_ns
    if span <= 0:
        return before
    fraction = (stamp_ns - before.stamp_ns) / span
    position = before.position + fraction * (after.position - before.position)
    rotations = Rotation.from_quat(np.stack([before.orientation_xyzw, after.orientation_xyzw]))
    orientation = Slerp([0.0, 1.0], rotations)([fraction]).as_quat()[0]
    return StampedPose(int(stamp_ns), position, orientation, before.frame_id)


@dataclass
class PoseTrack:
    """Time-sorted poses of one topic (a bag's odometry); :meth:`at` interpolates inside its time span."""

    stamps_ns: np.ndarray  # (N,) int64, strictly increasing
    positions: np.ndarray  # (N, 3)
    orientations_xyzw: np.ndarray  # (N, 4) unit quaternions
    frame_id: str = ""

    @classmethod
    def from_samples(cls, samples: list[tuple[int, np.ndarray, np.ndarray]], frame_id: str = "") -> PoseTrack:
        """From (stamp_ns, position, orientation_xyzw) samples in any order; the last of equal stamps wins."""
        unique: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        for stamp, position, orientation in sorted(samples, key=lambda sample: sample[0]):
            unique[int(stamp)] = (position, orientation)
        stamps = np.fromiter(unique, dtype=np.int64, count=len(unique))
        positions = np.array([value[0] for value in unique.values()], dtype=np.float64).reshape(-1, 3)
        quaternions = np.array([value[1] for value in unique.values()], dtype=np.float64).reshape(-1, 4)
        return cls(stamps, positions, unit_quaternions(quaternions), frame_id)

    def __len__(self) -> int:
        return len(self.stamps_ns)

    def _sample(self, index: int) -> StampedPose:
        return StampedPose(
            int(self.stamps_ns[index]), self.positions[index], self.orientations_xyzw[index], self.frame_id
        )

    def at(self, stamp_ns: int) -> tuple[np.ndarray, np.ndarray] | None:
        """(position, orientation_xyzw) at ``stamp_ns``, or None outside [first, last] stamp."""
        if not len(self) or stamp_ns < self.stamps_ns[0] or stamp_ns > self.stamps_ns[-1]:
            return None
        index = int(np.searchsorted(self.stamps_ns, stamp_ns, side="left"))
        if self.stamps_ns[index] == stamp_ns:
            return self.positions[index].copy(), self.orientations_xyzw[index].copy()
        pose = interpolate(self._sample(index - 1), self._sample(index), int(stamp_ns))
        return pose.position, pose.orientation_xyzw


class PoseBuffer:
    """Live odometry of the last ``horizon_ns``, looked up at an image stamp; thread-safe."""

    def __init__(self, horizon_ns: int = 10 * NS_PER_S) -> None:
        self._horizon_ns = horizon_ns
        self._stamps: list[int] = []
        self._poses: list[StampedPose] = []
        self._lock = threading.Lock()

    def add(self, stamp_ns: int, position, orientation_xyzw, frame_id: str = "") -> None:
        pose = StampedPose(
            int(stamp_ns),
            np.asarray(position, dtype=np.float64),
            unit_quaternions(orientation_xyzw),
            frame_id,
        )
        with self._lock:
            index = bisect.bisect_right(self._stamps, pose.stamp_ns)
            self._stamps.insert(index, pose.stamp_ns)
            self._poses.insert(index, pose)
            drop = bisect.bisect_left(self._stamps, self._stamps[-1] - self._horizon_ns)
            if drop:
                del self._stamps[:drop]
                del self._poses[:drop]

    def clear(self) -> None:
        with self._lock:
            self._stamps.clear()
            self._poses.clear()

    def lookup(self, stamp_ns: int, max_age_ns: int) -> StampedPose | None:
        """Pose at ``stamp_ns``: interpolated between neighbours no more than ``2 * max_age_ns`` apart,
        else the nearest sample within ``max_age_ns``, else None."""
        with self._lock:
            if not self._stamps:
                return None
            index = bisect.bisect_left(self._stamps, stamp_ns)
            if index < len(self._stamps) and self._stamps[index] == stamp_ns:
                return self._poses[index]
            if 0 < index < len(self._stamps):
                before, after = self._poses[index - 1], self._poses[index]
                if after.stamp_ns - before.stamp_ns <= 2 * max(max_age_ns, 1):
                    return interpolate(before, after, int(stamp_ns))
            neighbours = [self._poses[i] for i in (index - 1, index) if 0 <= i < len(self._poses)]
            nearest = min(neighbours, key=lambda pose: abs(pose.stamp_ns - stamp_ns))
            return nearest if abs(nearest.stamp_ns - stamp_ns) <= max_age_ns else None
