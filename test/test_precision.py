"""Precision selection (tscm_ros.precision) and the torch bf16 path."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from PIL import Image

from tscm_ros.describer import create_describer
from tscm_ros.precision import PRECISION_ENV, auto_precision, cpu_flags, resolve_precision


def test_cpu_flags_parse(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(
        "processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_vnni avx512_bf16\n\nprocessor\t: 1\n"
    )
    assert cpu_flags(cpuinfo) == frozenset({"fpu", "avx2", "avx512f", "avx512_vnni", "avx512_bf16"})
    assert cpu_flags(tmp_path / "missing") == frozenset()
    assert isinstance(cpu_flags(), frozenset)


def test_auto_rules():
    bf16 = frozenset({"avx512_bf16", "avx512_vnni"})
    plain = frozenset({"avx2"})
    assert auto_precision("torch", "cpu", flags=bf16)[0] == "bf16"
    assert auto_precision("torch", "cpu", flags=frozenset({"amx_bf16"}))[0] == "bf16"
    assert auto_precision("torch", "cpu", flags=plain)[0] == "fp32"
    assert auto_precision("torch", "cuda")[0] == "fp16"
    assert auto_precision("onnxruntime", "cpu", flags=bf16, int8_available=True)[0] == "int8"
    assert auto_precision("onnxruntime", "cpu", flags=bf16, int8_available=False)[0] == "fp32"
    precision, reason = auto_precision("onnxruntime", "cpu", flags=plain, int8_available=True)
    assert precision == "fp32" and reason == "CPU lacks avx512_vnni/avx_vnni/amx_int8"
    assert auto_precision("tensorrt", "cuda")[0] == "fp16"


def test_resolve_validates_and_env_overrides(monkeypatch):
    assert resolve_precision("FP32", "torch", "cpu") == ("fp32", "requested")
    assert resolve_precision("int8", "tensorrt", "cuda")[0] == "int8"
    for precision, backend, device, match in (
        ("int8", "torch", "cpu", "backend='onnxruntime'"),
        ("fp16", "onnxruntime", "cpu", "no fp16 convolutions"),
        ("bf16", "onnxruntime", "cpu", "bf16 autocast"),
        ("bf16", "tensorrt", "cuda", "supported: fp32, fp16, int8"),
        ("fp64", "torch", "cpu", "must be one of"),
    ):
        with pytest.raises(ValueError, match=match):
            resolve_precision(precision, backend, device)
    monkeypatch.setenv(PRECISION_ENV, "fp32")
    assert resolve_precision("auto", "torch", "cpu", flags=frozenset({"avx512_bf16"})) == (
        "fp32",
        f"${PRECISION_ENV}=fp32",
    )
    assert resolve_precision("bf16", "torch", "cpu")[0] == "bf16"  # an explicit value beats the variable
    monkeypatch.setenv(PRECISION_ENV, "int4")
    with pytest.raises(ValueError, match=PRECISION_ENV):
        resolve_precision("auto", "torch", "cpu")


@pytest.fixture(scope="module")
def corridor_images(corridor_dir) -> list[np.ndarray]:
    paths = sorted((corridor_dir / "query").glob("*.jpg"))[10:13]
    return [np.asarray(Image.open(path).convert("RGB")) for path in paths]


def test_torch_bf16_close_to_fp32(corridor_images):
    fp32 = create_describer(device="cpu", batch_size=3)
    assert fp32.precision == "fp32" and fp32.precision_reason == "default"
    bf16 = create_describer(device="cpu", precision="bf16", batch_size=3)
    assert bf16.precision == "bf16" and "bf16" in bf16.label
    a, b = fp32.describe(corridor_images), bf16.describe(corridor_images)
    assert b.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(b, axis=1), 1.0, atol=1e-5)
    assert ((a * b).sum(axis=1)).min() >= 0.99


def test_fp16_on_cpu_without_native_support_warns(monkeypatch, caplog):
    import tscm_ros.describer as describer_module

    monkeypatch.setattr(describer_module, "cpu_flags", lambda *a: frozenset({"avx2"}))
    with caplog.at_level(logging.WARNING, logger="tscm_ros.describer"):
        describer = create_describer(device="cpu", precision="fp16")
    assert describer.precision == "fp16"
    assert any("emulated" in record.getMessage() for record in caplog.records)


def test_optimize_applies_to_fp32_only(caplog):
    with caplog.at_level(logging.INFO, logger="tscm_ros.describer"):
        describer = create_describer(device="cpu", precision="bf16", optimize=True)
    assert not describer.optimized
    assert any("fp32 only" in record.getMessage() for record in caplog.records)
