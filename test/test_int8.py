"""int8 export (tscm_export --int8): files, model.json record, accuracy vs fp32, Describer precision paths."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from PIL import Image

from tscm_ros.cli.export import main
from tscm_ros.describer import create_describer
from tscm_ros.model_io import ModelFormatError, read_model_config, save_model
from tscm_ros.models import build_model
from tscm_ros.quantize import descriptor_agreement, load_calibration_set

EXCLUDED = "/cnn/layer3/layer3.5/"  # the last backbone block, kept fp32 with --int8-exclude


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


@pytest.fixture(scope="module")
def calibration_folder(corridor_dir, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("calibration")
    for path in sorted((corridor_dir / "ref").glob("*.jpg"))[::8][:13]:
        shutil.copy(path, folder / path.name)
    return folder


@pytest.fixture(scope="module")
def int8_dir(calibration_folder, tmp_path_factory) -> Path:
    model_dir = save_model(build_model("student", seed=0), tmp_path_factory.mktemp("int8") / "student")
    argv = [str(model_dir), "--int8", "--calibrate", str(calibration_folder), "--calibration-images", "10",
            "--held-out", "3", "--int8-exclude", EXCLUDED, "--rgb", "--threads", "2"]  # fmt: skip
    assert main(argv) == 0
    return model_dir


@pytest.fixture(scope="module")
def test_images(corridor_dir) -> list[np.ndarray]:
    paths = sorted((corridor_dir / "query").glob("*.jpg"))[5:8]  # not calibration images (those are ref/)
    return [np.asarray(Image.open(path).convert("RGB")) for path in paths]


def test_int8_export_writes_files_and_record(int8_dir, calibration_folder):
    for name in (
        "model.onnx",
        "model.int8.onnx",
        "model.int8.trt.onnx",
        "model.rgb.onnx",
        "model.int8.rgb.onnx",
    ):
        assert (int8_dir / name).is_file(), name
    config = read_model_config(int8_dir)
    record = config["exports"]["int8"]
    assert record["fingerprint"] == config["fingerprint"]
    assert record["file"] == "model.int8.onnx" and record["tensorrt_file"] == "model.int8.trt.onnx"
    calibration = record["calibration"]
    assert calibration["source"] == str(calibration_folder) and calibration["count"] == 10
    assert calibration["held_out"] == 3 and len(calibration["ids_sha256"]) == 64
    accuracy = record["accuracy"]
    assert accuracy["passed"] and accuracy["images"] == 3
    assert 0.99 <= accuracy["cosine_min"] <= accuracy["cosine_mean"] <= 1.0 + 1e-6
    assert accuracy["tensorrt_model"]["cosine_min"] >= 0.99
    proto = onnx.load(str(int8_dir / "model.int8.onnx"))
    ops = {node.op_type for node in proto.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops  # QDQ format
    metadata = {p.key: p.value for p in proto.metadata_props}
    assert metadata["tscm_ros.fingerprint"] == config["fingerprint"]
    assert metadata["tscm_ros.precision"] == "int8"
    trt = onnx.load(str(int8_dir / "model.int8.trt.onnx"))
    zero_points = [i for i in trt.graph.initializer if i.name.endswith("_zero_point")]
    values = [onnx.numpy_helper.to_array(z) for z in zero_points]
    assert {str(v.dtype) for v in values} <= {"int8", "int32"}  # int8 tensors, int32 biases: no uint8
    assert not any(v.any() for v in values)  # all zero: symmetric, TensorRT's explicit-quantization rule


def test_int8_graph_follows_the_rule(int8_dir):
    """Conv weights int8 except the excluded block's (fp32 initializers); ReLUs folded into their Conv."""
    proto = onnx.load(str(int8_dir / "model.int8.onnx"))
    producers = {output: node for node in proto.graph.node for output in node.output}
    initializers = {i.name: i for i in proto.graph.initializer}
    convs = [node for node in proto.graph.node if node.op_type == "Conv"]
    excluded = [node for node in convs if node.name.startswith(EXCLUDED)]
    assert len(excluded) == 3 and len(convs) > 40
    for node in convs:
        if node in excluded:
            weight = initializers[node.input[1]]
            assert weight.data_type == onnx.TensorProto.FLOAT, node.name
            assert node.input[0] not in producers or producers[node.input[0]].op_type != "DequantizeLinear"
        else:
            assert producers[node.input[1]].op_type == "DequantizeLinear", node.name
            assert producers[node.input[0]].op_type == "DequantizeLinear", node.name

    def after_quantized_conv(name: str) -> bool:  # Conv -> QuantizeLinear -> DequantizeLinear -> name
        node = producers.get(name)
        if node is None or node.op_type != "DequantizeLinear":
            return False
        node = producers.get(node.input[0])
        return (
            node is not None
            and node.op_type == "QuantizeLinear"
            and (producers.get(node.input[0]) is not None and producers[node.input[0]].op_type == "Conv")
        )

    relus = [node for node in proto.graph.node if node.op_type == "Relu"]
    assert not [node.name for node in relus if after_quantized_conv(node.input[0])]  # folded, range [0, max]
    fp32_relus = sum(node.op_type == "Relu" for node in onnx.load(str(int8_dir / "model.onnx")).graph.node)
    assert len(relus) < fp32_relus
    record = read_model_config(int8_dir)["exports"]["int8"]
    assert record["quantized_ops"] == ["Conv", "Relu"]
    assert {node.name for node in excluded} <= set(record["excluded_nodes"])
    assert all(name.startswith(EXCLUDED) for name in record["excluded_nodes"])


def test_int8_descriptors_match_fp32(int8_dir, test_images):
    fp32 = create_describer(int8_dir, backend="onnxruntime", precision="fp32", num_threads=2).describe(
        test_images
    )
    int8 = create_describer(int8_dir, backend="onnxruntime", precision="int8", num_threads=2)
    assert int8.precision == "int8" and int8.rgb_input and "int8" in int8.label
    out = int8.describe(test_images)
    assert out.shape == fp32.shape and out.dtype == np.float32
    assert cosines(out, fp32).min() >= 0.99
    float_input = create_describer(
        int8_dir, backend="onnxruntime", precision="int8", rgb_input=False, num_threads=2
    )
    assert not float_input.rgb_input
    np.testing.assert_allclose(float_input.describe(test_images), out, atol=2e-3)


def test_auto_picks_int8_with_vnni(int8_dir, monkeypatch):
    import tscm_ros.precision as precision

    monkeypatch.setattr(precision, "cpu_flags", lambda *a: frozenset({"avx512f", "avx512_vnni"}))
    assert create_describer(int8_dir, backend="onnxruntime", precision="auto").precision == "int8"
    monkeypatch.setattr(precision, "cpu_flags", lambda *a: frozenset({"avx2"}))
    auto = create_describer(int8_dir, backend="onnxruntime", precision="auto")
    assert auto.precision == "fp32" and "lacks" in auto.precision_reason


def test_missing_int8_names_file_and_command(tmp_path):
    model_dir = save_model(build_model("student", seed=0), tmp_path / "m")
    assert main([str(model_dir), "--onnx"]) == 0
    with pytest.raises(ModelFormatError, match=r"model\.int8\.onnx.*tscm_export .* --int8 --calibrate"):
        create_describer(model_dir, backend="onnxruntime", precision="int8")
    with pytest.raises(ValueError, match="backend='onnxruntime'"):
        create_describer(model_dir, precision="int8")  # torch has no int8 path


def test_stale_int8_refused(int8_dir, tmp_path):
    stale = Path(shutil.copytree(int8_dir, tmp_path / "stale"))
    save_model(build_model("student", seed=1), stale)
    with pytest.raises(ModelFormatError, match="stale"):
        create_describer(stale, backend="onnxruntime", precision="int8")


def test_accuracy_check_refuses_and_writes_nothing(calibration_folder, tmp_path, capsys):
    model_dir = save_model(build_model("student", seed=0), tmp_path / "strict")
    argv = [str(model_dir), "--int8", "--calibrate", str(calibration_folder), "--calibration-images", "3",
            "--held-out", "2", "--min-cosine", "1.01", "--no-tensorrt-int8"]  # fmt: skip
    assert main(argv) == 1
    assert "too far from fp32" in capsys.readouterr().err
    assert not (model_dir / "model.int8.onnx").exists()
    assert "exports" not in json.loads((model_dir / "model.json").read_text())
    with pytest.raises(SystemExit):
        main([str(model_dir), "--int8"])  # --calibrate missing


def test_calibration_from_bag_and_map(tmp_path, corridor_dir):
    from tscm_ros.bags import write_image_bag
    from tscm_ros.placemap import PlaceMap, PlaceMeta

    paths = sorted((corridor_dir / "ref").glob("*.jpg"))[:12]
    frames = [
        (1_000_000_000 * (i + 1), np.asarray(Image.open(p).convert("RGB"))) for i, p in enumerate(paths)
    ]
    bag = write_image_bag(tmp_path / "run1", frames, topic="/cam/image_raw")
    by_bag = load_calibration_set(f"bag:{bag}:/cam/image_raw", 4, 2)
    assert len(by_bag.calibration) == 4 and len(by_bag.held_out) == 2
    assert all(i.startswith("/cam/image_raw@") for i in by_bag.calibration_ids)
    assert by_bag.calibration[0].shape == (1, 3, 224, 224)
    again = load_calibration_set(f"bag:{bag}", 4, 2)
    assert again.list_sha256(again.calibration_ids) == by_bag.list_sha256(by_bag.calibration_ids)

    place_map = PlaceMap.create(8, "flat")
    keyframes = [stamp for stamp, _ in frames[::2]]
    metas = [PlaceMeta(stamp_ns=s, source="run1:/cam/image_raw") for s in keyframes]
    place_map.add(np.eye(len(metas), 8, dtype=np.float32), metas)
    place_map.save(tmp_path / "maps" / "map")
    place_map.close()
    by_map = load_calibration_set(f"map:{tmp_path / 'maps' / 'map'}", 3, 2)  # bag found next to the map
    stamps = {int(i.split("@")[1]) for i in by_map.calibration_ids + by_map.held_out_ids}
    assert stamps <= set(keyframes) and len(stamps) == 5
    with pytest.raises(FileNotFoundError, match="expected a folder of images"):
        load_calibration_set(str(tmp_path / "nothing"), 4)


def test_calibration_chunks():
    from tscm_ros.quantize import _stride

    assert [_stride(n) for n in (64, 10, 6, 7, 13, 1)] == [8, 5, 6, 7, 1, 1]


def test_descriptor_agreement():
    rng = np.random.default_rng(0)
    reference = rng.normal(size=(5, 16))
    same = descriptor_agreement(reference, reference)
    assert same["cosine_min"] == pytest.approx(1.0) and same["centred_cosine_min"] == pytest.approx(1.0)
    noisy = descriptor_agreement(reference + 0.5 * rng.normal(size=(5, 16)), reference)
    assert noisy["cosine_min"] < 1.0 and noisy["images"] == 5
