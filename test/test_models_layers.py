"""Layer semantics: GeM, NetVLAD-Loupe re-view, cross-attention block (small shapes, fast)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from tscm_ros.models.layers import CrossAttentionBlock, GeM, NetVLADLoupe


def test_gem_equals_generalised_mean():
    x = torch.rand(2, 5, 7, 3, generator=torch.Generator().manual_seed(0))
    gem = GeM()
    expected = F.avg_pool2d(x.clamp(min=1e-6).pow(3), (7, 3)).pow(1 / 3).flatten(1)
    torch.testing.assert_close(gem(x), expected)
    torch.testing.assert_close(gem(torch.full((1, 2, 4, 4), 2.0)), torch.full((1, 2), 2.0))
    assert gem.p.requires_grad and gem.p.item() == 3.0


def _reference_vlad(vlad: NetVLADLoupe, samples: torch.Tensor) -> torch.Tensor:
    """Loop-based NetVLAD over (B, N, D) samples, written independently of the module's vectorised code."""
    out = []
    for x in samples:
        logits = x @ vlad.cluster_weights + vlad.cluster_biases
        a = torch.softmax(logits, dim=1)  # (N, K)
        columns = []
        for k in range(vlad.cluster_size):
            residual = (a[:, k : k + 1] * (x - vlad.centroids[0, :, k])).sum(0)  # (D,)
            columns.append(residual / residual.norm().clamp_min(1e-12))
        v = torch.stack(columns, dim=1).reshape(-1)  # D-major flatten (d * K + k)
        v = (v / v.norm()) @ vlad.projection
        gating = vlad.context_gating
        out.append(v * torch.sigmoid(v @ gating.gating_weights + gating.gating_biases))
    return torch.stack(out)


def test_netvlad_matches_loop_reference_and_reviews_row_major():
    torch.manual_seed(0)
    vlad = NetVLADLoupe(feature_size=6, max_samples=10, cluster_size=4, output_dim=5)
    tokens = torch.randn(3, 5, 12)  # 5 tokens of 12 values = re-viewed as 10 samples of 6
    expected = _reference_vlad(vlad, tokens.reshape(3, 10, 6))
    torch.testing.assert_close(vlad(tokens), expected, rtol=1e-5, atol=1e-6)
    published_layout = tokens.transpose(1, 2).unsqueeze(-1)  # (B, C, N, 1) as the published code passes it
    torch.testing.assert_close(vlad(published_layout), expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(vlad(tokens[1:2]), expected[1:2], rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="expects 60 values per sample"):
        vlad(torch.randn(2, 4, 12))


def _reference_block(block: CrossAttentionBlock, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    attention = block.attention
    heads, d_k = attention.heads, attention.d_k
    q = attention.q_linear(x).view(x.shape[0], -1, heads, d_k).transpose(1, 2)
    k = attention.k_linear(y).view(y.shape[0], -1, heads, d_k).transpose(1, 2)
    v = attention.v_linear(y).view(y.shape[0], -1, heads, d_k).transpose(1, 2)
    scores = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(d_k), dim=-1)
    out = x + attention.out((scores @ v).transpose(1, 2).reshape(x.shape[0], -1, heads * d_k))
    ff = block.feed_forward
    return out + ff.linear_2(F.relu(ff.linear_1(out)))


def test_cross_attention_block_eval_math_and_train_dropout():
    torch.manual_seed(1)
    block = CrossAttentionBlock(d_model=16, heads=4, d_ff=32, dropout=0.1).eval()
    x, y = torch.randn(2, 5, 16), torch.randn(2, 7, 16)
    torch.testing.assert_close(block(x, y), _reference_block(block, x, y), rtol=1e-5, atol=1e-6)
    block.train()
    torch.manual_seed(2)
    first = block(x, y)
    torch.manual_seed(3)
    assert not torch.allclose(first, block(x, y))
    with pytest.raises(ValueError, match="divisible"):
        CrossAttentionBlock(d_model=10, heads=4)
