"""ONNX / TorchScript export, the ONNX Runtime Describer and the optimised CPU path: parity with eager."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from PIL import Image

from tscm_ros.cli.export import main
from tscm_ros.describer import create_describer
from tscm_ros.export import fold_batch_norms, optimize_for_cpu
from tscm_ros.model_io import ModelFormatError, load_model, model_fingerprint, save_model
from tscm_ros.models import build_model

TOLERANCE = 1e-4


def _cpu_session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def student() -> torch.nn.Module:
    return build_model("student", seed=0)


@pytest.fixture(scope="module")
def exported_dir(student, tmp_path_factory) -> Path:
    """Our model directory with model.onnx and model.ts written by the tscm_export CLI."""
    model_dir = save_model(student, tmp_path_factory.mktemp("export") / "student", provenance="export test")
    assert main([str(model_dir), "--onnx", "--torchscript"]) == 0
    return model_dir


@pytest.fixture(scope="module")
def inputs() -> torch.Tensor:
    return torch.randn(3, 3, 224, 224, generator=torch.Generator().manual_seed(11))


@pytest.fixture(scope="module")
def eager_outputs(student, inputs) -> np.ndarray:
    with torch.inference_mode():
        return student(inputs).numpy()


@pytest.fixture(scope="module")
def corridor_images(corridor_dir) -> list[np.ndarray]:
    paths = (
        sorted((corridor_dir / "query").glob("*.jpg"))[:2] + sorted((corridor_dir / "ref").glob("*.jpg"))[-1:]
    )
    return [np.asarray(Image.open(path).convert("RGB")) for path in paths]


@pytest.fixture(scope="module")
def torch_descriptors(exported_dir, corridor_images) -> np.ndarray:
    return create_describer(exported_dir, device="cpu").describe(corridor_images)


def test_onnx_dynamic_batch_parity(student, exported_dir, inputs, eager_outputs):
    proto = onnx.load(str(exported_dir / "model.onnx"))
    metadata = {entry.key: entry.value for entry in proto.metadata_props}
    assert metadata["tscm_ros.fingerprint"] == model_fingerprint(student)
    assert metadata["tscm_ros.arch"] == "student" and metadata["tscm_ros.descriptor_dim"] == "2048"
    assert metadata["tscm_ros.provenance"] == "export test"
    batch_dim = proto.graph.input[0].type.tensor_type.shape.dim[0]
    assert batch_dim.dim_param and not batch_dim.HasField("dim_value")  # symbolic batch axis
    session = _cpu_session(exported_dir / "model.onnx")
    assert [i.name for i in session.get_inputs()] == ["images"]
    assert [o.name for o in session.get_outputs()] == ["descriptors"]
    for batch in (1, 3):
        (out,) = session.run(None, {"images": inputs[:batch].numpy()})
        assert out.shape == (batch, 2048)
        np.testing.assert_allclose(out, eager_outputs[:batch], atol=TOLERANCE, rtol=0)


def test_torchscript_parity(student, exported_dir, inputs, eager_outputs):
    extra = {"tscm_ros.json": ""}
    scripted = torch.jit.load(str(exported_dir / "model.ts"), map_location="cpu", _extra_files=extra)
    assert json.loads(extra["tscm_ros.json"])["tscm_ros.fingerprint"] == model_fingerprint(student)
    with torch.inference_mode():
        for batch in (1, 3):
            out = scripted(inputs[:batch]).numpy()
            np.testing.assert_allclose(out, eager_outputs[:batch], atol=TOLERANCE, rtol=0)


def test_onnxruntime_describer_parity(exported_dir, corridor_images, torch_descriptors):
    describer = create_describer(exported_dir, backend="onnxruntime", num_threads=2, batch_size=2)
    assert describer.backend == "onnxruntime" and describer.dim == 2048
    assert describer.fingerprint == load_model(exported_dir).fingerprint
    assert "onnxruntime" in describer.label and "export test" in describer.label
    out = describer.describe(corridor_images)
    assert out.dtype == np.float32 and out.shape == torch_descriptors.shape
    np.testing.assert_allclose(out, torch_descriptors, atol=TOLERANCE, rtol=0)
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
    by_file = create_describer(
        exported_dir / "model.onnx", backend="onnxruntime", providers=["CPUExecutionProvider"]
    )
    assert by_file.fingerprint == describer.fingerprint


def test_optimized_torch_path_parity(exported_dir, corridor_images, torch_descriptors):
    optimized = create_describer(exported_dir, device="cpu", optimize=True)
    assert isinstance(optimized._model, torch.jit.ScriptModule)
    assert optimized._model.method == "oneDNN"  # the fast path, not the fallback
    np.testing.assert_allclose(optimized.describe(corridor_images), torch_descriptors, atol=TOLERANCE, rtol=0)


def test_frozen_channels_last_path_parity(student, inputs, eager_outputs):
    frozen = optimize_for_cpu(student, method="frozen-channels-last")
    assert frozen.channels_last is True
    with torch.inference_mode():
        out = frozen(inputs[:2].contiguous(memory_format=torch.channels_last)).numpy()
    np.testing.assert_allclose(out, eager_outputs[:2], atol=TOLERANCE, rtol=0)
    with pytest.raises(ValueError, match="method"):
        optimize_for_cpu(student, method="tensorrt")


def test_fold_batch_norms_parity(student, inputs, eager_outputs):
    import copy

    folded = fold_batch_norms(copy.deepcopy(student))
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    with torch.inference_mode():
        np.testing.assert_allclose(folded(inputs[:1]).numpy(), eager_outputs[:1], atol=TOLERANCE, rtol=0)


def test_stale_onnx_is_refused(exported_dir, tmp_path):
    stale_dir = Path(shutil.copytree(exported_dir, tmp_path / "stale"))
    save_model(build_model("student", seed=1), stale_dir)  # new weights, old model.onnx
    with pytest.raises(ModelFormatError, match="stale"):
        create_describer(stale_dir, backend="onnxruntime")


def test_missing_onnx_says_how_to_export(tmp_path, student):
    model_dir = save_model(student, tmp_path / "no_onnx")
    with pytest.raises(ModelFormatError, match="tscm_export"):
        create_describer(model_dir, backend="onnxruntime")


def test_unknown_provider(exported_dir):
    with pytest.raises(ValueError, match="not available"):
        create_describer(exported_dir, backend="onnxruntime", providers=["NoSuchExecutionProvider"])


def test_export_cli_errors(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main([str(tmp_path)])  # neither --onnx nor --torchscript
    assert main([str(tmp_path / "missing"), "--onnx"]) == 2
    assert "does not exist" in capsys.readouterr().err


# ------------------------------------------------------------------ preprocessing inside the graph


@pytest.fixture(scope="module")
def rgb_dir(exported_dir) -> Path:
    assert main([str(exported_dir), "--rgb"]) == 0
    return exported_dir


@pytest.mark.parametrize(("height", "width"), [(480, 640), (333, 517), (100, 150)])
def test_rgb_graph_matches_preprocess_and_model(rgb_dir, height, width):
    from tscm_ros.models.preprocessing import preprocess

    images = np.random.default_rng(height).integers(0, 256, (2, height, width, 3), dtype=np.uint8)
    float_session = _cpu_session(rgb_dir / "model.onnx")
    rgb_session = _cpu_session(rgb_dir / "model.rgb.onnx")
    (rgb_input,) = rgb_session.get_inputs()
    assert rgb_input.name == "rgb" and rgb_input.type == "tensor(uint8)"
    assert [isinstance(d, str) for d in rgb_input.shape] == [True, True, True, False]  # dynamic B, H, W
    expected = float_session.run(None, {"images": preprocess(images).numpy()})[0]
    single = rgb_session.run(None, {"rgb": images[:1]})[0]
    batch = rgb_session.run(None, {"rgb": images})[0]
    np.testing.assert_allclose(single, expected[:1], atol=TOLERANCE, rtol=0)
    np.testing.assert_allclose(batch, expected, atol=TOLERANCE, rtol=0)
    metadata = rgb_session.get_modelmeta().custom_metadata_map
    assert metadata["tscm_ros.fingerprint"] == load_model(rgb_dir).fingerprint


def test_describer_hands_uint8_to_the_graph(rgb_dir, corridor_images, torch_descriptors):
    in_graph = create_describer(rgb_dir, backend="onnxruntime", num_threads=2, batch_size=2)
    assert in_graph.rgb_input and "rgb input" in in_graph.label
    out = in_graph.describe(corridor_images)  # a list of equally sized images
    np.testing.assert_allclose(out, torch_descriptors, atol=TOLERANCE, rtol=0)
    frozen = np.array(corridor_images[0])
    frozen.flags.writeable = False  # e.g. a view of a bytes message buffer
    np.testing.assert_allclose(in_graph.describe(frozen)[0], out[0], atol=1e-6, rtol=0)
    mixed = [corridor_images[0], corridor_images[1][:301, :457]]
    np.testing.assert_allclose(
        in_graph.describe(mixed),
        create_describer(rgb_dir, device="cpu").describe(mixed),
        atol=TOLERANCE,
        rtol=0,
    )
    float_input = create_describer(rgb_dir, backend="onnxruntime", rgb_input=False)
    assert not float_input.rgb_input
    np.testing.assert_allclose(float_input.describe(corridor_images), out, atol=TOLERANCE, rtol=0)


def test_rgb_graph_built_in_memory_without_the_file(
    exported_dir, tmp_path, corridor_images, torch_descriptors
):
    bare = tmp_path / "bare"
    bare.mkdir()
    for name in ("model.json", "model.safetensors", "model.onnx"):
        shutil.copy(exported_dir / name, bare / name)
    describer = create_describer(bare, backend="onnxruntime")
    assert describer.rgb_input  # built at load from model.onnx
    np.testing.assert_allclose(describer.describe(corridor_images), torch_descriptors, atol=TOLERANCE, rtol=0)
