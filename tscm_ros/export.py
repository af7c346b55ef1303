"""Export a TSCM network to ONNX / TorchScript, and the optimised CPU inference path.

``tscm_export MODEL_DIR --onnx --torchscript [--out DIR]`` (:mod:`tscm_ros.cli.export`) writes
``model.onnx`` (dynamic batch, input ``images`` (B, 3, 224, 224) ImageNet-normalised float32, output
``descriptors`` (B, 2048) L2-normalised) and ``model.ts`` (traced TorchScript) next to the model. The ONNX
``metadata_props`` carry the model's fingerprint (``tscm_ros.fingerprint``), arch, descriptor_dim and
provenance, so the ONNX Runtime :class:`~tscm_ros.describer.Describer` can report them and detect a stale
export. The ONNX names and file names are in :mod:`tscm_ros.onnx_io`.

``--rgb`` also writes ``model.rgb.onnx`` (and ``model.int8.rgb.onnx`` when there is an int8 model): the
same network behind :func:`add_rgb_input`, taking the camera image itself, ``rgb`` uint8 (B, H, W, 3) at
any H, W, and doing the published preprocessing in the graph (bilinear resize without antialias to the
input size, then ImageNet normalisation; equal to :func:`tscm_ros.models.preprocessing.preprocess` + model
within 1e-4). ``--int8 --calibrate SOURCE`` writes ``model.int8.onnx`` and ``model.int8.trt.onnx`` and records
the calibration in ``model.json`` (:mod:`tscm_ros.quantize`).
"""

from __future__ import annotations

import copy
import logging
import os
import tempfile
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from tscm_ros.model_io import LoadedModel
from tscm_ros.onnx_io import DEFAULT_OPSET, INPUT_NAME, METADATA_PREFIX, OUTPUT_NAME, RGB_INPUT_NAME

if TYPE_CHECKING:
    import onnx

__all__ = [
    "add_rgb_input",
    "export_onnx",
    "export_rgb_onnx",
    "export_torchscript",
    "fold_batch_norms",
    "optimize_for_cpu",
]

LOGGER = logging.getLogger(__name__)


def _example_input(model: nn.Module, batch: int = 1) -> torch.Tensor:
    height, width = getattr(model, "input_size", (224, 224))
    device = next(model.parameters()).device
    generator = torch.Generator().manual_seed(0)
    return torch.randn((batch, 3, height, width), generator=generator).to(device)


def _network(model: nn.Module | LoadedModel) -> nn.Module:
    return model.module if isinstance(model, LoadedModel) else model


def model_metadata(model: nn.Module | LoadedModel) -> dict[str, str]:
    """Metadata written into exported files: fingerprint, arch, options, descriptor_dim, provenance.

    A :class:`~tscm_ros.model_io.LoadedModel` gives its recorded fingerprint and provenance; a bare network
    its computed fingerprint and no provenance.
    """
    import json

    from tscm_ros.model_io import model_fingerprint

    if isinstance(model, LoadedModel):
        fingerprint, provenance, model = model.fingerprint, model.provenance, model.module
    else:
        fingerprint, provenance = model_fingerprint(model), ""
    return {
        METADATA_PREFIX + "fingerprint": fingerprint,
        METADATA_PREFIX + "arch": str(model.arch),
        METADATA_PREFIX + "options": json.dumps(model.options, sort_keys=True),
        METADATA_PREFIX + "descriptor_dim": str(int(model.descriptor_dim)),
        METADATA_PREFIX + "input_size": json.dumps(list(getattr(model, "input_size", (224, 224)))),
        METADATA_PREFIX + "provenance": provenance,
    }


def _replace_atomically(write, path: Path) -> Path:
    """Call ``write(tmp_path)`` and move the result onto ``path`` (no half-written file on failure)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(handle)
    try:
        write(Path(tmp_name))
        os.replace(tmp_name, path)
    finally:
        if os.path.exists(tmp_name):
            os.unlink(tmp_name)
    return path


def export_onnx(
    model: nn.Module | LoadedModel,
    path: str | os.PathLike,
    *,
    opset: int = DEFAULT_OPSET,
    dynamic_batch: bool = True,
    dynamo: bool = False,
    metadata: Mapping[str, str] | None = None,
) -> Path:
    """Export ``model.forward`` to ONNX with a dynamic batch axis; returns ``path``.

    ``dynamo=False`` (default) uses the TorchScript-based exporter: ~10x faster to export here and gives
    the same graph quality for this network (both checked to match eager within 1e-7 with onnxruntime).
    ``dynamo=True`` uses ``torch.export`` (opset >= 18 is then used). ``metadata`` defaults to
    :func:`model_metadata`.
    """
    import onnx

    metadata = dict(model_metadata(model) if metadata is None else metadata)
    model = _network(model).eval()
    example = _example_input(model, batch=2 if dynamic_batch else 1)

    def write(tmp: Path) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracer warnings about the networks' shape checks
            if dynamo:
                dynamic_shapes = ({0: torch.export.Dim("batch", min=1)},) if dynamic_batch else None
                torch.onnx.export(
                    model, (example,), str(tmp), input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                    opset_version=max(opset, 18), dynamic_shapes=dynamic_shapes, dynamo=True,
                    external_data=False, verbose=False,
                )  # fmt: skip
            else:
                dynamic_axes = (
                    {INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}} if dynamic_batch else None
                )
                torch.onnx.export(
                    model, (example,), str(tmp), input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                    opset_version=opset, dynamic_axes=dynamic_axes, dynamo=False,
                )  # fmt: skip
        proto = onnx.load(str(tmp))
        del proto.metadata_props[:]
        for key, value in metadata.items():
            entry = proto.metadata_props.add()
            entry.key, entry.value = key, value
        onnx.checker.check_model(proto)
        onnx.save(proto, str(tmp))

    return _replace_atomically(write, Path(path))


def export_torchscript(model: nn.Module | LoadedModel, path: str | os.PathLike) -> Path:
    """Trace ``model.forward`` (batch size stays dynamic for this network) and ``torch.jit.save`` it.

    The model metadata (:func:`model_metadata`) is stored as ``_extra_files["tscm_ros.json"]``.
    """
    import json

    extra = {"tscm_ros.json": json.dumps(model_metadata(model))}
    model = _network(model).eval()
    example = _example_input(model, batch=2)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(model, example, check_trace=False)  # parity is tested

    def write(tmp: Path) -> None:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=FutureWarning)  # "torch.jit.save is deprecated"
            torch.jit.save(traced, str(tmp), _extra_files=extra)

    return _replace_atomically(write, Path(path))


def rgb_file_name(name: str) -> str:
    """``model.onnx`` -> ``model.rgb.onnx``, ``model.int8.onnx`` -> ``model.int8.rgb.onnx``."""
    return name[: -len(".onnx")] + ".rgb.onnx" if name.endswith(".onnx") else name + ".rgb.onnx"


def add_rgb_input(
    model: onnx.ModelProto,
    input_size: Sequence[int] = (224, 224),
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> onnx.ModelProto:
    """A copy of ``model`` whose input is ``rgb`` uint8 (B, H, W, 3) (dynamic B, H, W), preprocessed in-graph.

    Prepended nodes: Cast to float -> Resize to ``input_size`` (``linear``, ``pytorch_half_pixel``, no
    antialias: what ``F.interpolate(bilinear, align_corners=False, antialias=False)`` computes) done in
    NHWC -> Transpose to NCHW -> ``x * 1/(255 std) - mean/std``, feeding the model's float ``images``
    input. Normalising after resizing equals the published normalise-then-resize (bilinear weights sum to
    1) up to float rounding. Works for the fp32 and the QDQ int8 exports alike.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from tscm_ros.models.preprocessing import IMAGENET_MEAN, IMAGENET_STD

    mean = np.asarray(IMAGENET_MEAN if mean is None else mean, np.float64)
    std = np.asarray(IMAGENET_STD if std is None else std, np.float64)
    height, width = (int(v) for v in input_size)
    result = onnx.ModelProto()
    result.CopyFrom(model)
    graph = result.graph
    if [i.name for i in graph.input if i.name == INPUT_NAME] != [INPUT_NAME]:
        raise ValueError(f"model has no float input named {INPUT_NAME!r} (already an rgb model?)")
    opset = max((o.version for o in result.opset_import if o.domain in ("", "ai.onnx")), default=0)
    if opset < 13:
        raise ValueError(f"add_rgb_input needs opset >= 13 (Resize with sizes), model has {opset}")
    kept = [i for i in graph.input if i.name != INPUT_NAME]
    del graph.input[:]
    graph.input.extend(
        [helper.make_tensor_value_info(RGB_INPUT_NAME, TensorProto.UINT8, ["batch", "height", "width", 3])]
        + kept
    )
    prefix = "tscm_rgb/"
    constants = {
        "start": np.array([0], np.int64),
        "end": np.array([1], np.int64),
        "hw3": np.array([height, width, 3], np.int64),
        "scale": (1.0 / (255.0 * std)).astype(np.float32).reshape(1, 3, 1, 1),
        "bias": (-mean / std).astype(np.float32).reshape(1, 3, 1, 1),
    }
    graph.initializer.extend(numpy_helper.from_array(v, prefix + k) for k, v in constants.items())
    p = prefix
    nodes = [
        helper.make_node("Cast", [RGB_INPUT_NAME], [p + "float"], name=p + "Cast", to=TensorProto.FLOAT),
        helper.make_node("Shape", [RGB_INPUT_NAME], [p + "shape"], name=p + "Shape"),
        helper.make_node("Slice", [p + "shape", p + "start", p + "end"], [p + "batch"], name=p + "Slice"),
        helper.make_node("Concat", [p + "batch", p + "hw3"], [p + "sizes"], name=p + "Concat", axis=0),
        helper.make_node(
            "Resize",
            [p + "float", "", "", p + "sizes"],
            [p + "resized"],
            name=p + "Resize",
            mode="linear",
            coordinate_transformation_mode="pytorch_half_pixel",
        ),  # fmt: skip
        helper.make_node("Transpose", [p + "resized"], [p + "nchw"], name=p + "Transpose", perm=[0, 3, 1, 2]),
        helper.make_node("Mul", [p + "nchw", p + "scale"], [p + "scaled"], name=p + "Mul"),
        helper.make_node("Add", [p + "scaled", p + "bias"], [INPUT_NAME], name=p + "Add"),
    ]
    original = list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes + original)
    graph.value_info.append(
        helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, ["batch", 3, height, width])
    )
    entry = result.metadata_props.add()
    entry.key, entry.value = METADATA_PREFIX + "input", "rgb uint8 (batch, height, width, 3)"
    onnx.checker.check_model(result)
    return result


def export_rgb_onnx(source: str | os.PathLike, path: str | os.PathLike) -> Path:
    """Write :func:`add_rgb_input` of the ONNX file ``source`` to ``path`` (atomically); returns ``path``."""
    import json

    import onnx

    model = onnx.load(str(source))
    metadata = {p.key: p.value for p in model.metadata_props}
    input_size = json.loads(metadata.get(METADATA_PREFIX + "input_size", "[224, 224]"))
    rgb = add_rgb_input(model, input_size)
    return _replace_atomically(lambda tmp: onnx.save(rgb, str(tmp)), Path(path))


def fold_batch_norms(module: nn.Module) -> nn.Module:
    """Fold every eval-mode ``BatchNorm2d`` that directly follows a ``Conv2d`` into it (in place).

    Works on the torchvision ResNet layout the networks use: siblings ``convN``/``bnN`` in a module and
    ``Sequential`` (conv, bn) pairs (e.g. ``downsample``). The BatchNorm is replaced by ``Identity``.
    """
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    for parent in module.modules():
        children = dict(parent.named_children())
        pairs = []
        if isinstance(parent, nn.Sequential):
            names = list(children)
            pairs = [(a, b) for a, b in zip(names, names[1:], strict=False)]
        else:
            pairs = [(name, "bn" + name[4:]) for name in children if name.startswith("conv")]
        for conv_name, bn_name in pairs:
            conv, bn = children.get(conv_name), children.get(bn_name)
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d) and not bn.training:
                setattr(parent, conv_name, fuse_conv_bn_eval(conv, bn))
                setattr(parent, bn_name, nn.Identity())
                children[bn_name] = nn.Identity()
    return module


class _MaximumGeM(nn.Module):
    """GeM written with ``torch.maximum`` instead of ``clamp(min=eps)`` (same values).

    ``torch.jit.optimize_for_inference`` (torch 2.14) hits an internal assert on ``clamp`` after its oneDNN
    convolutions; this form passes. Used only inside :func:`optimize_for_cpu` on a copy of the network.
    """

    def __init__(self, gem: nn.Module) -> None:
        super().__init__()
        self.p = gem.p
        self.eps = float(gem.eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.maximum(x, torch.full((), self.eps, dtype=x.dtype, device=x.device))
        return torch.nn.functional.adaptive_avg_pool2d(x.pow(self.p), 1).pow(1.0 / self.p).flatten(1)


def _swap_gem(module: nn.Module) -> nn.Module:
    from tscm_ros.models.layers import GeM

    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, GeM):
                setattr(parent, name, _MaximumGeM(child))
    return module


def _trace_frozen(
    model: nn.Module, example: torch.Tensor, *, inference_passes: bool
) -> torch.jit.ScriptModule:
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about the networks' shape checks
        frozen = torch.jit.freeze(torch.jit.trace(model, example, check_trace=False))
        if inference_passes:
            frozen = torch.jit.optimize_for_inference(frozen)
    return frozen


OPTIMIZE_METHODS = ("auto", "oneDNN", "frozen-channels-last")


def optimize_for_cpu(
    model: nn.Module,
    input_size: Sequence[int] = (224, 224),
    *,
    method: str = "auto",
    tolerance: float = 1e-4,
) -> torch.jit.ScriptModule:
    """Fastest measured CPU inference form of ``model`` (a frozen TorchScript module; input not modified).

    ``method``: ``"oneDNN"`` = trace + ``torch.jit.freeze`` (folds BatchNorm into the convolutions) +
    ``torch.jit.optimize_for_inference`` (oneDNN convolution layouts and fusions), NCHW input;
    ``"frozen-channels-last"`` = BatchNorm folded, channels_last, trace + freeze; ``"auto"`` = oneDNN, falling
    back to frozen-channels-last if that pass fails. The result is checked against eager on a random batch
    and rejected (RuntimeError) beyond ``tolerance``. ``.channels_last`` on the result says which memory
    format its input should have. See ``benchmarks/descriptor_speed.py`` for the measured speed.
    """
    if method not in OPTIMIZE_METHODS:
        raise ValueError(f"method must be one of {OPTIMIZE_METHODS}, got {method!r}")
    model = copy.deepcopy(model).eval().cpu().to(memory_format=torch.contiguous_format)
    example = torch.randn((2, 3, *input_size), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        expected = model(example)
    candidates = ["oneDNN", "frozen-channels-last"] if method == "auto" else [method]
    failures = []
    for candidate in candidates:
        try:
            if candidate == "oneDNN":
                optimized = _trace_frozen(_swap_gem(copy.deepcopy(model)), example, inference_passes=True)
                channels_last = False
            else:
                folded = fold_batch_norms(copy.deepcopy(model)).to(memory_format=torch.channels_last)
                cl_example = example.contiguous(memory_format=torch.channels_last)
                optimized = _trace_frozen(folded, cl_example, inference_passes=False)
                channels_last = True
            run_example = example.contiguous(memory_format=torch.channels_last) if channels_last else example
            with torch.inference_mode():
                optimized(run_example)  # the first calls run the profiling / optimisation passes
                difference = (optimized(run_example) - expected).abs().max().item()
        except (RuntimeError, TypeError) as error:
            failures.append(f"{candidate}: {type(error).__name__}: {str(error).splitlines()[0][:200]}")
            continue
        if difference > tolerance:
            failures.append(f"{candidate}: max abs difference {difference:.2e} > {tolerance:.0e}")
            continue
        optimized.channels_last = channels_last
        optimized.method = candidate
        for name in ("arch", "options", "descriptor_dim", "input_size"):
            if hasattr(model, name):
                setattr(optimized, name, getattr(model, name))
        if failures:
            LOGGER.info("optimize_for_cpu: using %s (%s)", candidate, "; ".join(failures))
        return optimized
    raise RuntimeError("optimize_for_cpu failed: " + "; ".join(failures))
