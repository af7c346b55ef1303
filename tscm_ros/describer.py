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
import logging
import os
import sys
from collections.abc import Sequence
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

__all__ = ["Describer", "ImageInputError", "parse_device", "preprocess", "main"]

LOGGER = logging.getLogger(__name__)
INPUT_SIZE = (224, 224)
ONNX_FILE = "model.onnx"
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
    or for ``backend="onnxruntime"`` a ``.onnx`` file / a model directory holding ``model.onnx`` (made by
    ``tscm_export``). ``None`` builds an untrained, seeded ``arch`` network (for tests and demos only).
    ``arch`` and ``seed`` apply only when ``model_path`` is None. ``fp16`` enables autocast on CUDA only
    (ignored by onnxruntime). ``optimize=True`` (CPU, torch backend) runs
    :func:`tscm_ros.export.optimize_for_cpu` (frozen TorchScript with oneDNN passes, BatchNorm folded),
    checked equal to eager within 1e-4. ``num_threads`` sets torch's (process-wide) intra-op threads or
    onnxruntime's ``intra_op_num_threads``. ``providers`` picks onnxruntime execution providers (default:
    TensorRT/CUDA when available and ``device`` is not ``"cpu"``, then CPU).
    """

    def __init__(
        self,
        model_path: str | os.PathLike | None = None,
        *,
        arch: str = "student",
        backend: str = "torch",
        device: str | torch.device = "auto",
        fp16: bool = True,
        batch_size: int = 8,
        num_threads: int | None = None,
        seed: int = 0,
        channels_last: bool = True,
        optimize: bool = False,
        providers: Sequence[str] | None = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if backend not in ("torch", "onnxruntime"):
            raise ValueError(f"backend must be 'torch' or 'onnxruntime', got {backend!r}")
        if num_threads is not None and num_threads < 1:
            raise ValueError(f"num_threads must be >= 1, got {num_threads}")
        self.batch_size = int(batch_size)
        self.num_threads = num_threads
        self._backend = backend
        self._input_size = INPUT_SIZE
        if backend == "torch":
            self._init_torch(model_path, arch, device, fp16, seed, channels_last, optimize)
        else:
            if model_path is None:
                raise ValueError(
                    "backend='onnxruntime' needs model_path: a .onnx file or a model directory with "
                    "model.onnx (create it with: tscm_export MODEL_DIR --onnx)"
                )
            self._init_onnxruntime(Path(model_path), device, providers)

    # ----------------------------------------------------------------- torch backend
    def _init_torch(self, model_path, arch, device, fp16, seed, channels_last, optimize) -> None:
        self._device = parse_device(device)
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
        model = model.eval().to(self._device)
        self._model_arch = model.arch
        self._dim = int(model.descriptor_dim)
        self._input_size = tuple(getattr(model, "input_size", INPUT_SIZE))
        self._channels_last = bool(channels_last)
        self._fp16 = bool(fp16) and self._device.type == "cuda"
        if self._channels_last:
            model = model.to(memory_format=torch.channels_last)
        self._model = model
        self._optimized = False
        if optimize:
            if self._device.type != "cpu":
                LOGGER.info(
                    "optimize=True applies to CPU only; using eager (autocast fp16=%s) on %s",
                    self._fp16,
                    self._device,
                )
            else:
                from tscm_ros.export import optimize_for_cpu

                self._model = optimize_for_cpu(model, self._input_size)
                self._channels_last = bool(self._model.channels_last)
                self._optimized = True

    def _run_torch(self, x: torch.Tensor) -> torch.Tensor:
        if self._channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode(), torch.autocast("cuda", dtype=torch.float16, enabled=self._fp16):
            out = self._model(x)
        return out.float()

    # ----------------------------------------------------------------- onnxruntime backend
    def _init_onnxruntime(self, model_path: Path, device, providers) -> None:
        import onnxruntime as ort

        expected_fingerprint = None
        if model_path.is_dir() or model_path.name == CONFIG_FILE:
            model_dir = model_path if model_path.is_dir() else model_path.parent
            onnx_path = model_dir / ONNX_FILE
            if (model_dir / CONFIG_FILE).is_file():
                expected_fingerprint = read_model_config(model_dir)["fingerprint"]
        else:
            onnx_path = model_path
        if not onnx_path.is_file():
            raise ModelFormatError(
                f"ONNX model not found: {onnx_path}; create it with: tscm_export {onnx_path.parent} --onnx"
            )
        available = ort.get_available_providers()
        if providers is None:
            wants_gpu = device != "cpu" and str(device).lower() != "cpu"
            preferred = ["TensorrtExecutionProvider", "CUDAExecutionProvider"] if wants_gpu else []
            providers = [p for p in preferred if p in available] + ["CPUExecutionProvider"]
        else:
            unknown = [p for p in providers if p not in available]
            if unknown:
                raise ValueError(f"onnxruntime providers {unknown} not available; available: {available}")
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if self.num_threads is not None:
            options.intra_op_num_threads = self.num_threads
        try:
            session = ort.InferenceSession(str(onnx_path), sess_options=options, providers=list(providers))
        except Exception as error:  # onnxruntime raises its own exception types
            raise ModelFormatError(f"onnxruntime cannot load {onnx_path}: {error}") from error
        metadata = session.get_modelmeta().custom_metadata_map
        fingerprint = metadata.get(ONNX_FINGERPRINT_KEY, "")
        if expected_fingerprint is not None and fingerprint != expected_fingerprint:
            raise ModelFormatError(
                f"{onnx_path} is stale: its fingerprint {fingerprint[:16] or '(none)'}... differs from "
                f"model.json {expected_fingerprint[:16]}...; re-run: tscm_export {onnx_path.parent} --onnx"
            )
        self._session = session
        self._input_name = session.get_inputs()[0].name
        self._output_name = session.get_outputs()[0].name
        self._fingerprint = fingerprint
        self._dim = int(metadata.get("tscm_ros.descriptor_dim", session.get_outputs()[0].shape[-1]))
        self._model_arch = metadata.get("tscm_ros.arch", "unknown")
        provenance = metadata.get("tscm_ros.provenance", "")
        self._label = (
            f"{self._model_arch} from {onnx_path} (onnxruntime{', ' + provenance if provenance else ''})"
        )
        self._device = torch.device("cuda" if session.get_providers()[0] != "CPUExecutionProvider" else "cpu")
        self._optimized = False

    def _run_onnxruntime(self, x: torch.Tensor) -> torch.Tensor:
        (out,) = self._session.run([self._output_name], {self._input_name: x.cpu().numpy()})
        return torch.from_numpy(out)

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
    def optimized(self) -> bool:
        """True when the torch backend runs the :func:`~tscm_ros.export.optimize_for_cpu` module."""
        return self._optimized

    def describe(self, images: Images) -> np.ndarray:
        """HxWx3 uint8 RGB, (N,H,W,3) uint8 or a list of HxWx3 uint8 -> (N, dim) float32 L2-normalised."""
        batches = as_image_batches(images)
        # one (N,H,W,3) array is sliced; a list of differently sized images is chunked item by item
        items: np.ndarray | list[np.ndarray] = batches[0] if len(batches) == 1 else [b[0] for b in batches]
        total = len(items)
        result = np.empty((total, self._dim), dtype=np.float32)
        preprocess_device = self._device if self._backend == "torch" else torch.device("cpu")
        for start in range(0, total, self.batch_size):
            stop = min(start + self.batch_size, total)
            chunk = items[start:stop]
            x = preprocess(chunk, device=preprocess_device, size=self._input_size)
            out = self._run_torch(x) if self._backend == "torch" else self._run_onnxruntime(x)
            result[start:stop] = F.normalize(out.float(), dim=1).cpu().numpy()
        return result

    __call__ = describe

    def __repr__(self) -> str:
        return f"Describer({self._label!r}, backend={self._backend}, device={self._device}, dim={self._dim})"


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
    parser.add_argument("--backend", default="torch", choices=["torch", "onnxruntime"])
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
        )
        query_files = list_images(args.queries)
        same_folder = args.database is None or args.database.resolve() == args.queries.resolve()
        db_files = query_files if same_folder else list_images(args.database)
        query_desc = describe_files(describer, query_files)
        db_desc = query_desc if same_folder else describe_files(describer, db_files)
    except (ValueError, FileNotFoundError, OSError) as error:
        print(f"tscm_describe: error: {error}", file=sys.stderr)
        return 2
    print(f"# {describer.label}; backend={describer.backend} device={describer.device} dim={describer.dim}")
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
