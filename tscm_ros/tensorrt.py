"""TensorRT through ONNX Runtime's TensorRT execution provider: provider list and options (pure functions).

Written to the ONNX Runtime TensorRT EP documentation (provider options table) and NVIDIA's guidance:

* providers ``[TensorrtExecutionProvider(options), CUDAExecutionProvider, CPUExecutionProvider]``: nodes
  TensorRT cannot take go to CUDA, then CPU (ORT's recommended registration order).
* engine cache (``trt_engine_cache_enable``/``trt_engine_cache_path``, default ``<model dir>/trt_cache``)
  and timing cache (``trt_timing_cache_enable``/``trt_timing_cache_path``): the first session builds the
  engine (minutes), later ones load it. ``trt_engine_cache_prefix`` carries the model fingerprint and
  precision so a new model or precision never picks up a stale engine. Engines are specific to the GPU,
  TensorRT and ORT versions: delete the folder after upgrading either.
* explicit optimisation profile (``trt_profile_min/opt/max_shapes``, batch 1 .. ``max_batch``, optimised
  for batch 1, the node's case); ORT requires all three when an engine cache is used with dynamic shapes.
* fp16: ``trt_fp16_enable``.
* int8: explicit quantization, NVIDIA's recommended path: ``model.int8.trt.onnx`` is a QDQ model with
  symmetric int8 activations and per-channel symmetric int8 weights, produced by ``tscm_export --int8``
  from the *same* calibration ranges as the CPU model. ``trt_int8_enable`` is set (plus
  ``trt_fp16_enable`` for the layers left unquantized: NetVLAD, GeM, normalisation), and **no**
  calibration table: ORT documents that a calibration table must not be given for a QDQ model (TensorRT
  refuses one when the network has Q/DQ nodes); implicit calibration tables are deprecated in TensorRT 10.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

__all__ = [
    "CUDA_PROVIDER",
    "TRT_PROVIDER",
    "TensorRTUnavailableError",
    "tensorrt_model_file",
    "tensorrt_provider_options",
    "tensorrt_providers",
]

TRT_PROVIDER = "TensorrtExecutionProvider"
CUDA_PROVIDER = "CUDAExecutionProvider"
CPU_PROVIDER = "CPUExecutionProvider"
CACHE_DIR_NAME = "trt_cache"
DEFAULT_WORKSPACE_BYTES = 2 << 30
TRT_PRECISIONS = ("fp32", "fp16", "int8")
MODEL_FILES = {"fp32": "model.onnx", "fp16": "model.onnx", "int8": "model.int8.trt.onnx"}


class TensorRTUnavailableError(RuntimeError):
    """backend='tensorrt' was asked for but ONNX Runtime cannot run the TensorRT execution provider."""


def tensorrt_model_file(precision: str) -> str:
    """The ONNX file in a model directory that the TensorRT path loads for ``precision``."""
    if precision not in TRT_PRECISIONS:
        raise ValueError(f"TensorRT precision must be one of {TRT_PRECISIONS}, got {precision!r}")
    return MODEL_FILES[precision]


def tensorrt_provider_options(
    precision: str,
    *,
    cache_dir: str | os.PathLike,
    cache_prefix: str = "tscm",
    device_id: int = 0,
    input_name: str = "images",
    input_size: tuple[int, int] = (224, 224),
    max_batch: int = 8,
    workspace_bytes: int = DEFAULT_WORKSPACE_BYTES,
    timing_cache: bool = True,
) -> dict[str, Any]:
    """TensorRT EP options (ORT names and types: bools as bool, sizes as int, paths/shapes as str)."""
    if precision not in TRT_PRECISIONS:
        raise ValueError(f"TensorRT precision must be one of {TRT_PRECISIONS}, got {precision!r}")
    if max_batch < 1:
        raise ValueError(f"max_batch must be >= 1, got {max_batch}")
    height, width = (int(v) for v in input_size)
    cache = str(Path(cache_dir))
    options: dict[str, Any] = {
        "device_id": int(device_id),
        "trt_max_workspace_size": int(workspace_bytes),
        "trt_fp16_enable": precision in ("fp16", "int8"),
        "trt_int8_enable": precision == "int8",
        "trt_engine_cache_enable": True,
        "trt_engine_cache_path": cache,
        "trt_engine_cache_prefix": f"{cache_prefix}_{precision}",
        "trt_profile_min_shapes": f"{input_name}:1x3x{height}x{width}",
        "trt_profile_opt_shapes": f"{input_name}:1x3x{height}x{width}",
        "trt_profile_max_shapes": f"{input_name}:{int(max_batch)}x3x{height}x{width}",
    }
    if timing_cache:
        options["trt_timing_cache_enable"] = True
        options["trt_timing_cache_path"] = cache
    return options


def tensorrt_providers(
    precision: str,
    *,
    cache_dir: str | os.PathLike,
    device_id: int = 0,
    **options: Any,
) -> list[tuple[str, dict[str, Any]]]:
    """``[(TensorRT, options), (CUDA, {device_id}), (CPU, {})]`` for ``onnxruntime.InferenceSession``.

    ``options`` go to :func:`tensorrt_provider_options` (cache_prefix, input_name, input_size, max_batch,
    workspace_bytes, timing_cache).
    """
    trt = tensorrt_provider_options(precision, cache_dir=cache_dir, device_id=device_id, **options)
    return [(TRT_PROVIDER, trt), (CUDA_PROVIDER, {"device_id": int(device_id)}), (CPU_PROVIDER, {})]


def check_tensorrt_available(available: list[str]) -> None:
    """Raise :class:`TensorRTUnavailableError` (one line) unless the TensorRT EP is in ``available``."""
    if TRT_PROVIDER not in available:
        raise TensorRTUnavailableError(
            f"backend='tensorrt' needs onnxruntime-gpu built with the TensorRT execution provider and the "
            f"TensorRT libraries; this onnxruntime offers {available}. Use backend='onnxruntime' (CPU) or "
            f"backend='torch', or pass allow_fallback=True to run on {CUDA_PROVIDER}/{CPU_PROVIDER}"
        )
