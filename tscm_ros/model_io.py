"""Our model file format: a directory holding ``model.safetensors`` + ``model.json``.

``model.json`` (``format_version`` 1)::

    {"format": "tscm_ros.model", "format_version": 1, "arch": "student", "options": {...},
     "input_size": [224, 224], "normalisation": {"mean": [...], "std": [...]}, "resize": "bilinear",
     "descriptor_dim": 2048, "fingerprint": "<sha256 hex>", "trained": false, "provenance": "...",
     "created": "2026-01-01T00:00:00+00:00"}

Exports made from the weights are recorded under ``"exports"`` (:func:`record_export`), e.g.
``"exports": {"int8": {"fingerprint": ..., "file": "model.int8.onnx", "calibration": {...},
"accuracy": {...}}}`` (see :mod:`tscm_ros.quantize`). :func:`save_model` writes a fresh ``model.json``
without them: exports of older weights are stale (their embedded fingerprint no longer matches).

Fingerprint (:func:`fingerprint_state_dict`): SHA-256 over, for every state-dict entry in sorted key order,
``key`` UTF-8, NUL, dtype name (e.g. ``float32``), NUL, the shape as JSON (``[768,3,16,16]``), NUL, the
tensor's raw bytes (C-contiguous, native little-endian); followed by ``b"config"``, NUL and the canonical
JSON of ``{"arch": arch, "options": options}`` (``sort_keys=True``, separators ``(",", ":")``, ASCII).
It therefore identifies the exact weights *and* the network configuration; it does not depend on
``provenance``, ``created`` or the file layout, so re-saving a model keeps its fingerprint.

:func:`load_model` also accepts a checkpoint published by the TSCM authors (``.pth``, ``.pth.tar``,
``.ckpt``); :mod:`tscm_ros.published` maps their state dict to ours (``weights_only`` loading, never
unpickled). Both return a :class:`LoadedModel`: the network plus what the file says about it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import torch
from torch import nn

from tscm_ros.models import build_model
from tscm_ros.models.preprocessing import IMAGENET_MEAN, IMAGENET_STD
from tscm_ros.published import (
    PublishedCheckpointError,
    convert_published_state_dict,
    read_published_checkpoint,
)

FORMAT_NAME = "tscm_ros.model"
FORMAT_VERSION = 1
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "model.json"
PUBLISHED_SUFFIXES = (".pth", ".pth.tar", ".ckpt", ".tar")

__all__ = [
    "CONFIG_FILE",
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "WEIGHTS_FILE",
    "LoadedModel",
    "ModelFormatError",
    "fingerprint_state_dict",
    "load_model",
    "load_published",
    "model_fingerprint",
    "read_model_config",
    "record_export",
    "resolve_model_dir",
    "save_model",
]


class ModelFormatError(ValueError):
    """A model file or directory is missing, malformed, corrupt or does not fit the network."""


@dataclass(frozen=True)
class LoadedModel:
    """A network read from a file, in eval mode, with what the file records about it.

    ``fingerprint`` identifies the weights and configuration (module docstring); ``provenance`` says where
    the weights come from; ``trained`` is false for seeded, untrained networks saved for tests and demos.
    """

    module: nn.Module
    arch: str
    options: dict
    fingerprint: str
    provenance: str
    trained: bool


def canonical_config_json(arch: str, options: Mapping) -> str:
    """Canonical JSON of the network configuration used in the fingerprint."""
    return json.dumps(
        {"arch": arch, "options": dict(options)}, sort_keys=True, separators=(",", ":"), ensure_ascii=True
    )


def fingerprint_state_dict(state_dict: Mapping[str, torch.Tensor], arch: str, options: Mapping) -> str:
    """SHA-256 hex of the weights' canonical bytes and the canonical configuration JSON (module docstring)."""
    digest = hashlib.sha256()
    for key in sorted(state_dict):
        tensor = state_dict[key].detach()
        if tensor.device.type != "cpu":
            tensor = tensor.cpu()
        tensor = tensor.contiguous()
        dtype_name = str(tensor.dtype).removeprefix("torch.")
        shape_json = json.dumps(list(tensor.shape), separators=(",", ":"))
        digest.update(f"{key}\0{dtype_name}\0{shape_json}\0".encode())
        if tensor.numel():
            digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    digest.update(b"config\0" + canonical_config_json(arch, options).encode("ascii"))
    return digest.hexdigest()


def _arch_and_options(model: nn.Module) -> tuple[str, dict]:
    arch = getattr(model, "arch", None)
    options = getattr(model, "options", None)
    if not isinstance(arch, str) or not isinstance(options, Mapping):
        raise TypeError(
            "model must come from tscm_ros.models.build_model (needs .arch: str and .options: dict), "
            f"got {type(model).__name__}"
        )
    return arch, dict(options)


def model_fingerprint(model: nn.Module) -> str:
    """Fingerprint of a built network (same value :func:`save_model` writes into ``model.json``)."""
    arch, options = _arch_and_options(model)
    return fingerprint_state_dict(model.state_dict(), arch, options)


def _tensors_for_saving(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """CPU, contiguous, non-aliasing copies suitable for ``safetensors.torch.save_file``."""
    tensors: dict[str, torch.Tensor] = {}
    seen_storage: set[int] = set()
    for key, value in state_dict.items():
        tensor = value.detach().cpu().contiguous()
        storage = tensor.untyped_storage().data_ptr() if tensor.numel() else None
        if storage is not None and storage in seen_storage:
            tensor = tensor.clone()  # safetensors refuses tensors that share memory
        elif storage is not None:
            seen_storage.add(storage)
        tensors[key] = tensor
    return tensors


def save_model(
    model: nn.Module, directory: str | os.PathLike, *, provenance: str = "", trained: bool | None = None
) -> Path:
    """Write ``model.safetensors`` + ``model.json`` into ``directory`` atomically and return the directory.

    ``provenance`` describes where the weights come from (e.g. a training run); ``trained`` defaults to
    ``bool(provenance)``. Other files in an existing directory (``model.onnx`` ...) are left in place; their
    embedded fingerprint tells whether they are stale.
    """
    from safetensors.torch import save_file

    arch, options = _arch_and_options(model)
    json.dumps(options)  # fail early (TypeError) on non-JSON options, before anything is written
    directory = Path(directory)
    state_dict = model.state_dict()
    config = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "arch": arch,
        "options": options,
        "input_size": list(getattr(model, "input_size", (224, 224))),
        "normalisation": {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)},
        "resize": "bilinear",
        "descriptor_dim": int(getattr(model, "descriptor_dim", 2048)),
        "fingerprint": fingerprint_state_dict(state_dict, arch, options),
        "trained": bool(provenance) if trained is None else bool(trained),
        "provenance": provenance,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", suffix=".tmp", dir=directory.parent))
    try:
        save_file(_tensors_for_saving(state_dict), str(staging / WEIGHTS_FILE), metadata={"format": "pt"})
        (staging / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
        if not directory.exists():
            os.replace(staging, directory)
        else:
            if not directory.is_dir():
                raise ModelFormatError(f"cannot save model: {directory} exists and is not a directory")
            # weights first, json last: a reader never sees a new json with old weights.
            os.replace(staging / WEIGHTS_FILE, directory / WEIGHTS_FILE)
            os.replace(staging / CONFIG_FILE, directory / CONFIG_FILE)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return directory


def is_published_checkpoint(path: str | os.PathLike) -> bool:
    """True for file names the authors' code writes (``.pth``, ``.pth.tar``, ``.ckpt``)."""
    name = Path(path).name.lower()
    return name.endswith(PUBLISHED_SUFFIXES)


def resolve_model_dir(path: str | os.PathLike) -> Path:
    """The model directory for ``path`` = a model directory or its ``model.json``/``model.safetensors``."""
    path = Path(path)
    if path.is_dir():
        return path
    if path.name in (CONFIG_FILE, WEIGHTS_FILE):
        return path.parent
    if not path.exists():
        raise ModelFormatError(f"model path does not exist: {path}")
    raise ModelFormatError(
        f"unrecognised model path {path}: expected a model directory (model.json + model.safetensors), "
        "its model.json, or a published checkpoint (.pth, .pth.tar, .ckpt)"
    )


def read_model_config(path: str | os.PathLike) -> dict:
    """Read and validate ``model.json`` of a model directory (or the json file itself)."""
    model_dir = resolve_model_dir(path)
    config_path = model_dir / CONFIG_FILE
    if not config_path.is_file():
        raise ModelFormatError(f"missing {CONFIG_FILE} in model directory {model_dir}")
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ModelFormatError(f"{config_path} is not valid JSON: {error}") from error
    if not isinstance(config, dict) or config.get("format") != FORMAT_NAME:
        found = config.get("format") if isinstance(config, dict) else type(config).__name__
        raise ModelFormatError(f"{config_path}: format is {found!r}, expected {FORMAT_NAME!r}")
    if config.get("format_version") != FORMAT_VERSION:
        raise ModelFormatError(
            f"{config_path}: unsupported format_version {config.get('format_version')!r} "
            f"(this tscm_ros reads version {FORMAT_VERSION})"
        )
    for field, kind in (("arch", str), ("options", dict), ("fingerprint", str)):
        if not isinstance(config.get(field), kind):
            raise ModelFormatError(f"{config_path}: field {field!r} missing or not a {kind.__name__}")
    return config


def record_export(path: str | os.PathLike, name: str, record: Mapping) -> dict:
    """Set ``exports[name]`` in a model directory's ``model.json`` atomically; returns the new config.

    The model's fingerprint is stored in the record (``record["fingerprint"]``) so a reader can tell an
    export of these weights from a stale one. Other fields of ``model.json`` are kept as they are.
    """
    model_dir = resolve_model_dir(path)
    config = read_model_config(model_dir)
    exports = config.get("exports") if isinstance(config.get("exports"), dict) else {}
    exports[name] = {"fingerprint": config["fingerprint"], **dict(record)}
    config["exports"] = exports
    text = json.dumps(config, indent=2) + "\n"
    handle, tmp_name = tempfile.mkstemp(prefix=f".{CONFIG_FILE}.", suffix=".tmp", dir=model_dir)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            stream.write(text)
        os.replace(tmp_name, model_dir / CONFIG_FILE)
    finally:
        if os.path.exists(tmp_name):
            os.unlink(tmp_name)
    return config


def _read_safetensors(weights_path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not weights_path.is_file():
        raise ModelFormatError(f"missing {WEIGHTS_FILE} in model directory {weights_path.parent}")
    try:
        return load_file(str(weights_path), device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as error:
        raise ModelFormatError(
            f"{weights_path} is not a readable safetensors file (truncated or corrupt?): {error}"
        ) from error


def _check_state_dict(model: nn.Module, state_dict: Mapping[str, torch.Tensor], source: str) -> None:
    """Raise ModelFormatError naming missing/unexpected keys and shape mismatches."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    problems = []
    if missing:
        problems.append(
            f"missing keys ({len(missing)}): {', '.join(missing[:10])}" + (" ..." * (len(missing) > 10))
        )
    if unexpected:
        problems.append(
            f"unexpected keys ({len(unexpected)}): {', '.join(unexpected[:10])}"
            + (" ..." * (len(unexpected) > 10))
        )
    for key in sorted(set(expected) & set(state_dict)):
        if tuple(expected[key].shape) != tuple(state_dict[key].shape):
            problems.append(
                f"shape mismatch for {key}: file has {tuple(state_dict[key].shape)}, "
                f"network expects {tuple(expected[key].shape)}"
            )
    if problems:
        raise ModelFormatError(f"{source} does not fit the network: " + "; ".join(problems))


def _has_meta_tensors(model: nn.Module) -> bool:
    for module in model.modules():
        tensors = [*module._parameters.values(), *module._buffers.values(), *vars(module).values()]
        if any(isinstance(t, torch.Tensor) and t.is_meta for t in tensors):
            return True
    return False


def build_from_state_dict(
    arch: str, options: Mapping, state_dict: Mapping[str, torch.Tensor], *, source: str
) -> nn.Module:
    """Build ``arch`` with ``options`` and load ``state_dict`` strictly (clear errors on mismatch).

    The network is built on the ``meta`` device (no random initialisation; the teacher builds ~10x faster)
    and the loaded tensors are assigned to it; if anything stays on ``meta`` it is rebuilt normally.
    """
    try:
        with torch.device("meta"):
            model = build_model(arch, seed=None, **dict(options))
    except (TypeError, ValueError, KeyError) as error:
        raise ModelFormatError(
            f"{source}: cannot build network arch={arch!r} options={dict(options)}: {error}"
        ) from error
    except (RuntimeError, NotImplementedError):  # an initialiser that cannot run on meta
        model = None
    if model is not None:
        _check_state_dict(model, state_dict, source)
        model.load_state_dict(state_dict, strict=True, assign=True)
    if model is None or _has_meta_tensors(model):
        model = build_model(arch, seed=None, **dict(options))
        _check_state_dict(model, state_dict, source)
        model.load_state_dict(state_dict, strict=True)
    return model.eval()


def load_published(
    path: str | os.PathLike,
    device: str | torch.device = "cpu",
    *,
    arch: str = "auto",
    variance_head: bool | None = None,
) -> LoadedModel:
    """Load a checkpoint published by the TSCM authors (``arch``/``variance_head``: see
    :func:`tscm_ros.published.convert_published_state_dict`); errors are :class:`ModelFormatError`."""
    path = Path(path)
    try:
        state = read_published_checkpoint(path)
        arch, options, state_dict = convert_published_state_dict(
            state, arch=arch, variance_head=variance_head
        )
    except PublishedCheckpointError as error:
        raise ModelFormatError(str(error)) from error
    module = build_from_state_dict(arch, options, state_dict, source=f"published checkpoint {path}")
    fingerprint = fingerprint_state_dict(state_dict, arch, options)
    provenance = f"published TSCM checkpoint {path.name}"
    return LoadedModel(module.to(device).eval(), arch, dict(options), fingerprint, provenance, True)


def load_model(
    path: str | os.PathLike, device: str | torch.device = "cpu", *, verify: bool = True
) -> LoadedModel:
    """Load our model directory (or its ``model.json``) or a published checkpoint, in eval mode on ``device``.

    With ``verify`` the weights' fingerprint is recomputed and compared with ``model.json`` (detects corrupt
    or swapped weights).
    """
    path = Path(path)
    if path.is_file() and is_published_checkpoint(path):
        return load_published(path, device)
    if not path.exists():
        raise ModelFormatError(f"model path does not exist: {path}")
    config = read_model_config(path)
    model_dir = resolve_model_dir(path)
    state_dict = _read_safetensors(model_dir / WEIGHTS_FILE)
    arch, options = config["arch"], config["options"]
    if verify:
        actual = fingerprint_state_dict(state_dict, arch, options)
        if actual != config["fingerprint"]:
            raise ModelFormatError(
                f"fingerprint mismatch in {model_dir}: model.json says {config['fingerprint'][:16]}..., "
                f"the weights in {WEIGHTS_FILE} hash to {actual[:16]}... (corrupt or replaced weights)"
            )
    module = build_from_state_dict(arch, options, state_dict, source=str(model_dir / WEIGHTS_FILE))
    provenance = str(config.get("provenance", ""))
    trained = bool(config.get("trained", bool(provenance)))
    return LoadedModel(
        module.to(device).eval(), arch, dict(options), config["fingerprint"], provenance, trained
    )
