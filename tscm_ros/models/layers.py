"""Building blocks of the TSCM networks: GeM pooling, NetVLAD-Loupe and the cross-attention block.

Each block reproduces the published TSCM computation (Shen et al., ICRA 2024) number for number in eval
mode (proven by test/test_models_parity.py against ../shared/reference/tscm_official_reference.json).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class GeM(nn.Module):
    """Generalised-mean pooling with a learnable exponent, flattened to (B, C).

    ``(mean(clamp(x, eps) ** p)) ** (1 / p)`` over the spatial dimensions. Written with
    ``adaptive_avg_pool2d`` (instead of a kernel equal to the runtime feature size) so ONNX export works.
    """

    def __init__(self, p: float = 3.0, eps: float = 1e-6) -> None:
        super().__init__()
        self.p = nn.Parameter(torch.ones(1) * p)
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        pooled = F.adaptive_avg_pool2d(x.clamp(min=self.eps).pow(self.p), 1)
        return pooled.pow(1.0 / self.p).flatten(1)

    def extra_repr(self) -> str:
        return f"p={self.p.detach().flatten()[0].item():.4f}, eps={self.eps}"


class ContextGating(nn.Module):
    """Context gating ``y = x * sigmoid(x @ W + b)`` (no batch norm)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.gating_weights = nn.Parameter(torch.randn(dim, dim) / math.sqrt(dim))
        self.gating_biases = nn.Parameter(torch.randn(dim) / math.sqrt(dim))

    def forward(self, x: Tensor) -> Tensor:
        return x * torch.sigmoid(x @ self.gating_weights + self.gating_biases)


class NetVLADLoupe(nn.Module):
    """NetVLAD with a learned projection and context gating (PointNetVLAD / LOUPE style, no batch norm).

    The input is re-viewed row-major as ``(B, max_samples, feature_size)`` whatever its token layout:
    a token array ``(B, N, C)`` (or the published ``(B, C, N, 1)`` layout, which is transposed back to
    ``(B, N, C)`` first) is flattened per image and cut into ``max_samples`` chunks of ``feature_size``
    values. When ``N * C != max_samples * feature_size`` this raises. With ``N == max_samples`` this is
    ordinary NetVLAD over tokens; TSCM uses the other cases on purpose (chunks = halves of tokens or
    chunks straddling token boundaries), which must be kept to reuse published weights.

    Forward: a = softmax(x W_c + b_c) over clusters; V = sum_n a_nk x_n - (sum_n a_nk) c_k, with
    ``centroids`` c of shape (1, D, K); intra-normalise over D per cluster; flatten D-major (index
    d * K + k); L2; ``@ projection`` (K*D -> output_dim); context gating.
    """

    def __init__(self, feature_size: int, max_samples: int, cluster_size: int, output_dim: int) -> None:
        super().__init__()
        self.feature_size = feature_size
        self.max_samples = max_samples
        self.cluster_size = cluster_size
        self.output_dim = output_dim
        scale = 1.0 / math.sqrt(feature_size)
        self.cluster_weights = nn.Parameter(torch.randn(feature_size, cluster_size) * scale)
        self.cluster_biases = nn.Parameter(torch.randn(cluster_size) * scale)
        self.centroids = nn.Parameter(torch.randn(1, feature_size, cluster_size) * scale)
        self.projection = nn.Parameter(torch.randn(cluster_size * feature_size, output_dim) * scale)
        self.context_gating = ContextGating(output_dim)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() == 4:  # published (B, C, N, 1) layout
            x = x.transpose(1, 3)  # (B, 1, N, C)
        batch = x.shape[0]
        if x[0].numel() != self.max_samples * self.feature_size:
            raise ValueError(
                f"NetVLADLoupe expects {self.max_samples * self.feature_size} values per sample "
                f"({self.max_samples} x {self.feature_size}), got input of shape {tuple(x.shape)}"
            )
        x = x.reshape(batch, self.max_samples, self.feature_size)
        assignment = torch.softmax(x @ self.cluster_weights + self.cluster_biases, dim=-1)  # (B, N, K)
        assignment_sum = assignment.sum(dim=-2, keepdim=True)  # (B, 1, K)
        residual_sum = (assignment.transpose(1, 2) @ x).transpose(1, 2)  # (B, D, K)
        vlad = residual_sum - assignment_sum * self.centroids  # (B, D, K)
        vlad = F.normalize(vlad, p=2, dim=1)
        vlad = F.normalize(vlad.reshape(batch, self.feature_size * self.cluster_size), p=2, dim=1)
        return self.context_gating(vlad @ self.projection)


class MultiHeadCrossAttention(nn.Module):
    """Multi-head attention with separate q/k/v projections and an output projection (no masking)."""

    def __init__(self, d_model: int = 512, heads: int = 4, dropout: float = 0.1) -> None:
        super().__init__()
        if d_model % heads:
            raise ValueError(f"d_model {d_model} is not divisible by heads {heads}")
        self.d_model = d_model
        self.heads = heads
        self.d_k = d_model // heads
        self.dropout = dropout
        self.q_linear = nn.Linear(d_model, d_model)
        self.k_linear = nn.Linear(d_model, d_model)
        self.v_linear = nn.Linear(d_model, d_model)
        self.out = nn.Linear(d_model, d_model)

    def _split(self, x: Tensor) -> Tensor:
        return x.reshape(x.shape[0], -1, self.heads, self.d_k).transpose(1, 2)

    def forward(self, query: Tensor, key: Tensor, value: Tensor) -> Tensor:
        q = self._split(self.q_linear(query))
        k = self._split(self.k_linear(key))
        v = self._split(self.v_linear(value))
        # softmax(q k^T / sqrt(d_k)), dropout on the attention weights (train mode only), then @ v
        attended = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0)
        concat = attended.transpose(1, 2).reshape(query.shape[0], -1, self.d_model)
        return self.out(concat)


class FeedForward(nn.Module):
    """``linear_2(dropout(relu(linear_1(x))))``."""

    def __init__(self, d_model: int = 512, d_ff: int = 1024, dropout: float = 0.1) -> None:
        super().__init__()
        self.linear_1 = nn.Linear(d_model, d_ff)
        self.dropout = nn.Dropout(dropout)
        self.linear_2 = nn.Linear(d_ff, d_model)

    def forward(self, x: Tensor) -> Tensor:
        return self.linear_2(self.dropout(F.relu(self.linear_1(x))))


class CrossAttentionBlock(nn.Module):
    """TSCM inter-transformer encoder block, residual adds and no LayerNorm.

    ``out = x + MHA(q=x, k=y, v=y)``; ``out = out + FFN(out)``.
    """

    def __init__(self, d_model: int = 512, heads: int = 4, d_ff: int = 1024, dropout: float = 0.1) -> None:
        super().__init__()
        self.attention = MultiHeadCrossAttention(d_model, heads, dropout)
        self.feed_forward = FeedForward(d_model, d_ff, dropout)

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        out = x + self.attention(x, y, y)
        return out + self.feed_forward(out)
