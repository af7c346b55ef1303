"""Inference precision: which paths exist per backend/device, and what ``precision="auto"`` picks.

=================  ======  ====================================================================
backend / device   value   path
=================  ======  ====================================================================
torch / cpu        fp32    eager (or ``optimize=True``: frozen oneDNN TorchScript)
torch / cpu        bf16    ``torch.autocast("cpu", torch.bfloat16)``, channels_last
torch / cpu        fp16    ``torch.autocast("cpu", torch.float16)``; only sensible with AVX512-FP16 /
                           AMX-FP16 (without them it measured ~3x *slower* than fp32 here)
torch / cuda       fp32    eager
torch / cuda       fp16    ``torch.autocast("cuda", torch.float16)`` (the former ``fp16=True``)
torch / cuda       bf16    ``torch.autocast("cuda", torch.bfloat16)``
onnxruntime / cpu  fp32    ``model.onnx``
onnxruntime / cpu  int8    ``model.int8.onnx`` (QDQ, static calibration; ``tscm_export --int8``)
tensorrt / cuda    fp32    ``model.onnx`` in the TensorRT execution provider
tensorrt / cuda    fp16    ``model.onnx``, ``trt_fp16_enable``
tensorrt / cuda    int8    ``model.int8.trt.onnx`` (symmetric QDQ, same calibration), ``trt_int8_enable``
=================  ======  ====================================================================

Not provided: ONNX Runtime CPU fp16 (the x86 CPU execution provider has no fp16 convolutions; a converted
model ran ~1.7x slower than fp32), ONNX Runtime CPU bf16, int8 in torch.

``"auto"``: torch/cpu -> bf16 when the CPU has native bf16 dot products (``avx512_bf16`` or ``amx_bf16`` in
/proc/cpuinfo) else fp32; torch/cuda -> fp16; onnxruntime/cpu -> int8 when ``model.int8.onnx`` exists
and the CPU has 8-bit dot products (``avx512_vnni``, ``avx_vnni`` or ``amx_int8``; without them
uint8 x int8 products may saturate) else fp32; tensorrt -> fp16. ``$TSCM_PRECISION`` (one of the
explicit values) overrides what "auto" would pick; an explicit ``precision`` argument always wins.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

__all__ = [
    "PRECISIONS",
    "PRECISION_ENV",
    "SUPPORTED",
    "auto_precision",
    "cpu_flags",
    "resolve_precision",
]

PRECISIONS = ("auto", "fp32", "bf16", "fp16", "int8")
PRECISION_ENV = "TSCM_PRECISION"
SUPPORTED: dict[tuple[str, str], tuple[str, ...]] = {
    ("torch", "cpu"): ("fp32", "bf16", "fp16"),
    ("torch", "cuda"): ("fp32", "fp16", "bf16"),
    ("onnxruntime", "cpu"): ("fp32", "int8"),
    ("onnxruntime", "cuda"): ("fp32",),
    ("tensorrt", "cuda"): ("fp32", "fp16", "int8"),
}
BF16_FLAGS = ("avx512_bf16", "amx_bf16")
FP16_FLAGS = ("avx512_fp16", "amx_fp16")
INT8_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")


@functools.lru_cache(maxsize=4)
def cpu_flags(cpuinfo: str | os.PathLike = "/proc/cpuinfo") -> frozenset[str]:
    """The CPU feature flags of the first processor in ``cpuinfo`` (empty when it cannot be read)."""
    try:
        text = Path(cpuinfo).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return frozenset()
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() in ("flags", "Features"):  # x86 / ARM
            return frozenset(value.split())
    return frozenset()


def auto_precision(
    backend: str, device_type: str, *, flags: frozenset[str] | None = None, int8_available: bool = False
) -> tuple[str, str]:
    """(precision, reason) that ``"auto"`` picks for ``backend`` on ``device_type`` (see module docstring)."""
    flags = cpu_flags() if flags is None and device_type == "cpu" else (flags or frozenset())
    if backend == "tensorrt":
        return "fp16", "TensorRT: fp16"
    if device_type == "cuda":
        return ("fp16", "CUDA: fp16 autocast") if backend == "torch" else ("fp32", "onnxruntime CUDA: fp32")
    if backend == "torch":
        native = [flag for flag in BF16_FLAGS if flag in flags]
        if native:
            return "bf16", f"CPU has {'/'.join(native)}"
        return "fp32", f"CPU lacks {'/'.join(BF16_FLAGS)}"
    native = [flag for flag in INT8_FLAGS if flag in flags]
    if int8_available and native:
        return "int8", f"model.int8.onnx present and CPU has {'/'.join(native)}"
    if not int8_available:
        return "fp32", "no model.int8.onnx (tscm_export MODEL --int8 --calibrate SOURCE)"
    return "fp32", f"CPU lacks {'/'.join(INT8_FLAGS)}"


def resolve_precision(
    precision: str,
    backend: str,
    device_type: str,
    *,
    flags: frozenset[str] | None = None,
    int8_available: bool = False,
) -> tuple[str, str]:
    """Validate ``precision`` for ``backend``/``device_type`` and resolve ``"auto"``: (precision, reason).

    Raises ValueError naming the supported values when the combination has no path.
    """
    name = str(precision).strip().lower()
    if name not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    key = (backend, "cuda" if device_type == "cuda" else "cpu")
    supported = SUPPORTED.get(key)
    if supported is None:
        raise ValueError(f"no inference path for backend={backend!r} on {device_type!r}")
    reason = "requested"
    if name == "auto":
        override = os.environ.get(PRECISION_ENV, "").strip().lower()
        if override and override != "auto":
            if override not in PRECISIONS:
                raise ValueError(f"${PRECISION_ENV} must be one of {PRECISIONS}, got {override!r}")
            name, reason = override, f"${PRECISION_ENV}={override}"
        else:
            name, reason = auto_precision(backend, key[1], flags=flags, int8_available=int8_available)
    if name not in supported:
        hint = {
            ("onnxruntime", "fp16"): " (ONNX Runtime's CPU provider has no fp16 convolutions)",
            ("onnxruntime", "bf16"): " (use backend='torch' for bf16 autocast)",
            ("torch", "int8"): " (int8 runs in ONNX Runtime: backend='onnxruntime')",
        }.get((backend, name), "")
        raise ValueError(
            f"precision {name!r} is not available for backend={backend!r} on {key[1]}{hint}; "
            f"supported: {', '.join(supported)}"
        )
    return name, reason
