"""The networks' input: RGB uint8 image(s) -> ImageNet-normalised float batch of the network input size.

Preprocessing follows the published pipeline (``datasets/pitts.py``: ``ToTensor`` -> ``Normalize`` ->
``Resize((224, 224))``): RGB uint8 -> float in [0, 1] -> ImageNet normalisation -> bilinear resize to
224x224, normalising *before* resizing and squashing the aspect ratio. The published code resized a
*tensor* with torchvision 0.12, whose tensor ``Resize`` default was ``antialias=False``; we therefore
resize with ``torch.nn.functional.interpolate(mode="bilinear", align_corners=False, antialias=False)``,
which is exactly what that call did (it matters only when downscaling).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from tscm_ros.models.base import INPUT_SIZE

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "INPUT_SIZE",
    "ImageInputError",
    "Images",
    "as_image_batches",
    "preprocess",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
Images = np.ndarray | Sequence[np.ndarray]


class ImageInputError(ValueError):
    """Images handed to :func:`preprocess` (or a describer) have the wrong type or layout."""


def _check_image_array(array: np.ndarray, what: str) -> None:
    if not isinstance(array, np.ndarray):
        raise ImageInputError(f"{what}: expected a numpy array, got {type(array).__name__}")
    if array.dtype != np.uint8:
        raise ImageInputError(
            f"{what}: expected dtype uint8 (RGB 0..255), got {array.dtype}; "
            "convert float images with (img * 255).round().astype(np.uint8)"
        )
    if array.ndim not in (3, 4):
        raise ImageInputError(
            f"{what}: expected shape (H, W, 3) or (N, H, W, 3), got {array.shape}"
            + (" (grayscale? stack it to 3 channels)" if array.ndim == 2 else "")
        )
    if array.shape[-1] != 3:
        raise ImageInputError(
            f"{what}: expected 3 RGB channels in the last axis, got shape {array.shape}"
            + (" (RGBA? drop the alpha channel)" if array.shape[-1] == 4 else "")
            + (" (channels-first? transpose to HxWx3)" if array.shape[-3] == 3 else "")
        )
    if array.shape[-2] == 0 or array.shape[-3] == 0:
        raise ImageInputError(f"{what}: empty image of shape {array.shape}")


def as_image_batches(images: Images) -> list[np.ndarray]:
    """Validate ``images`` and return them as a list of (n, H, W, 3) uint8 arrays of equal size each."""
    if isinstance(images, np.ndarray):
        _check_image_array(images, "images")
        return [images[None] if images.ndim == 3 else images]
    if isinstance(images, (str, bytes)) or not isinstance(images, Sequence):
        raise ImageInputError(
            f"images: expected an HxWx3 uint8 array, an (N,H,W,3) array or a list of HxWx3 arrays, "
            f"got {type(images).__name__}"
        )
    arrays = []
    for index, image in enumerate(images):
        _check_image_array(image, f"images[{index}]")
        if image.ndim != 3:
            raise ImageInputError(
                f"images[{index}]: list items must be single HxWx3 images, got {image.shape}"
            )
        arrays.append(image[None])
    return arrays


def _to_device_uint8(batch: np.ndarray, device: torch.device) -> torch.Tensor:
    if not (batch.flags.c_contiguous and batch.flags.writeable):
        batch = np.array(batch, order="C")  # torch.from_numpy needs a writeable, contiguous array
    tensor = torch.from_numpy(batch)
    if device.type == "cuda":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)


def preprocess(
    images: Images, *, device: str | torch.device = "cpu", size: tuple[int, int] = INPUT_SIZE
) -> torch.Tensor:
    """RGB uint8 image(s) -> (N, 3, 224, 224) float32 network input on ``device`` (see module docstring)."""
    device = torch.device(device)
    mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1)
    outputs = []
    for batch in as_image_batches(images):
        x = _to_device_uint8(batch, device).permute(0, 3, 1, 2).to(torch.float32).div_(255.0)
        x = (x - mean) / std
        if tuple(x.shape[-2:]) != tuple(size):
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=False)
        outputs.append(x)
    if not outputs:
        return torch.empty((0, 3, *size), device=device)
    return outputs[0].contiguous() if len(outputs) == 1 else torch.cat(outputs)
