"""sensor_msgs Image / CompressedImage -> RGB conversion (tscm_ros.images), header checks, pixel limit."""

from __future__ import annotations

import io
import struct
import tracemalloc
import zlib
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image as PILImage

from tscm_ros.images import (
    MAX_PIXELS_ENV,
    MAX_ROW_PADDING,
    ImageDecodeError,
    check_compressed_header,
    check_image_header,
    compressed_msg_to_rgb,
    decode_image_bytes,
    image_msg_to_rgb,
    resolve_max_pixels,
    rgb_to_compressed_bytes,
    rgb_to_image_fields,
)


def smooth_rgb(height: int = 24, width: int = 32) -> np.ndarray:
    """A smooth colour image (small gradients, so bilinear demosaicing is accurate inside)."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    rgb = np.stack(
        [120 + 80 * np.sin(x / 9.0), 110 + 70 * np.cos(y / 8.0), 90 + 60 * np.sin((x + y) / 12.0)], axis=2
    )
    return np.rint(rgb).astype(np.uint8)


def msg(height, width, encoding, step, data, is_bigendian=0):
    return SimpleNamespace(
        height=height, width=width, encoding=encoding, step=step, data=data, is_bigendian=is_bigendian
    )


@pytest.fixture(scope="module")
def rgb() -> np.ndarray:
    return smooth_rgb()


# ------------------------------------------------------------------------------- hand-built messages


def test_rgb8_bgr8_rgba8_bgra8_hand_built(rgb):
    h, w = rgb.shape[:2]
    alpha = np.full((h, w, 1), 7, np.uint8)
    cases = {
        "rgb8": rgb,
        "bgr8": rgb[..., ::-1],
        "8UC3": rgb[..., ::-1],  # OpenCV convention: a 3-channel Mat is BGR
        "rgba8": np.concatenate([rgb, alpha], 2),
        "bgra8": np.concatenate([rgb[..., ::-1], alpha], 2),
        "8UC4": np.concatenate([rgb[..., ::-1], alpha], 2),
    }
    for encoding, pixels in cases.items():
        data = np.ascontiguousarray(pixels).tobytes()
        out = image_msg_to_rgb(msg(h, w, encoding, w * pixels.shape[2], data))
        assert out.shape == (h, w, 3) and out.dtype == np.uint8, encoding
        np.testing.assert_array_equal(out, rgb, err_msg=encoding)


def test_mono8_and_8uc1_replicate_gray():
    gray = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    for encoding in ("mono8", "8UC1"):
        out = image_msg_to_rgb(msg(3, 4, encoding, 4, gray.tobytes()))
        for channel in range(3):
            np.testing.assert_array_equal(out[..., channel], gray)


@pytest.mark.parametrize("encoding", ["mono16", "16UC1"])
@pytest.mark.parametrize("bigendian", [False, True])
def test_mono16_scales_like_cv_bridge(encoding, bigendian):
    # cv_bridge: convertTo(CV_8U, 255/65535) -> round(v * 255 / 65535)
    values = np.array([[0, 128, 129, 65535], [257 * 100, 257 * 100 + 128, 257 * 100 + 129, 1000]], np.uint16)
    expected = np.array([[0, 0, 1, 255], [100, 100, 101, 4]], np.uint8)
    data = values.astype(">u2" if bigendian else "<u2").tobytes()
    out = image_msg_to_rgb(msg(2, 4, encoding, 8, data, is_bigendian=int(bigendian)))
    np.testing.assert_array_equal(out[..., 0], expected)
    np.testing.assert_array_equal(out[..., 2], expected)


def test_big_endian_flag_matters():
    data = np.array([[256]], ">u2").tobytes()  # bytes 01 00
    big = image_msg_to_rgb(msg(1, 1, "mono16", 2, data, is_bigendian=1))
    little = image_msg_to_rgb(msg(1, 1, "mono16", 2, data, is_bigendian=0))
    assert big[0, 0, 0] == 1  # 256 / 257 -> 1
    assert little[0, 0, 0] == 0  # 1 / 257 -> 0


def test_step_padding_is_skipped(rgb):
    h, w = rgb.shape[:2]
    padded = np.concatenate([rgb.reshape(h, w * 3), np.full((h, 5), 99, np.uint8)], axis=1)
    out = image_msg_to_rgb(msg(h, w, "rgb8", w * 3 + 5, padded.tobytes()))
    np.testing.assert_array_equal(out, rgb)


def test_uniform_bayer_demosaics_exactly():
    colour = np.array([200, 100, 50], np.uint8)
    layouts = {
        "rggb": [[0, 1], [1, 2]],
        "bggr": [[2, 1], [1, 0]],
        "gbrg": [[1, 2], [0, 1]],
        "grbg": [[1, 0], [2, 1]],
    }
    for pattern, cell in layouts.items():
        channel_index = np.tile(np.array(cell), (3, 4))  # 6 x 8
        raw = colour[channel_index]
        out = image_msg_to_rgb(msg(6, 8, f"bayer_{pattern}8", 8, raw.tobytes()))
        assert (out == colour).all(), pattern


@pytest.mark.parametrize("pattern", ["rggb", "bggr", "gbrg", "grbg"])
def test_bayer_reconstructs_smooth_source(rgb, pattern):
    fields = rgb_to_image_fields(rgb, f"bayer_{pattern}8")
    assert fields["step"] == rgb.shape[1]
    out = image_msg_to_rgb(SimpleNamespace(**fields)).astype(int)
    error = np.abs(out - rgb.astype(int))
    # Gradients here are <= 9 levels/pixel: bilinear interpolation is accurate to ~2 levels inside, worse at
    # the border where only one side exists (mirror padding).
    assert error[1:-1, 1:-1].max() <= 3, error[1:-1, 1:-1].max()
    assert error.mean() < 1.0
    assert error.max() <= 12


def test_bayer_keeps_measured_samples(rgb):
    fields = rgb_to_image_fields(rgb, "bayer_rggb8")
    out = image_msg_to_rgb(SimpleNamespace(**fields))
    np.testing.assert_array_equal(out[0::2, 0::2, 0], rgb[0::2, 0::2, 0])  # R sites
    np.testing.assert_array_equal(out[1::2, 1::2, 2], rgb[1::2, 1::2, 2])  # B sites
    np.testing.assert_array_equal(out[0::2, 1::2, 1], rgb[0::2, 1::2, 1])  # G sites


# --------------------------------------------------------------------------------------- round trips


ROUND_TRIP_EXACT = ["rgb8", "bgr8", "rgba8", "bgra8", "8UC3", "rgb16", "bgr16", "16UC3"]
ROUND_TRIP_GRAY = ["mono8", "8UC1", "mono16", "16UC1"]


@pytest.mark.parametrize("encoding", ROUND_TRIP_EXACT)
@pytest.mark.parametrize("padding", [0, 3])
@pytest.mark.parametrize("bigendian", [False, True])
def test_round_trip_colour(rgb, encoding, padding, bigendian):
    fields = rgb_to_image_fields(rgb, encoding, step_padding=padding, bigendian=bigendian)
    assert fields["encoding"] == encoding and isinstance(fields["data"], bytes)
    assert len(fields["data"]) == fields["height"] * fields["step"]
    np.testing.assert_array_equal(image_msg_to_rgb(SimpleNamespace(**fields)), rgb)


@pytest.mark.parametrize("encoding", ROUND_TRIP_GRAY)
@pytest.mark.parametrize("bigendian", [False, True])
def test_round_trip_gray(rgb, encoding, bigendian):
    fields = rgb_to_image_fields(rgb, encoding, step_padding=2, bigendian=bigendian)
    out = image_msg_to_rgb(SimpleNamespace(**fields)).astype(float)
    luma = 0.299 * rgb[..., 0] + 0.587 * rgb[..., 1] + 0.114 * rgb[..., 2]  # BT.601 as OpenCV RGB2GRAY
    assert np.abs(out[..., 1] - luma).max() <= 0.5 + 1e-9
    assert (out[..., 0] == out[..., 2]).all()


def test_rclpy_and_rosbags_message_types(rgb):
    from rosbags.typesys import Stores, get_typestore
    from sensor_msgs.msg import Image

    fields = rgb_to_image_fields(rgb, "bgr8", step_padding=1)
    ros_msg = Image(**{k: v for k, v in fields.items() if k != "data"})
    ros_msg.data = fields["data"]
    np.testing.assert_array_equal(image_msg_to_rgb(ros_msg), rgb)

    store = get_typestore(Stores.ROS2_KILTED)
    image_type = store.types["sensor_msgs/msg/Image"]
    header = store.types["std_msgs/msg/Header"](
        stamp=store.types["builtin_interfaces/msg/Time"](sec=1, nanosec=2), frame_id="cam"
    )
    bag_msg = image_type(header=header, **{**fields, "data": np.frombuffer(fields["data"], np.uint8)})
    raw = store.serialize_cdr(bag_msg, "sensor_msgs/msg/Image")
    decoded = store.deserialize_cdr(raw, "sensor_msgs/msg/Image")
    assert isinstance(decoded.data, np.ndarray)
    np.testing.assert_array_equal(image_msg_to_rgb(decoded), rgb)


# ------------------------------------------------------------------------------------------ errors


def reason_of(message, **kwargs) -> str:
    with pytest.raises(ImageDecodeError) as info:
        image_msg_to_rgb(message, **kwargs)
    assert isinstance(info.value, ValueError)
    return info.value.reason


def test_error_reasons():
    assert reason_of(msg(2, 2, "yuv420p_weird", 6, bytes(12))) == "unsupported_encoding"
    assert reason_of(msg(2, 2, "32FC1", 8, bytes(16))) == "unsupported_encoding"
    assert reason_of(msg(2, 4, "rgb8", 11, bytes(22))) == "step_mismatch"  # step < 4*3
    assert reason_of(msg(2, 4, "mono16", 7, bytes(14))) == "step_mismatch"  # step < 4*2
    assert reason_of(msg(2, 4, "rgb8", 12, bytes(30))) == "step_mismatch"  # more data than height*step
    assert reason_of(msg(2, 4, "rgb8", 12, bytes(23))) == "truncated"
    assert reason_of(msg(3, 4, "rgb8", 12, b"")) == "truncated"
    assert reason_of(msg(0, 4, "rgb8", 12, b"")) == "zero_size"
    assert reason_of(msg(4, 0, "rgb8", 0, b"")) == "zero_size"
    assert reason_of(msg(20, 20, "rgb8", 60, bytes(1200)), max_pixels=399) == "too_large"


def test_huge_header_rejected_without_allocating():
    tracemalloc.start()
    try:
        reason = reason_of(msg(10000, 10000, "rgb8", 30000, bytes(64)))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert reason == "too_large"
    assert peak < 5 * 2**20, peak


def test_last_row_without_padding_accepted(rgb):
    h, w = rgb.shape[:2]
    padded = np.concatenate([rgb.reshape(h, w * 3), np.zeros((h, 4), np.uint8)], axis=1).tobytes()
    out = image_msg_to_rgb(msg(h, w, "rgb8", w * 3 + 4, padded[:-4]))
    np.testing.assert_array_equal(out, rgb)


# -------------------------------------------------------------------------------------- compressed


def cmsg(fmt: str, data) -> SimpleNamespace:
    return SimpleNamespace(format=fmt, data=data)


def test_png_is_lossless_and_jpeg_close(rgb):
    png = rgb_to_compressed_bytes(rgb, "png")
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    np.testing.assert_array_equal(compressed_msg_to_rgb(cmsg("png", png)), rgb)
    jpeg = rgb_to_compressed_bytes(rgb, "jpeg", quality=95)
    assert jpeg[:2] == b"\xff\xd8"
    for fmt in ("jpeg", "rgb8; jpeg compressed bgr8", ""):
        out = compressed_msg_to_rgb(cmsg(fmt, np.frombuffer(jpeg, np.uint8)))
        assert np.abs(out.astype(int) - rgb).mean() < 3.0


def pil_encode(image: PILImage.Image, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt)
    return buffer.getvalue()


def test_compressed_modes():
    gray = np.arange(0, 240, 10, dtype=np.uint8).reshape(4, 6)
    out = compressed_msg_to_rgb(cmsg("png", pil_encode(PILImage.fromarray(gray))))
    assert (out == gray[..., None]).all()

    depth = np.array([[0, 255, 256, 65535]], np.uint16)  # 16-bit PNG: cv::imdecode keeps the high byte
    out = compressed_msg_to_rgb(cmsg("16UC1; png", pil_encode(PILImage.fromarray(depth))))
    np.testing.assert_array_equal(out[0, :, 0], [0, 0, 1, 255])

    rgba = np.zeros((2, 3, 4), np.uint8)
    rgba[..., 0], rgba[..., 1], rgba[..., 2], rgba[..., 3] = 10, 20, 30, 0
    out = compressed_msg_to_rgb(cmsg("png", pil_encode(PILImage.fromarray(rgba))))
    assert (out == [10, 20, 30]).all()

    palette = PILImage.new("P", (3, 2))
    palette.putpalette([0, 0, 0, 250, 5, 7] + [0] * 762)
    palette.putpixel((1, 1), 1)
    out = compressed_msg_to_rgb(cmsg("png", pil_encode(palette)))
    assert tuple(out[1, 1]) == (250, 5, 7) and tuple(out[0, 0]) == (0, 0, 0)


def test_compressed_depth_header_skipped():
    depth = np.array([[0, 51400]], np.uint16)
    payload = struct.pack("<iff", 0, 0.0, 0.0) + pil_encode(PILImage.fromarray(depth))
    out = compressed_msg_to_rgb(cmsg("16UC1; compressedDepth png", payload))
    np.testing.assert_array_equal(out[0, :, 0], [0, 200])


def compressed_reason(fmt, data, **kwargs) -> str:
    with pytest.raises(ImageDecodeError) as info:
        compressed_msg_to_rgb(cmsg(fmt, data), **kwargs)
    return info.value.reason


def png_with_header_size(width: int, height: int) -> bytes:
    """A tiny 1x1 PNG whose IHDR (with a valid CRC) claims width x height."""
    png = bytearray(pil_encode(PILImage.new("RGB", (1, 1))))
    ihdr = png.index(b"IHDR")
    png[ihdr + 4 : ihdr + 12] = struct.pack(">II", width, height)
    png[ihdr + 17 : ihdr + 21] = struct.pack(">I", zlib.crc32(bytes(png[ihdr : ihdr + 17])))
    return bytes(png)


def test_compressed_errors(rgb):
    jpeg = rgb_to_compressed_bytes(rgb, "jpeg")
    assert compressed_reason("jpeg", jpeg[: len(jpeg) // 2]) == "corrupt_compressed"
    assert compressed_reason("jpeg", b"\xff\xd8\xff\xe0 this is not really a jpeg") == "corrupt_compressed"
    assert compressed_reason("png", b"") == "corrupt_compressed"
    tracemalloc.start()
    try:
        reason = compressed_reason("png", png_with_header_size(10000, 10000))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert reason == "too_large"
    assert peak < 5 * 2**20
    assert compressed_reason("png", rgb_to_compressed_bytes(rgb, "png"), max_pixels=100) == "too_large"


def test_writer_rejects_bad_input(rgb):
    with pytest.raises(ValueError):
        rgb_to_image_fields(rgb[..., 0], "rgb8")
    with pytest.raises(ImageDecodeError):
        rgb_to_image_fields(rgb, "nv12")
    with pytest.raises(ValueError):
        rgb_to_compressed_bytes(rgb, "webp2")


# ------------------------------------------------------------------- hostile headers, header-only checks


def peak_bytes_of(function, *args, **kwargs) -> tuple[BaseException | None, int]:
    """Run ``function``; return (the exception it raised or None, peak traced allocation in bytes)."""
    tracemalloc.start()
    error = None
    try:
        function(*args, **kwargs)
    except BaseException as exc:  # noqa: BLE001 - returned to the caller
        error = exc
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    return error, peak


def forty_byte_attack():
    """The 40-byte CDR sensor_msgs/Image: 1x1 rgb8, step 2**32 - 1, 3 data bytes, through rosbags."""
    from rosbags.typesys import Stores, get_typestore

    store = get_typestore(Stores.ROS2_KILTED)
    header = store.types["std_msgs/msg/Header"](
        stamp=store.types["builtin_interfaces/msg/Time"](sec=0, nanosec=0), frame_id=""
    )
    image = store.types["sensor_msgs/msg/Image"](
        header=header, height=1, width=1, encoding="rgb8", is_bigendian=0, step=2**32 - 1,
        data=np.array([1, 2, 3], np.uint8),
    )  # fmt: skip
    raw = store.serialize_cdr(image, "sensor_msgs/msg/Image")
    assert len(raw) < 64  # the attack is a tiny message (~40-50 bytes of CDR)
    return store.deserialize_cdr(raw, "sensor_msgs/msg/Image")


def test_forty_byte_attack_refused_before_allocating():
    attack = forty_byte_attack()
    for function in (check_image_header, image_msg_to_rgb):
        error, peak = peak_bytes_of(function, attack)
        assert isinstance(error, ImageDecodeError) and error.reason == "step_mismatch", error
        assert peak < 256 * 1024, peak  # the old decoder padded the row to 4 GiB
    plain = msg(1, 1, "rgb8", 2**32 - 1, b"\x01\x02\x03")
    assert reason_of(plain) == "step_mismatch"


def test_short_last_row_padding_bounded(rgb):
    h, w = rgb.shape[:2]
    for padding, accepted in ((8, True), (MAX_ROW_PADDING, True), (MAX_ROW_PADDING + 1, False)):
        step = w * 3 + padding
        rows = np.zeros((h, step), np.uint8)
        rows[:, : w * 3] = rgb.reshape(h, -1)
        data = rows.tobytes()[:-padding]  # last row without its padding
        message = msg(h, w, "rgb8", step, data)
        if accepted:
            check_image_header(message)
            np.testing.assert_array_equal(image_msg_to_rgb(message), rgb)
        else:
            assert reason_of(message) == "step_mismatch"


def test_check_image_header_reasons_without_pixel_access(rgb):
    class NoPixels(bytes):
        """bytes whose content must never be read by a header check (len() only)."""

        def __getitem__(self, index):
            raise AssertionError("header check read pixel data")

        def __buffer__(self, flags):
            raise AssertionError("header check took a buffer of the pixel data")

    h, w = rgb.shape[:2]
    assert check_image_header(msg(h, w, "rgb8", w * 3, NoPixels(h * w * 3))) is None
    cases = {
        "zero_size": msg(0, w, "rgb8", w * 3, NoPixels(0)),
        "too_large": msg(50_000, 50_000, "rgb8", 150_000, NoPixels(16)),
        "step_mismatch": msg(h, w, "rgb8", w * 3 - 1, NoPixels(h * w * 3)),
        "truncated": msg(h, w, "rgb8", w * 3, NoPixels(h * w * 3 - 1)),
        "unsupported_encoding": msg(h, w, "yuv422", w * 2, NoPixels(h * w * 2)),
    }
    for reason, message in cases.items():
        with pytest.raises(ImageDecodeError) as info:
            check_image_header(message)
        assert info.value.reason == reason
    with pytest.raises(ImageDecodeError, match="too_large"):
        check_image_header(msg(h, w, "rgb8", w * 3, NoPixels(h * w * 3)), max_pixels=h * w - 1)


def test_check_image_header_rclpy_message(rgb):
    from sensor_msgs.msg import CompressedImage, Image

    fields = rgb_to_image_fields(rgb, "bgr8")
    image = Image(**{k: v for k, v in fields.items() if k != "data"})
    image.data = fields["data"]
    check_image_header(image)
    image.step = 2**32 - 1
    with pytest.raises(ImageDecodeError, match="truncated"):
        check_image_header(image)
    image.height, image.width, image.data = 1, 1, b"abc"
    with pytest.raises(ImageDecodeError, match="step_mismatch"):
        check_image_header(image)
    compressed = CompressedImage(format="jpeg", data=rgb_to_compressed_bytes(rgb, "jpeg"))
    check_image_header(compressed)
    compressed.data = png_with_header_size(20_000, 20_000)
    with pytest.raises(ImageDecodeError, match="too_large"):
        check_image_header(compressed)


def jpeg_with_header_size(width: int, height: int) -> bytes:
    """A small real JPEG whose frame header (SOF0) claims width x height."""
    jpeg = bytearray(rgb_to_compressed_bytes(smooth_rgb(8, 8), "jpeg"))
    sof = jpeg.index(b"\xff\xc0")
    jpeg[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(jpeg)


def test_check_compressed_header(rgb):
    h, w = rgb.shape[:2]
    for fmt in ("jpeg", "png"):
        header = check_compressed_header(cmsg(fmt, rgb_to_compressed_bytes(rgb, fmt)))
        assert (header.kind, header.width, header.height) == (fmt, w, h)
    bmp = pil_encode(PILImage.fromarray(rgb), "BMP")
    assert check_compressed_header(cmsg("bmp", bmp)).kind == "bmp"
    np.testing.assert_array_equal(compressed_msg_to_rgb(cmsg("bmp", bmp)), rgb)
    for payload in (png_with_header_size(30_000, 30_000), jpeg_with_header_size(60_000, 60_000)):
        error, peak = peak_bytes_of(check_compressed_header, cmsg("", payload))
        assert isinstance(error, ImageDecodeError) and error.reason == "too_large", error
        assert peak < 256 * 1024
        error, peak = peak_bytes_of(compressed_msg_to_rgb, cmsg("", payload))
        assert isinstance(error, ImageDecodeError) and error.reason == "too_large", error
        assert peak < 1024 * 1024
    bad = {
        b"": "corrupt_compressed",
        b"GIF89a-but-not-really": "corrupt_compressed",
        b"\x00\x01\x02\x03 random bytes": "corrupt_compressed",
        b"\xff\xd8\xff\xe0\x00\x10JFIF": "corrupt_compressed",  # header cut before the frame header
        png_with_header_size(0, 10): "zero_size",
        jpeg_with_header_size(0, 10): "zero_size",
    }
    for payload, reason in bad.items():
        with pytest.raises(ImageDecodeError) as info:
            check_compressed_header(cmsg("jpeg", payload))
        assert info.value.reason == reason, payload[:12]


def test_out_buffer_is_filled_and_returned(rgb):
    h, w = rgb.shape[:2]
    for encoding, padding in (("bgr8", 0), ("rgb8", 3), ("mono8", 0), ("bayer_grbg8", 0), ("bgra16", 2)):
        fields = rgb_to_image_fields(rgb, encoding, step_padding=padding)
        expected = image_msg_to_rgb(SimpleNamespace(**fields))
        out = np.full((h, w, 3), 7, np.uint8)
        result = image_msg_to_rgb(SimpleNamespace(**fields), out=out)
        assert np.shares_memory(result, out), encoding
        np.testing.assert_array_equal(out, expected, err_msg=encoding)
    with pytest.raises(ValueError, match="out must be"):
        image_msg_to_rgb(
            SimpleNamespace(**rgb_to_image_fields(rgb, "bgr8")), out=np.zeros((h, w, 4), np.uint8)
        )


def test_unpadded_rgb8_is_a_view_of_the_message_buffer(rgb):
    fields = rgb_to_image_fields(rgb, "rgb8")
    data = np.frombuffer(fields["data"], np.uint8)
    out = image_msg_to_rgb(SimpleNamespace(**{**fields, "data": data}))
    assert np.shares_memory(out, data)
    np.testing.assert_array_equal(out, rgb)


def test_pixel_limit_environment_variable(monkeypatch, rgb):
    message = SimpleNamespace(**rgb_to_image_fields(rgb, "rgb8"))
    h, w = rgb.shape[:2]
    monkeypatch.setenv(MAX_PIXELS_ENV, str(h * w - 1))
    assert resolve_max_pixels() == h * w - 1 and resolve_max_pixels(5) == 5
    assert reason_of(message) == "too_large"
    with pytest.raises(ImageDecodeError, match="too_large"):
        decode_image_bytes(rgb_to_compressed_bytes(rgb, "png"))
    image_msg_to_rgb(message, max_pixels=h * w)  # an explicit limit wins
    monkeypatch.setenv(MAX_PIXELS_ENV, "lots")
    with pytest.raises(ValueError, match=MAX_PIXELS_ENV):
        resolve_max_pixels()
    monkeypatch.delenv(MAX_PIXELS_ENV)
    assert resolve_max_pixels() == 4096 * 4096
