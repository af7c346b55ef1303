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
* Bayer (``bayer_rggb8`` etc.; the name gives the 2x2 pattern at the top-left pixel): OpenCV's bilinear
  ``COLOR_Bayer<PATTERN>2RGB``, what cv_bridge uses, with the 1-pixel border redone by our numpy bilinear
  demosaic (mirror padding): OpenCV copies its border from the next row/column and so changes measured
  samples there.
* CompressedImage: JPEG and PNG (8 and 16 bit) are decoded with ``cv2.imdecode(IMREAD_COLOR_RGB)``; anything
  else (BMP, TIFF, WebP, a JPEG without its end marker ...) with PIL. The decoded file is true RGB
  whatever the ``format`` string says (image_transport's "rgb8; jpeg compressed bgr8" only records the
  transport's internal order). 16-bit PNGs become 8 bit by dropping the low byte (``v >> 8``), as
  ``cv::imdecode`` does. ``compressedDepth`` (16UC1) payloads are accepted: the 12-byte depth header is
  skipped.

Decode path: raw pixels are viewed in place with ``np.frombuffer`` on the message buffer (no copy; the
rgb8 result of an unpadded image *is* a read-only view of ``msg.data``); a padded short last row is read
through a strided view, never padded. Channel reorder, gray replication, Bayer demosaicing and 16 -> 8 bit
scaling run in OpenCV (``cv2.cvtColor`` / ``cv2.convertScaleAbs``, a runtime dependency), writing into a
caller-owned ``out`` buffer when one is given.

Library audit (640x480, min of 30 runs, ms; 2-core AMD EPYC shared with other jobs, so figures are rough):
what is ours is kept only where the library is wrong or slower.

* Channel reorder / gray / 16-bit: OpenCV (bgr8 0.022, mono8 0.020, rgba8 0.024, rgb16 0.070); the numpy
  fallback it replaced took 0.74 / 0.31 / 0.90 / 0.27 and is gone (OpenCV is a declared dependency).
* Bayer: plain ``cv2.cvtColor`` 0.10 changes 1444 measured border samples of a 640x480 frame; ours
  (OpenCV + border redo) 0.93 changes none. Numpy alone took 24.
* JPEG / PNG decode: ``cv2.imdecode`` (JPEG 0.57, 8-bit PNG 1.60, 16-bit PNG 1.62; PIL 0.75 / 2.17 /
  1.59, same pixels). The header checks are ours: 1-2 us against 8-16 us for ``PIL.Image.open``, and
  OpenCV has no header-only read.
* ``rgb_to_gray`` (writing mono encodings): ours, exactly rounded BT.601 (0.41); ``cv2.cvtColor`` is faster
  (0.06) but its fixed-point weights are off by one in 285 of 307200 pixels.
* ``mosaic`` (writing Bayer encodings): ours (no library function). Encoding to JPEG / PNG: PIL (0.63 /
  13.3) against ``cv2.imencode`` (1.21 / 14.0).
* ``rosbags-image`` 0.10.4 (not a dependency) calls the same OpenCV functions but ignores ``step`` (a padded
  row shears the image), checks no header or pixel limit, rounds 16 -> 8 bit down instead of to nearest,
  reads ``8UC3`` as it is instead of as BGR, and leaves the Bayer border as OpenCV does.

Untrusted input: :func:`check_image_header` validates a message from its header fields and the *length*
of its data (Image: encoding, ``height``, ``width``, ``step`` and ``len(data)`` against each other and
against the pixel limit; CompressedImage: payload size, magic bytes and the dimensions in the file header)
without reading pixels or allocating, so a subscriber can drop bad frames before they take a queue slot.
The decoders run the same checks first. One pixel limit covers every reader (messages, bags, image files):
``max_pixels`` per call, else the ``TSCM_MAX_PIXELS`` environment variable, else 4096 * 4096
(:data:`DEFAULT_MAX_PIXELS`).

Every failure raises :class:`ImageDecodeError` with a machine-readable ``reason`` (see ``REASONS``).
"""

from __future__ import annotations

import io
import os
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np

MAX_PIXELS_ENV = "TSCM_MAX_PIXELS"
BUILTIN_MAX_PIXELS = 4096 * 4096
# A last row shorter than ``step`` (its padding left out, which some drivers do) is accepted only when the
# padding it omits is at most this many bytes: row alignment, never a 4 GB ``step`` on a 3-byte buffer.
MAX_ROW_PADDING = 4096

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


def _parse_max_pixels(value: Any, what: str) -> int:
    try:
        number = int(float(value)) if isinstance(value, str) else int(value)
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be a positive integer, got {value!r}") from None
    if number <= 0:
        raise ValueError(f"{what} must be a positive integer, got {value!r}")
    return number


def resolve_max_pixels(max_pixels: int | None = None) -> int:
    """The pixel limit to apply: ``max_pixels`` if given, else ``$TSCM_MAX_PIXELS``, else 4096 * 4096."""
    if max_pixels is not None:
        return _parse_max_pixels(max_pixels, "max_pixels")
    env = os.environ.get(MAX_PIXELS_ENV, "").strip()
    return _parse_max_pixels(env, MAX_PIXELS_ENV) if env else BUILTIN_MAX_PIXELS


def _default_max_pixels() -> int:
    try:
        return resolve_max_pixels()
    except ValueError as error:  # a bad environment variable must not break every import
        warnings.warn(f"{error}; using {BUILTIN_MAX_PIXELS}", stacklevel=2)
        return BUILTIN_MAX_PIXELS


DEFAULT_MAX_PIXELS = _default_max_pixels()


def _too_large(width: int, height: int, limit: int, what: str = "image") -> ImageDecodeError:
    return ImageDecodeError(
        "too_large",
        f"{what} is {width}x{height} = {width * height / 1e6:.1f} MP, over the pixel limit "
        f"{limit} ({limit / 1e6:.1f} MP; max_pixels / ${MAX_PIXELS_ENV})",
    )


def check_pixel_count(width: int, height: int, max_pixels: int | None = None, what: str = "image") -> None:
    """Raise ``zero_size`` / ``too_large`` for a ``width`` x ``height`` image against the pixel limit."""
    if width <= 0 or height <= 0:
        raise ImageDecodeError("zero_size", f"{what} is {width}x{height}")
    limit = resolve_max_pixels(max_pixels)
    if width * height > limit:
        raise _too_large(width, height, limit, what)


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

_CV2: Any = None


def _cv2() -> Any:
    """The cv2 module (a runtime dependency: ``opencv-python-headless`` / ``python3-opencv``), imported on
    first use so that importing this module stays cheap."""
    global _CV2
    if _CV2 is None:
        import cv2

        _CV2 = cv2
    return _CV2


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


def _data_size(data: Any) -> int:
    """Number of bytes in message data, from its length only (no copy, no pixel access)."""
    if isinstance(data, np.ndarray):
        return int(data.size)  # one byte per element (_as_uint8 casts wider items to uint8)
    if isinstance(data, memoryview):
        return data.nbytes
    if isinstance(data, (bytes, bytearray)):
        return len(data)
    try:
        with memoryview(data) as view:  # array('B') and other buffers
            return view.nbytes
    except TypeError:
        return len(data)


def _scale_16_to_8(values: np.ndarray) -> np.ndarray:
    """cv_bridge 16->8 bit: convertTo(CV_8U, alpha=255/65535) = saturate(round(v * 255 / 65535)).

    ``values``: (H, W, C) uint16 with C <= 4.
    """
    return _cv2().convertScaleAbs(values, alpha=255.0 / 65535.0).reshape(values.shape)


def _resolve_encoding(encoding: str) -> _Layout:
    name = encoding.strip()
    layout = LAYOUTS.get(name) or LAYOUTS.get(name.lower()) or LAYOUTS.get(name.upper())
    if layout is None:
        raise ImageDecodeError(
            "unsupported_encoding",
            f"encoding {encoding!r} is not supported (supported: {', '.join(SUPPORTED_ENCODINGS)})",
        )
    return layout


@dataclass(frozen=True)
class RawGeometry:
    """What :func:`check_raw_header` validated: layout, size, step and how many data bytes there are."""

    layout: _Layout
    height: int
    width: int
    step: int
    row_bytes: int
    data_bytes: int


def check_raw_header(msg: Any, max_pixels: int | None = None) -> RawGeometry:
    """Validate a sensor_msgs/Image from its header fields and ``len(data)`` only (no pixel access).

    Checks, in order: the encoding is supported; ``height``, ``width`` > 0 (``zero_size``); ``height *
    width`` within the pixel limit (``too_large``); ``step >= width * bytes_per_pixel`` and ``len(data) <=
    height * step`` (``step_mismatch``); ``len(data) >= (height - 1) * step + width * bytes_per_pixel``
    (``truncated``); a last row shorter than ``step`` only when the padding it leaves out is at most
    :data:`MAX_ROW_PADDING` bytes (``step_mismatch``).
    """
    layout = _resolve_encoding(str(msg.encoding))
    height, width, step = int(msg.height), int(msg.width), int(msg.step)
    check_pixel_count(width, height, max_pixels)
    pixel_bytes = layout.channels * layout.bytes_per_channel
    row_bytes = width * pixel_bytes
    if step < row_bytes:
        raise ImageDecodeError(
            "step_mismatch", f"step {step} < width*bytes_per_pixel = {width}*{pixel_bytes} for {msg.encoding}"
        )
    size = _data_size(msg.data)
    needed = height * step
    if size > needed:
        raise ImageDecodeError("step_mismatch", f"data has {size} bytes, height*step = {needed}")
    if size < needed:
        if size < (height - 1) * step + row_bytes:
            raise ImageDecodeError("truncated", f"data has {size} bytes, height*step = {needed}")
        if step - row_bytes > MAX_ROW_PADDING:
            raise ImageDecodeError(
                "step_mismatch",
                f"data has {size} bytes, height*step = {needed}: a last row without its padding is "
                f"accepted only for <= {MAX_ROW_PADDING} padding bytes, step {step} leaves "
                f"{step - row_bytes}",
            )
    return RawGeometry(layout, height, width, step, row_bytes, size)


def check_image_header(msg: Any, max_pixels: int | None = None) -> None:
    """Cheap validation of an Image or CompressedImage (dispatch on a ``format`` field); raises on a bad one.

    No pixel is read and nothing image-sized is allocated: the Image check uses the header fields and
    ``len(data)``; the CompressedImage check reads the magic bytes and the dimensions in the file header
    (PNG IHDR, JPEG SOF; PIL's header parser for other formats). Meant for a subscription callback, so a
    bad frame is counted and dropped before it takes the processing slot. Raises :class:`ImageDecodeError`.
    """
    if hasattr(msg, "format") and not hasattr(msg, "encoding"):
        check_compressed_header(msg, max_pixels)
    else:
        check_raw_header(msg, max_pixels)


def _check_out(out: np.ndarray | None, height: int, width: int) -> None:
    if out is None:
        return
    if (
        not isinstance(out, np.ndarray)
        or out.dtype != np.uint8
        or out.shape != (height, width, 3)
        or not out.flags.c_contiguous
        or not out.flags.writeable
    ):
        got = f"{out.shape} {out.dtype}" if isinstance(out, np.ndarray) else type(out).__name__
        raise ValueError(
            f"out must be a writeable C-contiguous ({height}, {width}, 3) uint8 array, got {got}"
        )


def image_msg_to_rgb(msg: Any, *, max_pixels: int | None = None, out: np.ndarray | None = None) -> np.ndarray:
    """Convert a sensor_msgs/Image-like object to an (H, W, 3) uint8 RGB array.

    The header is validated first (:func:`check_raw_header`), before anything is allocated. For an
    unpadded ``rgb8`` image the result is a view of ``msg.data`` (read-only when the data is ``bytes``);
    other encodings produce a new array, or fill ``out`` (a caller-owned (H, W, 3) uint8 buffer, reused
    across frames; only reuse it once the previous frame is no longer needed) and return it.

    Raises:
        ImageDecodeError: unsupported encoding, zero size, too many pixels, step/data inconsistent.
        ValueError: ``out`` has the wrong shape or type.
    """
    geometry = check_raw_header(msg, max_pixels)
    height, width, step, row_bytes = geometry.height, geometry.width, geometry.step, geometry.row_bytes
    layout = geometry.layout
    _check_out(out, height, width)
    data = _as_uint8(msg.data)
    if data.size == height * step:
        rows = data.reshape(height, step)[:, :row_bytes]
    else:  # last row without its padding: a strided view over the bytes that exist, never padded
        rows = np.lib.stride_tricks.as_strided(data, (height, row_bytes), (step, 1), writeable=False)
    if layout.bytes_per_channel == 2:
        dtype = np.dtype(">u2" if msg.is_bigendian else "<u2")
        raw16 = (rows if step % 2 == 0 else np.ascontiguousarray(rows)).view(dtype)
        if not dtype.isnative:
            raw16 = raw16.astype(np.uint16)  # byte swap to native
        pixels = _scale_16_to_8(raw16.reshape(height, width, layout.channels))
    else:
        pixels = rows.reshape(height, width, layout.channels)
    return _to_rgb(pixels, layout.kind, out)


_CV2_CODES = {
    "bgr": "COLOR_BGR2RGB",
    "rgba": "COLOR_RGBA2RGB",
    "bgra": "COLOR_BGRA2RGB",
    "mono": "COLOR_GRAY2RGB",
}


def _to_rgb(pixels: np.ndarray, kind: str, out: np.ndarray | None = None) -> np.ndarray:
    if kind == "rgb":
        if out is not None:
            np.copyto(out, pixels)
            return out
        return np.ascontiguousarray(pixels)
    cv2 = _cv2()
    source = pixels[..., 0] if pixels.shape[2] == 1 else pixels
    if kind.startswith("bayer_"):
        code = getattr(cv2, f"COLOR_Bayer{kind.removeprefix('bayer_').upper()}2RGB")
    else:
        code = getattr(cv2, _CV2_CODES[kind])
    try:
        result = cv2.cvtColor(source, code, dst=out)
    except cv2.error:  # a strided view OpenCV will not wrap: hand it a contiguous copy
        result = cv2.cvtColor(np.ascontiguousarray(source), code, dst=out)
    if kind.startswith("bayer_"):
        _bayer_border(result, source, kind.removeprefix("bayer_"))
    return result


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


def _bayer_border(rgb: np.ndarray, raw: np.ndarray, pattern: str) -> None:
    """Redo the 1-pixel border of an OpenCV demosaic with :func:`demosaic_bilinear` (in place).

    OpenCV copies its border from the neighbouring computed row/column, so a measured sample on the edge is
    lost; the numpy algorithm (mirror padding) keeps every measured sample. Strips start at even offsets so
    the 2x2 pattern is unchanged; they cost ~0.3 ms at 640x480.
    """
    height, width = raw.shape
    if height < 4 or width < 4:
        rgb[...] = demosaic_bilinear(raw, pattern)
        return
    bottom, right = (height - 3) & ~1, (width - 3) & ~1
    rgb[0] = demosaic_bilinear(raw[:3], pattern)[0]
    rgb[-1] = demosaic_bilinear(raw[bottom:], pattern)[-1]
    rgb[:, 0] = demosaic_bilinear(raw[:, :3], pattern)[:, 0]
    rgb[:, -1] = demosaic_bilinear(raw[:, right:], pattern)[:, -1]


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

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_JPEG_SOF = frozenset((0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF))


@dataclass(frozen=True)
class CompressedHeader:
    """What :func:`check_compressed_header` read from the file header."""

    kind: str  # "jpeg", "png" or the PIL format name ("bmp", "tiff", "webp" ...)
    width: int
    height: int
    bit_depth: int = 8  # PNG only; 8 otherwise


def _pil_image_module():
    from PIL import Image

    return Image


def _compressed_payload(msg: Any) -> np.ndarray:
    """The encoded file in a CompressedImage as a uint8 view (compressedDepth's 12-byte header skipped)."""
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
    return payload


def _jpeg_size(buf: memoryview) -> tuple[int, int]:
    """(width, height) from the first JPEG frame header (SOFn), walking the marker segments."""
    size, i = len(buf), 2
    while i + 4 <= size:
        if buf[i] != 0xFF:
            raise ImageDecodeError("corrupt_compressed", f"JPEG: no marker at byte {i}")
        marker = buf[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in (0x01, 0xD8) or 0xD0 <= marker <= 0xD7:  # markers without a length
            i += 2
            continue
        if marker in (0xD9, 0xDA):
            break  # end of image / start of scan before any frame header
        length = (buf[i + 2] << 8) | buf[i + 3]
        if length < 2:
            raise ImageDecodeError("corrupt_compressed", f"JPEG: segment length {length} at byte {i}")
        if marker in _JPEG_SOF:
            if i + 9 > size:
                break
            return (buf[i + 7] << 8) | buf[i + 8], (buf[i + 5] << 8) | buf[i + 6]
        i += 2 + length
    raise ImageDecodeError("corrupt_compressed", "JPEG: no frame header (truncated or not a JPEG)")


def _sniff_header(payload: np.ndarray) -> CompressedHeader:
    buf = memoryview(payload)
    if bytes(buf[:8]) == _PNG_SIGNATURE:
        if len(buf) < 33 or bytes(buf[12:16]) != b"IHDR":
            raise ImageDecodeError("corrupt_compressed", "PNG without an IHDR header")
        width = int.from_bytes(buf[16:20], "big")
        height = int.from_bytes(buf[20:24], "big")
        return CompressedHeader("png", width, height, int(buf[24]))
    if bytes(buf[:3]) == b"\xff\xd8\xff":
        width, height = _jpeg_size(buf)
        return CompressedHeader("jpeg", width, height)
    pil = _pil_image_module()  # other formats: PIL's header parser (reads the header, decodes nothing)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", pil.DecompressionBombWarning)
            with pil.open(io.BytesIO(payload.tobytes())) as image:
                width, height = image.size
                kind = str(image.format or "unknown").lower()
    except pil.DecompressionBombError as error:
        raise ImageDecodeError("too_large", str(error)) from error
    except Exception as error:  # PIL raises UnidentifiedImageError, OSError, SyntaxError ... on bad data
        head = bytes(buf[:8]).hex(" ")
        raise ImageDecodeError(
            "corrupt_compressed", f"not a JPEG, PNG or other image PIL reads (first bytes {head}): {error}"
        ) from error
    return CompressedHeader(kind, width, height)


def check_compressed_header(msg: Any, max_pixels: int | None = None) -> CompressedHeader:
    """Validate a sensor_msgs/CompressedImage from its payload size, magic bytes and file header only.

    Raises ``corrupt_compressed`` (empty, unknown magic, header truncated), ``zero_size`` or ``too_large``
    (dimensions in the header over the pixel limit) before any pixel is decoded.
    """
    header = _sniff_header(_compressed_payload(msg))
    check_pixel_count(header.width, header.height, max_pixels, f"compressed {header.kind} image")
    return header


def compressed_msg_to_rgb(msg: Any, *, max_pixels: int | None = None) -> np.ndarray:
    """Decode a sensor_msgs/CompressedImage-like object (JPEG, PNG, ...) to (H, W, 3) uint8 RGB.

    Raises:
        ImageDecodeError: empty or undecodable payload ("corrupt_compressed"), too many pixels, zero size.
    """
    return _decode_payload(_compressed_payload(msg), max_pixels)


def decode_image_bytes(blob: bytes | np.ndarray, *, max_pixels: int | None = None) -> np.ndarray:
    """Decode an encoded image file in memory (JPEG, PNG, anything PIL reads) to (H, W, 3) uint8 RGB."""
    payload = _as_uint8(blob)
    if payload.size == 0:
        raise ImageDecodeError("corrupt_compressed", "empty image data")
    return _decode_payload(payload, max_pixels)


def _decode_payload(payload: np.ndarray, max_pixels: int | None) -> np.ndarray:
    header = _sniff_header(payload)
    check_pixel_count(header.width, header.height, max_pixels, f"compressed {header.kind} image")
    # OpenCV: PNG (8 and 16 bit), and JPEG with its end marker (libjpeg would pad a truncated one with gray
    # and only warn; PIL refuses it, so those go to PIL, as do the formats OpenCV's wheel may lack)
    fast = header.kind == "png" or (header.kind == "jpeg" and bytes(memoryview(payload)[-2:]) == b"\xff\xd9")
    if fast:
        cv2 = _cv2()
        image = cv2.imdecode(payload, cv2.IMREAD_COLOR_RGB)
        if image is not None and image.shape[:2] == (header.height, header.width):
            return image
    return _decode_with_pil(payload, max_pixels)


def _decode_with_pil(payload: np.ndarray, max_pixels: int | None) -> np.ndarray:
    pil = _pil_image_module()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", pil.DecompressionBombWarning)
            image = pil.open(io.BytesIO(payload.tobytes()))
            width, height = image.size  # header only, nothing decoded yet
            check_pixel_count(width, height, max_pixels, "compressed image")
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
