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
    ``descriptor_dim`` (2048) and ``input_size`` ((H, W), default (224, 224) as published). The NetVLAD
    re-views tie the sample counts to the number of 16x16 patches, so another size (option ``input_size``,
    multiples of 16, e.g. (32, 32) for fast tests) builds a different, incompatible network; it is recorded
    in ``options`` only when it differs from the published 224x224.
    """

    arch: str = ""
    descriptor_dim: int = DESCRIPTOR_DIM
    input_size: tuple[int, int] = INPUT_SIZE

    def __init__(
        self, options: dict[str, Any], input_size: tuple[int, int] | list[int] | None = None
    ) -> None:
        super().__init__()
        self.options = dict(options)
        if input_size is not None:
            size = tuple(int(v) for v in input_size)
            if len(size) != 2 or min(size) < 16 or any(v % 16 for v in size):
                raise ValueError(f"input_size must be (H, W), positive multiples of 16; got {input_size!r}")
            if size != INPUT_SIZE:
                self.input_size = size
                self.options["input_size"] = list(size)

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
