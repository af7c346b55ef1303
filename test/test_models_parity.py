"""Our networks + converter reproduce the published TSCM outputs recorded in tscm_official_reference.json."""

from __future__ import annotations

import pytest
import torch
from models_reference import (
    published_student_state_dict,
    published_teacher_state_dict,
    reference_input,
)

from tscm_ros.models import build_model
from tscm_ros.published import convert_published_state_dict

RTOL, ATOL = 1e-3, 1e-5  # the tolerance the reference README states; never widened


@pytest.fixture(scope="session")
def reference_path(shared_dir):
    return str(shared_dir / "reference" / "tscm_official_reference.json")


@pytest.fixture(scope="session")
def converted_teacher(reference_json, reference_path):
    arch, options, state_dict = convert_published_state_dict(published_teacher_state_dict(reference_path))
    model = build_model(arch, **options)
    model.load_state_dict(state_dict, strict=True)
    return arch, options, model.eval()


@pytest.fixture(scope="session")
def converted_student(reference_json, reference_path):
    published = published_student_state_dict(reference_json, reference_path)
    arch, options, state_dict = convert_published_state_dict(published)
    model = build_model(arch, **options)
    model.load_state_dict(state_dict, strict=True)
    return arch, options, model.eval()


def _report(name: str, ours: torch.Tensor, expected: torch.Tensor) -> None:
    abs_err = (ours - expected).abs()
    print(
        f"{name}: max abs err {abs_err.max().item():.3e}, max rel err where |ref|>1e-3 "
        f"{(abs_err / expected.abs())[expected.abs() > 1e-3].max().item():.3e}"
    )


def test_student_matches_published_outputs(converted_student, reference_json):
    arch, options, model = converted_student
    assert arch == "student" and options == {"variance_head": True}
    with torch.no_grad():
        mu, sigma = model.forward_with_variance(reference_input())
        plain = model(reference_input())
    expected_mu = torch.tensor(reference_json["student"]["mu"])
    expected_sigma = torch.tensor(reference_json["student"]["sigma"])
    _report("student mu", mu, expected_mu)
    _report("student sigma", sigma, expected_sigma)
    torch.testing.assert_close(mu, expected_mu, rtol=RTOL, atol=ATOL)
    torch.testing.assert_close(sigma, expected_sigma, rtol=RTOL, atol=ATOL)
    torch.testing.assert_close(plain, mu, rtol=0, atol=0)


def test_teacher_matches_published_outputs(converted_teacher, reference_json):
    arch, options, model = converted_teacher
    assert arch == "teacher" and options == {"vit_tokens_only": True}
    with torch.no_grad():
        mu = model(reference_input())
    expected = torch.tensor(reference_json["teacher"]["mu"])
    _report("teacher mu", mu, expected)
    torch.testing.assert_close(mu, expected, rtol=RTOL, atol=ATOL)
    assert not any(reference_json["teacher"]["sigma"][0]), "the published teacher's 2nd output is zeros"


def test_student_without_variance_head(converted_student, reference_json, reference_path):
    published = published_student_state_dict(reference_json, reference_path)
    arch, options, state_dict = convert_published_state_dict(published, variance_head=False)
    assert options == {"variance_head": False}
    model = build_model(arch, **options)
    model.load_state_dict(state_dict, strict=True)
    full = converted_student[2].state_dict()
    assert all(torch.equal(value, full[key]) for key, value in state_dict.items())
    assert set(full) - set(state_dict) == {"variance_head.0.weight", "variance_head.0.bias"}
    with pytest.raises(RuntimeError, match="variance head"):
        model.forward_with_variance(reference_input())


def _count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_parameter_counts_match_published_forward_path(converted_student, converted_teacher, reference_json):
    # our modules hold exactly the parameters the published forward pass uses (no unused bn2 / GeM / copies)
    assert _count(converted_student[2]) == reference_json["student"]["params_used_in_forward"]
    assert _count(converted_teacher[2]) == reference_json["teacher"]["params_used_in_forward"]
    deploy = build_model("student", variance_head=False)
    assert _count(deploy) == reference_json["student"]["params_used_in_forward"] - (2048 * 2048 + 2048)
    assert 12.6e6 < _count(deploy) < 12.8e6  # the paper's "13 M" student


def test_untrained_models_have_published_parameter_counts(reference_json):
    student = build_model("student", variance_head=True, seed=3)
    assert _count(student) == reference_json["student"]["params_used_in_forward"]
