"""Image -> TSCM descriptor: one :class:`Describer` interface, a PyTorch and an ONNX Runtime backend.

:func:`create_describer` picks the backend: :class:`TorchDescriber` (eager PyTorch, optionally the
:func:`tscm_ros.export.optimize_for_cpu` module), :class:`OrtDescriber` (ONNX Runtime, ``model.onnx`` /
``model.int8.onnx``) or :class:`TensorRTDescriber` (ONNX Runtime's TensorRT execution provider). The
preprocessing is the networks' own (:func:`tscm_ros.models.preprocessing.preprocess`).
"""

from __future__ import annotations

import json
import logging
import os
from abc import ABC, abstractmethod
from collections.abc import Sequence
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from tscm_ros.image_files import read_rgb
from tscm_ros.model_io import CONFIG_FILE, ModelFormatError, load_model, model_fingerprint, read_model_config
from tscm_ros.models import build_model
from tscm_ros.models.preprocessing import INPUT_SIZE, Images, as_image_batches, preprocess
from tscm_ros.precision import FP16_FLAGS, cpu_flags, resolve_precision

__all__ = [
    "Describer",
    "OrtDescriber",
    "TensorRTDescriber",
    "TorchDescriber",
    "create_describer",
    "describe_files",
    "parse_device",
]

LOGGER = logging.getLogger(__name__)
ONNX_FILE = "model.onnx"
INT8_ONNX_FILE = "model.int8.onnx"
BACKENDS = ("torch", "onnxruntime", "tensorrt")
ONNX_FINGERPRINT_KEY = "tscm_ros.fingerprint"


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


def create_describer(
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
) -> Describer:
    """The :class:`Describer` for ``backend``; each backend takes only its own options from these.

    ``model_path`` is our model directory (or its ``model.json``), a published checkpoint (torch backend),
    or for the ONNX backends a ``.onnx`` file / a model directory holding the exports made by
    ``tscm_export``. ``None`` builds an untrained, seeded ``arch`` network (torch; for tests and demos only).

    Backends: ``"torch"`` (:class:`TorchDescriber`: ``arch``, ``seed``, ``fp16``, ``channels_last``,
    ``optimize``), ``"onnxruntime"`` (:class:`OrtDescriber`: ``providers``, ``rgb_input``) and
    ``"tensorrt"`` (:class:`TensorRTDescriber`: ``rgb_input``, ``trt_cache_dir``, ``allow_fallback``).
    ``precision``: ``"fp32"``, ``"bf16"``, ``"fp16"``, ``"int8"`` or ``"auto"`` (see
    :mod:`tscm_ros.precision`); ``None`` keeps the historical behaviour: fp32, except fp16 autocast on CUDA
    when ``fp16`` is true (torch), and fp16 for TensorRT. ``num_threads`` sets torch's (process-wide)
    intra-op threads or onnxruntime's ``intra_op_num_threads``.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    common = {"precision": precision, "batch_size": batch_size, "num_threads": num_threads}
    if backend == "torch":
        return TorchDescriber(
            model_path, arch=arch, device=device, fp16=fp16, seed=seed, channels_last=channels_last,
            optimize=optimize, **common,
        )  # fmt: skip
    if model_path is None:
        raise ValueError(
            f"backend={backend!r} needs model_path: a .onnx file or a model directory with "
            "model.onnx (create it with: tscm_export MODEL_DIR --onnx)"
        )
    if backend == "onnxruntime":
        return OrtDescriber(model_path, device=device, providers=providers, rgb_input=rgb_input, **common)
    return TensorRTDescriber(
        model_path, device=device, rgb_input=rgb_input, trt_cache_dir=trt_cache_dir,
        allow_fallback=allow_fallback, **common,
    )  # fmt: skip


class Describer(ABC):
    """Compute L2-normalised TSCM descriptors for RGB uint8 images (build one with :func:`create_describer`).

    A backend sets the attributes behind the read-only properties and implements :meth:`_run` (float
    network input -> descriptors); one that takes the uint8 images itself sets ``_rgb_input`` and
    implements :meth:`_run_rgb`.
    """

    backend_name = ""

    def __init__(self, batch_size: int, num_threads: int | None) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if num_threads is not None and num_threads < 1:
            raise ValueError(f"num_threads must be >= 1, got {num_threads}")
        self.batch_size = int(batch_size)
        self.num_threads = num_threads
        self._input_size: tuple[int, int] = INPUT_SIZE
        self._rgb_input = False
        self._optimized = False
        self._device = torch.device("cpu")
        self._dim = 0
        self._fingerprint = ""
        self._label = ""
        self._model_arch = "unknown"
        self._precision = self._precision_reason = ""

    @abstractmethod
    def _run(self, x: torch.Tensor) -> torch.Tensor:
        """(n, 3, H, W) float network input -> (n, dim) float descriptors (not yet normalised)."""

    def _run_rgb(self, batch: np.ndarray) -> np.ndarray:
        """(n, H, W, 3) uint8 -> (n, dim) descriptors, for backends with the preprocessing inside."""
        raise NotImplementedError(f"{type(self).__name__} takes float input")

    def _preprocess_device(self) -> torch.device:
        return torch.device("cpu")

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
        return self.backend_name

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
        for start in range(0, total, self.batch_size):
            stop = min(start + self.batch_size, total)
            if self._rgb_input:
                if isinstance(items, np.ndarray):
                    out = self._run_rgb(items[start:stop])
                else:
                    out = np.concatenate([self._run_rgb(item[None]) for item in items[start:stop]])
                norms = np.linalg.norm(out, axis=1, keepdims=True)
                result[start:stop] = out / np.maximum(norms, 1e-12)
            else:
                x = preprocess(items[start:stop], device=self._preprocess_device(), size=self._input_size)
                result[start:stop] = F.normalize(self._run(x).float(), dim=1).cpu().numpy()
        return result

    __call__ = describe

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self._label!r}, backend={self.backend}, device={self._device}, "
            f"precision={self._precision}, dim={self._dim})"
        )


class TorchDescriber(Describer):
    """Eager PyTorch (``optimize=True`` on CPU fp32 runs :func:`tscm_ros.export.optimize_for_cpu`, checked
    equal to eager within 1e-4); ``model_path`` None = an untrained, seeded ``arch`` network."""

    backend_name = "torch"

    def __init__(
        self,
        model_path: str | os.PathLike | None = None,
        *,
        arch: str = "student",
        device: str | torch.device = "auto",
        fp16: bool = True,
        precision: str | None = None,
        batch_size: int = 8,
        num_threads: int | None = None,
        seed: int = 0,
        channels_last: bool = True,
        optimize: bool = False,
    ) -> None:
        super().__init__(batch_size, num_threads)
        self._device = parse_device(device)
        self._autocast: tuple[str, torch.dtype] | None = None
        self._set_precision(precision, fp16)
        if self.num_threads is not None and self._device.type == "cpu":
            torch.set_num_threads(self.num_threads)
        model = self._load_network(model_path, arch, seed)
        model = model.eval().to(self._device)
        self._model_arch = model.arch
        self._dim = int(model.descriptor_dim)
        self._input_size = tuple(getattr(model, "input_size", INPUT_SIZE))
        self._channels_last = bool(channels_last)
        self._fp16 = self._precision == "fp16" and self._device.type == "cuda"  # kept for callers reading it
        if self._channels_last:
            model = model.to(memory_format=torch.channels_last)
        self._model = model
        if optimize:
            self._optimize()

    def _set_precision(self, precision: str | None, fp16: bool) -> None:
        if precision is None:
            precision = "fp16" if fp16 and self._device.type == "cuda" else "fp32"
            reason = "default"
        else:
            precision, reason = resolve_precision(precision, "torch", self._device.type)
        self._precision, self._precision_reason = precision, reason
        if precision not in ("bf16", "fp16"):
            return
        self._autocast = (self._device.type, torch.bfloat16 if precision == "bf16" else torch.float16)
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

    def _load_network(self, model_path: str | os.PathLike | None, arch: str, seed: int) -> torch.nn.Module:
        """The network on the CPU; sets the fingerprint and the label."""
        if model_path is None:
            model = build_model(arch, seed=seed)
            self._fingerprint = model_fingerprint(model)
            self._label = f"UNTRAINED {arch} (seed {seed})"
            LOGGER.warning(
                "Describer uses an %s: descriptors are meaningless for place recognition", self._label
            )
        else:
            loaded = load_model(model_path, device="cpu")
            model = loaded.module
            self._fingerprint = loaded.fingerprint
            provenance = loaded.provenance or ("trained" if loaded.trained else "untrained")
            self._label = f"{loaded.arch} from {model_path} ({provenance})"
        if self._precision != "fp32":
            self._label += f" [{self._precision} autocast]"
        return model

    def _optimize(self) -> None:
        if self._device.type != "cpu" or self._precision != "fp32":
            LOGGER.info(
                "optimize=True applies to CPU fp32 only; using eager (%s) on %s",
                self._precision,
                self._device,
            )
            return
        from tscm_ros.export import optimize_for_cpu

        self._model = optimize_for_cpu(self._model, self._input_size)
        self._channels_last = bool(self._model.channels_last)
        self._optimized = True

    def _preprocess_device(self) -> torch.device:
        return self._device

    def _run(self, x: torch.Tensor) -> torch.Tensor:
        if self._channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        autocast = (
            torch.autocast(self._autocast[0], dtype=self._autocast[1]) if self._autocast else nullcontext()
        )
        with torch.inference_mode(), autocast:
            out = self._model(x)
        return out.float()


class OrtDescriber(Describer):
    """ONNX Runtime on ``model.onnx`` / ``model.int8.onnx`` (or a given ``.onnx`` file).

    ``providers`` picks execution providers (default TensorRT/CUDA when available and ``device`` is not
    ``"cpu"``, then CPU). ``rgb_input``: ``None``/``True`` run the network with the preprocessing inside the
    graph (:func:`tscm_ros.export.add_rgb_input`; ``model[.int8].rgb.onnx`` when exported, else built in
    memory at load), so :meth:`describe` hands the uint8 (H, W, 3) buffer to ONNX Runtime without converting
    it; ``False`` preprocesses with :func:`~tscm_ros.models.preprocessing.preprocess` first.
    """

    backend_name = "onnxruntime"

    def __init__(
        self,
        model_path: str | os.PathLike,
        *,
        device: str | torch.device = "auto",
        precision: str | None = None,
        batch_size: int = 8,
        num_threads: int | None = None,
        providers: Sequence[str] | None = None,
        rgb_input: bool | None = None,
    ) -> None:
        import onnxruntime as ort

        super().__init__(batch_size, num_threads)
        model_dir, onnx_file, expected = self._onnx_paths(Path(model_path))
        available = ort.get_available_providers()
        if providers is not None:
            unknown = [p for p in providers if p not in available]
            if unknown:
                raise ValueError(f"onnxruntime providers {unknown} not available; available: {available}")
        gpu = [p for p in ("TensorrtExecutionProvider", "CUDAExecutionProvider") if p in available]
        wants_gpu = str(device).lower() != "cpu"
        on_gpu = (providers is None and wants_gpu and gpu) or (
            providers is not None and providers[0] != "CPUExecutionProvider"
        )
        path = self._choose_file(model_dir, onnx_file, precision, "cuda" if on_gpu else "cpu")
        if providers is None:
            if self._precision == "int8" or not on_gpu:
                providers = ["CPUExecutionProvider"]  # the int8 QDQ model is a CPU model
            else:
                providers = gpu + ["CPUExecutionProvider"]
        session, metadata = self._open_session(path, providers, expected, rgb_input)
        provenance = metadata.get("tscm_ros.provenance", "")
        details = ", ".join(
            part
            for part in ("onnxruntime", self._precision, "rgb input" if self._rgb_input else "", provenance)
            if part
        )
        self._label = f"{self._model_arch} from {path} ({details})"
        self._device = torch.device("cuda" if session.get_providers()[0] != "CPUExecutionProvider" else "cpu")

    def _choose_file(
        self, model_dir: Path | None, onnx_file: Path | None, precision: str | None, device_type: str
    ) -> Path:
        """The .onnx file to run for ``precision``; sets the resolved precision and its reason."""
        if onnx_file is not None:  # an explicit file: its precision is what it is
            file_precision = (
                "int8" if _onnx_metadata(onnx_file).get("tscm_ros.precision") == "int8" else "fp32"
            )
            if precision not in (None, "auto", file_precision):
                raise ValueError(
                    f"{onnx_file} is a {file_precision} model; precision={precision!r} asked for"
                )
            self._precision, self._precision_reason = file_precision, "the file given"
            return onnx_file
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
        self._precision, self._precision_reason = precision, reason
        return path

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

    def _create_session(self, source: str | bytes, providers: Sequence[str], onnx_path: Path):
        """The one place an ``onnxruntime.InferenceSession`` is made."""
        import onnxruntime as ort

        try:
            return ort.InferenceSession(
                source, sess_options=self._session_options(), providers=list(providers)
            )
        except Exception as error:  # onnxruntime raises its own exception types
            raise ModelFormatError(f"onnxruntime cannot load {onnx_path}: {error}") from error

    def _rgb_source(self, onnx_path: Path, rgb: bool | None) -> tuple[str | bytes, bool]:
        """(what to load, whether it takes uint8 RGB): the exported rgb file, one built in memory, or the
        float model itself (``rgb`` False, or None when the rgb graph cannot be built)."""
        from tscm_ros.export import add_rgb_input, rgb_file_name

        if rgb is False:
            return str(onnx_path), False
        exported = onnx_path.with_name(rgb_file_name(onnx_path.name))
        if exported.is_file() and _onnx_metadata(exported).get(ONNX_FINGERPRINT_KEY) == _onnx_metadata(
            onnx_path
        ).get(ONNX_FINGERPRINT_KEY):
            return str(exported), True
        import onnx

        try:
            proto = onnx.load(str(onnx_path))
            return add_rgb_input(proto, _metadata_input_size(proto)).SerializeToString(), True
        except (ValueError, onnx.checker.ValidationError) as error:
            if rgb:
                raise ModelFormatError(f"cannot add rgb preprocessing to {onnx_path}: {error}") from error
            LOGGER.info(
                "rgb preprocessing graph unavailable for %s (%s); using float input", onnx_path, error
            )
            return str(onnx_path), False

    def _open_session(self, onnx_path: Path, providers, expected_fingerprint: str | None, rgb: bool | None):
        """Create the session (optionally with the rgb preprocessing prepended) and check its fingerprint."""
        from tscm_ros.onnx_io import RGB_INPUT_NAME

        if not onnx_path.is_file():
            raise ModelFormatError(
                f"ONNX model not found: {onnx_path}; create it with: tscm_export {onnx_path.parent} --onnx"
            )
        source, use_rgb = self._rgb_source(onnx_path, rgb)
        session = self._create_session(source, providers, onnx_path)
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
        return session, metadata

    def _run(self, x: torch.Tensor) -> torch.Tensor:
        (out,) = self._session.run([self._output_name], {self._input_name: x.cpu().numpy()})
        return torch.from_numpy(out)

    def _run_rgb(self, batch: np.ndarray) -> np.ndarray:
        if not batch.flags.c_contiguous:
            batch = np.ascontiguousarray(batch)
        (out,) = self._session.run([self._output_name], {self._input_name: batch})
        return out


class TensorRTDescriber(OrtDescriber):
    """ONNX Runtime's TensorRT execution provider with an engine cache in ``trt_cache_dir`` (default
    ``<model dir>/trt_cache``; see :mod:`tscm_ros.tensorrt`). Without the TensorRT provider it raises one
    clear line, unless ``allow_fallback=True`` (then CUDA, else CPU, with a warning)."""

    backend_name = "tensorrt"

    def __init__(
        self,
        model_path: str | os.PathLike,
        *,
        device: str | torch.device = "auto",
        precision: str | None = None,
        batch_size: int = 8,
        num_threads: int | None = None,
        rgb_input: bool | None = None,
        trt_cache_dir: str | os.PathLike | None = None,
        allow_fallback: bool = False,
    ) -> None:
        import onnxruntime as ort

        from tscm_ros.tensorrt import TensorRTUnavailableError, check_tensorrt_available, tensorrt_model_file

        Describer.__init__(self, batch_size, num_threads)
        if str(device).lower() == "cpu":
            raise ValueError("backend='tensorrt' runs on an NVIDIA GPU; device='cpu' contradicts it")
        if rgb_input:
            raise ValueError("rgb_input=True is for backend='onnxruntime'; TensorRT takes the float input")
        model_dir, onnx_file, expected = self._onnx_paths(Path(model_path))
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
            self._fall_back(available, model_dir, path, expected)
            return
        self._precision, self._precision_reason = precision, reason
        self._start_tensorrt(path, model_dir, expected, device, trt_cache_dir, allow_fallback)

    def _fall_back(
        self, available: list[str], model_dir: Path | None, path: Path, expected: str | None
    ) -> None:
        fallback = [p for p in ("CUDAExecutionProvider",) if p in available] + ["CPUExecutionProvider"]
        LOGGER.warning(
            "TensorRT execution provider unavailable; falling back to %s (allow_fallback=True)", fallback
        )
        self._precision, self._precision_reason = "fp32", "TensorRT unavailable: fallback"
        self._open_session(model_dir / ONNX_FILE if model_dir else path, fallback, expected, None)
        self._label = f"{self._model_arch} from {path} (TensorRT unavailable, fallback {fallback[0]})"
        self._device = torch.device("cuda" if fallback[0] != "CPUExecutionProvider" else "cpu")

    def _start_tensorrt(
        self,
        path: Path,
        model_dir: Path | None,
        expected: str | None,
        device,
        cache_dir,
        allow_fallback: bool,
    ) -> None:
        from tscm_ros.tensorrt import TRT_PROVIDER, TensorRTUnavailableError, tensorrt_providers

        metadata = _onnx_metadata(path)
        fingerprint = metadata.get(ONNX_FINGERPRINT_KEY, "unknown")
        self._input_size = tuple(json.loads(metadata.get("tscm_ros.input_size", "[224, 224]")))
        cache = Path(cache_dir) if cache_dir is not None else (model_dir or path.parent) / "trt_cache"
        cache.mkdir(parents=True, exist_ok=True)
        name = str(device).strip().lower()
        device_id = int(name[5:]) if name.startswith("cuda:") and name[5:].isdigit() else 0
        providers = tensorrt_providers(
            self._precision, cache_dir=cache, device_id=device_id, cache_prefix=f"tscm_{fingerprint[:12]}",
            max_batch=self.batch_size, input_size=self._input_size,
        )  # fmt: skip
        session, _ = self._open_session(path, providers, expected, False)
        if session.get_providers()[0] != TRT_PROVIDER and not allow_fallback:
            raise TensorRTUnavailableError(
                f"onnxruntime did not start the TensorRT execution provider for {path} (session providers "
                f"{session.get_providers()}; check the TensorRT/CUDA libraries and the log above)"
            )
        self._label = f"{self._model_arch} from {path} (TensorRT {self._precision}, engine cache {cache})"
        self._device = torch.device(f"cuda:{device_id}")
        self._trt_cache_dir = cache


def _metadata_input_size(proto) -> tuple[int, int]:
    metadata = {p.key: p.value for p in proto.metadata_props}
    return tuple(json.loads(metadata.get("tscm_ros.input_size", "[224, 224]")))


def _onnx_metadata(path: Path) -> dict[str, str]:
    import onnx

    return {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}


# --------------------------------------------------------------------- describing files (tscm_describe)
def describe_files(describer: Describer, files: Sequence[Path]) -> np.ndarray:
    """Describe image files in chunks of ``describer.batch_size`` (bounded memory)."""
    out = np.empty((len(files), describer.dim), dtype=np.float32)
    for start in range(0, len(files), describer.batch_size):
        chunk = files[start : start + describer.batch_size]
        out[start : start + len(chunk)] = describer.describe([read_rgb(p) for p in chunk])
    return out
