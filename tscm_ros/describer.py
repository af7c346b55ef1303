"""Image -> TSCM descriptor, with a PyTorch or an ONNX Runtime backend.

Preprocessing follows the published pipeline (``datasets/pitts.py``: ``ToTensor`` -> ``Normalize`` ->
``Resize((224, 224))``): RGB uint8 -> float in [0, 1] -> ImageNet normalisation -> bilinear resize to
224x224, normalising *before* resizing and squashing the aspect ratio. The published code resized a
*tensor* with torchvision 0.12, whose tensor ``Resize`` default was ``antialias=False``; we therefore
resize with ``torch.nn.functional.interpolate(mode="bilinear", align_corners=False, antialias=False)``,
which is exactly what that call did (it matters only when downscaling).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from tscm_ros.image_files import list_images, read_rgb
from tscm_ros.model_io import (
    CONFIG_FILE,
    IMAGENET_MEAN,
    IMAGENET_STD,
    ModelFormatError,
    load_model,
    model_fingerprint,
    read_model_config,
)
from tscm_ros.precision import FP16_FLAGS, cpu_flags, resolve_precision

__all__ = ["Describer", "ImageInputError", "parse_device", "preprocess", "main"]

LOGGER = logging.getLogger(__name__)
INPUT_SIZE = (224, 224)
ONNX_FILE = "model.onnx"
INT8_ONNX_FILE = "model.int8.onnx"
BACKENDS = ("torch", "onnxruntime", "tensorrt")
ONNX_FINGERPRINT_KEY = "tscm_ros.fingerprint"
Images = np.ndarray | Sequence[np.ndarray]


class ImageInputError(ValueError):
    """Images handed to :func:`preprocess` / :meth:`Describer.describe` have the wrong type or layout."""


def _check_image_array(array: np.ndarray, what: str) -> None:
    if not isinstance(array, np.ndarray):
        raise ImageInputError(f"{what}: expected a numpy array, got {type(array).__name__}")
    if array.dtype != np.uint8:
        raise ImageInputError(
            f"{what}: expected dtype uint8 (RGB 0..255), got {array.dtype}; "
            "convert float images with (img * 255).round().astype(np.uint8)"
        )
    if array.ndim not in (3, 4):
        raise ImageInputError(
            f"{what}: expected shape (H, W, 3) or (N, H, W, 3), got {array.shape}"
            + (" (grayscale? stack it to 3 channels)" if array.ndim == 2 else "")
        )
    if array.shape[-1] != 3:
        raise ImageInputError(
            f"{what}: expected 3 RGB channels in the last axis, got shape {array.shape}"
            + (" (RGBA? drop the alpha channel)" if array.shape[-1] == 4 else "")
            + (" (channels-first? transpose to HxWx3)" if array.shape[-3] == 3 else "")
        )
    if array.shape[-2] == 0 or array.shape[-3] == 0:
        raise ImageInputError(f"{what}: empty image of shape {array.shape}")


def as_image_batches(images: Images) -> list[np.ndarray]:
    """Validate ``images`` and return them as a list of (n, H, W, 3) uint8 arrays of equal size each."""
    if isinstance(images, np.ndarray):
        _check_image_array(images, "images")
        return [images[None] if images.ndim == 3 else images]
    if isinstance(images, (str, bytes)) or not isinstance(images, Sequence):
        raise ImageInputError(
            f"images: expected an HxWx3 uint8 array, an (N,H,W,3) array or a list of HxWx3 arrays, "
            f"got {type(images).__name__}"
        )
    arrays = []
    for index, image in enumerate(images):
        _check_image_array(image, f"images[{index}]")
        if image.ndim != 3:
            raise ImageInputError(
                f"images[{index}]: list items must be single HxWx3 images, got {image.shape}"
            )
        arrays.append(image[None])
    return arrays


def _to_device_uint8(batch: np.ndarray, device: torch.device) -> torch.Tensor:
    if not (batch.flags.c_contiguous and batch.flags.writeable):
        batch = np.array(batch, order="C")  # torch.from_numpy needs a writeable, contiguous array
    tensor = torch.from_numpy(batch)
    if device.type == "cuda":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)


def preprocess(
    images: Images, *, device: str | torch.device = "cpu", size: tuple[int, int] = INPUT_SIZE
) -> torch.Tensor:
    """RGB uint8 image(s) -> (N, 3, 224, 224) float32 network input on ``device`` (see module docstring)."""
    device = torch.device(device)
    mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1)
    outputs = []
    for batch in as_image_batches(images):
        x = _to_device_uint8(batch, device).permute(0, 3, 1, 2).to(torch.float32).div_(255.0)
        x = (x - mean) / std
        if tuple(x.shape[-2:]) != tuple(size):
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=False)
        outputs.append(x)
    if not outputs:
        return torch.empty((0, 3, *size), device=device)
    return outputs[0].contiguous() if len(outputs) == 1 else torch.cat(outputs)


def parse_device(device: str | torch.device) -> torch.device:
    """``"auto"`` -> CUDA when available else CPU; validate ``"cpu"``, ``"cuda"``, ``"cuda:N"``."""
    if isinstance(device, torch.device):
        device = str(device)
    if not isinstance(device, str):
        raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r}")
    name = device.strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda" or name.startswith("cuda:"):
        index_text = name[5:] if name.startswith("cuda:") else "0"
        if not index_text.isdigit():
            raise ValueError(f"invalid CUDA device {device!r}: expected 'cuda' or 'cuda:N'")
        if not torch.cuda.is_available():
            raise ValueError(
                f"device {device!r} requested but CUDA is not available "
                f"(torch {torch.__version__}, built for CUDA {torch.version.cuda}); "
                "use device='cpu' or 'auto'"
            )
        if int(index_text) >= torch.cuda.device_count():
            raise ValueError(
                f"device {device!r} requested but only {torch.cuda.device_count()} CUDA device(s)"
            )
        return torch.device(f"cuda:{index_text}")
    raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r}")


class Describer:
    """Compute L2-normalised TSCM descriptors for RGB uint8 images.

    ``model_path`` is our model directory (or its ``model.json``), a published checkpoint (torch backend),
    or for the ONNX backends a ``.onnx`` file / a model directory holding the exports made by
    ``tscm_export``. ``None`` builds an untrained, seeded ``arch`` network (for tests and demos only).
    ``arch`` and ``seed`` apply only when ``model_path`` is None.

    Backends: ``"torch"`` (eager PyTorch; ``optimize=True`` on CPU runs
    :func:`tscm_ros.export.optimize_for_cpu`, checked equal to eager within 1e-4), ``"onnxruntime"``
    (``model.onnx`` / ``model.int8.onnx``; ``providers`` picks execution providers, default TensorRT/CUDA
    when available and ``device`` is not ``"cpu"``, then CPU) and ``"tensorrt"`` (ONNX Runtime's TensorRT
    execution provider with an engine cache in ``trt_cache_dir``, default ``<model dir>/trt_cache``; see
    :mod:`tscm_ros.tensorrt`). Without the TensorRT provider ``"tensorrt"`` raises one clear line, unless
    ``allow_fallback=True`` (then CUDA, else CPU, with a warning).

    ``precision``: ``"fp32"``, ``"bf16"``, ``"fp16"``, ``"int8"`` or ``"auto"`` (see
    :mod:`tscm_ros.precision` for which backend has which path and what "auto" picks); ``None`` keeps the
    historical behaviour: fp32, except fp16 autocast on CUDA when ``fp16`` is true (torch), and fp16 for
    TensorRT. ``rgb_input`` (ONNX Runtime): ``None``/``True`` run the network with the preprocessing
    inside the graph (:func:`tscm_ros.export.add_rgb_input`; ``model[.int8].rgb.onnx`` when exported,
    else built in memory at load), so :meth:`describe` hands the uint8 (H, W, 3) buffer to ONNX Runtime
    without converting it; ``False`` preprocesses with :func:`preprocess` first. ``num_threads`` sets
    torch's (process-wide) intra-op threads or onnxruntime's ``intra_op_num_threads``.
    """

    def __init__(
        self,
        model_path: str | os.PathLike | None = None,
        *,
        arch: str = "student",
        backend: str = "torch",
        device: str | torch.device = "auto",
        fp16: bool = True,
        precision: str | None = None,
        batch_size: int = 8,
        num_threads: int | None = None,
        seed: int = 0,
        channels_last: bool = True,
        optimize: bool = False,
        providers: Sequence[str] | None = None,
        rgb_input: bool | None = None,
        trt_cache_dir: str | os.PathLike | None = None,
        allow_fallback: bool = False,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        if num_threads is not None and num_threads < 1:
            raise ValueError(f"num_threads must be >= 1, got {num_threads}")
        self.batch_size = int(batch_size)
        self.num_threads = num_threads
        self._backend = backend
        self._input_size = INPUT_SIZE
        self._rgb_input = False
        self._autocast: tuple[str, torch.dtype] | None = None
        if backend == "torch":
            self._init_torch(model_path, arch, device, fp16, precision, seed, channels_last, optimize)
            return
        if model_path is None:
            raise ValueError(
                f"backend={backend!r} needs model_path: a .onnx file or a model directory with "
                "model.onnx (create it with: tscm_export MODEL_DIR --onnx)"
            )
        if backend == "onnxruntime":
            self._init_onnxruntime(Path(model_path), device, precision, providers, rgb_input)
        else:
            self._init_tensorrt(Path(model_path), device, precision, rgb_input, trt_cache_dir, allow_fallback)

    # ----------------------------------------------------------------- torch backend
    def _init_torch(self, model_path, arch, device, fp16, precision, seed, channels_last, optimize) -> None:
        self._device = parse_device(device)
        if precision is None:
            precision = "fp16" if fp16 and self._device.type == "cuda" else "fp32"
            reason = "default"
        else:
            precision, reason = resolve_precision(precision, "torch", self._device.type)
        self._precision, self._precision_reason = precision, reason
        if precision in ("bf16", "fp16"):
            dtype = torch.bfloat16 if precision == "bf16" else torch.float16
            self._autocast = (self._device.type, dtype)
            if (
                precision == "fp16"
                and self._device.type == "cpu"
                and not any(f in cpu_flags() for f in FP16_FLAGS)
            ):
                LOGGER.warning(
                    "fp16 autocast on a CPU without %s is emulated (measured ~3x slower than fp32); "
                    "bf16 or fp32 is faster here",
                    "/".join(FP16_FLAGS),
                )
        if self.num_threads is not None and self._device.type == "cpu":
            torch.set_num_threads(self.num_threads)
        if model_path is None:
            from tscm_ros.models import build_model

            model = build_model(arch, seed=seed)
            self._fingerprint = model_fingerprint(model)
            self._label = f"UNTRAINED {arch} (seed {seed})"
            LOGGER.warning(
                "Describer uses an %s: descriptors are meaningless for place recognition", self._label
            )
        else:
            model = load_model(model_path, device="cpu")
            self._fingerprint = model.fingerprint
            provenance = model.provenance or ("trained" if model.trained else "untrained")
            self._label = f"{model.arch} from {model_path} ({provenance})"
        if precision != "fp32":
            self._label += f" [{precision} autocast]"
        model = model.eval().to(self._device)
        self._model_arch = model.arch
        self._dim = int(model.descriptor_dim)
        self._input_size = tuple(getattr(model, "input_size", INPUT_SIZE))
        self._channels_last = bool(channels_last)
        self._fp16 = precision == "fp16" and self._device.type == "cuda"  # kept for callers reading it
        if self._channels_last:
            model = model.to(memory_format=torch.channels_last)
        self._model = model
        self._optimized = False
        if optimize:
            if self._device.type != "cpu" or precision != "fp32":
                LOGGER.info(
                    "optimize=True applies to CPU fp32 only; using eager (%s) on %s", precision, self._device
                )
            else:
                from tscm_ros.export import optimize_for_cpu

                self._model = optimize_for_cpu(model, self._input_size)
                self._channels_last = bool(self._model.channels_last)
                self._optimized = True

    def _run_torch(self, x: torch.Tensor) -> torch.Tensor:
        if self._channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        autocast = (
            torch.autocast(self._autocast[0], dtype=self._autocast[1]) if self._autocast else nullcontext()
        )
        with torch.inference_mode(), autocast:
            out = self._model(x)
        return out.float()

    # ----------------------------------------------------------------- ONNX backends
    @staticmethod
    def _onnx_paths(model_path: Path) -> tuple[Path | None, Path | None, str | None]:
        """(model dir or None, explicit .onnx file or None, expected fingerprint from model.json)."""
        if model_path.is_dir() or model_path.name == CONFIG_FILE:
            model_dir = model_path if model_path.is_dir() else model_path.parent
            expected = None
            if (model_dir / CONFIG_FILE).is_file():
                expected = read_model_config(model_dir)["fingerprint"]
            return model_dir, None, expected
        return None, model_path, None

    def _session_options(self):
        from tscm_ros.ort_options import ort_session_options

        return ort_session_options(self.num_threads)

    def _open_session(self, onnx_path: Path, providers, expected_fingerprint: str | None, rgb: bool | None):
        """Create the session (optionally with the rgb preprocessing prepended in memory) and check it."""
        import onnxruntime as ort

        from tscm_ros.export import RGB_INPUT_NAME, add_rgb_input, rgb_file_name

        if not onnx_path.is_file():
            raise ModelFormatError(
                f"ONNX model not found: {onnx_path}; create it with: tscm_export {onnx_path.parent} --onnx"
            )
        source: str | bytes = str(onnx_path)
        use_rgb = False
        if rgb is not False:
            exported = onnx_path.with_name(rgb_file_name(onnx_path.name))
            if exported.is_file() and _onnx_metadata(exported).get(ONNX_FINGERPRINT_KEY) == _onnx_metadata(
                onnx_path
            ).get(ONNX_FINGERPRINT_KEY):
                source, use_rgb = str(exported), True
            else:
                import onnx

                try:
                    proto = onnx.load(str(onnx_path))
                    source, use_rgb = (
                        add_rgb_input(proto, self._metadata_input_size(proto)).SerializeToString(),
                        True,
                    )
                except (ValueError, onnx.checker.ValidationError) as error:
                    if rgb:
                        raise ModelFormatError(
                            f"cannot add rgb preprocessing to {onnx_path}: {error}"
                        ) from error
                    LOGGER.info(
                        "rgb preprocessing graph unavailable for %s (%s); using float input", onnx_path, error
                    )
        try:
            session = ort.InferenceSession(
                source, sess_options=self._session_options(), providers=list(providers)
            )
        except Exception as error:  # onnxruntime raises its own exception types
            raise ModelFormatError(f"onnxruntime cannot load {onnx_path}: {error}") from error
        metadata = session.get_modelmeta().custom_metadata_map
        fingerprint = metadata.get(ONNX_FINGERPRINT_KEY, "")
        if expected_fingerprint is not None and fingerprint != expected_fingerprint:
            raise ModelFormatError(
                f"{onnx_path} is stale: its fingerprint {fingerprint[:16] or '(none)'}... differs from "
                f"model.json {expected_fingerprint[:16]}...; re-run: tscm_export {onnx_path.parent} "
                f"{'--int8 --calibrate SOURCE' if 'int8' in onnx_path.name else '--onnx'}"
            )
        self._session = session
        self._input_name = session.get_inputs()[0].name
        self._output_name = session.get_outputs()[0].name
        self._rgb_input = use_rgb and self._input_name == RGB_INPUT_NAME
        self._fingerprint = fingerprint
        self._dim = int(metadata.get("tscm_ros.descriptor_dim", session.get_outputs()[0].shape[-1]))
        self._model_arch = metadata.get("tscm_ros.arch", "unknown")
        self._input_size = tuple(json.loads(metadata.get("tscm_ros.input_size", "[224, 224]")))
        self._optimized = False
        return session, metadata

    @staticmethod
    def _metadata_input_size(proto) -> tuple[int, int]:
        metadata = {p.key: p.value for p in proto.metadata_props}
        return tuple(json.loads(metadata.get("tscm_ros.input_size", "[224, 224]")))

    def _init_onnxruntime(self, model_path: Path, device, precision, providers, rgb_input) -> None:
        import onnxruntime as ort

        model_dir, onnx_file, expected = self._onnx_paths(model_path)
        available = ort.get_available_providers()
        if providers is not None:
            unknown = [p for p in providers if p not in available]
            if unknown:
                raise ValueError(f"onnxruntime providers {unknown} not available; available: {available}")
        wants_gpu = str(device).lower() != "cpu"
        gpu = [p for p in ("TensorrtExecutionProvider", "CUDAExecutionProvider") if p in available]
        device_type = (
            "cuda"
            if (providers is None and wants_gpu and gpu)
            or (providers is not None and providers[0] != "CPUExecutionProvider")
            else "cpu"
        )
        if onnx_file is not None:  # an explicit file: its precision is what it is
            file_precision = (
                "int8" if _onnx_metadata(onnx_file).get("tscm_ros.precision") == "int8" else "fp32"
            )
            if precision not in (None, "auto", file_precision):
                raise ValueError(
                    f"{onnx_file} is a {file_precision} model; precision={precision!r} asked for"
                )
            precision, reason = file_precision, "the file given"
            path = onnx_file
        else:
            int8_path = model_dir / INT8_ONNX_FILE
            if precision is None:
                precision, reason = "fp32", "default"
            else:
                precision, reason = resolve_precision(
                    precision, "onnxruntime", device_type, int8_available=int8_path.is_file()
                )
            path = model_dir / (INT8_ONNX_FILE if precision == "int8" else ONNX_FILE)
            if precision == "int8" and not path.is_file():
                raise ModelFormatError(
                    f"int8 model not found: {path}; create it with: tscm_export {model_dir} --int8 "
                    f"--calibrate SOURCE (a folder of images, bag:PATH[:TOPIC] or map:MAP_DIR)"
                )
        if providers is None:
            if precision == "int8" or device_type == "cpu":
                providers = ["CPUExecutionProvider"]  # the int8 QDQ model is a CPU model
            else:
                providers = gpu + ["CPUExecutionProvider"]
        self._precision, self._precision_reason = precision, reason
        session, metadata = self._open_session(path, providers, expected, rgb_input)
        provenance = metadata.get("tscm_ros.provenance", "")
        details = ", ".join(
            part
            for part in ("onnxruntime", precision, "rgb input" if self._rgb_input else "", provenance)
            if part
        )
        self._label = f"{self._model_arch} from {path} ({details})"
        self._device = torch.device("cuda" if session.get_providers()[0] != "CPUExecutionProvider" else "cpu")

    def _init_tensorrt(
        self, model_path: Path, device, precision, rgb_input, cache_dir, allow_fallback
    ) -> None:
        import onnxruntime as ort

        from tscm_ros.tensorrt import (
            TRT_PROVIDER,
            TensorRTUnavailableError,
            check_tensorrt_available,
            tensorrt_model_file,
            tensorrt_providers,
        )

        if str(device).lower() == "cpu":
            raise ValueError("backend='tensorrt' runs on an NVIDIA GPU; device='cpu' contradicts it")
        if rgb_input:
            raise ValueError("rgb_input=True is for backend='onnxruntime'; TensorRT takes the float input")
        model_dir, onnx_file, expected = self._onnx_paths(model_path)
        if precision is None:
            precision, reason = "fp16", "default"
        else:
            precision, reason = resolve_precision(precision, "tensorrt", "cuda")
        path = onnx_file or model_dir / tensorrt_model_file(precision)
        if not path.is_file():
            command = "--int8 --calibrate SOURCE" if precision == "int8" else "--onnx"
            raise ModelFormatError(
                f"ONNX model not found: {path}; create it with: tscm_export {path.parent} {command}"
            )
        available = ort.get_available_providers()
        try:
            check_tensorrt_available(available)
        except TensorRTUnavailableError:
            if not allow_fallback:
                raise
            fallback = [p for p in ("CUDAExecutionProvider",) if p in available] + ["CPUExecutionProvider"]
            LOGGER.warning(
                "TensorRT execution provider unavailable; falling back to %s (allow_fallback=True)", fallback
            )
            self._precision, self._precision_reason = "fp32", "TensorRT unavailable: fallback"
            self._open_session(model_dir / ONNX_FILE if model_dir else path, fallback, expected, None)
            self._label = f"{self._model_arch} from {path} (TensorRT unavailable, fallback {fallback[0]})"
            self._device = torch.device("cuda" if fallback[0] != "CPUExecutionProvider" else "cpu")
            return
        metadata = _onnx_metadata(path)
        fingerprint = metadata.get(ONNX_FINGERPRINT_KEY, "unknown")
        self._input_size = tuple(json.loads(metadata.get("tscm_ros.input_size", "[224, 224]")))
        cache = Path(cache_dir) if cache_dir is not None else (model_dir or path.parent) / "trt_cache"
        cache.mkdir(parents=True, exist_ok=True)
        name = str(device).strip().lower()
        device_id = int(name[5:]) if name.startswith("cuda:") and name[5:].isdigit() else 0
        providers = tensorrt_providers(
            precision, cache_dir=cache, device_id=device_id, cache_prefix=f"tscm_{fingerprint[:12]}",
            max_batch=self.batch_size, input_size=self._input_size,
        )  # fmt: skip
        self._precision, self._precision_reason = precision, reason
        session, _ = self._open_session(path, providers, expected, False)
        if session.get_providers()[0] != TRT_PROVIDER and not allow_fallback:
            raise TensorRTUnavailableError(
                f"onnxruntime did not start the TensorRT execution provider for {path} (session providers "
                f"{session.get_providers()}; check the TensorRT/CUDA libraries and the log above)"
            )
        self._label = f"{self._model_arch} from {path} (TensorRT {precision}, engine cache {cache})"
        self._device = torch.device(f"cuda:{device_id}")
        self._trt_cache_dir = cache

    def _run_onnx_float(self, x: torch.Tensor) -> np.ndarray:
        (out,) = self._session.run([self._output_name], {self._input_name: x.cpu().numpy()})
        return out

    def _run_onnx_rgb(self, batch: np.ndarray) -> np.ndarray:
        if not batch.flags.c_contiguous:
            batch = np.ascontiguousarray(batch)
        (out,) = self._session.run([self._output_name], {self._input_name: batch})
        return out

    # ----------------------------------------------------------------- public API
    @property
    def dim(self) -> int:
        return self._dim

    @property
    def fingerprint(self) -> str:
        return self._fingerprint

    @property
    def label(self) -> str:
        return self._label

    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def backend(self) -> str:
        return self._backend

    @property
    def arch(self) -> str:
        return self._model_arch

    @property
    def precision(self) -> str:
        """The precision that runs: "fp32", "bf16", "fp16" or "int8" ("auto" resolved)."""
        return self._precision

    @property
    def precision_reason(self) -> str:
        """Why that precision (e.g. "CPU has avx512_bf16", "requested", "default")."""
        return self._precision_reason

    @property
    def rgb_input(self) -> bool:
        """True when the preprocessing runs inside the ONNX graph (uint8 images go in as they are)."""
        return self._rgb_input

    @property
    def optimized(self) -> bool:
        """True when the torch backend runs the :func:`~tscm_ros.export.optimize_for_cpu` module."""
        return self._optimized

    def describe(self, images: Images) -> np.ndarray:
        """HxWx3 uint8 RGB, (N,H,W,3) uint8 or a list of HxWx3 uint8 -> (N, dim) float32 L2-normalised.

        With :attr:`rgb_input` the uint8 arrays go to ONNX Runtime as they are (a C-contiguous HxWx3 image,
        e.g. a decoded camera frame, is not copied; read-only arrays are fine).
        """
        batches = as_image_batches(images)
        # one (N,H,W,3) array is sliced; a list of differently sized images is chunked item by item
        items: np.ndarray | list[np.ndarray] = batches[0] if len(batches) == 1 else [b[0] for b in batches]
        total = len(items)
        result = np.empty((total, self._dim), dtype=np.float32)
        if self._rgb_input:
            for start in range(0, total, self.batch_size):
                stop = min(start + self.batch_size, total)
                if isinstance(items, np.ndarray):
                    out = self._run_onnx_rgb(items[start:stop])
                else:
                    out = np.concatenate([self._run_onnx_rgb(item[None]) for item in items[start:stop]])
                norms = np.linalg.norm(out, axis=1, keepdims=True)
                result[start:stop] = out / np.maximum(norms, 1e-12)
            return result
        preprocess_device = self._device if self._backend == "torch" else torch.device("cpu")
        for start in range(0, total, self.batch_size):
            stop = min(start + self.batch_size, total)
            chunk = items[start:stop]
            x = preprocess(chunk, device=preprocess_device, size=self._input_size)
            out = (
                self._run_torch(x) if self._backend == "torch" else torch.from_numpy(self._run_onnx_float(x))
            )
            result[start:stop] = F.normalize(out.float(), dim=1).cpu().numpy()
        return result

    __call__ = describe

    def __repr__(self) -> str:
        return (
            f"Describer({self._label!r}, backend={self._backend}, device={self._device}, "
            f"precision={self._precision}, dim={self._dim})"
        )


def _onnx_metadata(path: Path) -> dict[str, str]:
    import onnx

    return {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}


# --------------------------------------------------------------------- tscm_describe
def describe_files(describer: Describer, files: Sequence[Path]) -> np.ndarray:
    """Describe image files in chunks of ``describer.batch_size`` (bounded memory)."""
    out = np.empty((len(files), describer.dim), dtype=np.float32)
    for start in range(0, len(files), describer.batch_size):
        chunk = files[start : start + describer.batch_size]
        out[start : start + len(chunk)] = describer.describe([read_rgb(p) for p in chunk])
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """``tscm_describe QUERY_DIR [DATABASE_DIR]``: print each query's nearest database images (cosine)."""
    parser = argparse.ArgumentParser(prog="tscm_describe", description=main.__doc__)
    parser.add_argument("queries", type=Path, help="folder of query images")
    parser.add_argument(
        "database",
        type=Path,
        nargs="?",
        help="folder to search (default: the query folder, excluding each query itself)",
    )
    parser.add_argument("--model", help="model directory / published checkpoint / .onnx (default: untrained)")
    parser.add_argument("--arch", default="student", choices=["student", "teacher"])
    parser.add_argument("--backend", default="torch", choices=list(BACKENDS))
    parser.add_argument(
        "--precision", default=None, choices=["auto", "fp32", "bf16", "fp16", "int8"],
        help="default: fp32 (fp16 autocast on CUDA, fp16 for TensorRT); see tscm_ros.precision",
    )  # fmt: skip
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("-k", "--top-k", type=int, default=3)
    parser.add_argument("--optimize", action="store_true", help="CPU: frozen TorchScript path")
    parser.add_argument("--save", type=Path, help="also write query descriptors to this .npy file")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        describer = Describer(
            args.model,
            arch=args.arch,
            backend=args.backend,
            device=args.device,
            batch_size=args.batch_size,
            num_threads=args.threads,
            optimize=args.optimize,
            precision=args.precision,
        )
        query_files = list_images(args.queries)
        same_folder = args.database is None or args.database.resolve() == args.queries.resolve()
        db_files = query_files if same_folder else list_images(args.database)
        query_desc = describe_files(describer, query_files)
        db_desc = query_desc if same_folder else describe_files(describer, db_files)
    except (ValueError, FileNotFoundError, OSError, RuntimeError) as error:
        print(f"tscm_describe: error: {error}", file=sys.stderr)
        return 2
    print(
        f"# {describer.label}; backend={describer.backend} device={describer.device} "
        f"precision={describer.precision} dim={describer.dim}"
    )
    print(f"# fingerprint {describer.fingerprint}")
    similarity = query_desc @ db_desc.T
    if same_folder:
        np.fill_diagonal(similarity, -np.inf)
    k = max(1, min(args.top_k, len(db_files) - int(same_folder)))
    for qi, query in enumerate(query_files):
        order = np.argsort(-similarity[qi], kind="stable")[:k]
        matches = "  ".join(f"{db_files[j].name} ({similarity[qi, j]:.4f})" for j in order)
        print(f"{query.name}: {matches}")
    if args.save:
        np.save(args.save, query_desc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
