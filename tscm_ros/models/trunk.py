"""ResNet-50 trunk (conv1 .. layer3, output stride 16, 1024 channels) shared by both TSCM networks."""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path
from typing import Literal

import torch
import torchvision
from torch import nn

Pretrained = Literal["none", "imagenet"]
TRUNK_LAYERS = ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3")
TRUNK_CHANNELS = 1024


class PretrainedWeightsUnavailable(RuntimeError):
    """ImageNet weights for the ResNet trunk are neither in the torch hub cache nor downloadable."""


def imagenet_cache_path() -> Path:
    """Where torchvision's ResNet50_Weights.IMAGENET1K_V1 file lives in the torch hub cache."""
    url = torchvision.models.ResNet50_Weights.IMAGENET1K_V1.url
    return Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[-1]


def _imagenet_state_dict() -> dict[str, torch.Tensor]:
    weights = torchvision.models.ResNet50_Weights.IMAGENET1K_V1
    path = imagenet_cache_path()
    try:
        return torch.hub.load_state_dict_from_url(
            weights.url, map_location="cpu", progress=False, check_hash=True, weights_only=True
        )
    except Exception as error:  # network down, proxy, hash mismatch, corrupt cache ...
        raise PretrainedWeightsUnavailable(
            f"pretrained='imagenet' needs torchvision's ResNet-50 ImageNet weights ({weights.url}); "
            f"they are not in the torch hub cache and could not be downloaded ({type(error).__name__}: "
            f"{error}). Download that file on a machine with internet access and copy it to {path} "
            f"(the cache directory is torch.hub.get_dir()/checkpoints = {path.parent}; set TORCH_HOME "
            "to move it), or build the model with pretrained='none'."
        ) from error


def resnet50_trunk(pretrained: Pretrained = "none") -> nn.Sequential:
    """torchvision ResNet-50 cut after layer3: (B, 3, H, W) -> (B, 1024, H/16, W/16)."""
    if pretrained not in ("none", "imagenet"):
        raise ValueError(f"pretrained must be 'none' or 'imagenet', got {pretrained!r}")
    resnet = torchvision.models.resnet50(weights=None)
    if pretrained == "imagenet":
        resnet.load_state_dict(_imagenet_state_dict())
    return nn.Sequential(OrderedDict((name, getattr(resnet, name)) for name in TRUNK_LAYERS))
