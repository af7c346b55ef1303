"""TensorRT backend: the ORT provider configuration that is built, and the errors without TensorRT.

There is no GPU here: the options are checked against ONNX Runtime's TensorRT EP documentation, and a
stand-in session records what the Describer hands to ``onnxruntime.InferenceSession``.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from tscm_ros.cli.export import main
from tscm_ros.describer import create_describer
from tscm_ros.model_io import ModelFormatError, read_model_config, save_model
from tscm_ros.models import build_model
from tscm_ros.tensorrt import (
    TRT_PROVIDER,
    TensorRTUnavailableError,
    tensorrt_model_file,
    tensorrt_provider_options,
    tensorrt_providers,
)


def test_fp16_options_as_documented(tmp_path):
    options = tensorrt_provider_options(
        "fp16", cache_dir=tmp_path / "cache", cache_prefix="tscm_abc", max_batch=4
    )
    assert options == {
        "device_id": 0,
        "trt_max_workspace_size": 2 << 30,
        "trt_fp16_enable": True,
        "trt_int8_enable": False,
        "trt_engine_cache_enable": True,
        "trt_engine_cache_path": str(tmp_path / "cache"),
        "trt_engine_cache_prefix": "tscm_abc_fp16",
        "trt_profile_min_shapes": "images:1x3x224x224",
        "trt_profile_opt_shapes": "images:1x3x224x224",
        "trt_profile_max_shapes": "images:4x3x224x224",
        "trt_timing_cache_enable": True,
        "trt_timing_cache_path": str(tmp_path / "cache"),
    }


def test_int8_and_fp32_options(tmp_path):
    int8 = tensorrt_provider_options("int8", cache_dir=tmp_path)
    assert int8["trt_int8_enable"] is True and int8["trt_fp16_enable"] is True  # unquantized layers in fp16
    assert not any("calibration" in key for key in int8)  # QDQ model: ORT forbids a calibration table
    fp32 = tensorrt_provider_options("fp32", cache_dir=tmp_path, timing_cache=False, device_id=1)
    assert fp32["trt_fp16_enable"] is False and fp32["trt_int8_enable"] is False
    assert fp32["device_id"] == 1 and "trt_timing_cache_enable" not in fp32
    assert (
        tensorrt_model_file("int8") == "model.int8.trt.onnx" and tensorrt_model_file("fp16") == "model.onnx"
    )
    with pytest.raises(ValueError, match="precision"):
        tensorrt_provider_options("bf16", cache_dir=tmp_path)
    with pytest.raises(ValueError, match="max_batch"):
        tensorrt_provider_options("fp16", cache_dir=tmp_path, max_batch=0)


def test_provider_order(tmp_path):
    providers = tensorrt_providers("fp16", cache_dir=tmp_path, device_id=2)
    assert [name for name, _ in providers] == [TRT_PROVIDER, "CUDAExecutionProvider", "CPUExecutionProvider"]
    assert providers[0][1]["device_id"] == 2 and providers[1][1] == {"device_id": 2}


@pytest.fixture(scope="module")
def onnx_dir(tmp_path_factory) -> Path:
    model_dir = save_model(build_model("student", seed=0), tmp_path_factory.mktemp("trt") / "student")
    assert main([str(model_dir), "--onnx"]) == 0
    return model_dir


def test_unavailable_raises_one_line(onnx_dir):
    assert TRT_PROVIDER not in ort.get_available_providers()  # no GPU build here
    with pytest.raises(TensorRTUnavailableError) as info:
        create_describer(onnx_dir, backend="tensorrt")
    message = str(info.value)
    assert "\n" not in message and "allow_fallback=True" in message
    with pytest.raises(ValueError, match="device='cpu'"):
        create_describer(onnx_dir, backend="tensorrt", device="cpu")
    with pytest.raises(ModelFormatError, match="--int8 --calibrate"):
        create_describer(onnx_dir, backend="tensorrt", precision="int8")


def test_fallback_only_when_asked(onnx_dir, caplog):
    fallback = create_describer(onnx_dir, backend="tensorrt", allow_fallback=True)
    assert fallback.device.type == "cpu" and "TensorRT unavailable" in fallback.label
    image = np.random.default_rng(0).integers(0, 256, (120, 160, 3), dtype=np.uint8)
    reference = create_describer(onnx_dir, backend="onnxruntime", device="cpu").describe(image)
    np.testing.assert_allclose(fallback.describe(image), reference, atol=1e-5)
    assert any("falling back" in record.getMessage() for record in caplog.records)


class _RecordingSession:
    """Stands in for a TensorRT session: records the arguments, runs the model on the CPU provider."""

    calls: list[dict] = []

    def __init__(self, source, sess_options=None, providers=None) -> None:
        type(self).calls.append({"source": source, "providers": providers})
        self._session = _REAL_SESSION(source, sess_options=sess_options, providers=["CPUExecutionProvider"])

    def get_providers(self) -> list[str]:
        return [TRT_PROVIDER, "CUDAExecutionProvider", "CPUExecutionProvider"]

    def __getattr__(self, name):
        return getattr(self._session, name)


_REAL_SESSION = ort.InferenceSession


@pytest.mark.parametrize("precision", ["fp16", "int8", "fp32"])
def test_describer_builds_the_documented_session(onnx_dir, tmp_path, monkeypatch, precision):
    model_dir = Path(shutil.copytree(onnx_dir, tmp_path / "model"))
    shutil.copy(model_dir / "model.onnx", model_dir / "model.int8.trt.onnx")  # stand-in: same metadata
    monkeypatch.setattr(
        ort,
        "get_available_providers",
        lambda: [TRT_PROVIDER, "CUDAExecutionProvider", "CPUExecutionProvider"],
    )
    monkeypatch.setattr(ort, "InferenceSession", _RecordingSession)
    _RecordingSession.calls.clear()
    describer = create_describer(
        model_dir, backend="tensorrt", device="cuda:0", precision=precision, batch_size=2
    )
    (call,) = _RecordingSession.calls
    assert call["source"] == str(model_dir / tensorrt_model_file(precision))
    fingerprint = read_model_config(model_dir)["fingerprint"]
    expected = tensorrt_providers(
        precision, cache_dir=model_dir / "trt_cache", device_id=0, cache_prefix=f"tscm_{fingerprint[:12]}",
        max_batch=2,
    )  # fmt: skip
    assert call["providers"] == expected
    assert (model_dir / "trt_cache").is_dir()
    assert describer.precision == precision and not describer.rgb_input and "TensorRT" in describer.label
    assert describer.describe(np.zeros((64, 64, 3), np.uint8)).shape == (1, 2048)
