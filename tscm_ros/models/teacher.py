"""TSCM teacher: ResNet-50 (to layer3) + ViT-B/16 encoder fused by cross attention, three NetVLADs + GeM."""

from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.vision_transformer import EncoderBlock

from tscm_ros.models.base import DescriptorNet
from tscm_ros.models.layers import CrossAttentionBlock, GeM, NetVLADLoupe
from tscm_ros.models.trunk import TRUNK_CHANNELS, Pretrained, resnet50_trunk

PATCH_SIZE = 16
VIT_DIM = 768
VIT_DEPTH = 12
VIT_HEADS = 12
VIT_MLP_DIM = 3072
FUSION_DIM = 512


class VitEncoder(nn.Module):
    """ViT-B/16 encoder (timm ``vit_base_patch16_224`` math) from torchvision modules.

    Conv patch embedding 16x16 -> 768, 12 pre-norm blocks (LayerNorm eps 1e-6, 12-head attention with a
    fused qkv projection, GELU MLP 3072), final LayerNorm. Returns the 196 patch tokens (B, 196, 768).

    ``tokens_only=True`` (default) is what the published teacher computes: its ViT is the timm model's
    child modules run in sequence, so no class token and no positional embedding are ever applied.
    ``tokens_only=False`` adds a learnable class token and positional embedding like a standard ViT; the
    class token is dropped after the encoder so the output is still the 196 patch tokens.
    """

    def __init__(self, tokens_only: bool = True, num_patches: int = 196) -> None:
        super().__init__()
        self.tokens_only = tokens_only
        self.patch_embed = nn.Conv2d(3, VIT_DIM, kernel_size=PATCH_SIZE, stride=PATCH_SIZE)
        norm = partial(nn.LayerNorm, eps=1e-6)
        self.blocks = nn.Sequential(
            *(EncoderBlock(VIT_HEADS, VIT_DIM, VIT_MLP_DIM, 0.0, 0.0, norm) for _ in range(VIT_DEPTH))
        )
        self.norm = norm(VIT_DIM)
        if not tokens_only:
            self.cls_token = nn.Parameter(torch.zeros(1, 1, VIT_DIM))
            self.pos_embedding = nn.Parameter(torch.randn(1, num_patches + 1, VIT_DIM) * 0.02)

    def forward(self, x: Tensor) -> Tensor:
        tokens = self.patch_embed(x).flatten(2).transpose(1, 2)  # (B, 196, 768)
        if self.tokens_only:
            return self.norm(self.blocks(tokens))
        cls = self.cls_token.expand(tokens.shape[0], -1, -1)
        tokens = torch.cat((cls, tokens), dim=1) + self.pos_embedding
        return self.norm(self.blocks(tokens))[:, 1:]


class TeacherNet(DescriptorNet):
    """The published TSCM teacher.

    V = Linear(768->512)(ViT tokens), R = Linear(1024->512)(ResNet map tokens);
    fused_v = block(V, R), fused_r = block(R, V) (cross attention, residual, no LayerNorm);
    descriptor = L2([VLAD_R 256 || VLAD_fused 512 || VLAD_V 256 || GeM 1024]) where VLAD_fused runs on
    [fused_v ; fused_r] (392 tokens) || [V ; R] (channels) re-viewed as 784 x 512, and VLAD_R / VLAD_V on
    R / V re-viewed as 392 x 256 (each token split in two halves), as the published code does.

    Args:
        vit_tokens_only: see :class:`VitEncoder` (True = the published teacher).
        pretrained: ``"imagenet"`` loads torchvision's ImageNet weights into the ResNet trunk.
        input_size: (H, W) input, multiples of 16; default the published (224, 224).
    """

    arch = "teacher"

    def __init__(
        self,
        *,
        vit_tokens_only: bool = True,
        pretrained: Pretrained = "none",
        input_size: tuple[int, int] | list[int] | None = None,
    ) -> None:
        super().__init__({"vit_tokens_only": bool(vit_tokens_only)}, input_size)
        num_patches = (self.input_size[0] // PATCH_SIZE) * (self.input_size[1] // PATCH_SIZE)
        self.cnn = resnet50_trunk(pretrained)
        self.gem = GeM()
        self.vit = VitEncoder(tokens_only=vit_tokens_only, num_patches=num_patches)
        self.project_vit = nn.Linear(VIT_DIM, FUSION_DIM)
        self.project_cnn = nn.Linear(TRUNK_CHANNELS, FUSION_DIM)
        self.fuse_vit = CrossAttentionBlock(FUSION_DIM, heads=4, d_ff=1024, dropout=0.1)
        self.fuse_cnn = CrossAttentionBlock(FUSION_DIM, heads=4, d_ff=1024, dropout=0.1)
        half = FUSION_DIM // 2
        self.vlad_fused = NetVLADLoupe(FUSION_DIM, 4 * num_patches, 64, FUSION_DIM)
        self.vlad_cnn = NetVLADLoupe(half, 2 * num_patches, 64, half)
        self.vlad_vit = NetVLADLoupe(half, 2 * num_patches, 64, half)

    def embed(self, x: Tensor) -> Tensor:
        """Un-normalised 2048-d vector."""
        self.check_input(x)
        cnn_map = self.cnn(x)  # (B, 1024, 14, 14)
        gem = self.gem(cnn_map)
        feature_v = self.project_vit(self.vit(x))  # (B, 196, 512)
        feature_r = self.project_cnn(cnn_map.flatten(2).transpose(1, 2))  # (B, 196, 512)
        fused = torch.cat((self.fuse_vit(feature_v, feature_r), self.fuse_cnn(feature_r, feature_v)), dim=1)
        original = torch.cat((feature_v, feature_r), dim=1)
        vlad_fused = self.vlad_fused(torch.cat((fused, original), dim=2))  # (B, 392, 1024) as 784 x 512
        vlad_r = self.vlad_cnn(feature_r)  # 196 x 512 as 392 x 256
        vlad_v = self.vlad_vit(feature_v)
        return torch.cat((vlad_r, vlad_fused, vlad_v, gem), dim=1)

    def forward(self, x: Tensor) -> Tensor:
        return F.normalize(self.embed(x), p=2, dim=1)
