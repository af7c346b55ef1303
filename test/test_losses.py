"""Losses: the published reference values and the batched layout against a per-triplet loop."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tscm_ros.losses import cross_metric_loss, triplet_loss


def _unit(*shape: int, seed: int) -> torch.Tensor:
    return F.normalize(torch.randn(*shape, generator=torch.Generator().manual_seed(seed)), dim=-1)


@pytest.fixture(scope="module")
def reference_vectors(reference_json):
    generator = torch.Generator().manual_seed(reference_json["losses"]["generator_seed"])
    return [F.normalize(torch.randn((1, 2048), generator=generator), dim=1) for _ in range(6)]


def test_reference_triplet_loss(reference_vectors, reference_json):
    s_a, s_p, s_n, _, _, _ = reference_vectors
    loss = triplet_loss(s_a, s_p, s_n.unsqueeze(1), margin=reference_json["losses"]["margin"])
    assert loss.item() == pytest.approx(reference_json["losses"]["triplet_margin_loss_sum"], rel=1e-5)


def test_reference_cross_metric_loss(reference_vectors, reference_json):
    s_a, s_p, s_n, t_a, t_p, t_n = reference_vectors
    loss = cross_metric_loss(
        (s_a, s_p, s_n.unsqueeze(1)), (t_a, t_p, t_n.unsqueeze(1)), margin=reference_json["losses"]["margin"]
    )
    assert loss.item() == pytest.approx(reference_json["losses"]["ckd_loss"], rel=1e-5)


def _published_loop(student, teacher, counts, margin=0.1):
    """The published trainer's loop over (1, D) slices, written independently of tscm_ros.losses."""
    criterion = torch.nn.TripletMarginLoss(margin=margin, p=2, reduction="sum")
    (s_a, s_p, s_n), (t_a, t_p, t_n) = student, teacher
    triplet = ckd = 0.0
    for i, count in enumerate(counts):
        for j in range(count):
            a, p, n = s_a[i : i + 1], s_p[i : i + 1], s_n[i, j : j + 1]
            ta, tp, tn = t_a[i : i + 1], t_p[i : i + 1], t_n[i, j : j + 1]
            triplet = triplet + criterion(a, p, n)
            dist = sum(
                torch.norm(x - y, p=2).pow(2) for x, y in ((a, tp), (p, ta), (a, ta), (p, tp), (n, tn))
            )
            ckd = ckd + 0.5 * torch.clamp(margin + dist, min=0).pow(2)
    total = sum(counts)
    return triplet / total, ckd / total


def test_batched_losses_equal_published_loop_with_padding():
    batch, n_max, dim = 3, 4, 32
    student = (_unit(batch, dim, seed=1), _unit(batch, dim, seed=2), _unit(batch, n_max, dim, seed=3))
    teacher = (_unit(batch, dim, seed=4), _unit(batch, dim, seed=5), _unit(batch, n_max, dim, seed=6))
    counts = [4, 1, 2]
    mask = torch.arange(n_max).unsqueeze(0) < torch.tensor(counts).unsqueeze(1)
    expected_triplet, expected_ckd = _published_loop(student, teacher, counts)
    torch.testing.assert_close(triplet_loss(*student, negative_mask=mask), expected_triplet)
    torch.testing.assert_close(cross_metric_loss(student, teacher, negative_mask=mask), expected_ckd)
    # padded rows must not matter, whatever they hold
    garbage = student[2].clone()
    garbage[~mask] = 5.0
    torch.testing.assert_close(
        triplet_loss(student[0], student[1], garbage, negative_mask=mask), expected_triplet
    )


def test_unmasked_batch_counts_every_negative():
    student = (_unit(2, 16, seed=7), _unit(2, 16, seed=8), _unit(2, 3, 16, seed=9))
    teacher = (_unit(2, 16, seed=10), _unit(2, 16, seed=11), _unit(2, 3, 16, seed=12))
    expected_triplet, expected_ckd = _published_loop(student, teacher, [3, 3])
    torch.testing.assert_close(triplet_loss(*student), expected_triplet)
    torch.testing.assert_close(cross_metric_loss(student, teacher), expected_ckd)


def test_paper_form_is_linear_cross_terms():
    s = (_unit(2, 8, seed=13), _unit(2, 8, seed=14), _unit(2, 1, 8, seed=15))
    t = (_unit(2, 8, seed=16), _unit(2, 8, seed=17), _unit(2, 1, 8, seed=18))
    expected = sum((s[0][i] - t[1][i]).pow(2).sum() + (s[1][i] - t[0][i]).pow(2).sum() for i in range(2))
    torch.testing.assert_close(cross_metric_loss(s, t, form="paper"), expected)
    # identical student and teacher: the paper form still penalises S(a) vs T(p)
    same = cross_metric_loss(s, s, form="paper")
    assert same.item() == pytest.approx(2 * (s[0] - s[1]).pow(2).sum().item(), rel=1e-6)
    # the published form of a perfect copy on identical anchor/positive/negative is 0.5 * margin^2
    a = _unit(1, 8, seed=19)
    perfect = cross_metric_loss((a, a, a.unsqueeze(1)), (a, a, a.unsqueeze(1)), margin=0.1)
    assert perfect.item() == pytest.approx(0.5 * 0.1**2, rel=1e-6)


def test_triplet_loss_zero_when_negative_far_and_gradients_flow():
    a = torch.tensor([[1.0, 0.0]])
    p = torch.tensor([[1.0, 0.0]])
    n = torch.tensor([[[-1.0, 0.0]]])
    assert triplet_loss(a, p, n).item() == 0.0
    s = tuple(
        x.clone().requires_grad_(True)
        for x in (_unit(2, 8, seed=20), _unit(2, 8, seed=21), _unit(2, 2, 8, seed=22))
    )
    t = (_unit(2, 8, seed=23), _unit(2, 8, seed=24), _unit(2, 2, 8, seed=25))
    (triplet_loss(*s, margin=2.0) + cross_metric_loss(s, t)).backward()
    assert all(x.grad is not None and x.grad.abs().sum() > 0 for x in s)


def test_bad_shapes_and_empty_batch_rejected():
    a, p = _unit(2, 8, seed=26), _unit(2, 8, seed=27)
    with pytest.raises(ValueError, match="negatives must be"):
        triplet_loss(a, p, _unit(2, 8, seed=28))
    with pytest.raises(ValueError, match="no negatives"):
        triplet_loss(a, p, _unit(2, 3, 8, seed=29), negative_mask=torch.zeros(2, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="form"):
        cross_metric_loss((a, p, a.unsqueeze(1)), (a, p, a.unsqueeze(1)), form="other")
