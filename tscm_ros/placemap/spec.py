"""Index specs: which faiss index a place map uses, parsed from strings like ``"pca256+hnsw:M=32"``.

Grammar: ``[pca<DIM>[w]+]<base>[:key=value,...]`` with base one of

* ``flat`` -- exact inner product (the default);
* ``hnsw`` -- keys ``M`` (32), ``efC``/``efConstruction`` (200), ``efS``/``efSearch`` (128);
* ``ivf``  -- keys ``nlist`` (1024), ``nprobe`` (16), ``pq`` (sub-quantizers, off), ``nbits`` (8).

``pca<DIM>`` prepends a learned linear reduction (faiss ``PCAMatrix``, ``w`` = whitened) followed by
L2 re-normalisation, so similarities stay cosines (of the centred, reduced vectors). Every trained spec
also accepts ``train=N``: the number of vectors buffered before training (see :attr:`train_threshold`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import faiss

from .errors import IndexSpecError

_PCA_RE = re.compile(r"^pca(\d+)(w?)$")
_KEY_ALIASES = {
    "m": "hnsw_m",
    "efc": "ef_construction",
    "efconstruction": "ef_construction",
    "efs": "ef_search",
    "efsearch": "ef_search",
    "nlist": "nlist",
    "nprobe": "nprobe",
    "pq": "pq_m",
    "nbits": "pq_nbits",
    "train": "train_size",
}
_KEYS_BY_KIND = {
    "flat": {"train_size"},
    "hnsw": {"hnsw_m", "ef_construction", "ef_search", "train_size"},
    "ivf": {"nlist", "nprobe", "pq_m", "pq_nbits", "train_size"},
}
# faiss k-means warns below 39 training points per centroid; we use that as the minimum.
MIN_POINTS_PER_CENTROID = 39


@dataclass(frozen=True)
class IndexSpec:
    """Which faiss index to build. Use :meth:`parse` for spec strings; ``str(spec)`` round-trips."""

    kind: str = "flat"
    hnsw_m: int = 32
    ef_construction: int = 200
    ef_search: int = 128
    nlist: int = 1024
    nprobe: int = 16
    pq_m: int | None = None
    pq_nbits: int = 8
    pca_dim: int | None = None
    pca_whiten: bool = False
    train_size: int | None = None

    def __post_init__(self) -> None:
        if self.kind not in _KEYS_BY_KIND:
            raise IndexSpecError(f"unknown index kind {self.kind!r}; expected flat, hnsw or ivf")
        for name in ("hnsw_m", "ef_construction", "ef_search", "nlist", "nprobe", "pq_nbits"):
            if int(getattr(self, name)) < 1:
                raise IndexSpecError(f"index spec {name} must be >= 1, got {getattr(self, name)}")
        if self.pq_m is not None and self.pq_m < 1:
            raise IndexSpecError(f"pq must be >= 1, got {self.pq_m}")
        if not 1 <= self.pq_nbits <= 16:
            raise IndexSpecError(f"nbits must be in 1..16, got {self.pq_nbits}")
        if self.pca_dim is not None and self.pca_dim < 1:
            raise IndexSpecError(f"pca dimension must be >= 1, got {self.pca_dim}")
        if self.train_size is not None and self.train_size < self._min_train_points():
            raise IndexSpecError(
                f"train={self.train_size} is too small for {self}: need at least {self._min_train_points()}"
            )

    # ------------------------------------------------------------------ parsing
    @classmethod
    def parse(cls, spec: str | IndexSpec | None) -> IndexSpec:
        """Parse ``"flat"``, ``"hnsw:M=32,efC=200,efS=128"``, ``"pca256+hnsw:M=32"``, ``"ivf:pq=64"``..."""
        if spec is None:
            return cls()
        if isinstance(spec, IndexSpec):
            return spec
        text = str(spec).strip().lower().replace(" ", "")
        if not text:
            return cls()
        parts = text.split("+")
        if len(parts) > 2:
            raise IndexSpecError(f"index spec {spec!r}: at most one 'pca<DIM>+' prefix is allowed")
        fields: dict = {}
        if len(parts) == 2:
            match = _PCA_RE.match(parts[0])
            if not match:
                raise IndexSpecError(f"index spec {spec!r}: prefix must look like pca256 or pca256w")
            fields["pca_dim"] = int(match.group(1))
            fields["pca_whiten"] = match.group(2) == "w"
        base, _, options = parts[-1].partition(":")
        if base not in _KEYS_BY_KIND:
            raise IndexSpecError(f"index spec {spec!r}: unknown index kind {base!r} (flat, hnsw, ivf)")
        fields["kind"] = base
        for item in filter(None, options.split(",")):
            key, sep, value = item.partition("=")
            name = _KEY_ALIASES.get(key)
            if not sep or name is None or name not in _KEYS_BY_KIND[base]:
                allowed = sorted(k for k, v in _KEY_ALIASES.items() if v in _KEYS_BY_KIND[base])
                raise IndexSpecError(
                    f"index spec {spec!r}: bad option {item!r} for {base}; allowed: {allowed}"
                )
            try:
                fields[name] = int(value)
            except ValueError:
                raise IndexSpecError(
                    f"index spec {spec!r}: {key} must be an integer, got {value!r}"
                ) from None
        return cls(**fields)

    def __str__(self) -> str:
        prefix = f"pca{self.pca_dim}{'w' if self.pca_whiten else ''}+" if self.pca_dim else ""
        if self.kind == "hnsw":
            opts = [f"M={self.hnsw_m}", f"efC={self.ef_construction}", f"efS={self.ef_search}"]
        elif self.kind == "ivf":
            opts = [f"nlist={self.nlist}", f"nprobe={self.nprobe}"]
            if self.pq_m:
                opts += [f"pq={self.pq_m}", f"nbits={self.pq_nbits}"]
        else:
            opts = []
        if self.train_size is not None:
            opts.append(f"train={self.train_size}")
        return prefix + self.kind + (":" + ",".join(opts) if opts else "")

    # ------------------------------------------------------------------ properties
    @property
    def needs_training(self) -> bool:
        return self.kind == "ivf" or self.pca_dim is not None

    def _min_train_points(self) -> int:
        points = 1
        if self.kind == "ivf":
            points = max(points, self.nlist)
            if self.pq_m:
                points = max(points, 2**self.pq_nbits)
        if self.pca_dim:
            points = max(points, self.pca_dim)
        return points

    @property
    def train_threshold(self) -> int:
        """How many vectors a map buffers (searched exactly) before it trains this index.

        ``train=N`` if given, else the largest of: 39 x nlist (IVF), 39 x 2^nbits (PQ), 4 x pca_dim (PCA);
        0 for specs that need no training.
        """
        if not self.needs_training:
            return 0
        if self.train_size is not None:
            return self.train_size
        points = 0
        if self.kind == "ivf":
            points = MIN_POINTS_PER_CENTROID * self.nlist
            if self.pq_m:
                points = max(points, MIN_POINTS_PER_CENTROID * 2**self.pq_nbits)
        if self.pca_dim:
            points = max(points, 4 * self.pca_dim)
        return points

    @property
    def supports_removal(self) -> bool:
        """False for HNSW: removed places are tombstoned (filtered out at search time)."""
        return self.kind != "hnsw"

    @property
    def uses_id_map(self) -> bool:
        """IVF stores ids natively; flat and HNSW are wrapped in ``IndexIDMap2``."""
        return self.kind != "ivf"

    # ------------------------------------------------------------------ building
    def validate_for(self, dim: int) -> None:
        """Raise :class:`IndexSpecError` if this spec cannot index ``dim``-d vectors."""
        if dim < 1:
            raise IndexSpecError(f"descriptor dimension must be >= 1, got {dim}")
        inner_dim = self.pca_dim or dim
        if self.pca_dim is not None and self.pca_dim >= dim:
            raise IndexSpecError(f"pca{self.pca_dim} must reduce the dimension (descriptors are {dim}-d)")
        if self.pq_m and inner_dim % self.pq_m:
            raise IndexSpecError(f"pq={self.pq_m} must divide the indexed dimension {inner_dim}")

    def factory_string(self, dim: int) -> str:
        """The ``faiss.index_factory`` string of this spec (including the ``IDMap2`` id layer)."""
        self.validate_for(dim)
        parts = ["IDMap2"] if self.uses_id_map else []
        if self.pca_dim is not None:
            parts += [f"PCA{'W' if self.pca_whiten else ''}{self.pca_dim}", "L2norm"]
        if self.kind == "flat":
            parts.append("Flat")
        elif self.kind == "hnsw":
            parts.append(f"HNSW{self.hnsw_m}")
        else:
            parts += [f"IVF{self.nlist}", f"PQ{self.pq_m}x{self.pq_nbits}" if self.pq_m else "Flat"]
        return ",".join(parts)

    def build(self, dim: int) -> faiss.Index:
        """Build the empty (untrained) faiss index, id layer included, for ``dim``-d descriptors."""
        index = faiss.index_factory(dim, self.factory_string(dim), faiss.METRIC_INNER_PRODUCT)
        base = base_index(index)
        if isinstance(base, faiss.IndexHNSW):
            base.hnsw.efConstruction = self.ef_construction
        if isinstance(base, faiss.IndexIVFPQ):
            base.do_polysemous_training = False  # slow, and only useful for Hamming-filtered search
        self.apply_search_settings(index)
        return index

    def apply_search_settings(self, index: faiss.Index) -> None:
        """Set efSearch / nprobe on a built or loaded index."""
        base = base_index(index)
        if isinstance(base, faiss.IndexHNSW):
            base.hnsw.efSearch = self.ef_search
        elif isinstance(base, faiss.IndexIVF):
            base.nprobe = self.nprobe


def base_index(index: faiss.Index) -> faiss.Index:
    """The innermost index below ``IndexIDMap2`` / ``IndexPreTransform`` layers."""
    index = faiss.downcast_index(index)
    while isinstance(index, (faiss.IndexIDMap2, faiss.IndexIDMap, faiss.IndexPreTransform)):
        index = faiss.downcast_index(index.index)
    return index


def search_parameters(spec: IndexSpec, selector: faiss.IDSelector | None) -> faiss.SearchParameters | None:
    """Search parameters of the innermost index type (the type faiss checks), carrying ``selector``."""
    if selector is None:
        return None
    if spec.kind == "hnsw":
        return faiss.SearchParametersHNSW(sel=selector, efSearch=spec.ef_search)
    if spec.kind == "ivf":
        return faiss.SearchParametersIVF(sel=selector, nprobe=spec.nprobe)
    return faiss.SearchParameters(sel=selector)
