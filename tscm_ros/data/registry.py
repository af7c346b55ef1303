"""Datasets by a ``KIND:ARGUMENT`` spec string (``tscm_evaluate --dataset``), each kind registered here.

Built in: ``corridor:DIR``, ``vprbench:DIR``, ``folders:DIR`` (:mod:`tscm_ros.data.benchmarks`),
``csv:FILE[:SPLIT]`` and ``utm-csv:FILE[:METRES]`` (:mod:`tscm_ros.data.csv_dataset`),
``pittsburgh:MAT[:ROOT]`` (:mod:`tscm_ros.data.pittsburgh`). Other kinds: :func:`register_dataset`.
"""

from __future__ import annotations

from collections.abc import Callable

from tscm_ros.data.benchmarks import load_corridor, load_place_folders, load_vprbench
from tscm_ros.data.csv_dataset import load_csv_spec, load_utm_csv_spec
from tscm_ros.data.dataset import DatasetError, RetrievalDataset
from tscm_ros.data.pittsburgh import load_pittsburgh_spec

__all__ = ["DatasetLoader", "load_dataset", "register_dataset", "registered_kinds"]

DatasetLoader = Callable[[str], RetrievalDataset]
_REGISTRY: dict[str, DatasetLoader] = {}


def register_dataset(kind: str, loader: DatasetLoader) -> None:
    """Make ``load_dataset("KIND:ARG")`` call ``loader("ARG")``. Re-registering a kind replaces it."""
    if not kind or ":" in kind:
        raise ValueError(f"dataset kind must be a non-empty name without ':', got {kind!r}")
    _REGISTRY[kind] = loader


def registered_kinds() -> list[str]:
    return sorted(_REGISTRY)


def load_dataset(spec: str) -> RetrievalDataset:
    """Load ``"KIND:ARG"``, e.g. ``"corridor:/data/corridor"`` or ``"csv:run.csv:test"``."""
    kind, sep, argument = str(spec).partition(":")
    if not sep or not argument:
        raise DatasetError(
            f"dataset spec {spec!r} must look like KIND:PATH (kinds: {', '.join(registered_kinds())})"
        )
    if kind not in _REGISTRY:
        raise DatasetError(f"unknown dataset kind {kind!r}; known: {', '.join(registered_kinds())}")
    return _REGISTRY[kind](argument)


register_dataset("corridor", load_corridor)
register_dataset("vprbench", load_vprbench)
register_dataset("folders", load_place_folders)
register_dataset("csv", load_csv_spec)
register_dataset("utm-csv", load_utm_csv_spec)
register_dataset("pittsburgh", load_pittsburgh_spec)
