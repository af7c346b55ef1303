"""TSCM networks (Shen et al., ICRA 2024): student and teacher descriptor models.

``build_model("student" | "teacher", seed=0, **options)`` builds a deterministic, untrained network
(or one with an ImageNet ResNet trunk, ``pretrained="imagenet"``).
"""

from __future__ import annotations

from typing import Any, Literal

import torch

from tscm_ros.models.base import DESCRIPTOR_DIM, INPUT_SIZE, DescriptorNet
from tscm_ros.models.layers import CrossAttentionBlock, GeM, NetVLADLoupe
from tscm_ros.models.student import StudentNet
from tscm_ros.models.teacher import TeacherNet
from tscm_ros.models.trunk import PretrainedWeightsUnavailable, imagenet_cache_path

ARCHITECTURES: dict[str, type[DescriptorNet]] = {"student": StudentNet, "teacher": TeacherNet}

__all__ = [
    "ARCHITECTURES",
    "DESCRIPTOR_DIM",
    "INPUT_SIZE",
    "CrossAttentionBlock",
    "DescriptorNet",
    "GeM",
    "NetVLADLoupe",
    "PretrainedWeightsUnavailable",
    "StudentNet",
    "TeacherNet",
    "build_model",
    "imagenet_cache_path",
]


def build_model(
    arch: Literal["student", "teacher"], *, seed: int | None = 0, **options: Any
) -> DescriptorNet:
    """Build a TSCM network in eval mode.

    Args:
        arch: ``"student"`` or ``"teacher"``.
        seed: seed of the weight initialisation (drawn from a forked RNG, the global RNG is untouched);
            ``None`` draws from the global RNG.
        options: student: ``variance_head: bool = False``; teacher: ``vit_tokens_only: bool = True``;
            both: ``input_size: (H, W) = (224, 224)`` (multiples of 16; other sizes are other networks),
            ``pretrained: "none" | "imagenet" = "none"`` (ImageNet ResNet trunk; raises
            :class:`PretrainedWeightsUnavailable` when the file is neither cached nor downloadable).
            ``pretrained`` only changes the initial weights, so it is not part of ``model.options``.
    """
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown arch {arch!r}; expected one of {sorted(ARCHITECTURES)}")
    cls = ARCHITECTURES[arch]
    try:
        if seed is None:
            model = cls(**options)
        else:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                model = cls(**options)
    except TypeError as error:
        raise ValueError(f"invalid options for arch {arch!r}: {options} ({error})") from error
    return model.eval()
