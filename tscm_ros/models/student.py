"""TSCM student: ResNet-50 (to layer3) + GeM, and a patch-embedding NetVLAD branch (12.7 M parameters)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tscm_ros.models.base import DescriptorNet
from tscm_ros.models.layers import GeM, NetVLADLoupe
from tscm_ros.models.trunk import TRUNK_CHANNELS, Pretrained, resnet50_trunk

PATCH_SIZE = 16
PATCH_DIM = 768
VLAD_DIM = 256


class StudentNet(DescriptorNet):
    """The published TSCM student (deploy path) with an optional variance head.

    descriptor = L2([vlad_projection(NetVLAD(patch tokens)) 1024 || GeM(ResNet map) 1024]).
    The 196 x 768 patch-token array is re-viewed row-major as 768 "samples" of 196 values before NetVLAD
    (chunks straddle token boundaries) exactly as the published code does.

    Args:
        variance_head: add the published ``Linear(2048, 2048) + Sigmoid`` on the un-normalised vector
            (second output of the published network, unused for retrieval); see
            :meth:`forward_with_variance`.
        pretrained: ``"imagenet"`` loads torchvision's ImageNet weights into the ResNet trunk.
        input_size: (H, W) input, multiples of 16; default the published (224, 224).
    """

    arch = "student"

    def __init__(
        self,
        *,
        variance_head: bool = False,
        pretrained: Pretrained = "none",
        input_size: tuple[int, int] | list[int] | None = None,
    ) -> None:
        super().__init__({"variance_head": bool(variance_head)}, input_size)
        self.cnn = resnet50_trunk(pretrained)
        self.gem = GeM()
        self.patch_embed = nn.Conv2d(3, PATCH_DIM, kernel_size=PATCH_SIZE, stride=PATCH_SIZE)
        num_patches = (self.input_size[0] // PATCH_SIZE) * (self.input_size[1] // PATCH_SIZE)
        self.vlad = NetVLADLoupe(
            feature_size=num_patches, max_samples=PATCH_DIM, cluster_size=64, output_dim=VLAD_DIM
        )
        self.vlad_projection = nn.Linear(VLAD_DIM, TRUNK_CHANNELS)
        self.variance_head = (
            nn.Sequential(nn.Linear(self.descriptor_dim, self.descriptor_dim), nn.Sigmoid())
            if variance_head
            else None
        )

    def embed(self, x: Tensor) -> Tensor:
        """Un-normalised 2048-d vector [projected VLAD || GeM]."""
        self.check_input(x)
        gem = self.gem(self.cnn(x))
        tokens = self.patch_embed(x).flatten(2).transpose(1, 2)  # (B, 196, 768)
        vlad = self.vlad_projection(self.vlad(tokens))
        return torch.cat((vlad, gem), dim=1)

    def forward(self, x: Tensor) -> Tensor:
        return F.normalize(self.embed(x), p=2, dim=1)

    def forward_with_variance(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(L2-normalised descriptor, sigmoid variance) as the published network returns them."""
        if self.variance_head is None:
            raise RuntimeError("this StudentNet was built without a variance head (variance_head=False)")
        embedding = self.embed(x)
        return F.normalize(embedding, p=2, dim=1), self.variance_head(embedding)
