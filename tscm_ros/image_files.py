"""Image files on disk: listing a folder and reading one file as RGB (PIL; no torch, no ROS)."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from tscm_ros.images import ImageDecodeError, check_pixel_count

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp"}


def list_images(folder: Path) -> list[Path]:
    """Image files directly in ``folder``, sorted by name; FileNotFoundError when there are none."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"not a directory: {folder}")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise FileNotFoundError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in {folder}")
    return files


def read_rgb(path: Path, *, max_pixels: int | None = None) -> np.ndarray:
    """Read an image file as HxWx3 uint8 RGB with PIL.

    The size in the file header is checked against the pixel limit (``max_pixels``, else
    ``$TSCM_MAX_PIXELS``, else 4096 * 4096; see :func:`tscm_ros.images.resolve_max_pixels`) *before* any
    pixel is decoded: a 420 KB PNG claiming 12000x12000 raises ``ImageDecodeError("too_large")`` (a
    ValueError) instead of allocating gigabytes. PIL's own decompression-bomb limit (~179 MP) is not relied
    on. FileNotFoundError / OSError (unreadable or corrupt file) pass through.
    """
    from PIL import Image

    path = Path(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our limit is the one that applies
        try:
            image = Image.open(path)  # parses the header only
        except Image.DecompressionBombError as error:
            raise ImageDecodeError("too_large", f"{path}: {error}") from error
    with image:
        width, height = image.size
        check_pixel_count(width, height, max_pixels, str(path))
        return np.asarray(image.convert("RGB"), dtype=np.uint8)
