"""ROS-free sensor_msgs/Image and CompressedImage -> RGB uint8 conversion with cv_bridge semantics.

Works on any object carrying the sensor_msgs fields: rclpy messages (``data`` is ``array('B')``), rosbags
dataclasses (``data`` is a numpy uint8 array), or plain namespaces with ``bytes``.

Conversion rules (what ``cv_bridge.toCvCopy(msg, "rgb8")`` does, unless noted):

* ``rgb8/bgr8/rgba8/bgra8/mono8``: channel reorder / drop alpha / replicate gray.
* 16-bit encodings (``mono16``, ``rgb16``, ``bgr16``, ``rgba16``, ``bgra16``, ``16UC1``, ``16UC3``, 16-bit
  Bayer): cv_bridge converts 16 -> 8 bit with ``convertTo(alpha=255/65535)``, i.e. ``round(v * 255 / 65535)``
  (saturating). We do the same. ``is_bigendian`` is honoured (cv_bridge byte-swaps too).
* ``8UC1``/``8UC3``/``8UC4``/``16UC1``/``16UC3``: cv_bridge itself refuses to convert these "non-colour"
  encodings to rgb8; the Mat it hands out is used with OpenCV's channel convention, so we read them as
  ``mono8``/``bgr8``/``bgra8``/``mono16``/``bgr16``.
* Bayer (``bayer_rggb8`` etc.; the name gives the 2x2 pattern at the top-left pixel): bilinear demosaicing in
  numpy, the same algorithm class as OpenCV's default ``COLOR_Bayer*2RGB`` that cv_bridge uses; borders use
  mirror padding, so edge pixels differ slightly from OpenCV's.
* CompressedImage: decoded with PIL (JPEG, PNG, anything PIL reads). The decoded file is true RGB whatever the
  ``format`` string says (image_transport's "rgb8; jpeg compressed bgr8" only records the transport's internal
  order). 16-bit PNGs become 8 bit by dropping the low byte (``v >> 8``), as ``cv::imdecode(IMREAD_ANYCOLOR)``
  does. ``compressedDepth`` (16UC1) payloads are accepted: the 12-byte depth header is skipped.

Every failure raises :class:`ImageDecodeError` with a machine-readable ``reason`` (see ``REASONS``).
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np

DEFAULT_MAX_PIXELS = 4096 * 4096

REASONS = (
    "unsupported_encoding",
    "step_mismatch",
    "truncated",
    "zero_size",
    "too_large",
    "corrupt_compressed",
)


class ImageDecodeError(ValueError):
    """An image message that cannot be turned into RGB; ``reason`` is one of :data:`REASONS`."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason


@dataclass(frozen=True)
class _Layout:
    channels: int
    bytes_per_channel: int
    kind: str  # "rgb", "bgr", "rgba", "bgra", "mono", or "bayer_xxxx"


def _build_layouts() -> dict[str, _Layout]:
    layouts = {
        "rgb8": _Layout(3, 1, "rgb"),
        "bgr8": _Layout(3, 1, "bgr"),
        "rgba8": _Layout(4, 1, "rgba"),
        "bgra8": _Layout(4, 1, "bgra"),
        "mono8": _Layout(1, 1, "mono"),
        "rgb16": _Layout(3, 2, "rgb"),
        "bgr16": _Layout(3, 2, "bgr"),
        "rgba16": _Layout(4, 2, "rgba"),
        "bgra16": _Layout(4, 2, "bgra"),
        "mono16": _Layout(1, 2, "mono"),
        "8UC1": _Layout(1, 1, "mono"),
        "8UC3": _Layout(3, 1, "bgr"),
        "8UC4": _Layout(4, 1, "bgra"),
        "16UC1": _Layout(1, 2, "mono"),
        "16UC3": _Layout(3, 2, "bgr"),
    }
    for pattern in ("rggb", "bggr", "gbrg", "grbg"):
        layouts[f"bayer_{pattern}8"] = _Layout(1, 1, f"bayer_{pattern}")
        layouts[f"bayer_{pattern}16"] = _Layout(1, 2, f"bayer_{pattern}")
    return layouts


LAYOUTS: dict[str, _Layout] = _build_layouts()
SUPPORTED_ENCODINGS: tuple[str, ...] = tuple(LAYOUTS)

# ITU-R BT.601 luma, as OpenCV's RGB2GRAY.
_LUMA = np.array([0.299, 0.587, 0.114])


def _as_uint8(data: Any) -> np.ndarray:
    """View message data (bytes, array('B'), memoryview, numpy, list) as flat uint8, without copying."""
    if isinstance(data, np.ndarray):
        return data.reshape(-1).view(np.uint8) if data.dtype.itemsize == 1 else data.astype(np.uint8).ravel()
    if isinstance(data, (bytes, bytearray, memoryview)):
        return np.frombuffer(data, dtype=np.uint8)
    try:
        return np.frombuffer(memoryview(data).cast("B"), dtype=np.uint8)  # array('B') and friends
    except TypeError:
        return np.asarray(data, dtype=np.uint8).ravel()


def _scale_16_to_8(values: np.ndarray) -> np.ndarray:
    """cv_bridge 16->8 bit: convertTo(CV_8U, alpha=255/65535) = saturate(round(v * 255 / 65535))."""
    # v * 255 / 65535 == v / 257; never a .5 tie for integer v, so rint matches OpenCV's cvRound.
    return np.rint(values.astype(np.float32) / np.float32(257.0)).astype(np.uint8)


def _resolve_encoding(encoding: str) -> _Layout:
    name = encoding.strip()
    layout = LAYOUTS.get(name) or LAYOUTS.get(name.lower()) or LAYOUTS.get(name.upper())
    if layout is None:
        raise ImageDecodeError(
            "unsupported_encoding",
            f"encoding {encoding!r} is not supported (supported: {', '.join(SUPPORTED_ENCODINGS)})",
        )
    return layout


def image_msg_to_rgb(msg: Any, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Convert a sensor_msgs/Image-like object to a new (H, W, 3) uint8 RGB array.

    Raises:
        ImageDecodeError: unsupported encoding, zero size, too many pixels, step/data inconsistent.
    """
    height, width = int(msg.height), int(msg.width)
    encoding = str(msg.encoding)
    layout = _resolve_encoding(encoding)
    if height <= 0 or width <= 0:
        raise ImageDecodeError("zero_size", f"image is {width}x{height}")
    if height * width > max_pixels:
        raise ImageDecodeError("too_large", f"{width}x{height} exceeds max_pixels={max_pixels}")
    pixel_bytes = layout.channels * layout.bytes_per_channel
    row_bytes = width * pixel_bytes
    step = int(msg.step)
    if step < row_bytes:
        raise ImageDecodeError(
            "step_mismatch", f"step {step} < width*bytes_per_pixel = {width}*{pixel_bytes} for {encoding}"
        )
    data = _as_uint8(msg.data)
    needed = height * step
    # Accept a last row without its padding bytes (some drivers send that); anything shorter is truncated.
    if data.size < (height - 1) * step + row_bytes:
        raise ImageDecodeError("truncated", f"data has {data.size} bytes, height*step = {needed}")
    if data.size > needed:
        raise ImageDecodeError("step_mismatch", f"data has {data.size} bytes, height*step = {needed}")
    if data.size < needed:
        data = np.concatenate([data, np.zeros(needed - data.size, np.uint8)])
    rows = data.reshape(height, step)[:, :row_bytes]
    if layout.bytes_per_channel == 2:
        dtype = np.dtype(">u2" if msg.is_bigendian else "<u2")
        raw16 = np.ascontiguousarray(rows).view(dtype).reshape(height, width, layout.channels)
        pixels = _scale_16_to_8(raw16)
    else:
        pixels = rows.reshape(height, width, layout.channels)
    return _to_rgb(pixels, layout.kind)


def _to_rgb(pixels: np.ndarray, kind: str) -> np.ndarray:
    if kind == "rgb":
        return np.ascontiguousarray(pixels)
    if kind == "bgr":
        return np.ascontiguousarray(pixels[..., ::-1])
    if kind == "rgba":
        return np.ascontiguousarray(pixels[..., :3])
    if kind == "bgra":
        return np.ascontiguousarray(pixels[..., 2::-1])
    if kind == "mono":
        return np.repeat(pixels, 3, axis=2)
    return demosaic_bilinear(pixels[..., 0], kind.removeprefix("bayer_"))


# --------------------------------------------------------------------------------------------- Bayer


def _bayer_masks(shape: tuple[int, int], pattern: str) -> dict[str, np.ndarray]:
    """Boolean masks of the R, G and B sites for a 2x2 pattern such as 'rggb' (row-major, top-left first)."""
    if len(pattern) != 4 or sorted(pattern) != ["b", "g", "g", "r"]:
        raise ImageDecodeError("unsupported_encoding", f"Bayer pattern {pattern!r}")
    rows = np.arange(shape[0])[:, None] % 2
    cols = np.arange(shape[1])[None, :] % 2
    cell = rows * 2 + cols
    return {c: np.isin(cell, [i for i, p in enumerate(pattern) if p == c]) for c in "rgb"}


def _convolve3x3(image: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """3x3 correlation with mirror ('reflect') padding, which keeps the Bayer parity at the borders."""
    padded = np.pad(image, 1, mode="reflect") if min(image.shape) > 1 else np.pad(image, 1, mode="edge")
    out = np.zeros(image.shape, np.float32)
    h, w = image.shape
    for dy in range(3):
        for dx in range(3):
            if kernel[dy, dx]:
                out += kernel[dy, dx] * padded[dy : dy + h, dx : dx + w]
    return out


_KERNEL_G = np.array([[0, 1, 0], [1, 4, 1], [0, 1, 0]], np.float32) / 4
_KERNEL_RB = np.array([[1, 2, 1], [2, 4, 2], [1, 2, 1]], np.float32) / 4


def demosaic_bilinear(raw: np.ndarray, pattern: str) -> np.ndarray:
    """Bilinear demosaicing of a (H, W) uint8 Bayer image; ``pattern``: 'rggb', 'bggr', 'gbrg' or 'grbg'.

    Each missing colour sample is the mean of its nearest same-colour neighbours (2 or 4); known samples are
    kept exactly. Returns (H, W, 3) uint8 RGB.
    """
    masks = _bayer_masks(raw.shape, pattern)
    source = raw.astype(np.float32)
    channels = []
    for colour, kernel in (("r", _KERNEL_RB), ("g", _KERNEL_G), ("b", _KERNEL_RB)):
        sparse = np.where(masks[colour], source, 0.0).astype(np.float32)
        channels.append(_convolve3x3(sparse, kernel))
    return np.clip(np.rint(np.stack(channels, axis=2)), 0, 255).astype(np.uint8)


def mosaic(rgb: np.ndarray, pattern: str) -> np.ndarray:
    """Inverse of demosaicing (tests/demos): keep the one colour sample per pixel that ``pattern`` records."""
    masks = _bayer_masks(rgb.shape[:2], pattern)
    out = np.zeros(rgb.shape[:2], rgb.dtype)
    for index, colour in enumerate("rgb"):
        out[masks[colour]] = rgb[..., index][masks[colour]]
    return out


# --------------------------------------------------------------------------------------- compressed


def _pil_image_module():
    from PIL import Image

    return Image


def compressed_msg_to_rgb(msg: Any, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode a sensor_msgs/CompressedImage-like object (JPEG, PNG, ...) to (H, W, 3) uint8 RGB.

    Raises:
        ImageDecodeError: empty or undecodable payload ("corrupt_compressed"), too many pixels, zero size.
    """
    fmt = str(getattr(msg, "format", "") or "").lower()
    payload = _as_uint8(msg.data)
    if "compresseddepth" in fmt:
        if payload.size <= 12:
            raise ImageDecodeError("corrupt_compressed", "compressedDepth payload shorter than its header")
        if "32fc1" in fmt:
            raise ImageDecodeError("unsupported_encoding", f"compressedDepth format {fmt!r} (float depth)")
        payload = payload[12:]
    if payload.size == 0:
        raise ImageDecodeError("corrupt_compressed", "empty CompressedImage data")
    return decode_image_bytes(payload.tobytes(), max_pixels=max_pixels)


def decode_image_bytes(blob: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode an encoded image file in memory (any format PIL reads) to (H, W, 3) uint8 RGB."""
    pil = _pil_image_module()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", pil.DecompressionBombWarning)
            image = pil.open(io.BytesIO(blob))
            width, height = image.size  # header only, nothing decoded yet
            if width <= 0 or height <= 0:
                raise ImageDecodeError("zero_size", f"compressed image is {width}x{height}")
            if width * height > max_pixels:
                raise ImageDecodeError("too_large", f"{width}x{height} exceeds max_pixels={max_pixels}")
            image.load()
    except ImageDecodeError:
        raise
    except (pil.DecompressionBombError, pil.DecompressionBombWarning) as error:
        raise ImageDecodeError("too_large", str(error)) from error
    except Exception as error:  # PIL raises OSError, SyntaxError, ValueError, struct.error ... on bad data
        raise ImageDecodeError("corrupt_compressed", f"{type(error).__name__}: {error}") from error
    return _pil_to_rgb(image)


def _pil_to_rgb(image: Any) -> np.ndarray:
    mode = image.mode
    if mode in ("I;16", "I;16B", "I;16L", "I"):
        values = np.asarray(image)
        if mode == "I" and values.size and values.max() <= 255 and values.min() >= 0:
            gray = values.astype(np.uint8)  # 8-bit data promoted to I by some decoders
        else:
            gray = (np.clip(values, 0, 65535).astype(np.uint16) >> 8).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=2)
    if mode == "F":
        raise ImageDecodeError("unsupported_encoding", "floating-point compressed image")
    if mode != "RGB":
        image = image.convert("RGB")  # L, LA, P, RGBA (alpha dropped as cv_bridge's RGBA2RGB), CMYK, YCbCr
    return np.array(image, dtype=np.uint8)


# ------------------------------------------------------------------------------------------ writing


def rgb_to_gray(rgb: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 -> (H, W) uint8 luma, as OpenCV's RGB2GRAY (BT.601 weights, rounded)."""
    return np.clip(np.rint(rgb.astype(np.float64) @ _LUMA), 0, 255).astype(np.uint8)


def rgb_to_image_fields(
    rgb: np.ndarray, encoding: str = "rgb8", *, step_padding: int = 0, bigendian: bool = False
) -> dict[str, Any]:
    """Encode (H, W, 3) uint8 RGB as sensor_msgs/Image fields (height, width, encoding, step, data, ...).

    Inverse of :func:`image_msg_to_rgb` up to the information the encoding keeps: mono encodings store the
    BT.601 luma, 16-bit encodings store ``v * 257`` (reads back exactly), Bayer encodings keep one colour
    sample per pixel. ``step_padding`` extra bytes (filled with 0xAB) end every row.
    """
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"expected (H, W, 3) uint8 RGB, got {rgb.shape} {rgb.dtype}")
    layout = _resolve_encoding(encoding)
    height, width = rgb.shape[:2]
    if layout.kind == "rgb":
        pixels = rgb
    elif layout.kind == "bgr":
        pixels = rgb[..., ::-1]
    elif layout.kind in ("rgba", "bgra"):
        alpha = np.full((height, width, 1), 255, np.uint8)
        pixels = np.concatenate([rgb if layout.kind == "rgba" else rgb[..., ::-1], alpha], axis=2)
    elif layout.kind == "mono":
        pixels = rgb_to_gray(rgb)[..., None]
    else:
        pixels = mosaic(rgb, layout.kind.removeprefix("bayer_"))[..., None]
    if layout.bytes_per_channel == 2:
        pixels = (pixels.astype(np.uint16) * 257).astype(">u2" if bigendian else "<u2")
    row = np.ascontiguousarray(pixels).reshape(height, -1).view(np.uint8)
    if step_padding:
        row = np.concatenate([row, np.full((height, step_padding), 0xAB, np.uint8)], axis=1)
    return {
        "height": height,
        "width": width,
        "encoding": encoding,
        "is_bigendian": int(bool(bigendian) and layout.bytes_per_channel == 2),
        "step": row.shape[1],
        "data": row.tobytes(),
    }


def rgb_to_compressed_bytes(rgb: np.ndarray, fmt: str = "jpeg", *, quality: int = 90) -> bytes:
    """Encode (H, W, 3) uint8 RGB as a JPEG or PNG file in memory (for CompressedImage.data)."""
    pil = _pil_image_module()
    name = fmt.strip().lower()
    kinds = {"jpeg": "JPEG", "jpg": "JPEG", "png": "PNG"}
    if name not in kinds:
        raise ValueError(f"compressed format must be one of {sorted(kinds)}, got {fmt!r}")
    buffer = io.BytesIO()
    options = {"quality": quality} if kinds[name] == "JPEG" else {}
    pil.fromarray(np.ascontiguousarray(rgb, dtype=np.uint8)).save(buffer, kinds[name], **options)
    return buffer.getvalue()
