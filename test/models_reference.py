"""Rebuild the published TSCM state dicts and inputs described in ../shared/reference/README.md.

Every entry of the published ``state_dict()`` (names and shapes from tscm_official_reference.json) is set
by the documented rule, so converting it and running our networks must reproduce the recorded outputs.
"""

from __future__ import annotations

import math
import zlib
from functools import lru_cache

import torch

DTYPES = {"float32": torch.float32, "int64": torch.int64}


def reference_value(name: str, shape: list[int], dtype: str) -> torch.Tensor:
    """The value the reference run gave entry ``name`` (README 'How the weights were set')."""
    size = tuple(shape)
    target = DTYPES[dtype]
    if name.endswith(("num_batches_tracked", "running_mean")):
        return torch.zeros(size, dtype=target)
    if name.endswith("running_var"):
        return torch.ones(size, dtype=target)
    generator = torch.Generator().manual_seed(zlib.crc32(name.encode("utf-8")))
    r = torch.randn(size, generator=generator, dtype=torch.float64)
    last = name.rsplit(".", 1)[-1]
    if last == "p" and size == (1,):
        value = torch.full(size, 3.0, dtype=torch.float64)
    elif len(size) <= 1 and last == "weight":
        value = 1 + 0.1 * r
    elif len(size) <= 1:
        value = 0.02 * r
    else:
        value = r / math.sqrt(math.prod(size[1:]))
    return value.to(target)


def shared_tensor_name(name: str, linear_child: str) -> str:
    """Canonical name of the tensor behind ``name`` in the published teacher (which registers modules twice).

    ``backboneV`` = the ``backboneVV`` modules + head + ``backbone.linear`` (last child); ``backboneR`` =
    the ``backboneRR`` modules + GeM + flatten. Names of one tensor map to one canonical name.
    """
    for alias, canonical in (
        ("backbone.backboneV.", "backbone.backboneVV."),
        ("backbone.backboneR.", "backbone.backboneRR."),
    ):
        if name.startswith(alias):
            child, _, param = name[len(alias) :].partition(".")
            if alias == "backbone.backboneV." and child == linear_child:
                return "backbone.linear." + param
            if alias == "backbone.backboneR." and child == "7":
                return name  # the unused GeM exists only here
            return canonical + name[len(alias) :]
    for prefix in ("backboneS.", "var_head."):
        if name.startswith(prefix):
            return name
    return name


def build_state_dict(keys: list, include=lambda name: True) -> dict[str, torch.Tensor]:
    """The published ``state_dict()`` after setting every entry in order by the rule.

    Names registered twice share one tensor in the published module, so the value set last (in
    ``state_dict()`` order) is what both names hold, as in a checkpoint saved by the published code.
    """
    children = [name.split(".")[2] for name, _, _ in keys if name.startswith("backbone.backboneV.")]
    linear_child = max(children, key=int) if children else ""
    last_writer: dict[str, tuple[str, list[int], str]] = {}
    for name, shape, dtype in keys:
        if include(name):
            last_writer[shared_tensor_name(name, linear_child)] = (name, shape, dtype)
    values = {canonical: reference_value(*entry) for canonical, entry in last_writer.items()}
    return {name: values[shared_tensor_name(name, linear_child)] for name, _, _ in keys if include(name)}


@lru_cache(maxsize=1)
def reference_input() -> torch.Tensor:
    """The (2, 3, 224, 224) batch the reference outputs were computed on."""
    first = torch.rand((3, 224, 224), generator=torch.Generator().manual_seed(1234))
    c = torch.arange(3, dtype=torch.float64).view(3, 1, 1)
    i = torch.arange(224, dtype=torch.float64).view(1, 224, 1)
    j = torch.arange(224, dtype=torch.float64).view(1, 1, 224)
    second = 0.5 + 0.5 * torch.sin(2 * math.pi * (i * (c + 1) / 56 + j / 28))
    return torch.stack((first, second.to(torch.float32)))


@lru_cache(maxsize=1)
def published_teacher_state_dict(reference_path: str) -> dict[str, torch.Tensor]:
    """The rebuilt published teacher state dict (cached: ~125 M parameters, ~15 s to draw)."""
    import json
    from pathlib import Path

    reference = json.loads(Path(reference_path).read_text())
    return build_state_dict(reference["teacher"]["keys"])


def published_student_state_dict(reference: dict, reference_path: str) -> dict[str, torch.Tensor]:
    """The rebuilt published student state dict, including its unused teacher copy (``backbone.*``).

    The copy has the teacher's names, hence the teacher's values: it is taken from the cached teacher.
    """
    teacher = published_teacher_state_dict(reference_path)
    own = build_state_dict(reference["student"]["keys"], lambda name: not name.startswith("backbone."))
    out = {}
    for name, shape, _ in reference["student"]["keys"]:
        out[name] = teacher[name] if name.startswith("backbone.") else own[name]
        assert list(out[name].shape) == shape, name
    return out
