"""Common interface of the TSCM descriptor networks."""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

DESCRIPTOR_DIM = 2048
INPUT_SIZE = (224, 224)


class DescriptorNet(nn.Module):
    """Base class: ``forward(x (B, 3, 224, 224), ImageNet-normalised) -> (B, 2048)`` L2-normalised.

    Attributes every network exposes: ``arch`` (str), ``options`` (JSON-serialisable architecture options,
    enough to rebuild the module with :func:`tscm_ros.models.build_model` before loading a state dict),
    ``descriptor_dim`` (2048) and ``input_size`` ((H, W) = (224, 224), fixed by the NetVLAD re-views).
    """

    arch: str = ""
    descriptor_dim: int = DESCRIPTOR_DIM
    input_size: tuple[int, int] = INPUT_SIZE

    def __init__(self, options: dict[str, Any]) -> None:
        super().__init__()
        self.options = dict(options)

    def check_input(self, x: Tensor) -> None:
        """Raise a clear error unless ``x`` is a (B, 3, 224, 224) floating-point batch."""
        if x.dim() != 4 or x.shape[1] != 3 or tuple(x.shape[-2:]) != self.input_size:
            raise ValueError(
                f"{type(self).__name__} expects a (B, 3, {self.input_size[0]}, {self.input_size[1]}) "
                f"ImageNet-normalised batch, got shape {tuple(x.shape)}; resize images to "
                f"{self.input_size[1]}x{self.input_size[0]} first"
            )
        if not x.is_floating_point():
            raise ValueError(f"{type(self).__name__} expects a floating-point batch, got {x.dtype}")
