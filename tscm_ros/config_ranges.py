"""Ranges of numeric settings, declared once on the fields of the core config dataclasses.

``ranged(default, low, high)`` is a dataclass field whose metadata holds its inclusive range; the config's
``__post_init__`` calls :func:`check_ranges`, and ``tscm_ros.ros.parameters`` builds the node's
ParameterDescriptor ranges from :func:`field_range`, so the core and the node accept the same values.
"""

from __future__ import annotations

import dataclasses
from typing import Any

RANGE = "range"  # field metadata key: (low, high), inclusive


def ranged(default: Any, low: float, high: float) -> Any:
    """A dataclass field with ``default`` whose values must lie in ``[low, high]``."""
    return dataclasses.field(default=default, metadata={RANGE: (low, high)})


def field_range(config_class: type, name: str) -> tuple[float, float]:
    """The ``(low, high)`` range declared on field ``name`` of a config dataclass.

    Raises:
        KeyError: the class has no such field, or the field declares no range.
    """
    for item in dataclasses.fields(config_class):
        if item.name == name:
            return item.metadata[RANGE]
    raise KeyError(f"{config_class.__name__} has no field {name!r}")


def check_ranges(config: Any) -> None:
    """Raise ``ValueError`` naming the field when a numeric field of ``config`` is outside its range."""
    for item in dataclasses.fields(config):
        if RANGE not in item.metadata:
            continue
        value = getattr(config, item.name)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue  # the config's own checks report wrong types
        low, high = item.metadata[RANGE]
        if not low <= value <= high:
            raise ValueError(f"{type(config).__name__}.{item.name} must be in [{low}, {high}], got {value!r}")
