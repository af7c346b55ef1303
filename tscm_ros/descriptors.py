"""The one place global descriptors are checked and L2-normalised (place map, evaluation, sequences)."""

from __future__ import annotations

import numpy as np


def normalize_rows(descriptors: np.ndarray) -> np.ndarray:
    """(N, D) float32, each row scaled to unit length; ValueError for NaN/inf or all-zero rows."""
    array = np.asarray(descriptors, dtype=np.float32)
    if array.ndim != 2:
        raise ValueError(f"descriptors must be (N, D), got shape {array.shape}")
    if not np.all(np.isfinite(array)):
        raise ValueError("descriptors contain NaN or infinite values")
    norms = np.linalg.norm(array, axis=1, keepdims=True)
    if np.any(norms < 1e-12):
        raise ValueError("descriptors must be non-zero (they are L2-normalised)")
    return np.ascontiguousarray(array / norms, dtype=np.float32)
