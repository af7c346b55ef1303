"""int8 post-training quantization of the exported ONNX model with ONNX Runtime (static, QDQ).

``tscm_export MODEL --int8 --calibrate SOURCE [--calibration-images N]`` (see :func:`export_int8`):

1. calibration images: ``N`` (default 64) + ``held_out`` (default ``max(8, N // 4)``) frames picked evenly
   from SOURCE = a folder of images, ``bag:PATH[:TOPIC]`` (:func:`tscm_ros.bags.iter_frames`) or
   ``map:MAP_DIR`` (the keyframes of a place map, read again from the bag named in its ``source`` field,
   looked for next to the map). Preprocessed exactly like inference
   (:func:`tscm_ros.models.preprocessing.preprocess`).
2. the fp32 ONNX export is prepared with ``onnxruntime.quantization.shape_inference.quant_pre_process``
   and calibrated once (MinMax, ranges merged over chunks of <= 8 images so memory stays bounded; the
   cached ranges are reused for the TensorRT model).
3. ``model.int8.onnx`` for the CPU: QDQ, activations uint8 asymmetric per tensor, weights int8 symmetric
   per channel, ``Conv`` and ``Relu`` quantized (:data:`QUANTIZED_OPS`). Quantizing the ReLUs lets the
   quantizer fold each into its convolution, so a Conv+ReLU output is quantized over ``[0, max]`` instead
   of the pre-ReLU range whose negative half the ReLU discards (twice the resolution, 26 fewer Q/DQ
   pairs). Chosen by measurement on the development machine (AMD EPYC with AVX512-VNNI, 1 thread, CPU ms
   per image at batch 1 on the untrained student; fidelity = cosine to fp32 after removing the mean
   descriptor, "centred", on the 16 held-out calibration images / on all 222 Corridor images; R@1 fp32
   0.369):

   ========================================  =====  ===============  ===============  ============
   rule (64 MinMax calibration images)       CPU    held-out centr.  Corridor centr.  R@1 (top-1
                                             ms     min / mean       min / mean       agreement)
   ========================================  =====  ===============  ===============  ============
   Conv only (the previous rule)             10.6   0.786 / 0.869    0.662 / 0.867    0.387 (0.81)
   **Conv + Relu** (this rule)               10.1   0.797 / 0.877    0.681 / 0.877    0.378 (0.87)
   Conv + Relu + Add                          9.9   0.796 / 0.875    0.678 / 0.876    0.387 (0.89)
   Conv + Relu, last block layer3.5 fp32     11.8   0.827 / 0.906    0.751 / 0.908    0.378 (0.86)
   Conv only, all of layer3 fp32             23.2   0.956 / 0.977    0.922 / 0.976    0.369 (0.82)
   Conv only, layer1 fp32                    16.5   0.786 / 0.876    0.680 / 0.874    0.378 (0.84)
   Conv only, conv1 fp32                     14.5   0.777 / 0.868    0.651 / 0.867    0.360 (0.86)
   Conv only, Percentile 99.99               11.3   0.780 / 0.861    0.690 / 0.863    0.387 (0.81)
   Conv only, Entropy                        11.8   (ranges identical to MinMax in ORT 1.31)
   Conv only, 32 / 96 calibration images     ~11    0.774 / 0.757 min, 0.838 / 0.863 mean
   ========================================  =====  ===============  ===============  ============

   The raw cosine to fp32 was >= 0.9999 on every image for all of them. The untrained student's
   descriptors are nearly parallel (cosine ~0.999 between places), so top-1 ranks hinge on near ties:
   even with all of layer3 in fp32 (centred 0.976) 18% of the queries changed their top-1, and R@1 moved
   by +-0.018 (2 of 111 queries) between rules at random; R@1 on this network is no basis for choosing
   a rule, the centred fidelity on the held-out images is. Earlier: QOperator format 12.4 ms;
   symmetric int8 activations 24.2; everything including the NetVLAD/projection/gating
   ``MatMul``/``Gemm`` 9.8 but cosine 0.972 and R@1 0.279. So NetVLAD, GeM and the L2 normalisations
   stay fp32; ``--int8-exclude`` keeps further nodes (e.g. ``/cnn/layer3/layer3.5/``) in fp32.
4. ``model.int8.trt.onnx`` for TensorRT from the same ranges: symmetric int8 activations and weights
   (TensorRT's explicit-quantization rules), same nodes (see :mod:`tscm_ros.tensorrt`).
5. accuracy check on the held-out images: cosine of int8 vs fp32 descriptors (min/mean), and the same
   after subtracting the fp32 mean descriptor of the check set ("centred", which exposes errors in the
   part that differs between images when all descriptors are alike, as with an untrained network). The
   export is refused (nothing written) when the minimum cosine is below ``min_cosine`` (0.99).
6. the record (files, calibration source/count/sha256 of the frame list, method, excluded nodes,
   accuracy) goes into ``model.json`` under ``"exports": {"int8": ...}``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "CalibrationSet",
    "Int8AccuracyError",
    "load_calibration_set",
    "export_int8",
    "quantize_onnx",
    "descriptor_agreement",
]

LOGGER = logging.getLogger(__name__)
INT8_FILE = "model.int8.onnx"
INT8_TRT_FILE = "model.int8.trt.onnx"
DEFAULT_CALIBRATION_IMAGES = 64
DEFAULT_MIN_COSINE = 0.99
QUANTIZED_OPS = ("Conv", "Relu")  # Relu: folded into its Conv, output range [0, max]
Frames = Iterator[tuple[str, np.ndarray]]


class Int8AccuracyError(ValueError):
    """The int8 model's descriptors are too far from fp32 on the held-out calibration images."""


@dataclass
class CalibrationSet:
    """Preprocessed calibration and held-out images (each (1, 3, H, W) float32) and where they came from."""

    source: str
    calibration: list[np.ndarray]
    held_out: list[np.ndarray]
    calibration_ids: list[str]
    held_out_ids: list[str]
    digests: dict[str, str] = field(default_factory=dict)  # id -> sha256 of the decoded RGB pixels

    def list_sha256(self, ids: Sequence[str]) -> str:
        """SHA-256 of ``"<id>\\t<pixel sha256>\\n"`` lines: identifies the exact frames used."""
        digest = hashlib.sha256()
        for item in ids:
            digest.update(f"{item}\t{self.digests.get(item, '')}\n".encode())
        return digest.hexdigest()


def _pick(total: int, wanted: int) -> np.ndarray:
    """``wanted`` indices spread evenly over ``range(total)`` (all of them when there are fewer)."""
    if total <= wanted:
        return np.arange(total)
    return np.unique(np.round(np.linspace(0, total - 1, wanted)).astype(np.int64))


def _split(count: int, held_out: int) -> np.ndarray:
    """Boolean mask over ``count`` picked frames: True = held out, spread evenly through the sequence."""
    mask = np.zeros(count, bool)
    if held_out and count > 1:
        held = min(held_out, count // 2)
        mask[np.unique(np.round(np.linspace(1, count - 1, held)).astype(np.int64))] = True
    return mask


def _frames_from_folder(folder: Path, wanted: int, max_pixels: int | None) -> Frames:
    from tscm_ros.image_files import list_images, read_rgb

    files = list_images(folder)
    for index in _pick(len(files), wanted):
        yield files[index].name, read_rgb(files[index], max_pixels=max_pixels)


def _frames_from_bag(
    bag: Path, topic: str | None, wanted: int, max_pixels: int | None, stamps: set[int] | None = None
) -> Frames:
    from tscm_ros.bags import BagReadStats, iter_frames, list_topics

    counts = {summary.name: summary.count for summary in list_topics(bag)}
    stats = BagReadStats()
    frames = iter_frames(bag, topic, pose_topic="", max_pixels=max_pixels, stats=stats)
    total = len(stamps) if stamps else None
    picked: set[int] | None = None
    index = 0
    try:
        for frame in frames:
            if stamps and frame.stamp_ns not in stamps:
                continue
            if picked is None:
                total = total or counts.get(stats.image_topic, 0)
                picked = set(_pick(max(total, 1), wanted).tolist())
            if index in picked:
                yield f"{frame.topic}@{frame.stamp_ns}", frame.rgb
            index += 1
    finally:
        frames.close()


def _map_source(map_dir: Path) -> tuple[Path, str, set[int]]:
    """(bag path, image topic, keyframe stamps) of a place map built from a bag."""
    from tscm_ros.placemap import PlaceMap

    place_map = PlaceMap.load(map_dir)
    try:
        metas = place_map.get_metas(place_map.place_ids.tolist())
    finally:
        place_map.close()
    sources = Counter(meta.source for meta in metas.values() if meta.source)
    if not sources:
        raise ValueError(f"place map {map_dir} records no source bag; use --calibrate bag:PATH[:TOPIC]")
    source = sources.most_common(1)[0][0]
    bag_name, _, topic = source.partition(":")
    stamps = {meta.stamp_ns for meta in metas.values() if meta.source == source}
    map_dir = Path(map_dir).resolve()
    for folder in (map_dir.parent, map_dir.parent.parent, Path.cwd()):
        if (folder / bag_name).exists():
            return folder / bag_name, topic or None, stamps
    raise FileNotFoundError(
        f"place map {map_dir} was built from bag {bag_name!r} (topic {topic}), not found next to the map "
        f"or in the working directory; use --calibrate bag:PATH:{topic}"
    )


def _frame_source(spec: str, wanted: int, max_pixels: int | None) -> Frames:
    kind, sep, rest = spec.partition(":")
    if sep and kind == "bag":
        path, _, topic = rest.partition(":")  # bag:PATH[:TOPIC]; topics start with '/'
        return _frames_from_bag(Path(path), topic or None, wanted, max_pixels)
    if sep and kind == "map":
        bag, topic, stamps = _map_source(Path(rest))
        frames = list(_frames_from_bag(bag, topic, wanted, max_pixels, stamps))
        if not frames:  # stamps did not match (re-stamped bag): fall back to all frames of the topic
            frames = list(_frames_from_bag(bag, topic, wanted, max_pixels))
        return iter(frames)
    folder = Path(spec)
    if not folder.is_dir():
        raise FileNotFoundError(
            f"calibration source {spec!r}: expected a folder of images, bag:PATH[:TOPIC] or map:MAP_DIR"
        )
    return _frames_from_folder(folder, wanted, max_pixels)


def load_calibration_set(
    spec: str,
    count: int = DEFAULT_CALIBRATION_IMAGES,
    held_out: int | None = None,
    *,
    input_size: tuple[int, int] = (224, 224),
    max_pixels: int | None = None,
) -> CalibrationSet:
    """Read ``count`` calibration + ``held_out`` check images from ``spec`` (see module docstring)."""
    from tscm_ros.models.preprocessing import preprocess

    if count < 1:
        raise ValueError(f"calibration image count must be >= 1, got {count}")
    held_out = max(8, count // 4) if held_out is None else int(held_out)
    ids, tensors, digests = [], [], {}
    for frame_id, rgb in _frame_source(str(spec), count + held_out, max_pixels):
        ids.append(frame_id)
        digests[frame_id] = hashlib.sha256(np.ascontiguousarray(rgb).tobytes()).hexdigest()
        tensors.append(preprocess(rgb, size=input_size).numpy())
    if len(ids) < 2:
        raise ValueError(f"calibration source {spec!r} gave {len(ids)} image(s); need at least 2")
    mask = _split(len(ids), held_out)
    return CalibrationSet(
        source=str(spec),
        calibration=[t for t, held in zip(tensors, mask, strict=True) if not held],
        held_out=[t for t, held in zip(tensors, mask, strict=True) if held],
        calibration_ids=[i for i, held in zip(ids, mask, strict=True) if not held],
        held_out_ids=[i for i, held in zip(ids, mask, strict=True) if held],
        digests=digests,
    )


def _reader(images: Sequence[np.ndarray], input_name: str):
    """A CalibrationDataReader with ``__len__``/``set_range`` (what ``CalibStridedMinMax`` iterates)."""
    from onnxruntime.quantization import CalibrationDataReader

    class _Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.set_range(0, len(images))

        def __len__(self) -> int:
            return len(images)

        def set_range(self, start_index: int, end_index: int) -> None:
            self._items = iter(images[start_index:end_index])

        def get_next(self) -> dict[str, np.ndarray] | None:
            item = next(self._items, None)
            return None if item is None else {input_name: item}

    return _Reader()


def _stride(count: int, largest: int = 8) -> int:
    """Largest divisor of ``count`` up to ``largest``: images per MinMax chunk (bounded memory)."""
    return max(d for d in range(1, min(count, largest) + 1) if count % d == 0)


def _expand_exclusions(model_path: Path, patterns: Sequence[str]) -> list[str]:
    """Node names matching any pattern (exact name or prefix, e.g. ``/cnn/layer3/layer3.5/``)."""
    import onnx

    if not patterns:
        return []
    names = [node.name for node in onnx.load(str(model_path), load_external_data=False).graph.node]
    matched = [name for name in names if any(name == p or name.startswith(p) for p in patterns)]
    unused = [p for p in patterns if not any(name == p or name.startswith(p) for name in names)]
    if unused:
        raise ValueError(
            f"--int8-exclude {unused} match no node of the model (node names look like {names[1]})"
        )
    return matched


def quantize_onnx(
    prepared: Path,
    output: Path,
    calibration: Sequence[np.ndarray],
    *,
    target: str = "cpu",
    exclude: Sequence[str] = (),
    cache_path: Path | None = None,
    input_name: str = "images",
) -> None:
    """Static QDQ quantization of a ``quant_pre_process``-ed model for ``target`` "cpu" or "tensorrt"."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    if target not in ("cpu", "tensorrt"):
        raise ValueError(f"target must be 'cpu' or 'tensorrt', got {target!r}")
    symmetric = target == "tensorrt"
    quantize_static(
        str(prepared),
        str(output),
        _reader(calibration, input_name),
        quant_format=QuantFormat.QDQ,
        op_types_to_quantize=list(QUANTIZED_OPS),
        per_channel=True,
        reduce_range=False,
        activation_type=QuantType.QInt8 if symmetric else QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        nodes_to_exclude=list(exclude),
        calibrate_method=CalibrationMethod.MinMax,
        extra_options={
            "ActivationSymmetric": symmetric,
            "WeightSymmetric": True,
            # ranges merged every few images: calibration memory stays ~stride x (all Conv activations of
            # one image) instead of growing with N. (ORT 1.31's CalibMaxIntermediateOutputs drops the
            # collected outputs without computing their ranges, so it is not used.)
            "CalibStridedMinMax": _stride(len(calibration)),
        },
        calibration_cache_path=cache_path,
    )


def descriptor_agreement(candidate: np.ndarray, reference: np.ndarray) -> dict[str, float]:
    """Cosine of each candidate descriptor to its reference (min/mean), raw and after centring."""
    candidate = np.asarray(candidate, np.float64)
    reference = np.asarray(reference, np.float64)

    def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
        return (a * b).sum(axis=1) / np.maximum(norms, 1e-12)

    raw = cosines(candidate, reference)
    mean = reference.mean(axis=0, keepdims=True)
    centred = cosines(candidate - mean, reference - mean) if len(reference) > 1 else raw
    return {
        "images": len(raw),
        "cosine_min": float(raw.min()),
        "cosine_mean": float(raw.mean()),
        "centred_cosine_min": float(centred.min()),
        "centred_cosine_mean": float(centred.mean()),
    }


def _run(session, images: Sequence[np.ndarray], input_name: str) -> np.ndarray:
    return np.concatenate([session.run(None, {input_name: x})[0] for x in images])


def _copy_metadata(source: Path, target: Path, extra: dict[str, str]) -> None:
    import onnx

    metadata = {p.key: p.value for p in onnx.load(str(source), load_external_data=False).metadata_props}
    metadata.update(extra)
    proto = onnx.load(str(target))
    del proto.metadata_props[:]
    for key, value in metadata.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(proto, str(target))


def export_int8(
    fp32_onnx: Path,
    out_dir: Path,
    calibration: CalibrationSet,
    *,
    exclude: Sequence[str] = (),
    min_cosine: float = DEFAULT_MIN_COSINE,
    tensorrt: bool = True,
    num_threads: int | None = None,
) -> dict[str, Any]:
    """Quantize ``fp32_onnx`` into ``out_dir/model.int8.onnx`` (+ ``model.int8.trt.onnx``); return the record.

    Files appear only when the accuracy check passes (:class:`Int8AccuracyError` otherwise); the caller
    records the returned dict in ``model.json`` (:func:`tscm_ros.model_io.record_export`).
    """
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from tscm_ros.onnx_io import INPUT_NAME

    out_dir = Path(out_dir)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix=".int8.", dir=out_dir) as tmp:
        tmp_dir = Path(tmp)
        prepared = tmp_dir / "prepared.onnx"
        quant_pre_process(str(fp32_onnx), str(prepared), skip_symbolic_shape=False)
        excluded = _expand_exclusions(prepared, exclude)
        cache = tmp_dir / "calibration.json"
        targets = {"cpu": tmp_dir / INT8_FILE}
        if tensorrt:
            targets["tensorrt"] = tmp_dir / INT8_TRT_FILE
        for target, path in targets.items():  # the second target reuses the cached calibration ranges
            quantize_onnx(prepared, path, calibration.calibration, target=target, exclude=excluded,
                          cache_path=cache, input_name=INPUT_NAME)  # fmt: skip
            _copy_metadata(fp32_onnx, path, {"tscm_ros.precision": "int8", "tscm_ros.int8_target": target})
        accuracy = _check_int8_accuracy(fp32_onnx, targets, calibration.held_out, min_cosine, num_threads)
        for path in targets.values():
            os.replace(path, out_dir / path.name)
    return _int8_record(calibration, excluded, accuracy, tensorrt, time.perf_counter() - started)


def _check_int8_accuracy(
    fp32_onnx: Path, targets: dict[str, Path], held_out, min_cosine: float, num_threads: int | None
) -> dict[str, Any]:
    """Cosine of the int8 models' descriptors to fp32 on the held-out images; raises when below the rule."""
    import onnxruntime as ort

    from tscm_ros.onnx_io import INPUT_NAME
    from tscm_ros.ort_options import ort_session_options

    options = ort_session_options(num_threads)

    def run(path: Path) -> np.ndarray:
        session = ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
        return _run(session, held_out, INPUT_NAME)

    reference = run(fp32_onnx)
    accuracy = descriptor_agreement(run(targets["cpu"]), reference)
    if "tensorrt" in targets:  # the TensorRT model runs on the CPU too (slowly): same check, recorded
        trt = descriptor_agreement(run(targets["tensorrt"]), reference)
        accuracy["tensorrt_model"] = {k: v for k, v in trt.items() if k != "images"}
    accuracy["min_cosine_required"] = float(min_cosine)
    passed = accuracy["cosine_min"] >= min_cosine and (
        "tensorrt" not in targets or accuracy["tensorrt_model"]["cosine_min"] >= min_cosine
    )
    accuracy["passed"] = bool(passed)
    if not passed:
        raise Int8AccuracyError(
            f"int8 descriptors too far from fp32 on {accuracy['images']} held-out images: "
            f"{json.dumps(accuracy)}; nothing written. Calibrate on images like the deployment's, "
            f"or keep sensitive layers in fp32 with --int8-exclude"
        )
    return accuracy


def _int8_record(
    calibration: CalibrationSet, excluded: list[str], accuracy: dict[str, Any], tensorrt: bool, seconds: float
) -> dict[str, Any]:
    """What ``model.json`` records about the int8 export: files, rule, calibration set and accuracy."""
    import onnxruntime

    return {
        "file": INT8_FILE,
        "tensorrt_file": INT8_TRT_FILE if tensorrt else None,
        "format": "QDQ",
        "quantized_ops": list(QUANTIZED_OPS),
        "fp32_ops": "everything else: GeM, NetVLAD, context gating, projection, L2 normalisations",
        "activations": "uint8 asymmetric per tensor (TensorRT file: int8 symmetric)",
        "weights": "int8 symmetric per channel",
        "excluded_nodes": excluded,
        "calibration": {
            "source": calibration.source,
            "method": "MinMax",
            "count": len(calibration.calibration),
            "ids_sha256": calibration.list_sha256(calibration.calibration_ids),
            "held_out": len(calibration.held_out),
            "held_out_sha256": calibration.list_sha256(calibration.held_out_ids),
        },
        "accuracy": accuracy,
        "onnxruntime": onnxruntime.__version__,
        "seconds": round(seconds, 1),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
