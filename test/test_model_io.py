"""Our model format (model.safetensors + model.json): round trip, fingerprint, clear errors."""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import zlib
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from tscm_ros.model_io import (
    ModelFormatError,
    fingerprint_state_dict,
    load_model,
    model_fingerprint,
    save_model,
)
from tscm_ros.models import build_model


@pytest.fixture(scope="module")
def student() -> torch.nn.Module:
    return build_model("student", seed=0)


@pytest.fixture(scope="module")
def saved_dir(student, tmp_path_factory) -> Path:
    return save_model(student, tmp_path_factory.mktemp("io") / "student", provenance="unit test")


@pytest.fixture()
def model_copy(saved_dir, tmp_path) -> Path:
    """A private copy of the saved model that a test may damage."""
    return Path(shutil.copytree(saved_dir, tmp_path / "copy"))


def _rewrite_weights(model_dir: Path, tensors: dict[str, torch.Tensor], *, fix_fingerprint: bool) -> None:
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(model_dir / "model.safetensors"))
    if fix_fingerprint:
        config = json.loads((model_dir / "model.json").read_text())
        config["fingerprint"] = fingerprint_state_dict(tensors, config["arch"], config["options"])
        (model_dir / "model.json").write_text(json.dumps(config))


def _edit_json(model_dir: Path, **changes) -> None:
    config = json.loads((model_dir / "model.json").read_text())
    config.update(changes)
    (model_dir / "model.json").write_text(json.dumps(config))


def test_round_trip_is_bitwise(student, saved_dir):
    loaded = load_model(saved_dir)
    original, restored = student.state_dict(), loaded.module.state_dict()
    assert list(original) == list(restored)
    for key in original:
        assert original[key].dtype == restored[key].dtype, key
        assert torch.equal(original[key], restored[key]), key
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(5))
    with torch.inference_mode():
        assert torch.equal(student(x), loaded.module(x))
    assert not loaded.module.training
    assert loaded.arch == "student" and loaded.options == student.options
    assert loaded.fingerprint == model_fingerprint(student)
    assert loaded.provenance == "unit test"
    assert loaded.trained is True


def test_model_json_fields(student, saved_dir):
    config = json.loads((saved_dir / "model.json").read_text())
    assert config["format"] == "tscm_ros.model"
    assert config["format_version"] == 1
    assert config["arch"] == "student"
    assert config["options"] == student.options
    assert config["input_size"] == [224, 224]
    assert config["normalisation"] == {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
    assert config["resize"] == "bilinear"
    assert config["descriptor_dim"] == 2048
    assert config["provenance"] == "unit test" and config["trained"] is True
    assert datetime.fromisoformat(config["created"]).tzinfo is not None
    assert len(config["fingerprint"]) == 64


def test_load_accepts_model_json_path(saved_dir):
    assert (
        load_model(saved_dir / "model.json").fingerprint
        == json.loads((saved_dir / "model.json").read_text())["fingerprint"]
    )


def test_fingerprint_follows_documented_definition(student):
    """Recompute the documented hash independently (numpy bytes, hashlib) and compare."""
    digest = hashlib.sha256()
    state = student.state_dict()
    for key in sorted(state):
        array = state[key].detach().cpu().numpy()
        digest.update(key.encode() + b"\0" + str(array.dtype).encode() + b"\0")
        digest.update(json.dumps(list(array.shape), separators=(",", ":")).encode() + b"\0")
        digest.update(np.ascontiguousarray(array).tobytes())
    config = json.dumps(
        {"arch": "student", "options": student.options}, sort_keys=True, separators=(",", ":")
    )
    digest.update(b"config\0" + config.encode())
    assert model_fingerprint(student) == digest.hexdigest()


def test_fingerprint_stable_and_sensitive(student):
    assert model_fingerprint(student) == model_fingerprint(build_model("student", seed=0))
    assert model_fingerprint(student) != model_fingerprint(build_model("student", seed=1))
    state = {k: v.clone() for k, v in student.state_dict().items()}
    reference = fingerprint_state_dict(state, "student", student.options)
    key = "gem.p" if "gem.p" in state else sorted(state)[0]
    state[key].view(-1)[0] = torch.nextafter(state[key].view(-1)[0], torch.tensor(float("inf")))
    assert fingerprint_state_dict(state, "student", student.options) != reference
    assert fingerprint_state_dict(student.state_dict(), "student", {**student.options, "x": 1}) != reference


def test_resave_keeps_other_files_and_leaves_no_temp(student, model_copy):
    (model_copy / "model.onnx").write_bytes(b"keep me")
    save_model(student, model_copy)
    assert (model_copy / "model.onnx").read_bytes() == b"keep me"
    assert sorted(p.name for p in model_copy.parent.iterdir()) == ["copy"]
    config = json.loads((model_copy / "model.json").read_text())
    assert config["trained"] is False and config["provenance"] == ""
    assert load_model(model_copy).trained is False


def test_missing_path(tmp_path):
    with pytest.raises(ModelFormatError, match="does not exist"):
        load_model(tmp_path / "nope")


def test_missing_json(model_copy):
    (model_copy / "model.json").unlink()
    with pytest.raises(ModelFormatError, match=r"missing model\.json"):
        load_model(model_copy)


def test_missing_weights(model_copy):
    (model_copy / "model.safetensors").unlink()
    with pytest.raises(ModelFormatError, match=r"missing model\.safetensors"):
        load_model(model_copy)


def test_wrong_format(model_copy):
    _edit_json(model_copy, format="something.else")
    with pytest.raises(ModelFormatError, match="format is 'something.else'"):
        load_model(model_copy)


def test_wrong_version(model_copy):
    _edit_json(model_copy, format_version=7)
    with pytest.raises(ModelFormatError, match="unsupported format_version 7"):
        load_model(model_copy)


def test_invalid_json(model_copy):
    (model_copy / "model.json").write_text("{not json")
    with pytest.raises(ModelFormatError, match="not valid JSON"):
        load_model(model_copy)


def test_fingerprint_mismatch_detects_corrupt_weights(model_copy):
    tensors = load_file(str(model_copy / "model.safetensors"))
    key = sorted(tensors)[0]
    tensors[key] = tensors[key] + 1.0
    _rewrite_weights(model_copy, tensors, fix_fingerprint=False)
    with pytest.raises(ModelFormatError, match="fingerprint mismatch"):
        load_model(model_copy)


def test_missing_key_named(model_copy):
    tensors = load_file(str(model_copy / "model.safetensors"))
    key = sorted(tensors)[-1]
    del tensors[key]
    _rewrite_weights(model_copy, tensors, fix_fingerprint=True)
    with pytest.raises(ModelFormatError, match=rf"missing keys \(1\): {key}"):
        load_model(model_copy)


def test_unexpected_key_named(model_copy):
    tensors = load_file(str(model_copy / "model.safetensors"))
    tensors["extra.weight"] = torch.zeros(3)
    _rewrite_weights(model_copy, tensors, fix_fingerprint=True)
    with pytest.raises(ModelFormatError, match=r"unexpected keys \(1\): extra\.weight"):
        load_model(model_copy)


def test_shape_mismatch_names_key_and_shapes(model_copy):
    tensors = load_file(str(model_copy / "model.safetensors"))
    key = next(k for k in sorted(tensors) if tensors[k].dim() == 2)
    rows, cols = tensors[key].shape
    tensors[key] = torch.zeros(rows, cols + 1)
    _rewrite_weights(model_copy, tensors, fix_fingerprint=True)
    pattern = (
        rf"shape mismatch for {key}: file has \({rows}, {cols + 1}\), network expects \({rows}, {cols}\)"
    )
    with pytest.raises(ModelFormatError, match=pattern):
        load_model(model_copy)


def test_truncated_weights(model_copy):
    weights = model_copy / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(ModelFormatError, match="not a readable safetensors file"):
        load_model(model_copy)


def test_garbage_weights(model_copy):
    (model_copy / "model.safetensors").write_bytes(b"\x00garbage" * 100)
    with pytest.raises(ModelFormatError, match="not a readable safetensors file"):
        load_model(model_copy)


def test_unknown_arch_in_json(model_copy):
    _edit_json(model_copy, arch="transformer-xl")
    with pytest.raises(ModelFormatError):
        load_model(model_copy, verify=False)


def test_unrecognised_file(tmp_path):
    path = tmp_path / "weights.bin"
    path.write_bytes(b"1234")
    with pytest.raises(ModelFormatError, match="unrecognised model path"):
        load_model(path)


def test_save_rejects_foreign_module(tmp_path):
    with pytest.raises(TypeError, match="build_model"):
        save_model(torch.nn.Linear(2, 2), tmp_path / "m")
    assert not (tmp_path / "m").exists()


def _published_value(name: str, shape: list[int]) -> torch.Tensor:
    """The weight rule of shared/reference/README.md (how the reference outputs were made)."""
    leaf = name.rsplit(".", 1)[-1]
    if leaf in ("num_batches_tracked", "running_mean"):
        return torch.zeros(shape)
    if leaf == "running_var":
        return torch.ones(shape)
    r = torch.randn(
        shape, generator=torch.Generator().manual_seed(zlib.crc32(name.encode())), dtype=torch.float64
    )
    if leaf == "p" and list(shape) == [1]:
        return torch.full(shape, 3.0)
    if len(shape) <= 1:
        return 1 + 0.1 * r if leaf == "weight" else 0.02 * r
    return r / math.sqrt(math.prod(shape[1:]))


def test_load_published_checkpoint_matches_reference(reference_json, tmp_path):
    """A published-format student checkpoint (deploy subset) loads via load_model and reproduces `mu`."""
    state_dict = {
        name: _published_value(name, shape).to(getattr(torch, dtype.removeprefix("torch.")))
        for name, shape, dtype in reference_json["student"]["keys"]
        if name.startswith(("backboneS.", "var_head."))
    }
    path = tmp_path / "ckpt_e_3.pth.tar"
    torch.save({"epoch": 3, "step": 0, "state_dict": state_dict}, path)
    loaded = load_model(path)
    model = loaded.module
    assert loaded.arch == "student" and "ckpt_e_3.pth.tar" in loaded.provenance and loaded.trained
    assert loaded.fingerprint == model_fingerprint(model)
    x = torch.empty(2, 3, 224, 224)
    x[0] = torch.rand((3, 224, 224), generator=torch.Generator().manual_seed(1234))
    c, i, j = torch.meshgrid(
        torch.arange(3, dtype=torch.float64),
        torch.arange(224, dtype=torch.float64),
        torch.arange(224, dtype=torch.float64),
        indexing="ij",
    )
    x[1] = (0.5 + 0.5 * torch.sin(2 * math.pi * (i * (c + 1) / 56 + j / 28))).float()
    with torch.inference_mode():
        mu = model(x)
    torch.testing.assert_close(mu, torch.tensor(reference_json["student"]["mu"]), rtol=1e-3, atol=1e-5)


def test_unreadable_published_checkpoint(tmp_path):
    path = tmp_path / "broken.pth.tar"
    path.write_bytes(b"not a torch file")
    with pytest.raises(ModelFormatError, match="broken.pth.tar"):
        load_model(path)
