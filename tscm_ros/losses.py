"""TSCM training losses: the triplet loss and the cross-metric (student/teacher) distillation loss.

Batch layout (what a trainer builds from B tuples of 1 query + 1 positive + N negatives):

* ``anchor``: (B, D) query embeddings, ``positive``: (B, D), ``negatives``: (B, N, D);
* ``negative_mask``: optional (B, N) bool, True where a negative exists (tuples with fewer than N mined
  negatives are padded; padded rows are ignored). Without a mask all B * N negatives count.

Every (anchor_i, positive_i, negative_ij) is one triplet; losses are summed over triplets and divided by
the number of real negatives in the batch, as the published trainer does (it loops over triplets of
(1, D) slices and divides the sums by ``sum(neg_counts)``). Embeddings are the L2-normalised descriptors.
"""

from __future__ import annotations

from typing import Literal

import torch.nn.functional as F
from torch import Tensor

Triplet = tuple[Tensor, Tensor, Tensor]


def _check(anchor: Tensor, positive: Tensor, negatives: Tensor, negative_mask: Tensor | None) -> Tensor:
    """Validate shapes; return the (B, N) float mask of real negatives."""
    if anchor.dim() != 2 or positive.shape != anchor.shape:
        raise ValueError(
            f"anchor and positive must both be (B, D); got {tuple(anchor.shape)}, {tuple(positive.shape)}"
        )
    batch, dim = anchor.shape
    if negatives.dim() != 3 or negatives.shape[0] != batch or negatives.shape[2] != dim:
        raise ValueError(f"negatives must be (B={batch}, N, D={dim}); got {tuple(negatives.shape)}")
    if negative_mask is None:
        return negatives.new_ones(negatives.shape[:2])
    if negative_mask.shape != negatives.shape[:2]:
        raise ValueError(
            f"negative_mask must be {tuple(negatives.shape[:2])}; got {tuple(negative_mask.shape)}"
        )
    return negative_mask.to(negatives.dtype)


def _normalise_by_count(total: Tensor, mask: Tensor) -> Tensor:
    count = mask.sum()
    if count.item() == 0:
        raise ValueError("the batch has no negatives (all of negative_mask is False)")
    return total / count


def triplet_loss(
    anchor: Tensor,
    positive: Tensor,
    negatives: Tensor,
    margin: float = 0.1,
    negative_mask: Tensor | None = None,
) -> Tensor:
    """Published L_hard: ``TripletMarginLoss(margin, p=2, reduction='sum')`` over all triplets / #negatives.

    Per triplet ``max(||a - p + eps|| - ||a - n + eps|| + margin, 0)`` with eps = 1e-6 (PyTorch's
    pairwise distance).
    """
    mask = _check(anchor, positive, negatives, negative_mask)
    n = negatives.shape[1]
    per_triplet = F.triplet_margin_loss(
        anchor.unsqueeze(1).expand(-1, n, -1),
        positive.unsqueeze(1).expand(-1, n, -1),
        negatives,
        margin=margin,
        p=2,
        reduction="none",
    )  # (B, N)
    return _normalise_by_count((per_triplet * mask).sum(), mask)


def _squared_distance(x: Tensor, y: Tensor) -> Tensor:
    return (x - y).pow(2).sum(dim=-1)


def cross_metric_loss(
    student: Triplet,
    teacher: Triplet,
    margin: float = 0.1,
    form: Literal["published", "paper"] = "published",
    negative_mask: Tensor | None = None,
) -> Tensor:
    """Cross-metric distillation loss between student (S) and frozen teacher (T) embeddings.

    ``student`` and ``teacher`` are (anchor (B, D), positive (B, D), negatives (B, N, D)) triplets.

    ``form="published"`` (what the authors' trainer optimises, ``CKD_loss``): for each triplet (i, j)
        D_ij = |S_a - T_p|^2 + |S_p - T_a|^2 + |S_a - T_a|^2 + |S_p - T_p|^2 + |S_n - T_n|^2
        (squared L2 distances), loss = sum_ij 0.5 * (margin + D_ij)^2 / #negatives.
        The first two terms are the paper's cross-metric terms, the last three align student and teacher
        responses; the penalty is quadratic in (margin + D), not a hinge (D >= 0, so no clamp is active).
    ``form="paper"`` (the paper's L_cm): sum_i |S(a_i) - T(p_i)|^2 + |S(p_i) - T(a_i)|^2 over the B
        anchor/positive pairs: linear in the distances, no margin, no response terms, no negatives and
        no division by #negatives. The paper does not define d; squared L2 is used, as in the code.
    """
    s_a, s_p, s_n = student
    t_a, t_p, t_n = teacher
    mask = _check(s_a, s_p, s_n, negative_mask)
    _check(t_a, t_p, t_n, negative_mask)
    if t_n.shape != s_n.shape or t_a.shape != s_a.shape:
        raise ValueError("student and teacher triplets must have the same shapes")
    cross = _squared_distance(s_a, t_p) + _squared_distance(s_p, t_a)  # (B,)
    if form == "paper":
        return cross.sum()
    if form != "published":
        raise ValueError(f"form must be 'published' or 'paper', got {form!r}")
    per_anchor = cross + _squared_distance(s_a, t_a) + _squared_distance(s_p, t_p)  # (B,)
    per_triplet = per_anchor.unsqueeze(1) + _squared_distance(s_n, t_n)  # (B, N)
    return _normalise_by_count((0.5 * (margin + per_triplet).pow(2) * mask).sum(), mask)
