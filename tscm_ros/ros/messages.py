"""Standard ROS message helpers: stamps, PointCloud2 <-> numpy, loop-edge markers, poses, diagnostics.

Only standard message packages are used (no custom interfaces), so any ROS 2 tool can read the outputs.
PointCloud2 encoding and decoding are done with numpy structured arrays (``sensor_msgs_py`` is not needed).
"""

from __future__ import annotations

import array
import math
import sys
import zlib
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
from builtin_interfaces.msg import Time
from diagnostic_msgs.msg import DiagnosticStatus, KeyValue
from geometry_msgs.msg import Point, Pose, PoseWithCovarianceStamped
from sensor_msgs.msg import Image, PointCloud2, PointField
from std_msgs.msg import ColorRGBA, Float64MultiArray, Header
from visualization_msgs.msg import Marker, MarkerArray

from tscm_ros.poses import NS_PER_S

# One point per loop candidate on ``~/loop_candidates`` (and per closure on ``~/loop_closures``); packed (no
# padding), little-endian, 91 bytes. The first 34 bytes are the layout of the first release, the first 74 that
# of the release before fleet maps, unchanged.
CANDIDATE_DTYPE = np.dtype(
    [
        ("x", "<f4"),  # match position in the map frame, NaN when the match has no pose
        ("y", "<f4"),
        ("z", "<f4"),
        ("query_id", "<u4"),  # place id of the query keyframe (its id in the map when it was added)
        ("match_id", "<u4"),  # place id of the matched map entry
        ("match_stamp", "<f8"),  # header stamp of the matched keyframe, seconds
        ("similarity", "<f4"),  # cosine similarity of the two descriptors
        ("rank", "<u2"),  # 0 = best candidate
        ("inliers", "<u4"),  # geometric inliers (0 when not verified)
        ("verified", "u1"),  # 1 = geometrically verified loop closure
        ("scale_known", "u1"),  # 1 = metric translation (PnP with depth); 0 = unit direction or none
        ("tx", "<f4"),  # relative pose query->match in the query camera's optical frame:
        ("ty", "<f4"),  #   X_query = R(q) X_match + t, i.e. the match camera's pose in the query camera
        ("tz", "<f4"),  #   frame; NaN when unknown
        ("qx", "<f4"),
        ("qy", "<f4"),
        ("qz", "<f4"),
        ("qw", "<f4"),
        ("sequence_score", "<f4"),  # sequence-matching score, NaN when sequence matching is off
        ("sequence_length", "<u2"),  # query keyframes behind sequence_score (0 = single frame)
        ("match_robot", "<u4"),  # identity_hash of the matched place's robot id (0: "" -- a local map)
        ("match_session", "<u4"),  # identity_hash of its session id
        ("inter_robot", "u1"),  # 1 = the matched place belongs to another robot (fleet maps)
        ("query_id_hi", "<u4"),  # upper 32 bits of query_id / match_id: fleet place ids are 63-bit,
        ("match_id_hi", "<u4"),  #   id = hi << 32 | id; 0 for local maps
    ]
)
ID_FIELDS = ("query_id", "match_id")  # split into the low 32 bits and <name>_hi

# ``~/descriptor``: one float32 field "d", one point per descriptor dimension (height 1, width = dim).
DESCRIPTOR_DTYPE = np.dtype([("d", "<f4")])

_POINT_FIELD_TYPES: dict[str, int] = {
    "i1": PointField.INT8,
    "u1": PointField.UINT8,
    "i2": PointField.INT16,
    "u2": PointField.UINT16,
    "i4": PointField.INT32,
    "u4": PointField.UINT32,
    "f4": PointField.FLOAT32,
    "f8": PointField.FLOAT64,
}
_NUMPY_TYPES: dict[int, str] = {value: key for key, value in _POINT_FIELD_TYPES.items()}


def identity_hash(name: str) -> int:
    """The UINT32 a robot or session id becomes in ``match_robot`` / ``match_session``: the CRC-32 (zlib,
    ISO-HDLC) of its UTF-8 bytes, ``zlib.crc32(name.encode("utf-8"))``; ``identity_hash("") == 0``."""
    return zlib.crc32(name.encode("utf-8")) & 0xFFFFFFFF


def full_ids(points: np.ndarray, name: str) -> np.ndarray:
    """The 64-bit ``query_id`` / ``match_id`` of decoded candidates: ``<name>_hi << 32 | <name>``."""
    low = points[name].astype(np.int64)
    if f"{name}_hi" not in (points.dtype.names or ()):
        return low
    return (points[f"{name}_hi"].astype(np.int64) << 32) | low


def stamp_to_ns(stamp: Time) -> int:
    """builtin_interfaces/Time -> int64 nanoseconds."""
    return int(stamp.sec) * NS_PER_S + int(stamp.nanosec)


def ns_to_stamp(stamp_ns: int) -> Time:
    """int64 nanoseconds -> builtin_interfaces/Time."""
    sec, nanosec = divmod(int(stamp_ns), NS_PER_S)
    return Time(sec=sec, nanosec=nanosec)


def ns_to_seconds(stamp_ns: int) -> float:
    return int(stamp_ns) / NS_PER_S


def byte_array(data: bytes | bytearray | memoryview | np.ndarray) -> array.array:
    """Raw bytes as ``array.array('B')``: the fast path of generated uint8[] setters (no per-byte check)."""
    if isinstance(data, np.ndarray):
        data = np.ascontiguousarray(data).tobytes()
    return array.array("B", bytes(data))


def array_to_cloud(header: Header, points: np.ndarray) -> PointCloud2:
    """Structured numpy array (one record per point) -> PointCloud2, height 1, width = len(points)."""
    if points.dtype.names is None:
        raise ValueError("points must be a numpy structured array")
    fields = []
    for name in points.dtype.names:
        field_dtype, offset = points.dtype.fields[name][:2]
        base = field_dtype.base
        if base.byteorder == ">" or (base.byteorder == "=" and sys.byteorder == "big"):
            raise ValueError(f"field {name!r} must be little-endian")
        key = f"{base.kind}{base.itemsize}"
        if key not in _POINT_FIELD_TYPES:
            raise ValueError(f"field {name!r} has no PointField type ({field_dtype})")
        count = int(np.prod(field_dtype.shape)) if field_dtype.shape else 1
        fields.append(PointField(name=name, offset=offset, datatype=_POINT_FIELD_TYPES[key], count=count))
    msg = PointCloud2()
    msg.header = header
    msg.height = 1
    msg.width = int(points.shape[0])
    msg.fields = fields
    msg.is_bigendian = False
    msg.point_step = points.dtype.itemsize
    msg.row_step = msg.point_step * msg.width
    msg.is_dense = False
    msg.data = byte_array(np.ascontiguousarray(points))
    return msg


def cloud_to_array(msg: PointCloud2) -> np.ndarray:
    """PointCloud2 -> structured numpy array of shape (height * width,), honouring offsets and steps."""
    byteorder = ">" if msg.is_bigendian else "<"
    names, formats, offsets = [], [], []
    for field in msg.fields:
        if field.datatype not in _NUMPY_TYPES:
            raise ValueError(f"field {field.name!r} has unknown PointField datatype {field.datatype}")
        base = byteorder + _NUMPY_TYPES[field.datatype]
        names.append(field.name)
        formats.append(base if field.count <= 1 else (base, (field.count,)))
        offsets.append(field.offset)
    dtype = np.dtype({"names": names, "formats": formats, "offsets": offsets, "itemsize": msg.point_step})
    raw = np.frombuffer(bytes(msg.data), dtype=np.uint8)
    if raw.size < msg.row_step * msg.height or msg.row_step < msg.point_step * msg.width:
        raise ValueError("PointCloud2 data is shorter than height * row_step")
    rows = raw[: msg.row_step * msg.height].reshape(msg.height, msg.row_step)
    rows = np.ascontiguousarray(rows[:, : msg.point_step * msg.width])
    return rows.view(dtype).reshape(-1)


def candidates_cloud(header: Header, rows: Sequence[Mapping[str, float | int]]) -> PointCloud2:
    """Loop candidates (dicts with CANDIDATE_DTYPE field names; missing pose/sequence fields are NaN/0)
    -> ``~/loop_candidates`` message. ``query_id`` / ``match_id`` may be 64-bit: they are split into the
    field (low 32 bits) and ``<name>_hi`` (the rest)."""
    points = np.zeros(len(rows), dtype=CANDIDATE_DTYPE)
    for name in ("tx", "ty", "tz", "qx", "qy", "qz", "qw", "sequence_score"):
        points[name] = np.nan
    for index, row in enumerate(rows):
        for name in CANDIDATE_DTYPE.names:
            if name in row and name not in ID_FIELDS:
                points[name][index] = row[name]
        for name in ID_FIELDS:
            if name in row:
                value = int(row[name])
                if not 0 <= value < 1 << 64:
                    raise ValueError(f"{name} {value} is not an unsigned 64-bit id")
                points[name][index] = value & 0xFFFFFFFF
                points[f"{name}_hi"][index] = value >> 32
    return array_to_cloud(header, points)


def rgb_image_msg(header: Header, rgb: np.ndarray) -> Image:
    """(H, W, 3) uint8 RGB -> sensor_msgs/Image rgb8."""
    msg = Image()
    msg.header = header
    msg.height, msg.width = int(rgb.shape[0]), int(rgb.shape[1])
    msg.encoding = "rgb8"
    msg.is_bigendian = 0
    msg.step = msg.width * 3
    msg.data = byte_array(np.ascontiguousarray(rgb, dtype=np.uint8))
    return msg


def descriptor_cloud(header: Header, descriptor: np.ndarray) -> PointCloud2:
    """Descriptor (D,) -> PointCloud2 with one float32 field "d", width D, the query image's header."""
    points = np.zeros(descriptor.shape[0], dtype=DESCRIPTOR_DTYPE)
    points["d"] = descriptor.astype(np.float32, copy=False)
    return array_to_cloud(header, points)


def lio_sam_loop(query_stamp_ns: int, match_stamp_ns: int) -> Float64MultiArray:
    """LIO-SAM / LVI-SAM external loop message: data = [t_query, t_match] in seconds."""
    return Float64MultiArray(data=[ns_to_seconds(query_stamp_ns), ns_to_seconds(match_stamp_ns)])


def pose_msg(position: Sequence[float], orientation_xyzw: Sequence[float] | None) -> Pose:
    """Position (3) + quaternion (x, y, z, w; identity when None) -> geometry_msgs/Pose."""
    msg = Pose()
    msg.position.x, msg.position.y, msg.position.z = (float(v) for v in position)
    qx, qy, qz, qw = orientation_xyzw if orientation_xyzw is not None else (0.0, 0.0, 0.0, 1.0)
    msg.orientation.x, msg.orientation.y = float(qx), float(qy)
    msg.orientation.z, msg.orientation.w = float(qz), float(qw)
    return msg


def diagonal_covariance(diagonal: Sequence[float]) -> list[float]:
    """Six variances (x, y, z, roll, pitch, yaw) -> row-major 6x6 covariance."""
    if len(diagonal) != 6:
        raise ValueError(f"expected 6 variances, got {len(diagonal)}")
    return [float(diagonal[i]) if i == j else 0.0 for i in range(6) for j in range(6)]


def matched_pose_msg(
    header: Header,
    position: Sequence[float],
    orientation_xyzw: Sequence[float] | None,
    variances: Sequence[float],
) -> PoseWithCovarianceStamped:
    """Pose of the best match as a relocalisation prior (header: query stamp, map frame)."""
    msg = PoseWithCovarianceStamped()
    msg.header = header
    msg.pose.pose = pose_msg(position, orientation_xyzw)
    msg.pose.covariance = diagonal_covariance(variances)
    return msg


def loop_edge_markers(
    header: Header,
    edges: Iterable[tuple[Sequence[float], Sequence[float]]],
    *,
    line_width: float = 0.05,
) -> MarkerArray:
    """Loop edges (query position, match position) -> MarkerArray with one LINE_LIST marker."""
    marker = Marker()
    marker.header = header
    marker.ns = "loop_edges"
    marker.id = 0
    marker.type = Marker.LINE_LIST
    marker.action = Marker.ADD
    marker.pose.orientation.w = 1.0
    marker.scale.x = float(line_width)
    marker.color = ColorRGBA(r=1.0, g=0.2, b=0.2, a=1.0)
    for start, end in edges:
        marker.points.append(Point(x=float(start[0]), y=float(start[1]), z=float(start[2])))
        marker.points.append(Point(x=float(end[0]), y=float(end[1]), z=float(end[2])))
    return MarkerArray(markers=[marker])


def finite_position(position: Sequence[float] | None) -> bool:
    return position is not None and all(math.isfinite(float(v)) for v in position)


def diagnostic_status(
    name: str, hardware_id: str, level: bytes, message: str, values: Mapping[str, object]
) -> DiagnosticStatus:
    """DiagnosticStatus with string key/values (level: DiagnosticStatus.OK / WARN / ERROR / STALE)."""
    return DiagnosticStatus(
        level=level,
        name=name,
        hardware_id=hardware_id,
        message=message,
        values=[KeyValue(key=str(key), value=str(value)) for key, value in values.items()],
    )


def diagnostic_values(status: DiagnosticStatus) -> dict[str, str]:
    """DiagnosticStatus key/values -> dict (for tests and tools)."""
    return {item.key: item.value for item in status.values}
