"""Depth images from sensor_msgs/Image fields (rclpy or rosbags messages), ROS-free.

``16UC1`` / ``mono16`` hold millimetres (the REP 118 / OpenNI convention), ``32FC1`` metres. The size fields
are checked against each other and against the data before anything is allocated.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from tscm_ros.images import resolve_max_pixels

DEPTH_ENCODINGS = {"16UC1": np.dtype("u2"), "mono16": np.dtype("u2"), "32FC1": np.dtype("f4")}


class DepthDecodeError(ValueError):
    """A depth message that cannot be used (one clear line)."""


def depth_msg_to_metres(msg: Any, max_pixels: int | None = None) -> np.ndarray:
    """(H, W) float32 metres of a depth ``sensor_msgs/Image``; invalid pixels (0, NaN, inf) become NaN.

    ``max_pixels``: None = the common pixel limit of every image reader (:func:`resolve_max_pixels`)."""
    max_pixels = resolve_max_pixels(max_pixels)
    encoding = str(msg.encoding)
    if encoding not in DEPTH_ENCODINGS:
        raise DepthDecodeError(f"depth encoding {encoding!r} is not one of {', '.join(DEPTH_ENCODINGS)}")
    dtype = DEPTH_ENCODINGS[encoding]
    height, width, step = int(msg.height), int(msg.width), int(msg.step)
    if height <= 0 or width <= 0:
        raise DepthDecodeError(f"depth image has zero size ({width}x{height})")
    if height * width > max_pixels:
        raise DepthDecodeError(f"depth image {width}x{height} exceeds max_image_pixels {max_pixels}")
    row_bytes = width * dtype.itemsize
    if step < row_bytes:
        raise DepthDecodeError(f"depth step {step} < width * {dtype.itemsize} = {row_bytes}")
    data = msg.data
    size = len(data)
    if size < step * (height - 1) + row_bytes or step > size:
        raise DepthDecodeError(f"depth data has {size} bytes, {width}x{height} with step {step} needs more")
    raw = np.frombuffer(memoryview(data).cast("B") if not isinstance(data, np.ndarray) else data, np.uint8)
    rows = np.lib.stride_tricks.as_strided(raw, shape=(height, row_bytes), strides=(step, 1))
    order = ">" if bool(msg.is_bigendian) else "<"
    values = np.ascontiguousarray(rows).view(dtype.newbyteorder(order)).reshape(height, width)
    metres = values.astype(np.float32) / 1000.0 if dtype.kind == "u" else values.astype(np.float32)
    metres[~np.isfinite(metres) | (metres <= 0)] = np.nan
    return metres
