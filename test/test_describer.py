"""Describer (torch backend) and preprocess: shapes, normalisation, batching, input checks, devices, CLI."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as TF

from tscm_ros.cli.describe import main
from tscm_ros.describer import Describer, create_describer, parse_device
from tscm_ros.model_io import model_fingerprint, save_model
from tscm_ros.models import build_model
from tscm_ros.models.preprocessing import ImageInputError, preprocess


def _random_images(count: int, height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(count, height, width, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def describer() -> Describer:
    return create_describer(device="cpu", batch_size=2)


@pytest.fixture(scope="module")
def images3() -> np.ndarray:
    return _random_images(3, 120, 160, seed=1)


@pytest.fixture(scope="module")
def described3(describer, images3) -> np.ndarray:
    """Three images in one call with batch_size 2: one full and one partial batch."""
    return describer.describe(images3)


def test_untrained_label_warning_and_properties(caplog):
    with caplog.at_level(logging.WARNING, logger="tscm_ros.describer"):
        untrained = create_describer(device="cpu", seed=3)
    assert untrained.label == "UNTRAINED student (seed 3)"
    assert any("UNTRAINED student (seed 3)" in record.getMessage() for record in caplog.records)
    assert untrained.fingerprint == model_fingerprint(build_model("student", seed=3))
    assert untrained.dim == 2048
    assert untrained.device == torch.device("cpu")
    assert untrained.backend == "torch"


def test_shapes_dtype_unit_norm_and_batch_equals_single(describer, images3, described3):
    singles = [describer.describe(image) for image in images3]
    assert described3.shape == (3, 2048) and all(single.shape == (1, 2048) for single in singles)
    for out in (described3, *singles):
        assert out.dtype == np.float32
        np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(described3, np.concatenate(singles), atol=1e-5)
    assert not np.allclose(described3[0], described3[1], atol=1e-3)  # different images, different descriptors
    assert describer.describe([]).shape == (0, 2048)


def test_list_of_different_sizes(describer, images3, described3):
    images = [_random_images(1, 480, 640, seed=2)[0], images3[2], _random_images(1, 50, 300, seed=3)[0]]
    together = describer.describe(images)
    assert together.shape == (3, 2048) and together.dtype == np.float32
    np.testing.assert_allclose(together[1], described3[2], atol=1e-5)
    np.testing.assert_allclose(together[2:], describer.describe(images[2]), atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(together, axis=1), 1.0, atol=1e-5)


@pytest.mark.parametrize(
    ("images", "message"),
    [
        (np.zeros((32, 32, 3), dtype=np.float32), "expected dtype uint8"),
        (np.zeros((32, 32), dtype=np.uint8), "grayscale"),
        (np.zeros((32, 32, 4), dtype=np.uint8), "RGBA"),
        (np.zeros((3, 32, 32), dtype=np.uint8), "channels-first"),
        (np.zeros((0, 32, 3), dtype=np.uint8), "empty image"),
        (np.zeros((1, 2, 32, 32, 3), dtype=np.uint8), r"expected shape \(H, W, 3\) or \(N, H, W, 3\)"),
        ("image.jpg", "got str"),
        ([np.zeros((8, 8, 3), dtype=np.uint8), np.zeros((8, 8), dtype=np.uint8)], r"images\[1\]"),
        ([np.zeros((2, 8, 8, 3), dtype=np.uint8)], "single HxWx3"),
    ],
)
def test_bad_inputs(describer, images, message):
    with pytest.raises(ImageInputError, match=message):
        describer.describe(images)


def test_constructor_argument_errors():
    with pytest.raises(ValueError, match="backend"):
        create_describer(backend="tensorflow")
    with pytest.raises(ValueError, match="batch_size"):
        create_describer(batch_size=0)
    with pytest.raises(ValueError, match="tscm_export"):
        create_describer(backend="onnxruntime")


def test_parse_device(monkeypatch):
    assert parse_device("cpu") == torch.device("cpu")
    assert parse_device(torch.device("cpu")) == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert parse_device("auto") == torch.device("cpu")
    with pytest.raises(ValueError, match="CUDA is not available"):
        parse_device("cuda")
    with pytest.raises(ValueError, match="CUDA is not available"):
        create_describer(device="cuda:0")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert parse_device("auto") == torch.device("cuda")
    assert parse_device("cuda:1") == torch.device("cuda:1")
    with pytest.raises(ValueError, match="only 2 CUDA device"):
        parse_device("cuda:2")
    for bad in ("cuda:x", "tpu", "gpu0", 3):
        with pytest.raises(ValueError, match="cuda"):
            parse_device(bad)


def _torchvision_preprocess(image: np.ndarray) -> torch.Tensor:
    """The published pipeline written with torchvision: ToTensor -> Normalize -> Resize (tensor, no AA)."""
    tensor = TF.to_tensor(Image.fromarray(image))
    tensor = TF.normalize(tensor, mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])
    return TF.resize(tensor, [224, 224], interpolation=InterpolationMode.BILINEAR, antialias=False)


@pytest.mark.parametrize(("height", "width"), [(480, 640), (120, 160), (224, 224), (300, 200)])
def test_preprocess_matches_torchvision(height, width):
    image = _random_images(1, height, width, seed=height + width)[0]
    expected = _torchvision_preprocess(image)
    ours = preprocess(image)
    assert ours.shape == (1, 3, 224, 224) and ours.dtype == torch.float32
    torch.testing.assert_close(ours[0], expected, atol=1e-5, rtol=0)


def test_preprocess_on_corridor_image(corridor_dir):
    path = sorted((corridor_dir / "query").glob("*.jpg"))[0]
    image = np.asarray(Image.open(path).convert("RGB"))
    torch.testing.assert_close(preprocess(image)[0], _torchvision_preprocess(image), atol=1e-5, rtol=0)
    torch.testing.assert_close(preprocess([image, image]), preprocess(np.stack([image, image])))


def test_channels_last_matches_contiguous(images3, described3):
    plain = create_describer(device="cpu", channels_last=False)
    np.testing.assert_allclose(plain.describe(images3[:1]), described3[:1], atol=1e-5)


def test_label_names_path_and_provenance(tmp_path):
    model_dir = save_model(build_model("student", seed=0), tmp_path / "m", provenance="trained on toy data")
    loaded = create_describer(model_dir, device="cpu")
    assert str(model_dir) in loaded.label and "trained on toy data" in loaded.label
    assert "UNTRAINED" not in loaded.label
    assert loaded.fingerprint == model_fingerprint(build_model("student", seed=0))


def _copy_images(source: Path, target: Path, count: int) -> Path:
    target.mkdir()
    for path in sorted(source.glob("*.jpg"))[:count]:
        shutil.copy(path, target / path.name)
    return target


def test_tscm_describe_cli(corridor_dir, tmp_path, capsys):
    queries = _copy_images(corridor_dir / "query", tmp_path / "queries", 3)
    assert main([str(queries), "--device", "cpu", "-k", "2", "--batch-size", "3"]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if not line.startswith("#")]
    assert len(lines) == 3
    for line in lines:
        name, matches = line.split(": ", 1)
        assert name not in matches  # a query never matches itself in the same folder
        assert len(matches.split("  ")) == 2
    assert main([str(tmp_path / "missing"), "--device", "cpu"]) == 2


def test_tscm_describe_cli_two_folders(corridor_dir, capsys, tmp_path):
    queries = _copy_images(corridor_dir / "query", tmp_path / "queries", 2)
    database = _copy_images(corridor_dir / "ref", tmp_path / "database", 2)
    out = tmp_path / "q.npy"
    assert main([str(queries), str(database), "-k", "5", "--device", "cpu", "--save", str(out)]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if not line.startswith("#")]
    assert [line.split(": ")[0] for line in lines] == ["0000000.jpg", "0000001.jpg"]
    assert all(len(line.split(": ", 1)[1].split("  ")) == 2 for line in lines)  # k clipped to the database
    assert np.load(out).shape == (2, 2048)


def test_list_images_rejects_empty_folder(tmp_path: Path, capsys):
    assert main([str(tmp_path), "--device", "cpu"]) == 2
    assert "no images" in capsys.readouterr().err
