"""build_model: deterministic construction, interface attributes, input checks, ImageNet trunk loading."""

from __future__ import annotations

import json
import urllib.error
from pathlib import Path

import pytest
import torch
import torchvision

from tscm_ros.models import PretrainedWeightsUnavailable, build_model, imagenet_cache_path


@pytest.fixture(scope="module")
def student():
    return build_model("student")


def _count(model) -> int:
    return sum(p.numel() for p in model.parameters())


def test_student_interface_and_output(student):
    assert student.arch == "student" and student.descriptor_dim == 2048
    assert tuple(student.input_size) == (224, 224) and not student.training
    assert json.loads(json.dumps(student.options)) == {"variance_head": False}
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = student(x)
        single = student(x[1:])
    assert out.shape == (2, 2048) and out.dtype == torch.float32
    torch.testing.assert_close(out.norm(dim=1), torch.ones(2))
    torch.testing.assert_close(single, out[1:], rtol=1e-4, atol=1e-6)  # no cross-talk between batch items


def test_construction_is_seeded_and_leaves_global_rng_alone(student):
    state = torch.get_rng_state()
    again = build_model("student", seed=0)
    assert torch.equal(torch.get_rng_state(), state)
    assert all(
        torch.equal(a, b)
        for a, b in zip(student.state_dict().values(), again.state_dict().values(), strict=True)
    )
    other = build_model("student", seed=1)
    assert not torch.equal(other.state_dict()["vlad.projection"], student.state_dict()["vlad.projection"])


def test_bad_inputs_and_options_rejected(student):
    with pytest.raises(ValueError, match=r"\(B, 3, 224, 224\)"):
        student(torch.zeros(1, 3, 200, 224))
    with pytest.raises(ValueError, match="floating-point"):
        student(torch.zeros(1, 3, 224, 224, dtype=torch.uint8))
    with pytest.raises(ValueError, match="unknown arch"):
        build_model("resnet")
    with pytest.raises(ValueError, match="invalid options"):
        build_model("student", vit_tokens_only=True)
    with pytest.raises(ValueError, match="pretrained must be"):
        build_model("student", pretrained="yes")


def test_teacher_with_standard_vit_tokens(reference_json):
    """vit_tokens_only=False adds a class token + positional embedding and still yields 196 patch tokens."""
    teacher = build_model("teacher", vit_tokens_only=False)
    assert teacher.arch == "teacher" and teacher.options == {"vit_tokens_only": False}
    published = reference_json["teacher"]["params_used_in_forward"]
    assert _count(teacher) - published == 768 + 197 * 768
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        tokens = teacher.vit(x)
        without_position = teacher.vit.norm(teacher.vit.blocks(teacher.vit.patch_embed(x).flatten(2).mT))
    assert tokens.shape == (1, 196, 768)
    assert not torch.allclose(tokens, without_position, atol=1e-3)


def test_imagenet_trunk_offline_failure_is_actionable(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    attempts = []

    def no_network(url, *args, **kwargs):
        attempts.append(url)
        raise urllib.error.URLError("network disabled in tests")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    with pytest.raises(PretrainedWeightsUnavailable) as info:
        build_model("student", pretrained="imagenet")
    message = str(info.value)
    expected_file = tmp_path / "torch_home" / "hub" / "checkpoints" / "resnet50-0676ba61.pth"
    assert imagenet_cache_path() == expected_file
    assert str(expected_file) in message and "torch.hub.get_dir()" in message
    assert "pretrained='none'" in message and "network disabled" in message
    assert attempts == [torchvision.models.ResNet50_Weights.IMAGENET1K_V1.url]


def test_imagenet_trunk_loads_from_torch_hub_cache(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.setattr(torch.hub, "download_url_to_file", lambda *a, **k: pytest.fail("tried to download"))
    torch.manual_seed(7)
    cached = torchvision.models.resnet50(weights=None).state_dict()
    imagenet_cache_path().parent.mkdir(parents=True)
    torch.save(cached, imagenet_cache_path())
    model = build_model("student", pretrained="imagenet")
    assert torch.equal(model.cnn.layer3[5].conv3.weight, cached["layer3.5.conv3.weight"])
    assert torch.equal(model.cnn.bn1.running_var, cached["bn1.running_var"])
    assert "pretrained" not in model.options
