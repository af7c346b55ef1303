"""PCA projection of descriptors (e.g. 2048 -> 256) for bandwidth and for a small HNSW index.

The projection is *uncentred*: ``reduced = x @ components.T``. For a fixed query ``q`` the ranking by
``(W q) . (W x)`` equals the ranking by ``q . x`` restricted to the principal subspace up to a
per-query constant, because ``W q . W mean`` does not depend on ``x`` (the components are fitted on
centred data, the projection just skips the centring). Reduced vectors are not re-normalised.
Stored on the server in ``map_info`` and next to a local map as ``<map>.fleet/pca.json``.
"""

from __future__ import annotations

import base64
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

FORMAT = "tscm_ros.fleet.pca"
_SMALL_BATCH = 64


@dataclass(frozen=True)
class PcaProjection:
    """``components``: (reduced_dim, dim) float32 with orthonormal rows; ``mean``: (dim,) of the fit data."""

    components: np.ndarray
    mean: np.ndarray
    explained_variance: float  # fraction of the fit data's variance kept
    fitted_on: int

    @property
    def dim(self) -> int:
        return int(self.components.shape[1])

    @property
    def reduced_dim(self) -> int:
        return int(self.components.shape[0])

    @classmethod
    def fit(
        cls, descriptors: np.ndarray, reduced_dim: int, *, max_samples: int = 50_000, seed: int = 0
    ) -> PcaProjection:
        """Fit on (a random subset of at most ``max_samples``) descriptors, one per row."""
        x = np.asarray(descriptors, dtype=np.float32)
        if x.ndim != 2:
            raise ValueError(f"descriptors must be (N, D), got {x.shape}")
        reduced_dim = int(reduced_dim)
        if not 1 <= reduced_dim < x.shape[1]:
            raise ValueError(f"reduced_dim must be in 1..{x.shape[1] - 1}, got {reduced_dim}")
        if len(x) > max_samples:
            x = x[np.random.default_rng(seed).choice(len(x), max_samples, replace=False)]
        if len(x) < reduced_dim + 1:
            raise ValueError(
                f"fitting {reduced_dim} components needs more than {reduced_dim} descriptors, got {len(x)}"
            )
        mean = x.mean(axis=0, dtype=np.float64)
        centred = (x - mean).astype(np.float32)
        if len(centred) <= centred.shape[1]:
            _, singular, vt = np.linalg.svd(centred.astype(np.float64), full_matrices=False)
            variances = singular**2
            components = vt[:reduced_dim]
        else:
            variances, vectors = np.linalg.eigh((centred.T @ centred).astype(np.float64))
            order = np.argsort(variances)[::-1]
            variances, components = variances[order], vectors[:, order[:reduced_dim]].T
        total = float(np.clip(variances, 0, None).sum())
        kept = float(np.clip(variances[:reduced_dim], 0, None).sum())
        return cls(
            components=np.ascontiguousarray(components, dtype=np.float32),
            mean=mean.astype(np.float32),
            explained_variance=kept / total if total > 0 else 1.0,
            fitted_on=len(x),
        )

    def project(self, descriptors: np.ndarray) -> np.ndarray:
        """(N, dim) or (dim,) -> (N, reduced_dim) or (reduced_dim,) float32."""
        x = np.asarray(descriptors, dtype=np.float32)
        if x.shape[-1] != self.dim:
            raise ValueError(f"PCA projection expects {self.dim}-d descriptors, got {x.shape[-1]}-d")
        if x.ndim == 1 or len(x) <= _SMALL_BATCH:
            # single-threaded: multi-threaded BLAS sgemv waits milliseconds for a 2nd thread on a busy CPU
            return np.einsum("...d,rd->...r", x, self.components, optimize=False).astype(np.float32)
        return np.ascontiguousarray(x @ self.components.T, dtype=np.float32)

    # ------------------------------------------------------------------ serialisation
    def to_dict(self) -> dict:
        return {
            "format": FORMAT,
            "dim": self.dim,
            "reduced_dim": self.reduced_dim,
            "explained_variance": self.explained_variance,
            "fitted_on": self.fitted_on,
            "components_f32le_b64": base64.b64encode(self.components.astype("<f4").tobytes()).decode(),
            "mean_f32le_b64": base64.b64encode(self.mean.astype("<f4").tobytes()).decode(),
        }

    @classmethod
    def from_dict(cls, data: dict) -> PcaProjection:
        if data.get("format") != FORMAT:
            raise ValueError(f"not a {FORMAT} document")
        dim, reduced = int(data["dim"]), int(data["reduced_dim"])
        components = np.frombuffer(base64.b64decode(data["components_f32le_b64"]), "<f4").reshape(
            reduced, dim
        )
        mean = np.frombuffer(base64.b64decode(data["mean_f32le_b64"]), "<f4").reshape(dim)
        return cls(components.astype(np.float32), mean.astype(np.float32), float(data["explained_variance"]),
                   int(data["fitted_on"]))  # fmt: skip

    def to_columns(self) -> tuple[bytes, bytes]:
        """(components, mean) as little-endian float32 bytes for the server's map_info row."""
        return self.components.astype("<f4").tobytes(), self.mean.astype("<f4").tobytes()

    @classmethod
    def from_columns(
        cls, components: bytes, mean: bytes, dim: int, explained: float, fitted_on: int
    ) -> PcaProjection:
        comp = np.frombuffer(bytes(components), "<f4")
        if comp.size % dim:
            raise ValueError(f"stored PCA components ({comp.size} values) do not fit dim {dim}")
        mean_values = np.frombuffer(bytes(mean), "<f4").astype(np.float32)
        return cls(
            comp.reshape(-1, dim).astype(np.float32),
            mean_values,
            float(explained or 0.0),
            int(fitted_on or 0),
        )

    def save(self, path: str | Path) -> None:
        """Write JSON atomically (temp file + rename)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, temp = tempfile.mkstemp(prefix=".pca-", dir=path.parent)
        with os.fdopen(fd, "w", encoding="utf-8") as stream:
            json.dump(self.to_dict(), stream)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temp, path)

    @classmethod
    def load(cls, path: str | Path) -> PcaProjection:
        return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))
